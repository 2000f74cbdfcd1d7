//! `zhiku transcribe` through the binary: Whisper tiny.en (scripts/fetch-models.sh) on the real
//! speech of scripts/fetch-media.sh, every output format, several files, and bad input.

use std::path::PathBuf;

mod common;
use common::{fails_with, ok, zhiku};

fn cache(dir: &str, name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache").join(dir).join(name);
    assert!(p.exists(), "{} missing: run scripts/fetch-models.sh and scripts/fetch-media.sh", p.display());
    p.to_str().unwrap().to_string()
}

#[test]
fn transcribes_real_speech_in_every_format() {
    let model = cache("models", "whisper-tiny.en");
    let jfk = cache("media", "jfk.wav");
    let text = ok(&zhiku(&["transcribe", "--model", &model, "--quiet", &jfk]));
    assert_eq!(text, "And so, my fellow Americans ask not what your country can do for you\nask what you can do for your country.\n");
    // Greedy decoding of every window, as faster-whisper with beam_size=1 and no VAD.
    let greedy = ok(&zhiku(&["transcribe", "--model", &model, "--quiet", "--beam-size", "1", "--vad", "off", &jfk]));
    assert_eq!(greedy, "And so my fellow Americans ask not what your country can do for you\nask what you can do for your country\n");
    let srt = ok(&zhiku(&["transcribe", "--model", &model, "--quiet", "--format", "srt", &jfk]));
    assert!(srt.starts_with("1\n00:00:00,000 --> 00:00:08,000\nAnd so, my fellow Americans"), "{srt}");
    let vtt = ok(&zhiku(&["transcribe", "--model", &model, "--quiet", "--format", "vtt", &jfk]));
    assert!(vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:08.000\n"), "{vtt}");
    // JSON, two files (a 24 kHz one, resampled), a line each.
    let en = cache("media", "basic_ref_en.wav");
    let json = ok(&zhiku(&["transcribe", "--model", &model, "--quiet", "--format", "json", &jfk, &en]));
    let lines: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!((lines[0]["language"].as_str(), lines[0]["segments"][1]["end"].as_f64()), (Some("en"), Some(11.0)));
    assert_eq!(lines[1]["text"], "Some call me nature. Others call me Mother Nature.");
    // int8 weights, into a folder.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = zhiku(&["transcribe", "--model", &model, "--compute-type", "int8", "--format", "txt", "--output-dir", out, &jfk, &en]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success() && err.contains("real-time factor"), "{err}");
    let jfk_text = std::fs::read_to_string(dir.path().join("jfk.txt")).unwrap();
    assert!(jfk_text.contains("ask not what your country can do for you"), "{jfk_text}");
    assert!(dir.path().join("basic_ref_en.txt").exists());
    // The same speech as Ogg/Opus gives the same words.
    let opus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/audio/jfk.opus");
    assert_eq!(ok(&zhiku(&["transcribe", "--model", &model, "--quiet", opus.to_str().unwrap()])), text);
}

#[test]
fn bad_input_is_a_clear_error() {
    let model = cache("models", "whisper-tiny.en");
    let jfk = cache("media", "jfk.wav");
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    fails_with(&zhiku(&["transcribe", "--model", &model, empty.to_str().unwrap()]), "empty.wav: the file is empty (0 bytes)");
    let text = dir.path().join("notes.ogg");
    std::fs::write(&text, "not audio at all\n".repeat(20)).unwrap();
    fails_with(&zhiku(&["transcribe", "--model", &model, text.to_str().unwrap()]), "not an audio file");
    fails_with(&zhiku(&["transcribe", "--model", &model, "--language", "zh", &jfk]), "English-only model");
    fails_with(&zhiku(&["transcribe", "--model", &model, "--format", "docx", &jfk]), "unknown format");
    fails_with(&zhiku(&["transcribe", "--model", &model, "--beam-size", "0", &jfk]), "--beam-size 0: expected 1 to 64");
    fails_with(&zhiku(&["transcribe", "--model", &model, &jfk, &jfk]), "--output-dir");
    fails_with(&zhiku(&["transcribe", "--model", dir.path().to_str().unwrap(), &jfk]), "cannot load a Whisper model");
    // Malformed WAVs that pocketsphinx tests with: chunk sizes past the end, no samples, a sample
    // rate of 1.09 MHz (resampled to 6 silent samples, so no text).
    let malformed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/audio/malformed");
    let path = |name: &str| malformed.join(name).to_str().unwrap().to_string();
    for name in ["bad.wav", "evil.wav"] {
        fails_with(&zhiku(&["transcribe", "--model", &model, &path(name)]), &format!("{name}: not an audio file zhiku can decode"));
    }
    fails_with(&zhiku(&["transcribe", "--model", &model, &path("null.wav")]), "null.wav: no audio in the file");
    let awful = ok(&zhiku(&["transcribe", "--model", &model, "--quiet", "--format", "json", &path("awful.wav")]));
    let awful: serde_json::Value = serde_json::from_str(&awful).unwrap();
    assert_eq!((awful["text"].as_str(), awful["segments"].as_array().map(Vec::len)), (Some(""), Some(0)), "{awful}");
    // One bad file among good ones: the good ones are transcribed, the exit status says 1.
    let o = zhiku(&["transcribe", "--model", &model, "--quiet", "--format", "json", &jfk, empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ask not what your country"));
}

#[test]
fn whisper_base_detects_mandarin_and_writes_simplified_characters() {
    let model = cache("models", "whisper-base");
    let zh = cache("media", "basic_ref_zh.wav");
    let json = ok(&zhiku(&["transcribe", "--model", &model, "--quiet", "--format", "json", &zh]));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["language"], "zh");
    assert!(v["language_probability"].as_f64().unwrap() > 0.9, "{v}");
    // faster-whisper's words on the same weights (beam search, 5 hypotheses), in Simplified characters.
    assert_eq!(v["text"], "对,这就是我万人形样的太以真人");
    let original = ok(&zhiku(&["transcribe", "--model", &model, "--quiet", "--zh", "original", &zh]));
    assert_eq!(original.trim(), "對,這就是我萬人形樣的太以真人");
    // English with the multilingual model: detected, and the same words as tiny.en.
    let en = ok(&zhiku(&["transcribe", "--model", &model, "--quiet", "--language", "en", &cache("media", "jfk.wav")]));
    assert!(en.contains("ask not what your country can do for you"), "{en}");
    fails_with(&zhiku(&["transcribe", "--model", &model, "--language", "xx", &zh]), "unknown language \"xx\"");
}

#[test]
fn served_transcriptions_take_openai_uploads() {
    use common::Server;
    let model = cache("models", "whisper-tiny.en");
    let jfk = std::fs::read(cache("media", "jfk.wav")).unwrap();
    let server = Server::start(&["--speech", &format!("whisper={model}"), "--max-upload-mib", "1", "--max-audio-seconds", "20"], &[]);
    let post = |fields: &[(&str, Option<&str>, &[u8])]| {
        let (status, _, body) = server.raw("POST", "/v1/audio/transcriptions", &[("Content-Type", "multipart/form-data; boundary=zhikuBOUNDARY")], &common::multipart_form(fields));
        (status, String::from_utf8_lossy(&body).to_string())
    };
    let (status, body) = post(&[("file", Some("jfk.wav"), &jfk), ("model", None, b"whisper")]);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["text"], "And so, my fellow Americans ask not what your country can do for you ask what you can do for your country.");
    let (status, body) = post(&[("file", Some("jfk.wav"), &jfk), ("response_format", None, b"srt")]);
    assert_eq!(status, 200);
    assert!(body.starts_with("1\n00:00:00,000 --> 00:00:08,000\n"), "{body}");
    let (_, body) = post(&[("file", Some("jfk.wav"), &jfk), ("response_format", None, b"verbose_json")]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["language"].as_str(), v["segments"][1]["end"].as_f64()), (Some("en"), Some(11.0)));
    // Bad uploads are 4xx with a reason.
    // 25 s of silence (800 kB: under the upload limit).
    let long = silent_wav(25);
    for (fields, status, want) in [
        (vec![("file", Some("empty.wav"), &b""[..])], 422, "empty"),
        (vec![("file", Some("notes.mp3"), &b"not audio, just words and more words"[..])], 422, "not an audio file"),
        (vec![("model", None, &b"whisper"[..])], 422, "file: the audio is required"),
        (vec![("file", Some("jfk.wav"), &jfk[..]), ("model", None, &b"nope"[..])], 404, "no speech model"),
        (vec![("file", Some("jfk.wav"), &jfk[..]), ("response_format", None, &b"docx"[..])], 422, "response_format"),
        (vec![("file", Some("jfk.wav"), &jfk[..]), ("language", None, &b"zh"[..])], 422, "English-only"),
        (vec![("file", Some("long.wav"), &long[..])], 413, "over this server's 20 s"),
    ] {
        let (s, body) = post(&fields);
        assert_eq!(s, status, "{body}");
        assert!(body.contains(want), "{want}: {body}");
    }
    // Over --max-upload-mib (1 MiB): refused before transcription.
    let big = vec![0u8; 2 << 20];
    let (s, _) = post(&[("file", Some("big.wav"), &big)]);
    assert_eq!(s, 413);
    // Silence gives no text (voice activity detection is on unless vad=false).
    let quiet = silent_wav(8);
    let (s, body) = post(&[("file", Some("quiet.wav"), &quiet)]);
    assert_eq!((s, body.as_str()), (200, r#"{"text":""}"#));
    let (s, body) = post(&[("file", Some("quiet.wav"), &quiet), ("vad", None, b"maybe")]);
    assert_eq!(s, 422, "{body}");
}

/// `seconds` of silence as a 16 kHz mono 16-bit WAV.
fn silent_wav(seconds: u32) -> Vec<u8> {
    let data_len = 16_000u32 * 2 * seconds;
    let mut w = Vec::new();
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    for v in [16u32.to_le_bytes().to_vec(), 1u16.to_le_bytes().to_vec(), 1u16.to_le_bytes().to_vec(), 16_000u32.to_le_bytes().to_vec(), 32_000u32.to_le_bytes().to_vec(), 2u16.to_le_bytes().to_vec(), 16u16.to_le_bytes().to_vec()] {
        w.extend_from_slice(&v);
    }
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    w.resize(w.len() + data_len as usize, 0);
    w
}

#[test]
fn voice_activity_detection_skips_silence() {
    let model = cache("models", "whisper-tiny.en");
    let dir = tempfile::tempdir().unwrap();
    let quiet = dir.path().join("quiet.wav");
    std::fs::write(&quiet, silent_wav(6)).unwrap();
    let q = quiet.to_str().unwrap();
    let json: serde_json::Value = serde_json::from_str(&ok(&zhiku(&["transcribe", "--model", &model, "--quiet", "--format", "json", q]))).unwrap();
    assert_eq!((json["text"].as_str(), json["segments"].as_array().map(Vec::len), json["duration"].as_f64()), (Some(""), Some(0), Some(6.0)));
    // Without VAD the window is decoded (and found silent by Whisper's no-speech probability).
    let json: serde_json::Value = serde_json::from_str(&ok(&zhiku(&["transcribe", "--model", &model, "--quiet", "--vad", "off", "--format", "json", q]))).unwrap();
    assert_eq!(json["duration"].as_f64(), Some(6.0));
    fails_with(&zhiku(&["transcribe", "--model", &model, "--vad", "maybe", q]), "unknown --vad");
    fails_with(&zhiku(&["transcribe", "--model", &model, "--vad-threshold", "1.5", q]), "not a probability");
}
