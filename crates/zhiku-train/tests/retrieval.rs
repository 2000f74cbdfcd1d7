//! Retrieval training on a tiny random encoder: it learns a query-to-passage mapping, every
//! trainable tensor gets a gradient, an interrupted run resumes to the same weights, and the
//! output folder is an encoder that zhiku (and sentence-transformers' layout) reads back.

use candle_core::Device;
use std::path::Path;
use zhiku_train::retrieval::{evaluate_set, EvalSet, RankMode, RetrievalData, RetrievalOptions, RetrievalTask};
use zhiku_train::train_loop::{self, LoopControl, TrainTask};
use zhiku_train::trainer::load_model_tensors;
use zhiku_train::{StopReason, TrainConfig};

const FRUIT: [&str; 6] = ["apple", "banana", "cherry", "grape", "lemon", "mango"];
const VEHICLE: [&str; 6] = ["car", "truck", "train", "plane", "boat", "bus"];

/// Each fruit asks for its vehicle: "apple" -> "car", with a varying extra word.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let words: Vec<&str> = FRUIT.iter().chain(VEHICLE.iter()).copied().collect();
    zhiku_models::testing::write_tiny_model(&dir.path().join("model"), &words, 0.0, 3).unwrap();
    let mut train = String::new();
    for round in 0..8 {
        for (i, f) in FRUIT.iter().enumerate() {
            let extra = FRUIT[(i + round) % 6];
            train += &format!("{{\"query\": \"{f} {extra}\", \"positive\": \"{}\"}}\n", VEHICLE[i]);
        }
    }
    std::fs::write(dir.path().join("train.jsonl"), train).unwrap();
    let dev: String = FRUIT.iter().zip(VEHICLE).map(|(f, v)| format!("{{\"query\": \"{f}\", \"positive\": \"{v}\"}}\n")).collect();
    std::fs::write(dir.path().join("dev.jsonl"), dev).unwrap();
    dir
}

fn data(dir: &Path, hard: usize) -> RetrievalData {
    let options = RetrievalOptions { hard_negatives: hard, ..Default::default() };
    let mut d = RetrievalData::load(&dir.join("train.jsonl"), Some(&dir.join("dev.jsonl")), None, None, &options).unwrap();
    zhiku_train::retrieval::mine_hard_negatives(&mut d.train, hard, 42, &mut |_, _| {});
    d
}

fn config() -> TrainConfig {
    TrainConfig { epochs: 6, batch_size: 8, lr: 5e-3, max_length: 8, warmup_ratio: 0.0, metric: "mrr".into(), ..Default::default() }
}

fn train(dir: &Path, out: &str, cfg: &TrainConfig, stop_after: Option<u64>, resume: bool) -> zhiku_train::TrainSummary {
    let folder = zhiku_models::ModelFolder::open(dir.join("model")).unwrap();
    let d = data(dir, 1);
    let options = RetrievalOptions { hard_negatives: 1, ..Default::default() };
    let mut task = RetrievalTask::new(&folder, &d, cfg, options, &Device::Cpu).unwrap();
    let control = LoopControl { stop_after, ..Default::default() };
    train_loop::run(&mut task, cfg, &dir.join(out), resume, &control, &mut |_| {}).unwrap()
}

