//! Speech to text with Whisper, following faster-whisper's `transcribe` step for step so that
//! the same weights give the same words:
//!
//! - the log-mel features of the whole recording, cut into 30 s windows at a moving `seek`;
//! - per window a prompt (`<|startofprev|>` and the previous text when conditioning on it, then
//!   `<|startoftranscript|>`, the language and task for multilingual models, and
//!   `<|notimestamps|>` without timestamps);
//! - decoding with CTranslate2's rules: suppressed tokens (faster-whisper's non-speech symbols
//!   and the special tokens), a blank or end of text not allowed first, and the timestamp rules
//!   (timestamps in pairs and never decreasing, the first token a timestamp of at most 1 s, a
//!   timestamp forced whenever their total probability beats every text token);
//! - temperature fallback: greedy first, then sampling at 0.2, 0.4, ... while the text is too
//!   repetitive (zlib compression ratio above 2.4) or too improbable (mean log-probability below
//!   -1), unless the window looks silent (no-speech probability above 0.6);
//! - segments cut at pairs of timestamps; `seek` moves to the last timestamp, or past the window
//!   when it ends on a single timestamp.
//!
//! Language detection (multilingual models without `--language`) reads the language tokens'
//! probabilities after `<|startoftranscript|>` on the first window. Chinese text comes out in
//! Simplified characters unless asked otherwise (OpenCC's tables): Whisper base writes
//! Traditional for much Mandarin speech.

use crate::mel::{LogMel, Spectrogram, HOP, WINDOW_FRAMES};
use crate::SAMPLE_RATE;
use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;
use std::path::Path;
use zhiku_models::blocks::GgmlType;
use zhiku_models::kernels::fast_exp;
use crate::vad::{SpeechMap, Vad, VadOptions};
use zhiku_models::whisper::{DecoderState, Whisper};

/// Seconds per timestamp token.
const TIME_PRECISION: f64 = 0.02;
/// Encoder positions per mel frame.
const INPUT_STRIDE: usize = 2;

#[derive(Debug, Clone)]
pub struct TranscribeOptions {
    /// ISO code ("en", "zh"); None detects it (multilingual models).
    pub language: Option<String>,
    pub translate: bool,
    pub temperatures: Vec<f32>,
    /// Hypotheses kept by beam search at temperature 0 (CTranslate2's, as faster-whisper runs
    /// it; 1 is greedy decoding).
    pub beam_size: usize,
    /// Beam search stops once `beam_size * patience` hypotheses have ended.
    pub patience: f32,
    /// Candidates sampled per temperature above 0; the most probable is kept.
    pub best_of: usize,
    pub compression_ratio_threshold: Option<f64>,
    pub log_prob_threshold: Option<f64>,
    pub no_speech_threshold: Option<f64>,
    pub condition_on_previous_text: bool,
    /// Above this temperature the previous text stops being used as the prompt.
    pub prompt_reset_on_temperature: f32,
    pub without_timestamps: bool,
    pub max_initial_timestamp: f64,
    pub suppress_blank: bool,
    pub seed: u64,
    /// Chinese output in Simplified characters (Whisper often writes Traditional for Mandarin),
    /// converted with OpenCC's Traditional-to-Simplified tables.
    pub simplified_chinese: bool,
    /// Transcribe only the speech that voice activity detection finds (faster-whisper's
    /// `vad_filter`): the silences are cut out before decoding, and segment times are mapped
    /// back to the recording. None decodes every window.
    pub vad: Option<VadOptions>,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        Self {
            language: None,
            translate: false,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            beam_size: 5,
            patience: 1.0,
            best_of: 5,
            compression_ratio_threshold: Some(2.4),
            log_prob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            prompt_reset_on_temperature: 0.5,
            without_timestamps: false,
            max_initial_timestamp: 1.0,
            suppress_blank: true,
            seed: 42,
            simplified_chinese: true,
            vad: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
    pub text: String,
    #[serde(skip)]
    pub tokens: Vec<u32>,
    pub avg_logprob: f64,
    pub no_speech_prob: f64,
    pub temperature: f32,
    pub compression_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Transcript {
    pub text: String,
    pub language: String,
    pub language_probability: Option<f64>,
    pub duration: f64,
    pub segments: Vec<Segment>,
}

/// How a transcript is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Txt,
    Srt,
    Vtt,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "txt" | "text" => Self::Txt,
            "srt" => Self::Srt,
            "vtt" => Self::Vtt,
            "json" => Self::Json,
            _ => bail!("unknown format {s:?}: expected txt, srt, vtt or json"),
        })
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Txt => "txt",
            Self::Srt => "srt",
            Self::Vtt => "vtt",
            Self::Json => "json",
        }
    }
}

