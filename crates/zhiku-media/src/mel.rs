//! Whisper's log-mel spectrogram, computed as faster-whisper's numpy `FeatureExtractor` does
//! (itself after transformers' and openai-whisper's):
//!
//! 1. 160 zero samples appended to the recording;
//! 2. a centred STFT: `n_fft / 2` samples of reflection padding each side, a periodic Hann
//!    window of `n_fft` = 400 samples (25 ms), a hop of 160 (10 ms);
//! 3. the power spectrum `|X|²` of each frame, the last frame dropped;
//! 4. Slaney-style mel filters (`n_mels` triangles, area-normalised);
//! 5. `log10` clamped below at 1e-10, then at 8 below the whole recording's maximum, then
//!    `(x + 4) / 4`.
//!
//! A recording of `n` samples gives `n / 160 + 1` frames. The maximum in step 5 is over the whole
//! recording, so features of a long recording are computed once and then cut into 30 s windows
//! (as faster-whisper does), not computed window by window.

use realfft::{RealFftPlanner, RealToComplex};
use std::sync::Arc;

/// Samples between frames: 10 ms at 16 kHz.
pub const HOP: usize = 160;
/// STFT window: 25 ms at 16 kHz.
pub const N_FFT: usize = 400;
/// Frames in one 30 s window, what the Whisper encoder reads.
pub const WINDOW_FRAMES: usize = 3000;

/// A log-mel spectrogram, mel-major: `data[mel * frames + frame]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Spectrogram {
    pub n_mels: usize,
    pub frames: usize,
    pub data: Vec<f32>,
}

impl Spectrogram {
    /// Frames `start..start + len` as their own spectrogram, zero-padded past the end (the
    /// encoder's fixed 30 s input; faster-whisper's `pad_or_trim`).
    pub fn window(&self, start: usize, len: usize) -> Spectrogram {
        let mut data = vec![0f32; self.n_mels * len];
        let end = (start + len).min(self.frames);
        if start < end {
            for m in 0..self.n_mels {
                let src = &self.data[m * self.frames + start..m * self.frames + end];
                data[m * len..m * len + src.len()].copy_from_slice(src);
            }
        }
        Spectrogram { n_mels: self.n_mels, frames: len, data }
    }
}

/// The front end for one mel count (80 for Whisper up to large-v2, 128 for large-v3).
pub struct LogMel {
    n_mels: usize,
    /// `n_mels x (N_FFT / 2 + 1)`, row-major.
    filters: Vec<f32>,
    /// Per mel, the range of frequency bins where its filter is non-zero.
    support: Vec<(usize, usize)>,
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for LogMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMel").field("n_mels", &self.n_mels).finish_non_exhaustive()
    }
}

impl LogMel {
    pub fn whisper(n_mels: usize) -> Self {
        let bins = N_FFT / 2 + 1;
        let filters = slaney_filters(crate::SAMPLE_RATE as f64, N_FFT, n_mels);
        let support = filters
            .chunks_exact(bins)
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(0, |l| l + 1);
                (first, last.max(first))
            })
            .collect();
        // np.hanning(n_fft + 1)[:-1]: the periodic window.
        let window = (0..N_FFT).map(|n| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32).collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        Self { n_mels, filters, support, window, fft }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// The filter bank, `n_mels x 201`, row-major.
    pub fn filters(&self) -> &[f32] {
        &self.filters
    }

    /// The log-mel spectrogram of 16 kHz mono samples.
    pub fn compute(&self, samples: &[f32]) -> Spectrogram {
        let bins = N_FFT / 2 + 1;
        let mut padded: Vec<f32> = samples.to_vec();
        padded.extend(std::iter::repeat_n(0.0, HOP));
        let n = padded.len();
        // n / HOP frames after dropping the last of the centred STFT's 1 + n / HOP.
        let frames = n / HOP;
        let pad = N_FFT / 2;
        let sample = |i: isize| padded[reflect(i - pad as isize, n)];
        let mut mel = vec![0f32; self.n_mels * frames];
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f32; bins];
        for t in 0..frames {
            let start = (t * HOP) as isize;
            for (k, (x, w)) in input.iter_mut().zip(&self.window).enumerate() {
                *x = sample(start + k as isize) * w;
            }
            self.fft.process_with_scratch(&mut input, &mut spectrum, &mut scratch).expect("buffers sized by the plan");
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.re * c.re + c.im * c.im;
            }
            for (m, &(lo, hi)) in self.support.iter().enumerate() {
                let row = &self.filters[m * bins + lo..m * bins + hi];
                mel[m * frames + t] = row.iter().zip(&power[lo..hi]).map(|(w, p)| w * p).sum();
            }
        }
        let mut max = f32::NEG_INFINITY;
        for v in mel.iter_mut() {
            *v = v.max(1e-10).log10();
            max = max.max(*v);
        }
        for v in mel.iter_mut() {
            *v = (v.max(max - 8.0) + 4.0) / 4.0;
        }
        Spectrogram { n_mels: self.n_mels, frames, data: mel }
    }
}

