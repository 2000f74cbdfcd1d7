//! Voice activity detection with Silero VAD v6, as faster-whisper's `vad_filter` runs it, so
//! that a recording's silences are found where faster-whisper finds them:
//!
//! - the samples padded to whole 512-sample windows (a full extra window when they already
//!   fit, as `np.pad` does), each window read with the 64 samples before it (zeros for the
//!   first) and the LSTM state carried from window to window;
//! - `get_speech_timestamps`: speech starts at a window whose probability reaches `threshold`,
//!   ends where it stays below `neg_threshold` for `min_silence_ms`, with `speech_pad_ms` added
//!   on each side (half the gap when two chunks are closer than twice that).
//!
//! The model (`assets/silero_vad_v6.onnx`, 1.2 MB, MIT) is the file faster-whisper 1.2.1 ships
//! in its wheel, built into the binary so that VAD needs nothing beside the Whisper folder. It
//! runs on rten like the OCR models.

use anyhow::{anyhow, bail, Context, Result};
use rten::{Model, NodeId};
use rten_tensor::prelude::*;
use rten_tensor::{NdTensor, Tensor};
use std::ops::Range;
use std::path::Path;

use crate::SAMPLE_RATE;

/// Samples per window the model scores (32 ms).
pub const WINDOW: usize = 512;
/// Samples of the previous window the model reads before each window.
const CONTEXT: usize = 64;
/// Windows per model call (faster-whisper's `encoder_batch_size`): bounds memory on hours of
/// audio without changing the result, the state being carried between calls.
const BATCH: usize = 10_000;

static BUILTIN: &[u8] = include_bytes!("../assets/silero_vad_v6.onnx");

/// faster-whisper's `VadOptions` with its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct VadOptions {
    /// A window at or above this probability is speech.
    pub threshold: f32,
    /// Below this a window is silence (default `max(threshold - 0.15, 0.01)`).
    pub neg_threshold: Option<f32>,
    /// Speech chunks shorter than this are dropped.
    pub min_speech_ms: u32,
    /// Longer chunks are split, at a silence of at least 98 ms if there is one.
    pub max_speech_s: f64,
    /// Silence this long ends a chunk.
    pub min_silence_ms: u32,
    /// Added to each side of a chunk.
    pub speech_pad_ms: u32,
}

impl Default for VadOptions {
    fn default() -> Self {
        Self { threshold: 0.5, neg_threshold: None, min_speech_ms: 0, max_speech_s: f64::INFINITY, min_silence_ms: 2000, speech_pad_ms: 400 }
    }
}

/// Silero VAD, loaded once and shared (runs take `&self`).
pub struct Vad {
    model: Model,
    input: NodeId,
    h: NodeId,
    c: NodeId,
    outputs: [NodeId; 3],
}

impl Vad {
    /// The model built into the binary.
    pub fn builtin() -> Result<Self> {
        Self::from_bytes(BUILTIN.to_vec()).context("the built-in Silero VAD model")
    }

    /// A Silero VAD v6 ONNX file with faster-whisper's interface (inputs `input` [windows, 576],
    /// `h` and `c` [1, 1, 128]; outputs `speech_probs`, `hn`, `cn`).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_bytes(bytes).with_context(|| format!("{}: not a Silero VAD v6 model", path.display()))
    }

    fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let model = Model::load(bytes).map_err(|e| anyhow!("not an ONNX model rten can run: {e}"))?;
        let node = |name: &str| model.find_node(name).ok_or_else(|| anyhow!("the model has no {name:?} node"));
        let (input, h, c) = (node("input")?, node("h")?, node("c")?);
        let outputs = [node("speech_probs")?, node("hn")?, node("cn")?];
        Ok(Self { model, input, h, c, outputs })
    }

    /// The speech probability of each 512-sample window of 16 kHz samples (one more window than
    /// whole windows fit, the last padded with zeros).
    pub fn probabilities(&self, samples: &[f32]) -> Result<Vec<f32>> {
        let windows = samples.len() / WINDOW + 1;
        let mut out = Vec::with_capacity(windows);
        let mut h = NdTensor::<f32, 3>::zeros([1, 1, 128]);
        let mut c = NdTensor::<f32, 3>::zeros([1, 1, 128]);
        let at = |i: usize| samples.get(i).copied().unwrap_or(0.0);
        for first in (0..windows).step_by(BATCH) {
            let n = BATCH.min(windows - first);
            let mut data = Vec::with_capacity(n * (CONTEXT + WINDOW));
            for w in first..first + n {
                let start = w * WINDOW;
                if w == 0 {
                    data.extend(std::iter::repeat_n(0.0, CONTEXT));
                } else {
                    data.extend((start - CONTEXT..start).map(at));
                }
                data.extend((start..start + WINDOW).map(at));
            }
            let input = NdTensor::from_data([n, CONTEXT + WINDOW], data);
            let inputs = vec![(self.input, input.view().into()), (self.h, h.view().into()), (self.c, c.view().into())];
            let mut results = self.model.run(inputs, &self.outputs, None).map_err(|e| anyhow!("voice activity detection: {e}"))?;
            let float = |v: rten::Value| -> Result<Tensor<f32>> { v.try_into().map_err(|_| anyhow!("the VAD model's output is not a float tensor")) };
            let cn = float(results.pop().expect("three outputs"))?;
            let hn = float(results.pop().expect("three outputs"))?;
            let probs = float(results.pop().expect("three outputs"))?;
            if probs.len() != n || hn.len() != 128 || cn.len() != 128 {
                bail!("the VAD model gave {} probabilities for {n} windows", probs.len())
            }
            out.extend(probs.iter().copied());
            h = NdTensor::from_data([1, 1, 128], hn.to_vec());
            c = NdTensor::from_data([1, 1, 128], cn.to_vec());
        }
        Ok(out)
    }

    /// The sample ranges of speech in 16 kHz samples.
    pub fn speech(&self, samples: &[f32], opts: &VadOptions) -> Result<Vec<Range<usize>>> {
        Ok(speech_ranges(&self.probabilities(samples)?, samples.len(), opts))
    }
}

