//! `zhiku train --task sft` through the binary, on the tiny random Qwen2 folder.

use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;
use common::{zhiku};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llm/qwen2")
}

fn write_data(dir: &Path, lines: &[Value]) -> PathBuf {
    let p = dir.join("train.jsonl");
    std::fs::write(&p, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    p
}

fn conversations() -> Vec<Value> {
    let facts = [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"), ("blood", "red"), ("sun", "yellow")];
    let mut v = Vec::new();
    for (i, (q, a)) in facts.iter().cycle().take(18).enumerate() {
        v.push(if i % 2 == 0 {
            serde_json::json!({"prompt": format!("what colour is {q}?"), "response": a})
        } else {
            serde_json::json!({"messages": [{"role": "system", "content": "short answers"}, {"role": "user", "content": format!("what colour is {q}?")}, {"role": "assistant", "content": a}]})
        });
    }
    v
}

#[test]
fn trains_an_adapter_with_a_report_and_resumable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let train = write_data(dir.path(), &conversations());
    let out = dir.path().join("run");
    let (model, train_s, out_s) = (tiny().to_string_lossy().into_owned(), train.to_string_lossy().into_owned(), out.to_string_lossy().into_owned());
    let args = ["train", "--task", "sft", "--model", &model, "--train", &train_s, "--output", &out_s, "--max-steps", "4", "--epochs", "10", "--batch-size", "4", "--lora-r", "4", "--packing", "--json", "--quiet"];
    let o = zhiku(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["steps"], 4);
    assert!(summary["dev"]["loss"].as_f64().unwrap() > 0.0 && summary["dev"]["perplexity"].as_f64().is_some(), "{summary}");
    for f in ["adapter_config.json", "adapter_model.safetensors", "train_log.jsonl", "metrics.json", "report.md", "report.svg", "checkpoint/state.json", "splits/dev.jsonl"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let config: Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 7, "all seven projections by default");
    assert_eq!(config["r"], 4);
    // Two dev conversations were held out (10% of 18, rounded) and written for other tools.
    assert_eq!(std::fs::read_to_string(out.join("splits/dev.jsonl")).unwrap().lines().count(), 2);
    // Running again into the same folder needs --overwrite or --resume.
    let o = zhiku(&args);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--overwrite"));
}

#[test]
fn bad_data_is_refused_with_file_and_line_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny().to_string_lossy().into_owned();
    let out = dir.path().join("run");
    let out_s = out.to_string_lossy().into_owned();
    let cases: [(Value, &str); 3] = [
        (serde_json::json!({"text": "no prompt"}), "train.jsonl:3: needs \"prompt\" and \"response\", or \"messages\""),
        (serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}), "train.jsonl:3: the conversation has no assistant turn"),
        (serde_json::json!({"prompt": "hi", "response": 7}), "train.jsonl:3: \"response\" must be a string"),
    ];
    for (bad, want) in cases {
        let mut lines = conversations();
        lines.insert(2, bad);
        let train = write_data(dir.path(), &lines);
        let o = zhiku(&["train", "--task", "sft", "--model", &model, "--train", &train.to_string_lossy(), "--output", &out_s, "--max-steps", "1"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{err}");
        assert!(!out.exists(), "nothing is written for bad input");
    }
    // Conversations over --max-length: skipped and counted, or all skipped is an error.
    let train = write_data(dir.path(), &conversations());
    let o = zhiku(&["train", "--task", "sft", "--model", &model, "--train", &train.to_string_lossy(), "--output", &out_s, "--max-length", "8", "--overlong", "skip"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("longer than --max-length 8"), "{err}");
    let o = zhiku(&["train", "--task", "sft", "--model", &model, "--train", &train.to_string_lossy(), "--output", &out_s, "--peft", "adapter"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("LoRA"));
}

/// `--init-adapter` continues from an adapter (here Python PEFT's): its shape wins over the
/// LoRA flags, and training moves it from there; it is refused with `--peft none`.
#[test]
fn init_adapter_continues_from_a_peft_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let train = write_data(dir.path(), &conversations());
    let out = dir.path().join("run");
    let start = tiny().join("../peft-lora-qwen2");
    let (model, train_s, out_s, start_s) = (tiny().to_string_lossy().into_owned(), train.to_string_lossy().into_owned(), out.to_string_lossy().into_owned(), start.to_string_lossy().into_owned());
    let o = zhiku(&["train", "--task", "sft", "--model", &model, "--train", &train_s, "--output", &out_s, "--init-adapter", &start_s, "--max-steps", "2", "--batch-size", "4", "--lr", "1e-3", "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config: Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["r"].as_u64(), config["lora_alpha"].as_f64()), (Some(4), Some(8.0)), "the starting adapter's shape, not --lora-r's default 8");
    let read = |p: &Path| candle_core::safetensors::load(p.join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let (before, after) = (read(&start), read(&out));
    let name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    let diff = (&before[name] - &after[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    // Two Adam steps at lr 1e-3 move each element by at most about 2e-3: it started from PEFT's values.
    assert!(diff > 0.0 && diff < 3e-3, "moved {diff} from the starting adapter");
    let o = zhiku(&["train", "--task", "sft", "--peft", "none", "--model", &model, "--train", &train_s, "--output", &out_s, "--overwrite", "--init-adapter", &start_s]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--init-adapter"), "{}", String::from_utf8_lossy(&o.stderr));
}