/// `HH:MM:SS` and milliseconds after `sep` (`,` for SubRip, `.` for WebVTT).
fn clock(seconds: f64, sep: char) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!("{:02}:{:02}:{:02}{sep}{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

impl Transcript {
    /// The transcript as plain text (a segment per line), SubRip, WebVTT or JSON
    /// (`{"text", "language", "duration", "segments": [{"start", "end", "text", ...}]}`, seconds).
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Txt => self.segments.iter().map(|s| format!("{}\n", s.text.trim())).collect(),
            Format::Srt => self.segments.iter().enumerate().map(|(i, s)| format!("{}\n{} --> {}\n{}\n\n", i + 1, clock(s.start, ','), clock(s.end, ','), s.text.trim())).collect(),
            Format::Vtt => {
                let mut out = String::from("WEBVTT\n\n");
                for s in &self.segments {
                    out.push_str(&format!("{} --> {}\n{}\n\n", clock(s.start, '.'), clock(s.end, '.'), s.text.trim()));
                }
                out
            }
            Format::Json => serde_json::to_string(self).expect("plain data") + "\n",
        }
    }
}

/// The special tokens, by their text in the tokenizer.
#[derive(Debug, Clone)]
struct Specials {
    eot: u32,
    sot: u32,
    sot_prev: u32,
    sot_lm: u32,
    no_speech: u32,
    no_timestamps: u32,
    timestamp_begin: u32,
    transcribe: u32,
    translate: u32,
    /// (code, token) of every language the model knows (multilingual models).
    languages: Vec<(String, u32)>,
}

/// A Whisper model with its tokenizer, ready to transcribe.
pub struct SpeechModel {
    pub whisper: Whisper,
    tokenizer: tokenizers::Tokenizer,
    specials: Specials,
    multilingual: bool,
    /// faster-whisper's default suppression: non-speech symbols and the task tokens.
    suppress: Vec<u32>,
    /// Not allowed as the first token (`suppress_blank`): the blank and end of text.
    suppress_begin: Vec<u32>,
    mel: LogMel,
    vad: Vad,
}

/// A window's decoding just after its prompt.
struct Start {
    state: DecoderState,
    /// The logits of the first token to generate.
    logits: Vec<f32>,
    no_speech_prob: f64,
    /// Most tokens the window may generate.
    max_new: usize,
    /// The latest timestamp token allowed first.
    max_initial: usize,
}

/// A window's decoding.
struct Generated {
    tokens: Vec<u32>,
    avg_logprob: f64,
    no_speech_prob: f64,
    temperature: f32,
    compression_ratio: f64,
}