#[test]
fn learns_the_mapping_and_writes_an_encoder_folder() {
    let dir = setup();
    let d = data(dir.path(), 0);
    let base = zhiku_models::TextModel::open(&dir.path().join("model"), &Device::Cpu).unwrap();
    let before = evaluate_set(&d.dev, &[], RankMode::Dense, &mut |t: &[&str]| base.embed_texts(t, 32)).unwrap();
    let summary = train(dir.path(), "out", &config(), None, false);
    assert_eq!(summary.stop, StopReason::Finished);
    let out = dir.path().join("out");
    for f in ["model.safetensors", "config.json", "modules.json", "1_Pooling/config.json", "sentence_bert_config.json", "tokenizer.json", "splits/train.jsonl", "metrics.json", "report.md"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let tuned = zhiku_models::TextModel::open(&out, &Device::Cpu).unwrap();
    let after = evaluate_set(&d.dev, &[], RankMode::Dense, &mut |t: &[&str]| tuned.embed_texts(t, 32)).unwrap();
    let (b, a) = (before["mrr"].as_f64().unwrap(), after["mrr"].as_f64().unwrap());
    assert!(a >= 0.9 && a > b + 0.2, "dev MRR {b:.3} -> {a:.3}");
    // What the loop scored at the end is what the saved folder scores.
    assert!((summary.dev.unwrap()["mrr"].as_f64().unwrap() - a).abs() < 1e-6);
    let EvalSet::Pairs(dev) = &d.dev else { panic!("pairs") };
    assert_eq!(dev.len(), 6);
}

#[test]
fn every_trainable_tensor_gets_a_gradient() {
    let dir = setup();
    let folder = zhiku_models::ModelFolder::open(dir.path().join("model")).unwrap();
    let d = data(dir.path(), 1);
    let cfg = config();
    let task = RetrievalTask::new(&folder, &d, &cfg, RetrievalOptions { hard_negatives: 1, ..Default::default() }, &Device::Cpu).unwrap();
    let idx: Vec<usize> = (0..8).collect();
    let (loss, grads) = task.accumulate(&[&idx], 0, 1.0).unwrap();
    assert!(loss.is_finite() && loss > 0.0);
    assert!(task.params().len() > 10);
    for (name, var) in task.params().iter() {
        let g = grads.get(var).unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm {norm}");
    }
}

#[test]
fn interrupted_run_resumes_to_the_same_weights() {
    let dir = setup();
    let cfg = TrainConfig { epochs: 2, ..config() };
    train(dir.path(), "full", &cfg, None, false);
    let cut = train(dir.path(), "cut", &cfg, Some(5), false);
    assert_eq!((cut.stop, cut.steps), (StopReason::Interrupted, 5));
    train(dir.path(), "cut", &cfg, None, true);
    let (a, b) = (load_model_tensors(&dir.path().join("full")).unwrap(), load_model_tensors(&dir.path().join("cut")).unwrap());
    for (k, x) in &a {
        let d = (x - &b[k]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{k} differs after resuming");
    }
}

/// The cached, sharded step (GradCache) gives the direct form's loss and gradients, with
/// dropout on (the second forward pass must draw the same masks).
#[test]
fn cached_step_equals_the_direct_gradients() {
    let dir = setup();
    let words: Vec<&str> = FRUIT.iter().chain(VEHICLE.iter()).copied().collect();
    zhiku_models::testing::write_tiny_model(&dir.path().join("model"), &words, 0.2, 3).unwrap();
    let folder = zhiku_models::ModelFolder::open(dir.path().join("model")).unwrap();
    let d = data(dir.path(), 1);
    let cfg = config();
    let task = RetrievalTask::new(&folder, &d, &cfg, RetrievalOptions { hard_negatives: 1, ..Default::default() }, &Device::Cpu).unwrap();
    let idx: Vec<usize> = (3..15).collect();
    let direct = (task.direct_loss(&idx, 2).unwrap() / idx.len() as f64).unwrap();
    let direct_value = direct.to_scalar::<f32>().unwrap() as f64;
    let direct_grads = direct.backward().unwrap();
    let (cached_value, cached_grads) = task.accumulate(&[&idx], 2, 1.0).unwrap();
    assert!((direct_value - cached_value).abs() < 1e-5, "loss {direct_value} against {cached_value}");
    for (name, var) in task.params().iter() {
        let (a, b) = (direct_grads.get(var).unwrap(), cached_grads.get(var).unwrap());
        let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let size = a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-4 * size.max(1e-3), "{name}: gradients differ by {diff} (largest {size})");
    }
    // Another step draws other masks: the comparison above can fail.
    let other = (task.direct_loss(&idx, 3).unwrap() / idx.len() as f64).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((other - direct_value).abs() > 1e-4);
}
