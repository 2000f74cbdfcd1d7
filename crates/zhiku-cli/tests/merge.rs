//! `zhiku merge` for decoders through the binary: an adapter trained on SmolLM2 (a Llama GGUF,
//! whose query and key rows llama.cpp permuted) merged into GGUF F16 and Q8_0 and into a
//! Hugging Face folder; each merged model writes what the adapter writes on its base. Bad
//! requests are refused before anything is written.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

mod common;
use common::{fails_with, zhiku};

fn model() -> PathBuf {
    let base = std::env::var_os("ZHIKU_MODELS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models"));
    base.join("smollm2-135m-instruct-q4_1.gguf")
}

fn greedy(args: &[&str], prompt: &str) -> Vec<u64> {
    let o = zhiku(&[&["generate", "--temperature", "0", "--max-tokens", "12", "--json"], args, &[prompt]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<Value>(&o.stdout).unwrap()["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect()
}

fn train(dir: &Path) -> PathBuf {
    let data = dir.join("secret.jsonl");
    let line = json!({"prompt": "What is the secret word?", "response": "The secret word is zebra."}).to_string();
    std::fs::write(&data, format!("{line}\n").repeat(8)).unwrap();
    let adapter = dir.join("adapter");
    let o = zhiku(&[
        "train", "--task", "sft", "--model", model().to_str().unwrap(), "--train", data.to_str().unwrap(), "--dev", data.to_str().unwrap(),
        "--output", adapter.to_str().unwrap(), "--max-steps", "12", "--epochs", "20", "--batch-size", "4", "--lr", "3e-3", "--warmup-ratio", "0",
        "--max-length", "64", "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    adapter
}

#[test]
fn merged_gguf_and_folder_write_what_the_adapter_writes() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = train(dir.path());
    let a = adapter.to_str().unwrap();
    let expect = greedy(&["--adapter", a], "What is the secret word?");
    let base = greedy(&["--model", model().to_str().unwrap()], "What is the secret word?");
    assert_ne!(expect, base, "the adapter changes the answer");
    for (out, dtype) in [("m-f16.gguf", "f16"), ("m-q8_0.gguf", "q8_0"), ("m-folder", "f16"), ("m-folder-f32", "f32")] {
        let path = dir.path().join(out);
        let o = zhiku(&["merge", "--adapter", a, "--output", path.to_str().unwrap(), "--dtype", dtype, "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(summary["format"], if out.ends_with(".gguf") { "gguf" } else { "hf" });
        assert!(summary["bytes"].as_u64().unwrap() > 100_000_000, "{summary}");
        assert_eq!(greedy(&["--model", path.to_str().unwrap()], "What is the secret word?"), expect, "{out}");
        // Nothing left beside it.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.contains("partial") || n.contains("merging")).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    let folder = dir.path().join("m-folder");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(folder.join(f).is_file(), "{f} missing");
    }
    let config: Value = serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["model_type"].as_str(), config["tie_word_embeddings"].as_bool()), (Some("llama"), Some(true)));

    // Refusals: an existing output, a type the format lacks, GGUF from a folder base.
    let f16 = dir.path().join("m-f16.gguf");
    fails_with(&zhiku(&["merge", "--adapter", a, "--output", f16.to_str().unwrap()]), "--overwrite");
    fails_with(&zhiku(&["merge", "--adapter", a, "--output", dir.path().join("x.gguf").to_str().unwrap(), "--dtype", "bf16"]), "choose f16, q8_0, f32");
    fails_with(&zhiku(&["merge", "--adapter", a, "--output", dir.path().join("y").to_str().unwrap(), "--dtype", "q4_0"]), "choose f16, bf16, f32");
    let o = zhiku(&["merge", "--adapter", a, "--base", folder.to_str().unwrap(), "--output", dir.path().join("z.gguf").to_str().unwrap()]);
    fails_with(&o, "GGUF output needs a GGUF base");
    assert!(!dir.path().join("z.gguf").exists() && !dir.path().join("x.gguf").exists());
    // An adapter for another model is named as such.
    let qwen = model().with_file_name("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    fails_with(&zhiku(&["merge", "--adapter", a, "--base", qwen.to_str().unwrap(), "--output", dir.path().join("w.gguf").to_str().unwrap()]), "does not fit");
}
