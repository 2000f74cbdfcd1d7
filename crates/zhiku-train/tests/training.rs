//! End-to-end behaviour of the training loop on a tiny random model and synthetic data.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use zhiku_train::trainer::{load_model_tensors, ClassWeights};
use zhiku_train::{DataConfig, StopReason, TaskData, TrainConfig, Trainer};

const A: [&str; 6] = ["apple", "banana", "cherry", "grape", "lemon", "mango"];
const B: [&str; 6] = ["car", "truck", "train", "plane", "boat", "bus"];

/// Texts of three words from one class's vocabulary, as JSONL.
fn write_data(path: &Path, n: usize, seed: u64) {
    let mut s = String::new();
    let mut x = seed;
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    for i in 0..n {
        let (words, label) = if i % 2 == 0 { (&A, "fruit") } else { (&B, "vehicle") };
        let text: Vec<&str> = (0..3).map(|_| words[next() % 6]).collect();
        s += &format!("{{\"text\": \"{}\", \"label\": \"{label}\"}}\n", text.join(" "));
    }
    std::fs::write(path, s).unwrap();
}

fn setup(dropout: f64) -> (tempfile::TempDir, DataConfig) {
    let dir = tempfile::tempdir().unwrap();
    let words: Vec<&str> = A.iter().chain(B.iter()).copied().collect();
    zhiku_models::testing::write_tiny_model(&dir.path().join("model"), &words, dropout, 1).unwrap();
    write_data(&dir.path().join("train.jsonl"), 48, 1);
    write_data(&dir.path().join("dev.jsonl"), 16, 2);
    let mut data = DataConfig::new(dir.path().join("train.jsonl"));
    data.dev = Some(dir.path().join("dev.jsonl"));
    (dir, data)
}

fn train(dir: &Path, data: &DataConfig, out: &str, cfg: TrainConfig, stop_after: Option<u64>, resume: bool) -> zhiku_train::TrainSummary {
    let task = TaskData::load(data).unwrap();
    let mut t = Trainer::new(&dir.join("model"), task, &dir.join(out), cfg, Device::Cpu).unwrap();
    t.stop_after = stop_after;
    t.run(resume, &mut |_| {}).unwrap()
}

fn max_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(k, x)| (x - &b[k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap())
        .fold(0.0, f32::max)
}

fn quick() -> TrainConfig {
    TrainConfig { epochs: 2, batch_size: 8, lr: 1e-2, max_length: 16, warmup_ratio: 0.0, ..Default::default() }
}

#[test]
fn learns_a_separable_task_and_writes_everything() {
    let (dir, data) = setup(0.1);
    let cfg = TrainConfig { epochs: 6, ..quick() };
    let s = train(dir.path(), &data, "out", cfg, None, false);
    assert_eq!(s.stop, StopReason::Finished);
    let acc = s.dev.as_ref().unwrap()["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.9, "dev accuracy {acc}");
    let out = dir.path().join("out");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "train_log.jsonl", "metrics.json", "report.svg", "report.md", "checkpoint/state.json"] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    assert_eq!(cfg["id2label"]["0"], "fruit");
    assert_eq!(cfg["label2id"]["vehicle"], 1);
    let weights = load_model_tensors(&out).unwrap();
    assert!(weights.contains_key("classifier.weight") && weights.contains_key("bert.pooler.dense.weight"));
    // 48 examples / batch 8 = 6 steps an epoch, 6 epochs.
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"grad_norm\"")).count(), 36);
}

#[test]
fn gradient_accumulation_equals_the_large_batch() {
    let (dir, data) = setup(0.0);
    let big = TrainConfig { batch_size: 8, grad_accum: 1, max_steps: Some(3), ..quick() };
    let small = TrainConfig { batch_size: 4, grad_accum: 2, max_steps: Some(3), ..quick() };
    train(dir.path(), &data, "big", big, None, false);
    train(dir.path(), &data, "small", small, None, false);
    let a = zhiku_train::checkpoint::load(&dir.path().join("big/checkpoint"), &Device::Cpu).unwrap();
    let b = zhiku_train::checkpoint::load(&dir.path().join("small/checkpoint"), &Device::Cpu).unwrap();
    let d = max_diff(&a.params, &b.params);
    assert!(d < 1e-6, "accumulated update differs from the large-batch update by {d}");
    // ... and differs from training on half the batch only (the test can fail).
    let half = TrainConfig { batch_size: 4, grad_accum: 1, max_steps: Some(3), ..quick() };
    train(dir.path(), &data, "half", half, None, false);
    let c = zhiku_train::checkpoint::load(&dir.path().join("half/checkpoint"), &Device::Cpu).unwrap();
    assert!(max_diff(&a.params, &c.params) > 1e-4);
}

