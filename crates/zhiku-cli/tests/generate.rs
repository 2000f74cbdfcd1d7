//! `zhiku generate` through the real binary on SmolLM2-135M-Instruct (scripts/fetch-llms.sh):
//! JSON output, greedy determinism, seeds, batches from a JSONL file (each answer equal to
//! its unbatched run), stop strings, and bad input (truncated or foreign GGUF files, empty
//! prompts, out-of-range sampling values, prompts beyond the context).

use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use zhiku_models::gguf::{GgufWriter, Value as Meta};

mod common;
use common::{fails_with, zhiku};

fn model() -> PathBuf {
    let base = std::env::var_os("ZHIKU_MODELS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models"));
    let p = base.join("smollm2-135m-instruct-q4_1.gguf");
    assert!(p.is_file(), "{} missing: run scripts/fetch-llms.sh first", p.display());
    p
}

fn generate(extra: &[&str]) -> Output {
    let m = model();
    let mut args = vec!["generate", "--model", m.to_str().unwrap()];
    args.extend_from_slice(extra);
    zhiku(&args)
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

#[test]
fn greedy_json_is_deterministic_and_complete() {
    let args = ["--temperature", "0", "--max-tokens", "12", "--json", "What is the capital of France?"];
    let a = json(&generate(&args));
    let b = json(&generate(&args));
    assert_eq!(a["text"], b["text"]);
    for key in ["text", "prompt_tokens", "completion_tokens", "prefill_tokens_per_s", "decode_tokens_per_s", "finish_reason"] {
        assert!(a.get(key).is_some(), "missing {key}: {a}");
    }
    assert!(a["prompt_tokens"].as_u64().unwrap() > 5);
    let n = a["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&n));
    assert_eq!(a["finish_reason"], if n == 12 { "length" } else { "stop" });
    assert!(!a["text"].as_str().unwrap().is_empty());
}

#[test]
fn seeds_reproduce_sampled_text() {
    let run = |seed: &str| json(&generate(&["--temperature", "1.0", "--top-k", "0", "--min-p", "0", "--seed", seed, "--max-tokens", "16", "--raw", "--json", "Once upon a time"]))["text"].clone();
    assert_eq!(run("7"), run("7"));
    let others: Vec<Value> = ["8", "9", "10"].iter().map(|s| run(s)).collect();
    assert!(others.iter().any(|t| *t != run("7")), "three other seeds all gave seed 7's text");
}

#[test]
fn a_batch_from_a_file_answers_in_order_like_single_runs() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("in.jsonl");
    let prompts = ["The sky is", "Paris is the capital of", "One, two, three,"];
    let mut text = String::new();
    for p in prompts {
        text.push_str(&serde_json::json!({"prompt": p}).to_string());
        text.push('\n');
    }
    std::fs::write(&f, text).unwrap();
    let out = generate(&["--raw", "--temperature", "0", "--max-tokens", "8", "--file", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    for (p, line) in prompts.iter().zip(&lines) {
        let single = json(&generate(&["--raw", "--temperature", "0", "--max-tokens", "8", "--json", p]));
        assert_eq!(line["text"], single["text"], "batched and single answers differ for {p:?}");
    }
    // A bad line is named with its file and line number.
    std::fs::write(&f, "{\"prompt\": \"ok\"}\n{\"nothing\": 1}\n").unwrap();
    fails_with(&generate(&["--file", f.to_str().unwrap()]), "in.jsonl:2");
}

#[test]
fn hugging_face_folders_generate_too() {
    let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llm/llama");
    let o = zhiku(&["generate", "--model", tiny.to_str().unwrap(), "--temperature", "0", "--max-tokens", "5", "--json", "hello"]);
    let v = json(&o);
    assert!(v["prompt_tokens"].as_u64().unwrap() > 3, "{v}");
    assert!(v["completion_tokens"].as_u64().unwrap() >= 1);
    let empty = tempfile::tempdir().unwrap();
    fails_with(&zhiku(&["generate", "--model", empty.path().to_str().unwrap(), "hi"]), "config.json");
}

#[test]
fn stop_strings_end_the_text() {
    let full = json(&generate(&["--raw", "--temperature", "0", "--max-tokens", "24", "--json", "1, 2, 3, 4,"]));
    let text = full["text"].as_str().unwrap();
    assert!(text.contains(','), "the model continues the list: {text:?}");
    let stopped = json(&generate(&["--raw", "--temperature", "0", "--max-tokens", "24", "--json", "--stop", ",", "1, 2, 3, 4,"]));
    assert_eq!(stopped["finish_reason"], "stop");
    assert_eq!(stopped["text"].as_str().unwrap(), &text[..text.find(',').unwrap()]);
}

#[test]
fn prompt_from_stdin_streams_text() {
    let m = model();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zhiku"))
        .args(["generate", "--model", m.to_str().unwrap(), "--temperature", "0", "--max-tokens", "6"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Say hello.\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokens/s"));
}

#[test]
fn bad_input_gets_clear_errors() {
    fails_with(&generate(&[""]), "prompt is empty");
    fails_with(&generate(&["--temperature", "5", "hi"]), "temperature");
    fails_with(&generate(&["--top-p", "0", "hi"]), "top_p");
    fails_with(&generate(&["--max-tokens", "0", "hi"]), "max-tokens");
    let long = "word ".repeat(9000);
    fails_with(&generate(&["--raw", &long]), "exceeds the context");

    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(model()).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let o = zhiku(&["generate", "--model", cut.to_str().unwrap(), "hi"]);
    fails_with(&o, "truncated");
    fails_with(&o, "tensor '");

    let foreign = dir.path().join("foreign.gguf");
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Meta::String("mamba".into())).f32_tensor("x", &[4], &[0.0; 4]);
    w.write(&foreign).unwrap();
    fails_with(&zhiku(&["generate", "--model", foreign.to_str().unwrap(), "hi"]), "architecture 'mamba' is not supported");

    let odd_type = dir.path().join("odd.gguf");
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Meta::String("llama".into()));
    w.write(&odd_type).unwrap();
    let mut b = std::fs::read(&odd_type).unwrap();
    b.truncate(10);
    std::fs::write(&odd_type, &b).unwrap();
    fails_with(&zhiku(&["generate", "--model", odd_type.to_str().unwrap(), "hi"]), "at byte");

    fails_with(&zhiku(&["generate", "--model", "/nonexistent/model.gguf", "hi"]), "does not exist");
}
