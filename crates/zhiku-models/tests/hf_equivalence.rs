//! zhiku's encoder must reproduce Python transformers' last hidden states (1e-4 max-abs) and its
//! tokenizer the same token ids, on the real all-MiniLM-L6-v2 and m3e-small weights. Fixtures
//! come from tests/fixtures/make_fixtures.py; the models from scripts/fetch-models.sh.

use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;
use zhiku_models::{ClassifierConfig, ModelFolder, Pooling, ProblemType, SequenceClassifier};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("ZHIKU_MODELS").map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".cache/models"));
    let dir = base.join(name);
    assert!(dir.join("config.json").is_file(), "{} missing: run scripts/fetch-models.sh first", dir.display());
    dir
}

fn check_model(name: &str) {
    let device = Device::Cpu;
    let folder = ModelFolder::open(model_dir(name)).unwrap();
    let fixtures = candle_core::safetensors::load(workspace_root().join(format!("tests/fixtures/{name}.safetensors")), &device).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(workspace_root().join(format!("tests/fixtures/{name}.json"))).unwrap()).unwrap();
    let texts: Vec<&str> = meta["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let pair = meta["pair"].as_array().unwrap();

    // The encoder alone (a classifier with a throwaway head shares the exact same encoder code).
    let head = ClassifierConfig { labels: vec!["x".into()], pooling: Pooling::Mean, problem_type: ProblemType::SingleLabel, thresholds: None, text_pairs: false };
    let model = SequenceClassifier::build(&folder.config, folder.load_weights(&device).unwrap(), head, 0, &device, DType::F32).unwrap();
    let encoder_inits: Vec<_> = model.initialised.iter().filter(|n| n.starts_with("bert.")).collect();
    assert!(encoder_inits.is_empty(), "encoder weights missing from checkpoint: {encoder_inits:?}");
    let tokenizer = folder.tokenizer(512).unwrap();

    for key in ["single", "pair"] {
        let get = |k: &str| fixtures[&format!("{key}.{k}")].clone();
        let batch = if key == "single" {
            tokenizer.encode_batch(&texts, None, &device).unwrap()
        } else {
            tokenizer.encode_batch(&[pair[0].as_str().unwrap()], Some(&[pair[1].as_str().unwrap()]), &device).unwrap()
        };
        let ids = |t: &Tensor| t.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap();
        assert_eq!(ids(&batch.input_ids), ids(&get("input_ids")), "{name}/{key}: token ids differ from transformers");
        assert_eq!(ids(&batch.token_type_ids), ids(&get("token_type_ids")), "{name}/{key}: token type ids differ");
        assert_eq!(ids(&batch.attention_mask), ids(&get("attention_mask")), "{name}/{key}: attention mask differs");
        let hidden = model.encoder.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, None).unwrap();
        let want = get("last_hidden_state");
        let diff = (hidden - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        println!("{name}/{key}: max |zhiku - transformers| = {diff:.2e}");
        assert!(diff < 1e-4, "{name}/{key}: hidden states differ by {diff}");
    }
}

#[test]
fn all_minilm_l6_v2_matches_transformers() {
    check_model("all-MiniLM-L6-v2");
}

#[test]
fn m3e_small_matches_transformers() {
    check_model("m3e-small");
}

#[test]
fn bare_vocab_txt_tokenizes_like_tokenizer_json() {
    let src = model_dir("all-MiniLM-L6-v2");
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let from_vocab = zhiku_models::TextTokenizer::from_folder(dir.path(), 128).unwrap();
    let from_json = zhiku_models::TextTokenizer::from_folder(&src, 128).unwrap();
    for text in ["Hello, World! Tokenizers are FUN.", "中文也行 mixed text"] {
        assert_eq!(from_vocab.tokens(text).unwrap(), from_json.tokens(text).unwrap());
    }
}

/// A LoRA adapter written by Python PEFT loads on its base and gives PEFT's logits.
#[test]
fn peft_lora_adapter_matches_python_peft() {
    let device = Device::Cpu;
    let dir = workspace_root().join("tests/fixtures/peft-lora-minilm");
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let texts: Vec<&str> = expected["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let want: Vec<Vec<f32>> = serde_json::from_value(expected["logits"].clone()).unwrap();
    let base = model_dir("all-MiniLM-L6-v2");
    let adapter = zhiku_models::AdapterFolder::open(&dir, Some(&base)).unwrap();
    assert!(matches!(&adapter.peft, zhiku_models::PeftConfig::Lora { r: 4, .. }));
    let folder = ModelFolder::open(&base).unwrap();
    let model = SequenceClassifier::from_adapter(&adapter, &folder.load_weights(&device).unwrap(), &device).unwrap();
    assert_eq!(model.config.labels, ["LABEL_0", "LABEL_1", "LABEL_2"]);
    let batch = folder.tokenizer(128).unwrap().encode_batch(&texts, None, &device).unwrap();
    let got: Vec<Vec<f32>> = model.forward(&batch, None).unwrap().to_vec2().unwrap();
    let d = got.iter().flatten().zip(want.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d < 1e-4, "logits differ from PEFT's by {d}");
}