#[test]
fn interrupted_run_resumes_to_the_same_result() {
    let (dir, data) = setup(0.1);
    let full = train(dir.path(), &data, "full", quick(), None, false);
    let cut = train(dir.path(), &data, "cut", quick(), Some(4), false);
    assert_eq!(cut.stop, StopReason::Interrupted);
    assert_eq!(cut.steps, 4);
    let resumed = train(dir.path(), &data, "cut", quick(), None, true);
    assert_eq!(resumed.steps, full.steps);
    let a = load_model_tensors(&dir.path().join("full")).unwrap();
    let b = load_model_tensors(&dir.path().join("cut")).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0, "resumed run differs from the uninterrupted one");
    assert_eq!(full.dev.unwrap()["accuracy"], resumed.dev.unwrap()["accuracy"]);
    // Same seed, same run; another seed, another run.
    train(dir.path(), &data, "again", quick(), None, false);
    assert_eq!(max_diff(&a, &load_model_tensors(&dir.path().join("again")).unwrap()), 0.0);
    train(dir.path(), &data, "seed7", TrainConfig { seed: 7, ..quick() }, None, false);
    assert!(max_diff(&a, &load_model_tensors(&dir.path().join("seed7")).unwrap()) > 1e-4);
}

#[test]
fn resume_refuses_other_settings() {
    let (dir, data) = setup(0.1);
    train(dir.path(), &data, "o", quick(), Some(2), false);
    let task = TaskData::load(&data).unwrap();
    let mut t = Trainer::new(&dir.path().join("model"), task, &dir.path().join("o"), TrainConfig { lr: 5e-4, ..quick() }, Device::Cpu).unwrap();
    let err = t.run(true, &mut |_| {}).err().unwrap().to_string();
    assert!(err.contains("other data or settings"), "{err}");
}

#[test]
fn early_stopping_stops_when_dev_metric_stalls() {
    let (dir, data) = setup(0.0);
    // A learning rate too small to change any prediction: accuracy cannot improve.
    let cfg = TrainConfig { epochs: 10, lr: 1e-12, patience: Some(2), eval_steps: Some(2), metric: "accuracy".into(), ..quick() };
    let s = train(dir.path(), &data, "es", cfg, None, false);
    assert_eq!(s.stop, StopReason::EarlyStopped);
    assert_eq!(s.steps, 6, "first eval at step 2 sets the best; two more evals without improvement");
    assert_eq!(s.best_step, 2);
}

#[test]
fn class_weights_and_label_smoothing_train() {
    let (dir, data) = setup(0.1);
    let cfg = TrainConfig { class_weights: ClassWeights::Balanced, label_smoothing: 0.1, schedule: "cosine".into(), pooling: "mean".into(), ..quick() };
    let s = train(dir.path(), &data, "w", cfg, None, false);
    assert_eq!(s.stop, StopReason::Finished);
}

#[test]
fn multi_label_tunes_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let words: Vec<&str> = A.iter().chain(B.iter()).copied().collect();
    zhiku_models::testing::write_tiny_model(&dir.path().join("model"), &words, 0.0, 1).unwrap();
    let mut s = String::new();
    for i in 0..64 {
        let (t, l) = match i % 3 {
            0 => ("apple banana", "[\"fruit\"]"),
            1 => ("car bus", "[\"vehicle\"]"),
            _ => ("apple car", "[\"fruit\", \"vehicle\"]"),
        };
        let extra = if i % 3 == 1 { B[i % 6] } else { A[i % 6] };
        s += &format!("{{\"text\": \"{t} {extra}\", \"label\": {l}}}\n");
    }
    std::fs::write(dir.path().join("ml.jsonl"), s).unwrap();
    let data = DataConfig::new(dir.path().join("ml.jsonl"));
    let task = TaskData::load(&data).unwrap();
    assert!(task.multi_label && task.test.is_some());
    let cfg = TrainConfig { epochs: 8, metric: "micro_f1".into(), ..quick() };
    let mut t = Trainer::new(&dir.path().join("model"), task, &dir.path().join("out"), cfg, Device::Cpu).unwrap();
    let summary = t.run(false, &mut |_| {}).unwrap();
    assert!(summary.test.unwrap()["micro_f1"].as_f64().unwrap() > 0.9);
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["problem_type"], "multi_label_classification");
    assert_eq!(cfg["zhiku_thresholds"].as_array().unwrap().len(), 2);
    assert!(dir.path().join("out/splits/test.jsonl").is_file());
    let p = zhiku_train::Predictor::open(&dir.path().join("out"), &Device::Cpu).unwrap();
    let pred = p.predict(&["apple car lemon"], None, 2).unwrap();
    assert_eq!(pred[0].labels, vec!["fruit", "vehicle"]);
}


fn params_after(dir: &Path, data: &DataConfig, out: &str, cfg: TrainConfig) -> HashMap<String, Tensor> {
    train(dir, data, out, cfg, None, false);
    zhiku_train::checkpoint::load(&dir.join(out).join("checkpoint"), &Device::Cpu).unwrap().params
}