impl SpeechModel {
    /// Loads a Whisper folder (CTranslate2's `model.bin`, or a Hugging Face `config.json` and
    /// `model.safetensors`; and `tokenizer.json`), its matrices in
    /// `dtype` (F32, or Q8_0 for 8-bit).
    pub fn load(dir: &Path, dtype: GgmlType) -> Result<Self> {
        let whisper = Whisper::load(dir, dtype)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
        let id = |t: &str| tokenizer.token_to_id(t).with_context(|| format!("{}: no token {t}", tok_path.display()));
        let eot = id("<|endoftext|>")?;
        let no_timestamps = id("<|notimestamps|>")?;
        let languages: Vec<(String, u32)> = (id("<|startoftranscript|>")? + 1..id("<|translate|>")?)
            .filter_map(|t| tokenizer.id_to_token(t).and_then(|s| s.strip_prefix("<|").and_then(|s| s.strip_suffix("|>")).map(|c| (c.to_string(), t))))
            .collect();
        let specials = Specials {
            eot,
            sot: id("<|startoftranscript|>")?,
            sot_prev: id("<|startofprev|>")?,
            sot_lm: id("<|startoflm|>")?,
            no_speech: id("<|nospeech|>").or_else(|_| id("<|nocaptions|>"))?,
            no_timestamps,
            timestamp_begin: no_timestamps + 1,
            transcribe: id("<|transcribe|>")?,
            translate: id("<|translate|>")?,
            languages,
        };
        let multilingual = whisper.dims.vocab >= 51865;
        let encode = |s: &str| -> Result<Vec<u32>> { Ok(tokenizer.encode(s, false).map_err(|e| anyhow::anyhow!("{e}"))?.get_ids().to_vec()) };
        // faster-whisper's `non_speech_tokens`.
        let mut suppress = vec![encode(" -")?[0], encode(" '")?[0]];
        let mut symbols: Vec<String> = "\"#()*+/:;<=>@[\\]^_`{|}~「」『』".chars().map(String::from).collect();
        symbols.extend("<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split(' ').map(String::from));
        let miscellaneous: Vec<String> = "♩♪♫♬♭♮♯".chars().map(String::from).collect();
        for symbol in symbols.iter().chain(&miscellaneous) {
            for tokens in [encode(symbol)?, encode(&format!(" {symbol}"))?] {
                if tokens.len() == 1 || miscellaneous.contains(symbol) {
                    suppress.push(tokens[0]);
                }
            }
        }
        let s = &specials;
        suppress.extend([s.transcribe, s.translate, s.sot, s.sot_prev, s.sot_lm, s.no_speech]);
        suppress.sort_unstable();
        suppress.dedup();
        let suppress_begin = vec![encode(" ")?[0], eot];
        let mel = LogMel::whisper(whisper.dims.n_mels);
        let vad = Vad::builtin()?;
        Ok(Self { whisper, tokenizer, specials, multilingual, suppress, suppress_begin, mel, vad })
    }

    pub fn is_multilingual(&self) -> bool {
        self.multilingual
    }

    fn decode_text(&self, tokens: &[u32]) -> String {
        let text: Vec<u32> = tokens.iter().copied().filter(|&t| t < self.specials.eot).collect();
        self.tokenizer.decode(&text, false).unwrap_or_default()
    }

    /// The languages the model knows, most probable first, for an encoded window.
    pub fn detect_language(&self, encoded: &[f32]) -> Result<Vec<(String, f64)>> {
        if !self.multilingual {
            return Ok(vec![("en".to_string(), 1.0)]);
        }
        let mut state = self.whisper.start(encoded)?;
        let logits = self.whisper.decode(&mut state, &[self.specials.sot], false)?;
        let langs = &self.specials.languages;
        let max = langs.iter().map(|&(_, t)| logits[t as usize]).fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f64> = langs.iter().map(|&(_, t)| ((logits[t as usize] - max) as f64).exp()).collect();
        let sum: f64 = exp.iter().sum();
        let mut out: Vec<(String, f64)> = langs.iter().zip(&exp).map(|((c, _), e)| (c.clone(), e / sum)).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(out)
    }

    /// Transcribes 16 kHz mono samples. `progress(seconds done, seconds in all)` follows the
    /// decoding.
    pub fn transcribe(&self, samples: &[f32], opts: &TranscribeOptions, mut progress: impl FnMut(f64, f64)) -> Result<Transcript> {
        if opts.temperatures.is_empty() {
            bail!("no temperatures to decode at")
        }
        let duration = samples.len() as f64 / SAMPLE_RATE as f64;
        let Some(vad) = &opts.vad else {
            return self.transcribe_all(samples, duration, opts, progress);
        };
        let chunks = self.vad.speech(samples, vad)?;
        if chunks.is_empty() {
            progress(duration, duration);
            let language = opts.language.clone().unwrap_or_else(|| "en".to_string());
            return Ok(Transcript { text: String::new(), language, language_probability: None, duration, segments: Vec::new() });
        }
        let speech = crate::vad::join(samples, &chunks);
        let scale = duration / (speech.len() as f64 / SAMPLE_RATE as f64);
        let mut t = self.transcribe_all(&speech, duration, opts, |done, _| progress(done * scale, duration))?;
        let map = SpeechMap::new(&chunks);
        for s in &mut t.segments {
            s.start = map.original_time(s.start, false);
            s.end = map.original_time(s.end, true);
        }
        Ok(t)
    }

    /// Decodes every 30 s window of `samples`; `duration` is the recording's.
    fn transcribe_all(&self, samples: &[f32], duration: f64, opts: &TranscribeOptions, mut progress: impl FnMut(f64, f64)) -> Result<Transcript> {
        let decoded_seconds = samples.len() as f64 / SAMPLE_RATE as f64;
        let features = self.mel.compute(samples);
        let content_frames = features.frames - 1;
        let s = &self.specials;
        let mut language = opts.language.clone();
        let mut language_probability = None;
        let mut sot_sequence = vec![s.sot];
        let mut segments = Vec::new();
        let mut all_tokens: Vec<u32> = Vec::new();
        let mut prompt_reset_since = 0;
        let mut seek = 0usize;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
        while seek < content_frames {
            let time_offset = seek as f64 * HOP as f64 / SAMPLE_RATE as f64;
            let segment_size = WINDOW_FRAMES.min(content_frames - seek);
            let segment_duration = segment_size as f64 * HOP as f64 / SAMPLE_RATE as f64;
            let window = window_of(&features, seek, segment_size);
            let encoded = self.whisper.encode(&window.data, WINDOW_FRAMES)?;
            if sot_sequence.len() == 1 && self.multilingual {
                let code = match &language {
                    Some(code) => code.clone(),
                    None => {
                        let ranked = self.detect_language(&encoded)?;
                        language_probability = Some(ranked[0].1);
                        ranked[0].0.clone()
                    }
                };
                let Some(&(_, token)) = s.languages.iter().find(|(c, _)| *c == code) else {
                    bail!("unknown language {code:?} (the model knows {})", s.languages.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", "))
                };
                language = Some(code);
                sot_sequence.extend([token, if opts.translate { s.translate } else { s.transcribe }]);
            }
            let mut prompt = Vec::new();
            let previous = &all_tokens[prompt_reset_since..];
            if opts.condition_on_previous_text && !previous.is_empty() {
                prompt.push(s.sot_prev);
                let keep = self.whisper.dims.text_ctx / 2 - 1;
                prompt.extend_from_slice(&previous[previous.len().saturating_sub(keep)..]);
            }
            prompt.extend_from_slice(&sot_sequence);
            if opts.without_timestamps {
                prompt.push(s.no_timestamps);
            }
            let g = self.generate_with_fallback(&encoded, &prompt, opts, &mut rng)?;
            let silent = opts.no_speech_threshold.is_some_and(|t| g.no_speech_prob > t) && !opts.log_prob_threshold.is_some_and(|t| g.avg_logprob > t);
            if silent {
                seek += segment_size;
                progress((seek as f64 / 100.0).min(decoded_seconds), decoded_seconds);
                continue;
            }
            let (pieces, next_seek) = self.split_by_timestamps(&g.tokens, time_offset, segment_size, segment_duration, seek);
            seek = next_seek;
            for (start, end, tokens) in pieces {
                let text = self.decode_text(&tokens);
                if start == end || text.trim().is_empty() {
                    continue;
                }
                all_tokens.extend_from_slice(&tokens);
                segments.push(Segment { start, end, text, tokens, avg_logprob: g.avg_logprob, no_speech_prob: g.no_speech_prob, temperature: g.temperature, compression_ratio: g.compression_ratio });
            }
            if !opts.condition_on_previous_text || g.temperature > opts.prompt_reset_on_temperature {
                prompt_reset_since = all_tokens.len();
            }
            progress((seek as f64 / 100.0).min(decoded_seconds), decoded_seconds);
        }
        let language = language.unwrap_or_else(|| "en".to_string());
        if language == "zh" && opts.simplified_chinese {
            let t2s = simplifier()?;
            for s in &mut segments {
                s.text = t2s.convert(&s.text);
            }
        }
        let text = segments.iter().map(|s| s.text.as_str()).collect::<String>().trim().to_string();
        Ok(Transcript { text, language, language_probability, duration, segments })
    }

