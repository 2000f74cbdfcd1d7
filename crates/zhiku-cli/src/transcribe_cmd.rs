//! `zhiku transcribe`: speech to text with Whisper (CTranslate2 weights, as faster-whisper uses, or a Hugging Face folder).

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use zhiku_media::speech::{Format, SpeechModel, TranscribeOptions};
use zhiku_media::vad::VadOptions;
use zhiku_models::blocks::GgmlType;

#[derive(Args, Debug)]
#[command(after_help = "Audio: WAV, FLAC, MP3, Ogg/Vorbis or Ogg/Opus, any sample rate and channel count (mixed to mono, resampled to\n\
16 kHz). Voice activity detection (Silero VAD v6, built in) first cuts out the silences of 2 s and more\n\
(--vad off decodes everything). The speech is then transcribed in 30 s windows by beam search over 5\n\
hypotheses (--beam-size 1: greedy), each window starting at the last timestamp of the one before, with the\n\
previous text as context; times are given in the recording. Recordings of up to 4 hours are read.\n\n\
Model: a CTranslate2 Whisper folder (model.bin, tokenizer.json), as faster-whisper uses, or a Hugging Face one\n\
(config.json, model.safetensors in f32/f16/bf16, tokenizer.json); e.g. Whisper tiny.en from\n\
`scripts/fetch-models.sh` in .cache/models/whisper-tiny.en.\n\n\
Examples:\n  \
zhiku transcribe --model .cache/models/whisper-tiny.en lecture.wav\n  \
zhiku transcribe --model whisper-base --language zh --format srt talk.mp3 > talk.srt\n  \
zhiku transcribe --model whisper-base --format json --output-dir transcripts/ *.flac")]
pub struct TranscribeArgs {
    /// Audio files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The Whisper model folder (CTranslate2, or Hugging Face safetensors).
    #[arg(long, short)]
    model: PathBuf,
    /// Spoken language as an ISO code (en, zh, ...), or auto to detect it from the first 30 s
    /// (English-only models: en).
    #[arg(long, default_value = "auto")]
    language: String,
    /// transcribe, or translate (into English).
    #[arg(long, default_value = "transcribe")]
    task: String,
    /// txt (a line per segment), srt, vtt, or json ({"text", "language", "duration",
    /// "segments": [{"start", "end", "text", ...}]}, times in seconds).
    #[arg(long, default_value = "txt")]
    format: String,
    /// Write FILE-STEM.FORMAT per input into this folder instead of printing (needed for several
    /// inputs, except with --format json, which prints a line per file).
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Weights as f32 or int8 (8-bit blocks, about 4x smaller and faster on most CPUs).
    #[arg(long, default_value = "f32")]
    compute_type: String,
    /// Text only: no timestamp tokens (one segment per 30 s window).
    #[arg(long)]
    without_timestamps: bool,
    /// Do not give each window the text before it as context (less repetition, less
    /// consistency).
    #[arg(long)]
    no_previous_text: bool,
    /// Chinese output: simplified (Traditional characters converted, as Whisper often writes
    /// them for Mandarin) or original (as the model wrote it).
    #[arg(long, default_value = "simplified")]
    zh: String,
    /// Voice activity detection: on (transcribe only the speech, as faster-whisper's vad_filter;
    /// silence gives no text) or off (decode every window).
    #[arg(long, default_value = "on")]
    vad: String,
    /// VAD: a pause this long (milliseconds) separates two pieces of speech.
    #[arg(long, default_value_t = 2000)]
    vad_min_silence_ms: u32,
    /// VAD: the speech probability a 32 ms window needs to count as speech.
    #[arg(long, default_value_t = 0.5)]
    vad_threshold: f32,
    /// Beam search with this many hypotheses (faster-whisper's default, 5); 1 decodes greedily
    /// (faster, a little less accurate).
    #[arg(long, default_value_t = 5)]
    beam_size: usize,
    /// Beam search ends once beam-size x patience hypotheses have ended.
    #[arg(long, default_value_t = 1.0)]
    patience: f32,
    /// Seed for the sampled fallback decodings.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: TranscribeArgs) -> Result<i32> {
    let format = Format::parse(&a.format)?;
    if a.files.len() > 1 && a.output_dir.is_none() && format != Format::Json {
        bail!("{} files: give --output-dir for the transcripts (or --format json, a line per file)", a.files.len())
    }
    let dtype = match a.compute_type.as_str() {
        "f32" | "float32" => GgmlType::F32,
        "int8" => GgmlType::Q8_0,
        other => bail!("unknown --compute-type {other:?}: expected f32 or int8"),
    };
    let translate = match a.task.as_str() {
        "transcribe" => false,
        "translate" => true,
        other => bail!("unknown --task {other:?}: expected transcribe or translate"),
    };
    let started = Instant::now();
    let model = SpeechModel::load(&a.model, dtype).with_context(|| format!("cannot load a Whisper model from {}", a.model.display()))?;
    let language = match a.language.as_str() {
        "auto" => None,
        code if !model.is_multilingual() && code != "en" => bail!("{} is an English-only model: --language {code} is not available", a.model.display()),
        code => Some(code.to_string()),
    };
    if translate && !model.is_multilingual() {
        bail!("{} is an English-only model: it cannot translate", a.model.display())
    }
    let simplified_chinese = match a.zh.as_str() {
        "simplified" => true,
        "original" => false,
        other => bail!("unknown --zh {other:?}: expected simplified or original"),
    };
    let vad = match a.vad.as_str() {
        "on" => {
            if !(0.0..=1.0).contains(&a.vad_threshold) {
                bail!("--vad-threshold {} is not a probability", a.vad_threshold)
            }
            Some(VadOptions { threshold: a.vad_threshold, min_silence_ms: a.vad_min_silence_ms, ..Default::default() })
        }
        "off" => None,
        other => bail!("unknown --vad {other:?}: expected on or off"),
    };
    if a.beam_size == 0 || a.beam_size > 64 {
        bail!("--beam-size {}: expected 1 to 64", a.beam_size)
    }
    if !(a.patience > 0.0 && a.patience <= 16.0) {
        bail!("--patience {}: expected a number above 0 and at most 16", a.patience)
    }
    let opts = TranscribeOptions {
        language,
        translate,
        simplified_chinese,
        without_timestamps: a.without_timestamps,
        condition_on_previous_text: !a.no_previous_text,
        seed: a.seed,
        vad,
        beam_size: a.beam_size,
        patience: a.patience,
        ..Default::default()
    };
    if let Some(dir) = &a.output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let load_s = started.elapsed().as_secs_f64();
    let mut failed = 0;
    for path in &a.files {
        let audio = match zhiku_media::audio::load(path) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
                continue;
            }
        };
        let bar = (!a.quiet).then(|| {
            let b = ProgressBar::new((audio.seconds() * 10.0).round() as u64);
            b.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ds of audio, {elapsed}, {eta} left").unwrap().progress_chars("=> "));
            b.set_message(path.display().to_string());
            b
        });
        let t0 = Instant::now();
        let transcript = model.transcribe(&audio.samples, &opts, |done, _| {
            if let Some(b) = &bar {
                b.set_position((done * 10.0).round() as u64);
            }
        })?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let seconds = t0.elapsed().as_secs_f64();
        if !a.quiet {
            eprintln!(
                "{}: {:.1} s of audio in {seconds:.3} s (real-time factor {:.3}), language {}{}",
                path.display(),
                transcript.duration,
                seconds / transcript.duration.max(1e-9),
                transcript.language,
                transcript.language_probability.map_or(String::new(), |p| format!(" (p {p:.2})"))
            );
        }
        let mut text = transcript.render(format);
        if format == Format::Json && a.output_dir.is_none() {
            let mut v: serde_json::Value = serde_json::from_str(&text)?;
            v["file"] = serde_json::json!(path);
            text = v.to_string() + "\n";
        }
        match &a.output_dir {
            Some(dir) => {
                let stem = path.file_stem().map_or_else(|| "audio".into(), |s| s.to_string_lossy().to_string());
                let out = dir.join(format!("{stem}.{}", format.extension()));
                zhiku_models::classifier::write_atomic(&out, text.as_bytes())?;
            }
            None => std::io::stdout().write_all(text.as_bytes())?,
        }
    }
    if !a.quiet {
        eprintln!("model loaded in {load_s:.1} s");
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