#[test]
fn r_drop_without_dropout_is_plain_training_and_with_dropout_changes_it() {
    // Without dropout both passes agree: the KL term is 0 and the mean of two equal losses is
    // the plain loss, so the run must be the plain run.
    let (dir, data) = setup(0.0);
    let base = TrainConfig { max_steps: Some(3), ..quick() };
    let plain = params_after(dir.path(), &data, "plain", base.clone());
    let rdrop = params_after(dir.path(), &data, "rdrop", TrainConfig { rdrop_alpha: 2.0, ..base.clone() });
    assert!(max_diff(&plain, &rdrop) < 1e-6);
    let (dir, data) = setup(0.1);
    let plain = params_after(dir.path(), &data, "plain", base.clone());
    let rdrop = params_after(dir.path(), &data, "rdrop", TrainConfig { rdrop_alpha: 2.0, ..base.clone() });
    assert!(max_diff(&plain, &rdrop) > 1e-4, "R-Drop had no effect");
    let s = train(dir.path(), &data, "rdrop-full", TrainConfig { rdrop_alpha: 1.0, epochs: 6, ..quick() }, None, false);
    assert!(s.dev.as_ref().unwrap()["accuracy"].as_f64().unwrap() >= 0.9);
}

#[test]
fn fgm_changes_the_update_and_restores_the_embeddings() {
    let (dir, data) = setup(0.0);
    let base = TrainConfig { max_steps: Some(3), ..quick() };
    let plain = params_after(dir.path(), &data, "plain", base.clone());
    let fgm = params_after(dir.path(), &data, "fgm", TrainConfig { fgm_epsilon: Some(1.0), ..base.clone() });
    assert!(max_diff(&plain, &fgm) > 1e-4, "FGM had no effect");
    // With a vanishing learning rate nothing may move: a perturbation left in the embeddings
    // after the adversarial pass would show as a change of about epsilon.
    let still = TrainConfig { lr: 1e-12, fgm_epsilon: Some(1.0), ..base.clone() };
    let before = zhiku_train::trainer::load_model_tensors(&dir.path().join("model")).unwrap();
    let after = params_after(dir.path(), &data, "fgm-still", still);
    let word = "bert.embeddings.word_embeddings.weight";
    let d = (&before[word] - &after[word]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-6, "FGM left the embeddings perturbed by {d}");
    // A frozen base has no embedding gradient: refused up front.
    let task = TaskData::load(&data).unwrap();
    let peft = Some(zhiku_models::PeftConfig::Prefix { length: 2 });
    let e = Trainer::new(&dir.path().join("model"), task, &dir.path().join("x"), TrainConfig { fgm_epsilon: Some(1.0), peft, ..base }, Device::Cpu).err().unwrap();
    assert!(e.to_string().contains("--fgm-epsilon"), "{e}");
}

#[test]
fn interrupted_lora_run_resumes_to_the_same_adapter() {
    let (dir, data) = setup(0.1);
    let peft = Some(zhiku_models::PeftConfig::Lora { r: 2, alpha: 4.0, dropout: 0.1, targets: vec!["query".into(), "value".into()] });
    let cfg = TrainConfig { peft, pooling: "mean".into(), ..quick() };
    let full = train(dir.path(), &data, "full", cfg.clone(), None, false);
    let cut = train(dir.path(), &data, "cut", cfg.clone(), Some(3), false);
    assert_eq!(cut.stop, StopReason::Interrupted);
    let ck = zhiku_train::checkpoint::load(&dir.path().join("cut/checkpoint"), &Device::Cpu).unwrap();
    assert!(ck.params.keys().all(|k| k.contains("lora_") || k.starts_with("classifier.")), "the checkpoint holds only what trains");
    let resumed = train(dir.path(), &data, "cut", cfg, None, true);
    assert_eq!(resumed.steps, full.steps);
    let load = |d: &str| candle_core::safetensors::load(dir.path().join(d).join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(max_diff(&load("full"), &load("cut")), 0.0, "resumed adapter differs from the uninterrupted one");
}

#[test]
fn mixed_precision_trains_like_fp32() {
    let (dir, data) = setup(0.1);
    for precision in [zhiku_models::Precision::Bf16, zhiku_models::Precision::Fp16] {
        let cfg = TrainConfig { epochs: 6, precision, ..quick() };
        let s = train(dir.path(), &data, &format!("out-{precision}"), cfg, None, false);
        let acc = s.dev.as_ref().unwrap()["accuracy"].as_f64().unwrap();
        assert!(acc >= 0.9, "{precision}: dev accuracy {acc}");
        // The saved weights are the f32 masters.
        let weights = load_model_tensors(&dir.path().join(format!("out-{precision}"))).unwrap();
        assert!(weights.values().all(|t| t.dtype() == candle_core::DType::F32));
        let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join(format!("out-{precision}/checkpoint/state.json"))).unwrap()).unwrap();
        // fp16 keeps a loss scale in the checkpoint (resume continues with it); bf16 needs none.
        assert_eq!(state["loss_scale"].is_object(), precision == zhiku_models::Precision::Fp16, "{state}");
    }
}