    fn generate_with_fallback(&self, encoded: &[f32], prompt: &[u32], opts: &TranscribeOptions, rng: &mut impl Rng) -> Result<Generated> {
        let mut all = Vec::new();
        let mut below_cr = Vec::new();
        for &temperature in &opts.temperatures {
            let g = if temperature > 0.0 {
                let mut best: Option<Generated> = None;
                for _ in 0..opts.best_of.max(1) {
                    let c = self.generate(encoded, prompt, temperature, opts, rng)?;
                    if best.as_ref().is_none_or(|b| c.avg_logprob > b.avg_logprob) {
                        best = Some(c);
                    }
                }
                best.expect("at least one candidate")
            } else if opts.beam_size > 1 {
                self.beam_search(encoded, prompt, opts)?
            } else {
                self.generate(encoded, prompt, 0.0, opts, rng)?
            };
            let mut needs_fallback = false;
            if let Some(t) = opts.compression_ratio_threshold {
                if g.compression_ratio > t {
                    needs_fallback = true;
                } else {
                    below_cr.push(all.len());
                }
            }
            if opts.log_prob_threshold.is_some_and(|t| g.avg_logprob < t) {
                needs_fallback = true;
            }
            if opts.no_speech_threshold.is_some_and(|t| g.no_speech_prob > t) && opts.log_prob_threshold.is_some_and(|t| g.avg_logprob < t) {
                needs_fallback = false; // silence
            }
            all.push(g);
            if !needs_fallback {
                return Ok(all.pop().expect("just pushed"));
            }
        }
        // Every temperature failed: the most probable, preferring those not too repetitive.
        let pool: Vec<usize> = if below_cr.is_empty() { (0..all.len()).collect() } else { below_cr };
        let best = pool.into_iter().max_by(|&a, &b| all[a].avg_logprob.total_cmp(&all[b].avg_logprob)).expect("at least one result");
        Ok(all.swap_remove(best))
    }