/// numpy's `reflect` padding: index `i` of an array of `n` mirrored at its ends without repeating
/// the edge (…, x2, x1, x0, x1, x2, …), as often as needed.
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let r = i.rem_euclid(period);
    (if r < n as isize { r } else { period - r }) as usize
}

/// librosa's `mel(sr, n_fft, n_mels, htk=False, norm="slaney")` over 0..8 kHz, which is what
/// openai-whisper's `mel_filters.npz` holds and faster-whisper recomputes: `n_mels x (n_fft/2+1)`.
pub fn slaney_filters(sample_rate: f64, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..bins).map(|k| k as f64 * sample_rate / n_fft as f64).collect();
    // Slaney's mel scale: linear below 1 kHz, logarithmic above.
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let log_step = 6.4f64.ln() / 27.0;
    let hz_to_mel = |f: f64| if f >= min_log_hz { min_log_mel + (f / min_log_hz).ln() / log_step } else { f / f_sp };
    let mel_to_hz = |m: f64| if m >= min_log_mel { min_log_hz * (log_step * (m - min_log_mel)).exp() } else { f_sp * m };
    let max_mel = hz_to_mel(sample_rate / 2.0);
    let freqs: Vec<f64> = (0..n_mels + 2).map(|i| mel_to_hz(max_mel * i as f64 / (n_mels + 1) as f64)).collect();
    let mut out = vec![0f32; n_mels * bins];
    for m in 0..n_mels {
        let (lo, mid, hi) = (freqs[m], freqs[m + 1], freqs[m + 2]);
        let norm = 2.0 / (hi - lo);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = (f - lo) / (mid - lo);
            let upper = (hi - f) / (hi - mid);
            out[m * bins + k] = (lower.min(upper).max(0.0) * norm) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflection_matches_numpy() {
        // np.pad([0, 1, 2, 3], 5, mode="reflect") = [1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]
        let got: Vec<usize> = (-5..9).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, [1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]);
        assert_eq!(reflect(-3, 1), 0);
    }

    #[test]
    fn frames_and_the_clamp() {
        let mel = LogMel::whisper(80);
        let silence = mel.compute(&vec![0.0; 16_000]);
        assert_eq!((silence.n_mels, silence.frames), (80, 101));
        // All zeros: log10(1e-10) everywhere, then (−10 + 4) / 4.
        assert!(silence.data.iter().all(|&v| (v - -1.5).abs() < 1e-6));
        // A 1 kHz tone: its energy lands in the mel bands around 1 kHz.
        let tone: Vec<f32> = (0..16_000).map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin() * 0.5).collect();
        let s = mel.compute(&tone);
        let frame = 50;
        let loudest = (0..80).max_by(|&a, &b| s.data[a * s.frames + frame].total_cmp(&s.data[b * s.frames + frame])).unwrap();
        let centre = |m: usize| {
            let row = &mel.filters()[m * 201..(m + 1) * 201];
            row.iter().enumerate().map(|(k, w)| k as f32 * 40.0 * w).sum::<f32>() / row.iter().sum::<f32>()
        };
        assert!((centre(loudest) - 1000.0).abs() < 60.0, "band {loudest} centred at {}", centre(loudest));
        // Nothing is more than 8 (in log10 units, 2 after scaling) below the maximum.
        let max = s.data.iter().cloned().fold(f32::MIN, f32::max);
        assert!(s.data.iter().all(|&v| v >= max - 2.0 - 1e-6));
        let w = s.window(90, 20);
        assert_eq!((w.frames, w.data[10]), (20, s.data[100]));
        assert!(w.data[11..20].iter().all(|&v| v == 0.0), "padded past the end");
    }
}
