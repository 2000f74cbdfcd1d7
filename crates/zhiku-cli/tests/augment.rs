//! `zhiku augment` through the binary: EDA copies, back-translation and paraphrase by a real
//! chat model (Qwen2.5-0.5B), a killed run resumed to the same output, and bad input.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::{fails_with, ok, zhiku};

fn rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llm/qwen2")
}

fn qwen() -> PathBuf {
    let base = std::env::var_os("ZHIKU_MODELS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models"));
    base.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
}

const HEADLINES: [(&str, &str); 3] = [("央行宣布下调存款准备金率0.5个百分点", "finance"), ("国足主帅公布新一期集训名单", "sports"), ("教育部：明年起高考取消部分加分项目", "education")];

fn write_headlines(path: &Path) {
    let text: String = HEADLINES.iter().map(|(t, l)| json!({"text": t, "label": l}).to_string() + "\n").collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn eda_writes_originals_then_labelled_variants() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("train.jsonl");
    write_headlines(&input);
    let out = dir.path().join("aug.jsonl");
    let summary: Value = serde_json::from_str(&ok(&zhiku(&["augment", input.to_str().unwrap(), "--method", "eda", "--copies", "2", "--output", out.to_str().unwrap(), "--json"]))).unwrap();
    let written = rows(&out);
    assert_eq!(written[0]["text"], HEADLINES[0].0);
    assert!(written[0].get("augmented").is_none());
    let variants: Vec<&Value> = written.iter().filter(|r| r["augmented"] == "eda").collect();
    assert_eq!(variants.len() as u64, summary["variants"].as_u64().unwrap());
    assert_eq!(summary["variants"].as_u64().unwrap() + summary["rejected"]["unchanged"].as_u64().unwrap(), 6, "{summary}");
    for v in &variants {
        let line = v["source_line"].as_u64().unwrap() as usize;
        assert_eq!(v["label"], HEADLINES[line - 1].1, "{v}");
        assert_ne!(v["text"], HEADLINES[line - 1].0);
    }
    // The same seed writes the same file; the output is training data.
    fails_with(&zhiku(&["augment", input.to_str().unwrap(), "--output", out.to_str().unwrap()]), "--overwrite");
    let again = dir.path().join("again.jsonl");
    ok(&zhiku(&["augment", input.to_str().unwrap(), "--copies", "2", "--output", again.to_str().unwrap()]));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    let only = dir.path().join("only.jsonl");
    ok(&zhiku(&["augment", input.to_str().unwrap(), "--copies", "2", "--only-variants", "--output", only.to_str().unwrap()]));
    assert!(rows(&only).iter().all(|r| r["augmented"] == "eda"));
}

#[test]
fn a_chat_model_back_translates_and_paraphrases_chinese_headlines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("train.jsonl");
    write_headlines(&input);
    for method in ["back-translation", "paraphrase"] {
        let out = dir.path().join(format!("{method}.jsonl"));
        let o = zhiku(&["augment", input.to_str().unwrap(), "--method", method, "--copies", "1", "--model", qwen().to_str().unwrap(), "--output", out.to_str().unwrap(), "--json"]);
        let summary: Value = serde_json::from_str(&ok(&o)).unwrap();
        let variants: Vec<Value> = rows(&out).into_iter().filter(|r| r["augmented"] == method).collect();
        // Most headlines get a variant; every kept one is Chinese, new, and keeps its label.
        assert!(variants.len() >= 2, "{method}: {summary} {variants:?}");
        for v in &variants {
            let (source, label) = HEADLINES[v["source_line"].as_u64().unwrap() as usize - 1];
            let text = v["text"].as_str().unwrap();
            assert!(text != source && text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)), "{method}: {text}");
            assert_eq!(v["label"], label);
        }
        assert!(summary["generated_tokens"].as_u64().unwrap() > 0, "{summary}");
        assert!(!dir.path().join(format!("{method}.jsonl.partial")).exists(), "the partial file is removed at the end");
    }
}