    /// A window's decoder state after `prompt`, with the no-speech probability (read at
    /// `<|startoftranscript|>`) and the limits of what may follow.
    fn start_window(&self, encoded: &[f32], prompt: &[u32], opts: &TranscribeOptions) -> Result<Start> {
        let s = &self.specials;
        let w = &self.whisper;
        let mut state: DecoderState = w.start(encoded)?;
        let sot_index = prompt.iter().position(|&t| t == s.sot).context("the prompt has no <|startoftranscript|>")?;
        let at_sot = w.decode(&mut state, &prompt[..=sot_index], false)?;
        let no_speech_prob = softmax_at(&at_sot, s.no_speech as usize);
        let logits = if sot_index + 1 < prompt.len() { w.decode(&mut state, &prompt[sot_index + 1..], false)? } else { at_sot };
        let max_new = (w.dims.text_ctx / 2).min(w.dims.text_ctx - (prompt.len() - 1));
        let max_initial = s.timestamp_begin as usize + (opts.max_initial_timestamp / TIME_PRECISION).round() as usize;
        Ok(Start { state, logits, no_speech_prob, max_new, max_initial })
    }

    /// One decoding of a window from `prompt`: greedy at temperature 0, else sampled.
    fn generate(&self, encoded: &[f32], prompt: &[u32], temperature: f32, opts: &TranscribeOptions, rng: &mut impl Rng) -> Result<Generated> {
        let s = &self.specials;
        let w = &self.whisper;
        let Start { mut state, mut logits, no_speech_prob, max_new, max_initial } = self.start_window(encoded, prompt, opts)?;
        let vocab = w.dims.vocab;
        let mut tokens: Vec<u32> = Vec::new();
        let mut sum_logprob = 0f64;
        for step in 0..max_new {
            self.step_log_probs(&mut logits, &tokens, opts, max_initial);
            let logprobs = &logits;
            let next = if temperature > 0.0 {
                // Log-probabilities differ from the logits by a constant, which the softmax of
                // their scaled values does not see.
                let scaled: Vec<f32> = logprobs.iter().map(|&l| l / temperature).collect();
                let p = log_softmax(&scaled);
                let mut u: f64 = rng.random();
                let mut pick = vocab - 1;
                for (i, &lp) in p.iter().enumerate() {
                    u -= (lp as f64).exp();
                    if u <= 0.0 {
                        pick = i;
                        break;
                    }
                }
                pick as u32
            } else {
                argmax(logprobs)
            };
            sum_logprob += logprobs[next as usize] as f64;
            if next == s.eot {
                break;
            }
            tokens.push(next);
            if step + 1 == max_new {
                break;
            }
            logits = w.decode(&mut state, &[next], false)?;
        }
        let text = self.decode_text(&tokens);
        Ok(Generated { avg_logprob: sum_logprob / (tokens.len() + 1) as f64, no_speech_prob, temperature, compression_ratio: compression_ratio(text.trim()), tokens })
    }

    /// Turns `logits` into log-probabilities for the token after `tokens`, after the window's
    /// rules (suppressed tokens, no blank first, the timestamp rules).
    fn step_log_probs(&self, logits: &mut [f32], tokens: &[u32], opts: &TranscribeOptions, max_initial: usize) {
        for &t in &self.suppress {
            logits[t as usize] = f32::NEG_INFINITY;
        }
        if tokens.is_empty() && opts.suppress_blank {
            for &t in &self.suppress_begin {
                logits[t as usize] = f32::NEG_INFINITY;
            }
        }
        if !opts.without_timestamps {
            self.apply_timestamp_rules(logits, tokens, max_initial);
        }
        // In place: a fresh vocabulary-wide vector per hypothesis and step cost more in page
        // faults than the arithmetic.
        let lse = log_sum_exp(logits);
        logits.iter_mut().for_each(|x| *x -= lse);
    }

