//! Whisper tiny.en (CTranslate2 weights, scripts/fetch-models.sh) on jfk.wav
//! (scripts/fetch-media.sh) against CTranslate2 itself, the engine under faster-whisper
//! (fixture: tests/fixtures/whisper/tiny-en-jfk.json, made by make_whisper_model_fixtures.py):
//! the encoder output, and greedy decoding token for token.

use std::path::PathBuf;
use zhiku_media::{audio, mel};
use zhiku_models::blocks::GgmlType;
use zhiku_models::whisper::Whisper;

fn cache(dir: &str, var: &str, name: &str) -> PathBuf {
    let base = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache").join(dir));
    let p = base.join(name);
    assert!(p.exists(), "{} missing: run scripts/fetch-models.sh and scripts/fetch-media.sh first", p.display());
    p
}

fn fixture() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/whisper/tiny-en-jfk.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The first 30 s window of jfk.wav, as faster-whisper's transcribe builds it.
fn jfk_window() -> Vec<f32> {
    let samples = audio::load(&cache("media", "ZHIKU_MEDIA", "jfk.wav")).unwrap().samples;
    let spec = mel::LogMel::whisper(80).compute(&samples);
    // The content frames (the last one is the padding's), zero-padded to 3000.
    let content = mel::Spectrogram { n_mels: 80, frames: spec.frames - 1, data: (0..80).flat_map(|m| spec.data[m * spec.frames..(m + 1) * spec.frames - 1].to_vec()).collect() };
    content.window(0, mel::WINDOW_FRAMES).data
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap()
}

