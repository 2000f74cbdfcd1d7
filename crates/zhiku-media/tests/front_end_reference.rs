//! The audio front end against faster-whisper on real speech: jfk.wav decoded to the same
//! samples, the same 80-band log-mel spectrogram (fixture: tests/fixtures/whisper/mel-jfk.json,
//! made by make_whisper_fixtures.py), and the filter bank equal to openai-whisper's
//! mel_filters.npz. The audio comes from scripts/fetch-media.sh.

use std::path::PathBuf;
use zhiku_media::audio;
use zhiku_media::mel::LogMel;

fn media(name: &str) -> PathBuf {
    let dir = std::env::var_os("ZHIKU_MEDIA").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/media"));
    let p = dir.join(name);
    assert!(p.is_file(), "{} missing: run scripts/fetch-media.sh first", p.display());
    p
}

fn fixture() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/whisper/mel-jfk.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A little-endian f32 or f64 `.npy` array (numpy's format 1.0/2.0 header) as f64s with its shape.
fn read_npy(path: &std::path::Path) -> (Vec<usize>, Vec<f64>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let (header_len, start) = if b[6] == 1 { (u16::from_le_bytes([b[8], b[9]]) as usize, 10) } else { (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12) };
    let header = std::str::from_utf8(&b[start..start + header_len]).unwrap();
    let shape_text = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> = shape_text.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let data = &b[start + header_len..];
    let values = if header.contains("'<f4'") {
        data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
    } else {
        assert!(header.contains("'<f8'"), "{header}");
        data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    };
    (shape, values)
}

#[test]
fn filter_bank_equals_openai_whispers() {
    for n in [80usize, 128] {
        let (shape, want) = read_npy(&media(&format!("mel_filters_{n}.npy")));
        assert_eq!(shape, [n, 201]);
        let got = LogMel::whisper(n);
        let gap = got.filters().iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(gap < 1e-6, "{n} bands: max |diff| {gap}");
    }
}

#[test]
fn jfk_decodes_and_gives_faster_whispers_log_mel() {
    let f = fixture();
    let a = audio::load(&media("jfk.wav")).unwrap();
    assert_eq!((a.sample_rate, a.source_rate, a.source_channels), (16_000, 16_000, 1));
    assert_eq!(a.samples.len() as u64, f["samples"].as_u64().unwrap());
    let first: Vec<f32> = f["waveform_first"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(&a.samples[4000..4010], &first[..], "16-bit samples over 32768, exactly");
    let sum: f64 = a.samples.iter().map(|&x| x as f64).sum();
    assert!((sum - f["waveform_sum"].as_f64().unwrap()).abs() < 1e-9, "{sum}");

    let mel = LogMel::whisper(80).compute(&a.samples);
    assert_eq!((mel.n_mels, mel.frames as u64), (80, f["frames"].as_u64().unwrap()));
    let mut worst = 0f64;
    for (frame, want) in f["picked"].as_object().unwrap() {
        let t: usize = frame.parse().unwrap();
        for (m, w) in want.as_array().unwrap().iter().enumerate() {
            worst = worst.max((mel.data[m * mel.frames + t] as f64 - w.as_f64().unwrap()).abs());
        }
    }
    eprintln!("log-mel: max |diff| {worst:.3e} over the fixture's frames");
    assert!(worst < 1e-5, "max |diff| over the fixture's frames: {worst}");
    let n = mel.data.len() as f64;
    let mean = mel.data.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (mel.data.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let max = mel.data.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let min = mel.data.iter().cloned().fold(f32::MAX, f32::min) as f64;
    for (name, got) in [("mean", mean), ("std", std), ("max", max), ("min", min)] {
        let want = f[name].as_f64().unwrap();
        assert!((got - want).abs() < 1e-5, "{name}: {got} vs faster-whisper's {want}");
    }
}

#[test]
fn other_rates_and_formats_come_out_at_16_khz() {
    // The f5-tts clips are 24 kHz: resampled, their length in time is kept.
    for name in ["basic_ref_en.wav", "basic_ref_zh.wav"] {
        let raw = audio::decode(&media(name)).unwrap();
        let a = audio::load(&media(name)).unwrap();
        assert_ne!(raw.sample_rate, 16_000, "{name}");
        assert_eq!(a.sample_rate, 16_000);
        let (secs_raw, secs) = (raw.samples.len() as f64 / raw.sample_rate as f64, a.seconds());
        assert!((secs_raw - secs).abs() < 1e-3, "{name}: {secs_raw} s became {secs} s");
        // The resampled signal keeps the loudness (RMS within 1%).
        let rms = |x: &[f32]| (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
        assert!((rms(&a.samples) / rms(&raw.samples) - 1.0).abs() < 0.01, "{name}");
    }
}

#[test]
fn bad_audio_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let e = audio::load(&empty).unwrap_err().to_string();
    assert!(e.contains("empty.wav") && e.contains("0 bytes"), "{e}");
    let text = dir.path().join("notes.mp3");
    std::fs::write(&text, "these are not sounds\n".repeat(50)).unwrap();
    let e = audio::load(&text).unwrap_err().to_string();
    assert!(e.contains("notes.mp3") && e.contains("not an audio file"), "{e}");
    assert!(audio::load(&dir.path().join("missing.wav")).unwrap_err().to_string().contains("no such file"));
    // A WAV cut off mid-stream decodes what is there; one cut inside its header does not decode.
    let wav = std::fs::read(media("jfk.wav")).unwrap();
    let cut = dir.path().join("cut.wav");
    std::fs::write(&cut, &wav[..wav.len() / 2]).unwrap();
    let a = audio::load(&cut).unwrap();
    assert!((a.seconds() - 5.5).abs() < 0.1, "{}", a.seconds());
    std::fs::write(&cut, &wav[..20]).unwrap();
    assert!(audio::load(&cut).is_err());
    // Bytes in memory (an upload) decode the same as the file.
    let from_bytes = audio::decode_bytes(wav.clone(), "upload").unwrap();
    assert_eq!(from_bytes.samples, audio::decode(&media("jfk.wav")).unwrap().samples);
    assert!(audio::decode_bytes(Vec::new(), "upload").unwrap_err().to_string().contains("0 bytes"));
}

#[test]
fn ogg_opus_decodes_to_the_same_speech() {
    // jfk.wav encoded by libopus at 24 kbit/s (tests/fixtures/audio/make_opus.py).
    let opus = audio::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/audio/jfk.opus")).unwrap();
    let wav = audio::load(&media("jfk.wav")).unwrap();
    assert_eq!((opus.sample_rate, opus.source_rate, opus.source_channels), (16_000, 48_000, 1));
    assert!((opus.seconds() - wav.seconds()).abs() < 0.05, "{} vs {} s", opus.seconds(), wav.seconds());
    // A lossy copy: aligned (the pre-skip dropped), it follows the original closely.
    let n = opus.samples.len().min(wav.samples.len());
    let dot: f64 = (0..n).map(|i| opus.samples[i] as f64 * wav.samples[i] as f64).sum();
    let norm = |x: &[f32]| x[..n].iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    let correlation = dot / (norm(&opus.samples) * norm(&wav.samples));
    eprintln!("Opus copy: correlation with the original {correlation:.4}");
    assert!(correlation > 0.9, "correlation with the original {correlation}");
    // Damaged packets: an error or skipped packets, never a crash.
    let mut bytes = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/audio/jfk.opus")).unwrap();
    for i in (2000..bytes.len()).step_by(97) {
        bytes[i] ^= 0x5a;
    }
    match audio::decode_bytes(bytes, "damaged.opus") {
        Ok(a) => assert!(a.samples.len() < 48_000 * 12),
        Err(e) => assert!(e.to_string().contains("damaged.opus"), "{e}"),
    }
}