    /// Beam search as CTranslate2 runs it for faster-whisper (length penalty 1, no early exit):
    /// the first step expands one hypothesis; each step scores every hypothesis's next tokens,
    /// keeps the best `2 * beam` continuations, ends those that chose end-of-text among the first
    /// `beam` (their places taken by the next live ones), and stops when `beam * patience`
    /// hypotheses have ended or at the length limit. The best by log-probability per token wins.
    fn beam_search(&self, encoded: &[f32], prompt: &[u32], opts: &TranscribeOptions) -> Result<Generated> {
        let s = &self.specials;
        let w = &self.whisper;
        let beam = opts.beam_size;
        let candidates = 2 * beam;
        let max_hypotheses = ((beam as f32) * opts.patience).round().max(1.0) as usize;
        let Start { state, mut logits, no_speech_prob, max_new, max_initial } = self.start_window(encoded, prompt, opts)?;
        let vocab = w.dims.vocab;
        // Live hypotheses: tokens and summed log-probability. One to start with.
        let mut alive: Vec<(Vec<u32>, f32)> = vec![(Vec::new(), 0.0)];
        let mut beams: Option<zhiku_models::whisper::Beams> = None;
        let mut ended: Vec<(Vec<u32>, f32)> = Vec::new();
        for step in 0..max_new {
            // Every live hypothesis's continuations, scored. Only a hypothesis's own best
            // `candidates` continuations can be among the best `candidates` overall.
            // The hypotheses' rows are independent: one task each.
            let per_beam: Vec<Vec<(f32, usize, u32)>> = logits
                .par_chunks_mut(vocab)
                .zip(alive.par_iter())
                .enumerate()
                .map(|(b, (row, (tokens, score)))| {
                    self.step_log_probs(row, tokens, opts, max_initial);
                    let lp = &*row;
                    // The best `candidates`, kept sorted as the row streams by.
                    let mut own: Vec<(f32, u32)> = Vec::with_capacity(candidates + 1);
                    for (t, &l) in lp.iter().enumerate() {
                        if l.is_finite() && (own.len() < candidates || l > own[own.len() - 1].0) {
                            let at = own.partition_point(|&(x, _)| x >= l);
                            own.insert(at, (l, t as u32));
                            own.truncate(candidates);
                        }
                    }
                    own.into_iter().map(|(l, t)| (score + l, b, t)).collect()
                })
                .collect();
            let mut scored: Vec<(f32, usize, u32)> = per_beam.concat();
            if scored.is_empty() {
                break;
            }
            // At most beam x candidates entries: a full sort is cheap.
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            scored.truncate(candidates);
            let last_step = step + 1 == max_new;
            let mut next: Vec<(Vec<u32>, f32)> = Vec::with_capacity(beam);
            let mut origins = Vec::with_capacity(beam);
            let mut secondary = beam;
            for k in 0..beam.min(scored.len()) {
                let (score, origin, token) = scored[k];
                let mut chosen = k;
                if token == s.eot || last_step {
                    let mut tokens = alive[origin].0.clone();
                    if token != s.eot {
                        tokens.push(token);
                    }
                    ended.push((tokens, score));
                    // Its place goes to the next candidate that does not end.
                    match (secondary..scored.len()).find(|&j| scored[j].2 != s.eot) {
                        Some(j) => {
                            chosen = j;
                            secondary = j + 1;
                        }
                        None => continue,
                    }
                }
                // Not end-of-text: either candidate k, or the replacement found above.
                let (score, origin, token) = scored[chosen];
                let mut tokens = alive[origin].0.clone();
                tokens.push(token);
                next.push((tokens, score));
                origins.push(origin);
            }
            if last_step || ended.len() >= max_hypotheses || next.is_empty() {
                break;
            }
            let b = match beams.as_mut() {
                Some(b) => {
                    b.reorder(&origins);
                    b
                }
                None => beams.insert(w.beams(&state, origins.len())),
            };
            let fed: Vec<u32> = next.iter().map(|(t, _)| *t.last().expect("a live hypothesis has a token")).collect();
            logits = w.decode_beams(&state, b, &fed)?;
            alive = next;
        }
        // The best ended hypothesis by log-probability per token (length penalty 1).
        let per_token = |(t, s): &(Vec<u32>, f32)| if t.is_empty() { f32::NEG_INFINITY } else { *s / t.len() as f32 };
        let (tokens, score) = ended.into_iter().max_by(|a, b| per_token(a).total_cmp(&per_token(b))).unwrap_or_default();
        let text = self.decode_text(&tokens);
        Ok(Generated { avg_logprob: score as f64 / (tokens.len() + 1) as f64, no_speech_prob, temperature: 0.0, compression_ratio: compression_ratio(text.trim()), tokens })
    }