/// faster-whisper's `get_speech_timestamps` over window probabilities, for `len` samples.
pub fn speech_ranges(probs: &[f32], len: usize, opts: &VadOptions) -> Vec<Range<usize>> {
    let sr = SAMPLE_RATE as f64;
    let w = WINDOW;
    let threshold = opts.threshold;
    let neg_threshold = opts.neg_threshold.unwrap_or((threshold - 0.15).max(0.01));
    let min_speech = sr * opts.min_speech_ms as f64 / 1000.0;
    let pad = sr * opts.speech_pad_ms as f64 / 1000.0;
    let max_speech = sr * opts.max_speech_s - w as f64 - 2.0 * pad;
    let min_silence = sr * opts.min_silence_ms as f64 / 1000.0;
    let min_silence_at_max = sr * 98.0 / 1000.0;

    let mut speeches: Vec<(usize, usize)> = Vec::new();
    let mut triggered = false;
    let mut current: Option<usize> = None; // the start of the chunk being read
    let (mut temp_end, mut prev_end, mut next_start) = (0usize, 0usize, 0usize);
    for (i, &p) in probs.iter().enumerate() {
        let at = w * i;
        if p >= threshold && temp_end != 0 {
            temp_end = 0;
            if next_start < prev_end {
                next_start = at;
            }
        }
        if p >= threshold && !triggered {
            triggered = true;
            current = Some(at);
            continue;
        }
        if triggered && (at - current.unwrap_or(0)) as f64 > max_speech {
            if prev_end != 0 {
                speeches.push((current.unwrap_or(0), prev_end));
                current = None;
                if next_start < prev_end {
                    triggered = false;
                } else {
                    current = Some(next_start);
                }
                (prev_end, next_start, temp_end) = (0, 0, 0);
            } else {
                speeches.push((current.unwrap_or(0), at));
                current = None;
                (prev_end, next_start, temp_end) = (0, 0, 0);
                triggered = false;
                continue;
            }
        }
        if p < neg_threshold && triggered {
            if temp_end == 0 {
                temp_end = at;
            }
            if (at - temp_end) as f64 > min_silence_at_max {
                prev_end = temp_end;
            }
            if ((at - temp_end) as f64) < min_silence {
                continue;
            }
            let start = current.take().unwrap_or(0);
            if (temp_end as f64 - start as f64) > min_speech {
                speeches.push((start, temp_end));
            }
            (prev_end, next_start, temp_end) = (0, 0, 0);
            triggered = false;
            continue;
        }
    }
    if let Some(start) = current {
        if (len as f64 - start as f64) > min_speech {
            speeches.push((start, len));
        }
    }
    // Padding: half the gap between chunks closer than two pads, else a pad on each side.
    let n = speeches.len();
    for i in 0..n {
        if i == 0 {
            speeches[0].0 = (speeches[0].0 as f64 - pad).max(0.0) as usize;
        }
        if i + 1 < n {
            let gap = speeches[i + 1].0 as i64 - speeches[i].1 as i64;
            if (gap as f64) < 2.0 * pad {
                let half = gap.div_euclid(2);
                speeches[i].1 = (speeches[i].1 as i64 + half) as usize;
                speeches[i + 1].0 = (speeches[i + 1].0 as i64 - half).max(0) as usize;
            } else {
                speeches[i].1 = (len as f64).min(speeches[i].1 as f64 + pad) as usize;
                speeches[i + 1].0 = (speeches[i + 1].0 as f64 - pad).max(0.0) as usize;
            }
        } else {
            speeches[i].1 = (len as f64).min(speeches[i].1 as f64 + pad) as usize;
        }
    }
    speeches.into_iter().map(|(s, e)| s..e).collect()
}

/// Maps times in the speech-only audio (the chunks joined) back to the recording, as
/// faster-whisper's `SpeechTimestampsMap` does.
pub struct SpeechMap {
    /// Where each chunk ends in the joined audio, in samples.
    chunk_end: Vec<usize>,
    /// Seconds of silence removed before each chunk.
    silence_before: Vec<f64>,
}