#[test]
fn tiny_en_matches_ctranslate2_on_jfk() {
    let f = fixture();
    let model = Whisper::load(&cache("models", "ZHIKU_MODELS", "whisper-tiny.en"), GgmlType::F32).unwrap();
    assert_eq!((model.dims.d_model, model.dims.encoder_layers, model.dims.decoder_layers, model.dims.vocab), (384, 4, 4, 51864));
    let window = jfk_window();
    let enc = model.encode(&window, mel::WINDOW_FRAMES).unwrap();
    let d = model.dims.d_model;
    assert_eq!(enc.len(), 1500 * d);
    let mut worst = 0f64;
    for (row, want) in f["encoder_rows"].as_object().unwrap() {
        let r: usize = row.parse().unwrap();
        for (c, w) in want.as_array().unwrap().iter().enumerate() {
            worst = worst.max((enc[r * d + c] as f64 - w.as_f64().unwrap()).abs());
        }
    }
    let max_abs = f["encoder_max_abs"].as_f64().unwrap();
    eprintln!("encoder: max |diff| {worst:.3e} over the fixture's rows (values up to {max_abs:.2})");
    assert!(worst < 1e-4, "encoder rows: max |diff| {worst} (values up to {max_abs})");
    let mean = enc.iter().map(|&v| v as f64).sum::<f64>() / enc.len() as f64;
    assert!((mean - f["encoder_mean"].as_f64().unwrap()).abs() < 1e-4, "mean {mean}");

    let mut state = model.start(&enc).unwrap();
    let prompt: Vec<u32> = f["prompt"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    let mut logits = model.decode(&mut state, &prompt, false).unwrap();
    // The first step's log-probabilities of CTranslate2's ten best tokens.
    let max = logits.iter().cloned().fold(f32::MIN, f32::max);
    let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let mut worst_logp = 0f64;
    for pair in f["first_step_top10"].as_array().unwrap() {
        let (t, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap());
        worst_logp = worst_logp.max(((logits[t] - lse) as f64 - want).abs());
        assert!(((logits[t] - lse) as f64 - want).abs() < 1e-3, "token {t}: {} vs {want}", logits[t] - lse);
    }
    eprintln!("first step: max |diff| of the top-10 log-probabilities {worst_logp:.3e}");
    let mut tokens = Vec::new();
    loop {
        let next = argmax(&logits);
        if next == 50256 || tokens.len() >= 100 {
            break;
        }
        tokens.push(next);
        logits = model.decode(&mut state, &[next], false).unwrap();
    }
    let want: Vec<u32> = f["greedy_tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    assert_eq!(tokens, want);
}

#[test]
fn decoding_a_prefix_at_once_equals_token_by_token() {
    let model = Whisper::load(&cache("models", "ZHIKU_MODELS", "whisper-tiny.en"), GgmlType::F32).unwrap();
    let enc = model.encode(&jfk_window(), mel::WINDOW_FRAMES).unwrap();
    let tokens = [50257u32, 50362, 843, 523, 616];
    let mut a = model.start(&enc).unwrap();
    let all = model.decode(&mut a, &tokens, true).unwrap();
    let mut b = model.start(&enc).unwrap();
    let v = model.dims.vocab;
    for (i, &t) in tokens.iter().enumerate() {
        let one = model.decode(&mut b, &[t], false).unwrap();
        let gap = one.iter().zip(&all[i * v..(i + 1) * v]).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(gap < 1e-3, "step {i}: {gap}");
    }
    // Truncating the cache and decoding again gives the same logits.
    b.truncate(3);
    let again = model.decode(&mut b, &tokens[3..], true).unwrap();
    let gap = again.iter().zip(&all[3 * v..]).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(gap < 1e-3, "{gap}");
}

#[test]
fn transcribe_matches_faster_whisper_on_jfk() {
    use zhiku_media::speech::{SpeechModel, TranscribeOptions};
    let f = fixture();
    let model = SpeechModel::load(&cache("models", "ZHIKU_MODELS", "whisper-tiny.en"), GgmlType::F32).unwrap();
    let samples = audio::load(&cache("media", "ZHIKU_MEDIA", "jfk.wav")).unwrap().samples;
    let t = model.transcribe(&samples, &TranscribeOptions { beam_size: 1, ..Default::default() }, |_, _| {}).unwrap();
    let want = f["transcribe_beam1"].as_array().unwrap();
    assert_eq!(t.segments.len(), want.len(), "{t:#?}");
    for (got, want) in t.segments.iter().zip(want) {
        assert_eq!(got.text, want["text"].as_str().unwrap());
        assert!((got.start - want["start"].as_f64().unwrap()).abs() < 1e-9 && (got.end - want["end"].as_f64().unwrap()).abs() < 1e-9, "{got:?} vs {want}");
        assert!((got.avg_logprob - want["avg_logprob"].as_f64().unwrap()).abs() < 1e-3, "{got:?} vs {want}");
        assert!((got.no_speech_prob - want["no_speech_prob"].as_f64().unwrap()).abs() < 1e-3, "{got:?} vs {want}");
    }
    assert_eq!(t.language, "en");
    assert!(t.text.starts_with("And so my fellow Americans"), "{}", t.text);
}

/// Beam search (5 beams, faster-whisper's default) on Whisper base: the same tokens, times and
/// text as faster-whisper on the three real clips, English and Mandarin, language detected
/// (fixture tests/fixtures/whisper/beam-base.json, made by make_beam_fixture.py).
#[test]
fn beam_search_matches_faster_whisper_on_whisper_base() {
    use zhiku_media::speech::{SpeechModel, TranscribeOptions};
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/whisper/beam-base.json");
    let f: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let model = SpeechModel::load(&cache("models", "ZHIKU_MODELS", "whisper-base"), GgmlType::F32).unwrap();
    let opts = TranscribeOptions { beam_size: 5, simplified_chinese: false, ..Default::default() };
    for (name, want) in f.as_object().unwrap() {
        let samples = audio::load(&cache("media", "ZHIKU_MEDIA", name)).unwrap().samples;
        let t = model.transcribe(&samples, &opts, |_, _| {}).unwrap();
        assert_eq!(t.language, want["language"].as_str().unwrap(), "{name}");
        let segments = want["segments"].as_array().unwrap();
        assert_eq!(t.segments.len(), segments.len(), "{name}: {t:#?}");
        for (got, want) in t.segments.iter().zip(segments) {
            let tokens: Vec<u32> = want["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
            assert_eq!(got.tokens, tokens, "{name}: {:?} vs {}", got.text, want["text"]);
            assert_eq!(got.text, want["text"].as_str().unwrap(), "{name}");
            assert!((got.start - want["start"].as_f64().unwrap()).abs() < 1e-9 && (got.end - want["end"].as_f64().unwrap()).abs() < 1e-9, "{name}: {got:?} vs {want}");
            assert!((got.avg_logprob - want["avg_logprob"].as_f64().unwrap()).abs() < 1e-3, "{name}: {} vs {}", got.avg_logprob, want["avg_logprob"]);
        }
    }
}

#[test]
fn batched_hypotheses_decode_as_each_alone() {
    let model = Whisper::load(&cache("models", "ZHIKU_MODELS", "whisper-tiny.en"), GgmlType::F32).unwrap();
    let enc = model.encode(&jfk_window(), mel::WINDOW_FRAMES).unwrap();
    let prompt = [50257u32, 50362];
    let mut state = model.start(&enc).unwrap();
    model.decode(&mut state, &prompt, false).unwrap();
    let mut beams = model.beams(&state, 3);
    let v = model.dims.vocab;
    let alone = |seq: &[u32]| {
        let mut s = model.start(&enc).unwrap();
        model.decode(&mut s, &prompt, false).unwrap();
        model.decode(&mut s, seq, false).unwrap()
    };
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let first = model.decode_beams(&state, &mut beams, &[843, 50363, 1265]).unwrap();
    for (i, t) in [843u32, 50363, 1265].iter().enumerate() {
        assert!(close(&first[i * v..(i + 1) * v], &alone(&[*t])) < 1e-3, "hypothesis {i}");
    }
    // Hypothesis 2 twice, 0 once; 1 dropped.
    beams.reorder(&[2, 2, 0]);
    let second = model.decode_beams(&state, &mut beams, &[407, 644, 523]).unwrap();
    for (i, seq) in [[1265u32, 407], [1265, 644], [843, 523]].iter().enumerate() {
        assert!(close(&second[i * v..(i + 1) * v], &alone(seq)) < 1e-3, "hypothesis {i} after reordering");
    }
    assert!(model.decode_beams(&state, &mut beams, &[1, 2]).is_err(), "a token per hypothesis");
}

/// tiny.en's CTranslate2 tensors written out as a Hugging Face folder (transformers' names, Q, K
/// and V apart, no K bias) with its tokenizer: loaded from there, it transcribes jfk.wav exactly as
/// from model.bin.
#[test]
fn a_hugging_face_folder_transcribes_as_the_ctranslate2_model() {
    use candle_core::{Device, Tensor};
    use std::collections::HashMap;
    use zhiku_media::speech::{SpeechModel, TranscribeOptions};
    use zhiku_models::ctranslate2::Ct2File;
    let ct2_dir = cache("models", "ZHIKU_MODELS", "whisper-tiny.en");
    let f = Ct2File::open(&ct2_dir).unwrap();
    // (name, shape, values) of every Hugging Face tensor.
    let mut hf: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, v) in &f.variables {
        let data = f.f32(name).unwrap();
        let renamed = name.replace("/gamma", "/weight").replace("/beta", "/bias");
        let (head, kind) = renamed.rsplit_once('/').unwrap();
        let simple = match head {
            "encoder/conv1" | "encoder/conv2" | "encoder/layer_norm" | "decoder/layer_norm" => Some(format!("model.{}.{kind}", head.replace('/', "."))),
            "encoder/position_encodings" => Some("model.encoder.embed_positions.weight".into()),
            "decoder/position_encodings" => Some("model.decoder.embed_positions.weight".into()),
            "decoder/embeddings" => Some("model.decoder.embed_tokens.weight".into()),
            _ => None,
        };
        if let Some(n) = simple {
            hf.push((n, v.shape.clone(), data));
            continue;
        }
        let parts: Vec<&str> = head.split('/').collect();
        let [stack, layer, block, part] = parts[..] else { continue };
        let base = format!("model.{stack}.layers.{}", layer.trim_start_matches("layer_"));
        let module = match (block, part) {
            ("self_attention", "layer_norm") => vec!["self_attn_layer_norm"],
            ("self_attention", "linear_0") => vec!["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            ("self_attention", "linear_1") => vec!["self_attn.out_proj"],
            ("attention", "layer_norm") => vec!["encoder_attn_layer_norm"],
            ("attention", "linear_0") => vec!["encoder_attn.q_proj"],
            ("attention", "linear_1") => vec!["encoder_attn.k_proj", "encoder_attn.v_proj"],
            ("attention", "linear_2") => vec!["encoder_attn.out_proj"],
            ("ffn", "layer_norm") => vec!["final_layer_norm"],
            ("ffn", "linear_0") => vec!["fc1"],
            ("ffn", "linear_1") => vec!["fc2"],
            _ => continue,
        };
        // Stacked projections come apart block by block of rows; K's bias is dropped.
        let rows = v.shape[0] / module.len();
        let width = data.len() / v.shape[0];
        for (i, m) in module.iter().enumerate() {
            if kind == "bias" && m.ends_with("k_proj") {
                continue;
            }
            let mut shape = v.shape.clone();
            shape[0] = rows;
            hf.push((format!("{base}.{m}.{kind}"), shape, data[i * rows * width..(i + 1) * rows * width].to_vec()));
        }
    }
    let out: HashMap<String, Tensor> = hf.into_iter().map(|(n, shape, data)| (n, Tensor::from_vec(data, shape, &Device::Cpu).unwrap())).collect();
    let dir = tempfile::tempdir().unwrap();
    candle_core::safetensors::save(&out, dir.path().join("model.safetensors")).unwrap();
    let heads = |n: &str| f.f32(n).unwrap()[0] as usize;
    let config = serde_json::json!({"model_type": "whisper", "encoder_attention_heads": heads("encoder/num_heads"), "decoder_attention_heads": heads("decoder/num_heads")});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(ct2_dir.join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    let samples = audio::load(&cache("media", "ZHIKU_MEDIA", "jfk.wav")).unwrap().samples;
    let opts = TranscribeOptions::default();
    let from_ct2 = SpeechModel::load(&ct2_dir, GgmlType::F32).unwrap().transcribe(&samples, &opts, |_, _| {}).unwrap();
    let from_hf = SpeechModel::load(dir.path(), GgmlType::F32).unwrap().transcribe(&samples, &opts, |_, _| {}).unwrap();
    assert_eq!(from_hf.text, from_ct2.text);
    assert_eq!(from_hf.segments.iter().map(|s| (s.start, s.end, s.tokens.clone())).collect::<Vec<_>>(), from_ct2.segments.iter().map(|s| (s.start, s.end, s.tokens.clone())).collect::<Vec<_>>());
    assert!(from_hf.text.contains("ask not what your country can do for you"), "{}", from_hf.text);
}