    /// CTranslate2's `ApplyTimestampRules`, for the token after `tokens`.
    fn apply_timestamp_rules(&self, logits: &mut [f32], tokens: &[u32], max_initial: usize) {
        let s = &self.specials;
        let (ts_begin, eot) = (s.timestamp_begin as usize, s.eot as usize);
        let vocab = logits.len();
        logits[s.no_timestamps as usize] = f32::NEG_INFINITY;
        let mut check = false;
        match tokens.last() {
            None => {
                logits[..ts_begin].fill(f32::NEG_INFINITY);
                if max_initial + 1 < vocab {
                    logits[max_initial + 1..].fill(f32::NEG_INFINITY);
                }
            }
            Some(&last) if last as usize >= ts_begin => {
                let penultimate = if tokens.len() >= 2 { tokens[tokens.len() - 2] } else { last };
                if penultimate as usize >= ts_begin {
                    logits[ts_begin..].fill(f32::NEG_INFINITY);
                } else {
                    logits[..eot].fill(f32::NEG_INFINITY);
                    logits[ts_begin..last as usize].fill(f32::NEG_INFINITY);
                    check = true;
                }
            }
            Some(_) => {
                check = true;
                if let Some(&t) = tokens.iter().rev().find(|&&t| t as usize >= ts_begin) {
                    logits[ts_begin..=t as usize].fill(f32::NEG_INFINITY);
                }
            }
        }
        if check {
            // The timestamps' total probability against the likeliest text token's. Both sides
            // of CTranslate2's comparison of log-probabilities carry the same normaliser, so
            // the logits compare as they are.
            let max_text = logits[..ts_begin].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            if log_sum_exp(&logits[ts_begin..]) > max_text {
                logits[..ts_begin].fill(f32::NEG_INFINITY);
            }
        }
    }

    /// (start, end, tokens) pieces of a window's tokens, and where the next window starts.
    fn split_by_timestamps(&self, tokens: &[u32], time_offset: f64, segment_size: usize, segment_duration: f64, seek: usize) -> (Vec<(f64, f64, Vec<u32>)>, usize) {
        let ts = self.specials.timestamp_begin;
        let n = tokens.len();
        let single_ending = n >= 2 && tokens[n - 2] < ts && ts <= tokens[n - 1];
        let consecutive: Vec<usize> = (1..n).filter(|&i| tokens[i] >= ts && tokens[i - 1] >= ts).collect();
        let mut out = Vec::new();
        if !consecutive.is_empty() {
            let mut slices = consecutive;
            if single_ending {
                slices.push(n);
            }
            let mut last = 0;
            for cut in slices {
                let piece = &tokens[last..cut];
                let start = time_offset + (piece[0] - ts) as f64 * TIME_PRECISION;
                let end = time_offset + (piece[piece.len() - 1] - ts) as f64 * TIME_PRECISION;
                out.push((start, end, piece.to_vec()));
                last = cut;
            }
            let next = if single_ending { seek + segment_size } else { seek + (tokens[last - 1] - ts) as usize * INPUT_STRIDE };
            (out, next)
        } else {
            let mut duration = segment_duration;
            if let Some(&t) = tokens.iter().rev().find(|&&t| t >= ts) {
                if t != ts {
                    duration = (t - ts) as f64 * TIME_PRECISION;
                }
            }
            out.push((time_offset, time_offset + duration, tokens.to_vec()));
            (out, seek + segment_size)
        }
    }
}