impl SpeechMap {
    pub fn new(chunks: &[Range<usize>]) -> Self {
        let (mut previous_end, mut silent) = (0usize, 0usize);
        let (mut chunk_end, mut silence_before) = (Vec::new(), Vec::new());
        for c in chunks {
            silent += c.start - previous_end;
            previous_end = c.end;
            chunk_end.push(c.end - silent);
            silence_before.push(silent as f64 / SAMPLE_RATE as f64);
        }
        Self { chunk_end, silence_before }
    }

    /// The recording's time of `time` seconds into the joined audio, rounded to 10 ms. An end
    /// time that falls exactly on a chunk's end stays in that chunk.
    pub fn original_time(&self, time: f64, is_end: bool) -> f64 {
        if self.chunk_end.is_empty() {
            return time;
        }
        let sample = (time * SAMPLE_RATE as f64) as usize;
        let index = match self.chunk_end.iter().position(|&e| e == sample) {
            Some(i) if is_end => i,
            _ => self.chunk_end.partition_point(|&e| e <= sample).min(self.chunk_end.len() - 1),
        };
        round_half_even((self.silence_before[index] + time) * 100.0) / 100.0
    }
}

/// The chunks' samples joined end to end.
pub fn join(samples: &[f32], chunks: &[Range<usize>]) -> Vec<f32> {
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.len()).sum());
    for c in chunks {
        out.extend_from_slice(&samples[c.clone()]);
    }
    out
}

/// Python's `round` (ties to even).
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> VadOptions {
        VadOptions::default()
    }

    #[test]
    fn silence_has_no_speech() {
        let vad = Vad::builtin().unwrap();
        let silence = vec![0.0f32; 16_000 * 3];
        assert!(vad.speech(&silence, &opts()).unwrap().is_empty());
        // Probabilities: one per whole window plus the padded one.
        assert_eq!(vad.probabilities(&silence).unwrap().len(), silence.len() / WINDOW + 1);
        assert_eq!(vad.probabilities(&[]).unwrap().len(), 1);
    }

    #[test]
    fn ranges_follow_faster_whispers_rules() {
        let p = |v: &[(usize, f32)]| -> Vec<f32> { v.iter().flat_map(|&(n, x)| std::iter::repeat_n(x, n)).collect() };
        // 1 s silence, 2 s speech, 3 s silence (ends the chunk: > 2 s), 1 s speech, to the end.
        let win = |s: f64| (s * 16_000.0 / WINDOW as f64).round() as usize;
        let probs = p(&[(win(1.0), 0.05), (win(2.0), 0.9), (win(3.0), 0.05), (win(1.0), 0.9)]);
        let len = probs.len() * WINDOW - 100;
        let r = speech_ranges(&probs, len, &opts());
        assert_eq!(r.len(), 2, "{r:?}");
        let start = win(1.0) * WINDOW;
        let end = (win(1.0) + win(2.0)) * WINDOW;
        assert_eq!(r[0], start - 6400..end + 6400);
        assert_eq!(r[1].end, len);
        // A short dip (under 2 s) does not end the chunk.
        let probs = p(&[(win(1.0), 0.9), (win(1.0), 0.1), (win(1.0), 0.9)]);
        assert_eq!(speech_ranges(&probs, probs.len() * WINDOW, &opts()).len(), 1);
        // Between thresholds after speech is still speech; below neg_threshold is not.
        let probs = p(&[(win(1.0), 0.9), (win(3.0), 0.4), (win(1.0), 0.9)]);
        assert_eq!(speech_ranges(&probs, probs.len() * WINDOW, &opts()).len(), 1);
        // Close chunks split their gap.
        let o = VadOptions { min_silence_ms: 100, ..opts() };
        let probs = p(&[(win(1.0), 0.9), (win(0.5), 0.0), (win(1.0), 0.9)]);
        let r = speech_ranges(&probs, probs.len() * WINDOW, &o);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].end, r[1].start);
        // A maximum length splits long speech.
        let o = VadOptions { max_speech_s: 5.0, ..opts() };
        let probs = p(&[(win(12.0), 0.9)]);
        let r = speech_ranges(&probs, probs.len() * WINDOW, &o);
        assert!(r.len() >= 2 && r.iter().all(|c| c.len() as f64 <= 5.0 * 16_000.0 + 1.0), "{r:?}");
    }

    #[test]
    fn times_map_back_across_removed_silence() {
        let chunks = [16_000..48_000, 80_000..96_000];
        let m = SpeechMap::new(&chunks);
        assert_eq!(m.original_time(0.0, false), 1.0);
        assert_eq!(m.original_time(1.5, false), 2.5);
        // 2.0 s is the first chunk's end in the joined audio: an end stays there, a start moves on.
        assert_eq!(m.original_time(2.0, true), 3.0);
        assert_eq!(m.original_time(2.0, false), 5.0);
        assert_eq!(m.original_time(2.5, false), 5.5);
        assert_eq!(join(&vec![1.0; 100_000], &chunks).len(), 48_000);
        assert_eq!(round_half_even(0.5), 0.0);
        assert_eq!(round_half_even(1.5), 2.0);
        assert_eq!(round_half_even(-2.5), -2.0);
    }
}
