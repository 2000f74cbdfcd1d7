//! `zhiku summarize` and `zhiku eval --task generation` through the binary: lead and
//! extractive summaries of files, abstractive ones with map-reduce on SmolLM2,
//! generation scores of saved predictions and of a model's greedy replies, and bad input.

use serde_json::{json, Value};
use std::path::PathBuf;

mod common;
use common::{fails_with, ok, zhiku};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llm/qwen2")
}

const NEWS: &str = "The central bank raised interest rates on Tuesday. Markets fell sharply after the bank's decision on rates. \
A local zoo welcomed a baby giraffe. Analysts expect the bank to raise interest rates again next year.";

#[test]
fn lead_and_extractive_summaries_of_files_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("news.txt");
    std::fs::write(&txt, format!("Rates\n\n{NEWS}")).unwrap();
    let out = ok(&zhiku(&["summarize", "--sentences", "2", txt.to_str().unwrap()]));
    assert!(out.contains("interest rates") && !out.contains("giraffe"), "{out}");
    let out = ok(&zhiku(&["summarize", "--method", "lead", "--sentences", "1", "--text", "今天发货。明天到。后天签收。"]));
    assert_eq!(out.trim(), "今天发货。");
    // Rows of a JSONL file keep their reference, and the output is scored by eval.
    let rows = dir.path().join("rows.jsonl");
    std::fs::write(&rows, format!("{}\n{}\n", json!({"id": "a", "text": NEWS, "reference": "Central bank raises interest rates"}), json!({"id": "b", "text": "一。二。", "reference": "一"}))).unwrap();
    let preds = dir.path().join("preds.jsonl");
    ok(&zhiku(&["summarize", "--method", "lead", "--sentences", "1", rows.to_str().unwrap(), "--output", preds.to_str().unwrap()]));
    let lines: Vec<Value> = std::fs::read_to_string(&preds).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!((lines.len(), lines[0]["id"].as_str(), lines[1]["reference"].as_str()), (2, Some("a"), Some("一")));
    let scores: Value = serde_json::from_str(&ok(&zhiku(&["eval", "--task", "generation", "--predictions", preds.to_str().unwrap(), "--json"]))).unwrap();
    assert_eq!(scores["examples"], 2);
    assert!(scores["rouge1"]["f1"].as_f64().unwrap() > 0.0 && scores["bleu"].as_f64().is_some(), "{scores}");

    fails_with(&zhiku(&["summarize", "--method", "fancy", "--text", "x."]), "unknown --method");
    fails_with(&zhiku(&["summarize", "--scorer", "centrality", "--text", "x."]), "--encoder");
    fails_with(&zhiku(&["summarize", "--text", "  "]), "empty");
    fails_with(&zhiku(&["summarize", dir.path().join("missing.txt").to_str().unwrap()]), "missing.txt");
    fails_with(&zhiku(&["summarize", "--method", "abstractive", "--text", "x."]), "--model");
}

fn smollm2() -> PathBuf {
    let base = std::env::var_os("ZHIKU_MODELS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models"));
    base.join("smollm2-135m-instruct-q4_1.gguf")
}

#[test]
fn abstractive_summaries_cut_long_texts_into_pieces() {
    let model = smollm2();
    let long = NEWS.repeat(6);
    let o = zhiku(&["summarize", "--method", "abstractive", "--model", model.to_str().unwrap(), "--max-tokens", "24", "--chunk-tokens", "64", "--json", "--text", &long]);
    let v: Value = serde_json::from_str(ok(&o).lines().next().unwrap()).unwrap();
    assert!(v["chunks"].as_u64().unwrap() > 1 && v["rounds"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["generated_tokens"].as_u64().unwrap() > 0 && !v["prediction"].as_str().unwrap().trim().is_empty(), "{v}");
    let o = zhiku(&["summarize", "--method", "abstractive", "--model", model.to_str().unwrap(), "--max-tokens", "24", "--json", "--text", NEWS]);
    let v: Value = serde_json::from_str(ok(&o).lines().next().unwrap()).unwrap();
    assert_eq!((v["chunks"].as_u64(), v["rounds"].as_u64()), (Some(1), Some(1)));
}

#[test]
fn generation_eval_generates_scores_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("test.jsonl");
    let lines: String = (0..4).map(|i| json!({"prompt": format!("question {i}"), "response": "the answer"}).to_string() + "\n").collect();
    std::fs::write(&data, &lines).unwrap();
    let model = tiny();
    let out = dir.path().join("preds.jsonl");
    let args = ["eval", "--task", "generation", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--max-tokens", "6", "--json"];
    let scores: Value = serde_json::from_str(&ok(&zhiku(&[&args[..], &["--output", out.to_str().unwrap()]].concat()))).unwrap();
    assert_eq!((scores["examples"].as_u64(), scores["language"].as_str()), (Some(4), Some("en")));
    let preds: Vec<Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!((preds.len(), preds[2]["line"].as_u64(), preds[2]["prompt"].as_str()), (4, Some(3), Some("question 2")));
    // The same predictions scored again give the same numbers.
    let again: Value = serde_json::from_str(&ok(&zhiku(&["eval", "--task", "generation", "--predictions", out.to_str().unwrap(), "--json"]))).unwrap();
    assert_eq!(again["rougeL"], scores["rougeL"]);
    // Worked examples are taken from --shots-from.
    ok(&zhiku(&[&args[..], &["--shots", "2", "--shots-from", data.to_str().unwrap(), "--limit", "1"]].concat()));

    fails_with(&zhiku(&[&args[..], &["--shots", "2"]].concat()), "--shots-from");
    fails_with(&zhiku(&[&args[..], &["--shots", "9", "--shots-from", data.to_str().unwrap()]].concat()), "--shots 9 needs");
    fails_with(&zhiku(&[&args[..], &["--language", "fr"]].concat()), "--language must be en or zh");
    std::fs::write(&out, "{\"prediction\": \"a\", \"reference\": \"b\"}\n{\"prediction\": 3}\n").unwrap();
    fails_with(&zhiku(&["eval", "--task", "generation", "--predictions", out.to_str().unwrap()]), "preds.jsonl:2");
    std::fs::write(&data, "{\"prompt\": \"only a question\"}\n").unwrap();
    fails_with(&zhiku(&["eval", "--task", "generation", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()]), "test.jsonl:1");
}