/// OpenCC's Traditional-to-Simplified converter, built once.
fn simplifier() -> Result<&'static ferrous_opencc::OpenCC> {
    static T2S: std::sync::OnceLock<ferrous_opencc::OpenCC> = std::sync::OnceLock::new();
    if let Some(c) = T2S.get() {
        return Ok(c);
    }
    let c = ferrous_opencc::OpenCC::from_config(ferrous_opencc::config::BuiltinConfig::T2s).map_err(|e| anyhow::anyhow!("cannot load the Traditional-to-Simplified tables: {e}"))?;
    Ok(T2S.get_or_init(|| c))
}

/// Frames `seek..seek + len` of the features, zero-padded to a full window.
fn window_of(features: &Spectrogram, seek: usize, len: usize) -> Spectrogram {
    let mut w = features.window(seek, WINDOW_FRAMES);
    // Frames past `len` belong to the next window (or to the padding): zero them, as
    // faster-whisper slices `len` frames before padding.
    for m in 0..w.n_mels {
        w.data[m * WINDOW_FRAMES + len..(m + 1) * WINDOW_FRAMES].fill(0.0);
    }
    w
}

/// The index of the first largest value (0 for an empty slice). The OCR decoders use it too.
pub(crate) fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// `ln Σ e^v` over a vocabulary-wide row. The exponentials are the vectorised `fast_exp` (about
/// 2 ulp; libm's is a call per element, and beam search takes five rows of 52k a step), summed
/// in f64 so the row's length does not cost precision.
fn log_sum_exp(v: &[f32]) -> f32 {
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    if max == f32::NEG_INFINITY {
        return max;
    }
    let mut acc = [0f64; 8];
    let chunks = v.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&x| fast_exp(x - max) as f64).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += fast_exp(c[i] - max) as f64;
        }
    }
    max + (acc.iter().sum::<f64>() + tail).ln() as f32
}

fn log_softmax(v: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(v);
    v.iter().map(|&x| x - lse).collect()
}

fn softmax_at(v: &[f32], i: usize) -> f64 {
    ((v[i] - log_sum_exp(v)) as f64).exp()
}

/// Bytes of the text over bytes of its zlib compression (as faster-whisper measures it).
pub fn compression_ratio(text: &str) -> f64 {
    use std::io::Write;
    if text.is_empty() {
        return 0.0;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    z.write_all(text.as_bytes()).expect("writes to memory");
    let compressed = z.finish().expect("writes to memory");
    text.len() as f64 / compressed.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetitive_text_compresses_well() {
        let plain = compression_ratio("And so my fellow Americans, ask not what your country can do for you.");
        let looped = compression_ratio(&"thank you ".repeat(40));
        assert!(plain < 1.5 && looped > 2.4, "{plain} {looped}");
        assert_eq!(compression_ratio(""), 0.0);
    }

    #[test]
    fn subtitles_are_well_formed() {
        let seg = |start, end, text: &str| Segment { start, end, text: text.into(), tokens: vec![], avg_logprob: 0.0, no_speech_prob: 0.0, temperature: 0.0, compression_ratio: 1.0 };
        let t = Transcript { text: "a b".into(), language: "en".into(), language_probability: None, duration: 3725.5, segments: vec![seg(0.0, 7.74, " a"), seg(3723.25, 3725.5, " b")] };
        assert_eq!(t.render(Format::Srt), "1\n00:00:00,000 --> 00:00:07,740\na\n\n2\n01:02:03,250 --> 01:02:05,500\nb\n\n");
        assert_eq!(t.render(Format::Vtt), "WEBVTT\n\n00:00:00.000 --> 00:00:07.740\na\n\n01:02:03.250 --> 01:02:05.500\nb\n\n");
        assert_eq!(t.render(Format::Txt), "a\nb\n");
        let v: serde_json::Value = serde_json::from_str(&t.render(Format::Json)).unwrap();
        assert_eq!((v["text"].as_str(), v["segments"][1]["start"].as_f64(), v["segments"][0]["text"].as_str()), (Some("a b"), Some(3723.25), Some(" a")));
        assert!(Format::parse("doc").is_err());
    }

    #[test]
    fn traditional_becomes_simplified() {
        assert_eq!(simplifier().unwrap().convert("對,這就是我萬人傾樣的太以真人"), "对,这就是我万人倾样的太以真人");
    }

    #[test]
    fn log_softmax_survives_minus_infinity() {
        let v = [1.0, f32::NEG_INFINITY, 3.0];
        let lp = log_softmax(&v);
        assert!((lp[0].exp() + lp[2].exp() - 1.0).abs() < 1e-6 && lp[1] == f32::NEG_INFINITY);
        assert_eq!(argmax(&lp), 2);
    }
}