#[test]
fn a_killed_run_resumes_to_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("train.jsonl");
    let text: String = (0..256).map(|i| json!({"text": format!("item {i} is a short line of text number {}", i * 7), "label": i % 3}).to_string() + "\n").collect();
    std::fs::write(&input, text).unwrap();
    let model = tiny();
    let run = |out: &Path| -> Vec<String> {
        ["augment", input.to_str().unwrap(), "--method", "paraphrase", "--model", model.to_str().unwrap(), "--copies", "1", "--attempts", "1", "--language", "en", "--output", out.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let whole = dir.path().join("whole.jsonl");
    ok(&Command::new(env!("CARGO_BIN_EXE_zhiku")).args(run(&whole)).output().unwrap());

    let out = dir.path().join("resumed.jsonl");
    let partial = dir.path().join("resumed.jsonl.partial");
    let mut child = Command::new(env!("CARGO_BIN_EXE_zhiku")).args(run(&out)).stderr(Stdio::null()).spawn().unwrap();
    // Kill it once the first block of rows is saved.
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&partial).map(|s| s.lines().count()).unwrap_or(0) < 2 {
        assert!(t0.elapsed().as_secs() < 120, "no block saved");
        assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "nothing half-written");
    // A line cut by the kill is dropped on resume.
    let mut cut = std::fs::OpenOptions::new().append(true).open(&partial).unwrap();
    std::io::Write::write_all(&mut cut, b"{\"row\": 99999, \"texts\": [\"cut").unwrap();
    drop(cut);
    let o = Command::new(env!("CARGO_BIN_EXE_zhiku")).args(run(&out)).output().unwrap();
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming from"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), std::fs::read_to_string(&whole).unwrap());
    assert!(!partial.exists());

    // A partial run with other settings is not resumed: refused, or discarded by --overwrite.
    let other = dir.path().join("other.jsonl");
    std::fs::write(dir.path().join("other.jsonl.partial"), "{\"settings\": {\"seed\": 1}}\n").unwrap();
    let args = run(&other);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_with(&zhiku(&args), "other settings");
    ok(&zhiku(&[&args[..], &["--overwrite"]].concat()));
    assert_eq!(std::fs::read_to_string(&other).unwrap(), std::fs::read_to_string(&whole).unwrap());
}

#[test]
fn bad_input_is_refused_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("train.jsonl");
    std::fs::write(&input, "{\"text\": \"fine\", \"label\": \"a\"}\n{\"txt\": \"no text\", \"label\": \"b\"}\n").unwrap();
    let out = dir.path().join("out.jsonl");
    fails_with(&zhiku(&["augment", input.to_str().unwrap(), "--output", out.to_str().unwrap()]), "train.jsonl:2");
    write_headlines(&input);
    fails_with(&zhiku(&["augment", input.to_str().unwrap(), "--method", "summarise", "--output", out.to_str().unwrap(), "--model", "m.gguf"]), "unknown --method");
    fails_with(&zhiku(&["augment", input.to_str().unwrap(), "--method", "paraphrase", "--output", out.to_str().unwrap()]), "needs --model");
    fails_with(&zhiku(&["augment", input.to_str().unwrap(), "--method", "eda", "--ops", "shuffle", "--output", out.to_str().unwrap()]), "unknown operation");
    fails_with(&zhiku(&["augment", input.to_str().unwrap(), "--method", "paraphrase", "--model", tiny().to_str().unwrap(), "--language", "fr", "--output", out.to_str().unwrap()]), "unknown --language");
    fails_with(&zhiku(&["augment", input.to_str().unwrap(), "--method", "paraphrase", "--model", tiny().to_str().unwrap(), "--temperature", "9", "--output", out.to_str().unwrap()]), "temperature");
    assert!(!out.exists());
}
