//! Silero VAD and transcription with it, against faster-whisper 1.2.1's `vad_filter` on jfk.wav
//! with silences put around and inside it (fixture tests/fixtures/whisper/vad-jfk.json, made by
//! make_vad_fixture.py): every window's speech probability, the speech chunks, and the
//! Whisper tiny.en transcript with its times mapped back to the recording.

use std::path::PathBuf;
use zhiku_media::audio;
use zhiku_media::vad::{speech_ranges, Vad, VadOptions};

fn cache(dir: &str, var: &str, name: &str) -> PathBuf {
    let base = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache").join(dir));
    let p = base.join(name);
    assert!(p.exists(), "{} missing: run scripts/fetch-models.sh and scripts/fetch-media.sh first", p.display());
    p
}

fn fixture() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/whisper/vad-jfk.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// zeros(4 s) + jfk[:78000] + zeros(5 s) + jfk[78000:] + zeros(3 s), as the fixture script builds it.
fn recording() -> Vec<f32> {
    let jfk = audio::load(&cache("media", "ZHIKU_MEDIA", "jfk.wav")).unwrap().samples;
    let z = |s: usize| vec![0f32; s * 16_000];
    [z(4), jfk[..78_000].to_vec(), z(5), jfk[78_000..].to_vec(), z(3)].concat()
}

fn chunks(v: &serde_json::Value) -> Vec<std::ops::Range<usize>> {
    v.as_array().unwrap().iter().map(|c| c[0].as_u64().unwrap() as usize..c[1].as_u64().unwrap() as usize).collect()
}

#[test]
fn probabilities_and_chunks_match_faster_whisper() {
    let f = fixture();
    let samples = recording();
    assert_eq!(samples.len() as u64, f["samples"].as_u64().unwrap());
    let probs = Vad::builtin().unwrap().probabilities(&samples).unwrap();
    let want: Vec<f64> = f["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
    assert_eq!(probs.len(), want.len());
    let worst = probs.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0f64, f64::max);
    eprintln!("speech probabilities: {} windows, max |diff| {worst:.2e}", probs.len());
    assert!(worst < 1e-4, "max |diff| {worst}");
    assert_eq!(speech_ranges(&probs, samples.len(), &VadOptions::default()), chunks(&f["chunks_default"]));
    let tight = VadOptions { min_silence_ms: 100, speech_pad_ms: 30, ..VadOptions::default() };
    assert_eq!(speech_ranges(&probs, samples.len(), &tight), chunks(&f["chunks_tight"]));
}

#[test]
fn transcript_with_vad_matches_faster_whisper() {
    use zhiku_media::speech::{SpeechModel, TranscribeOptions};
    use zhiku_models::blocks::GgmlType;
    let f = fixture();
    let model = SpeechModel::load(&cache("models", "ZHIKU_MODELS", "whisper-tiny.en"), GgmlType::F32).unwrap();
    for beam in [1, 5] {
        let opts = TranscribeOptions { vad: Some(VadOptions::default()), language: Some("en".into()), beam_size: beam, ..Default::default() };
        let t = model.transcribe(&recording(), &opts, |_, _| {}).unwrap();
        let want = f["transcripts_tiny_en"][format!("beam{beam}")].as_array().unwrap();
        assert_eq!(t.segments.len(), want.len(), "beam {beam}: {t:#?}");
        for (got, want) in t.segments.iter().zip(want) {
            assert_eq!(got.text, want["text"].as_str().unwrap(), "beam {beam}");
            let close = |a: f64, b: &serde_json::Value| (a - b.as_f64().unwrap()).abs() < 1e-9;
            assert!(close(got.start, &want["start"]) && close(got.end, &want["end"]), "beam {beam}: {got:?} vs {want}");
        }
        assert!((t.duration - 23.0).abs() < 0.01, "the recording's duration, not the speech's: {}", t.duration);
    }
    let opts = TranscribeOptions { vad: Some(VadOptions::default()), language: Some("en".into()), ..Default::default() };
    // Silence alone: no speech, no text (without VAD Whisper writes " you").
    let silent = model.transcribe(&vec![0f32; 16_000 * 10], &opts, |_, _| {}).unwrap();
    assert!(silent.segments.is_empty() && silent.text.is_empty(), "{silent:?}");
}
