//! `--task sft` on the tiny random decoders (tests/fixtures/tiny-llm):
//! - the layer-by-layer backward pass (with and without recomputation), packing and sharding
//!   all give the gradients of candle's autograd over the whole model;
//! - every adapter tensor gets a gradient;
//! - a run learns a mapping (dev loss falls far), writes a PEFT adapter that loads back to the
//!   same scores, and an interrupted run resumes to bit-identical adapters.

use candle_core::{DType, Tensor};
use std::path::{Path, PathBuf};
use zhiku_infer::ModelParts;
use zhiku_models::decoder::adapter::DecoderAdapter;
use zhiku_models::decoder::graph::{GraphDecoder, GraphOptions, LoraSpec, PackedRow, PROJECTIONS};
use zhiku_train::sft::{self, Formatter, Overlong, SftData, SftExample, SftOptions, SftTask};
use zhiku_train::train_loop::{self, LoopControl, TrainTask};
use zhiku_train::TrainConfig;

fn tiny(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llm").join(name)
}

const FACTS: [(&str, &str); 8] = [
    ("sky", "blue"),
    ("grass", "green"),
    ("snow", "white"),
    ("coal", "black"),
    ("blood", "red"),
    ("sun", "yellow"),
    ("night", "dark"),
    ("sea", "deep"),
];

fn write_data(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for round in 0..3 {
        for (q, a) in FACTS {
            let line = if round == 1 {
                serde_json::json!({"messages": [{"role": "user", "content": format!("what is {q}?")}, {"role": "assistant", "content": a}]})
            } else {
                serde_json::json!({"prompt": format!("what is {q}?"), "response": a})
            };
            text.push_str(&line.to_string());
            text.push('\n');
        }
    }
    let p = dir.join("train.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn examples(name: &str, n: usize) -> Vec<SftExample> {
    let parts = ModelParts::open(&tiny(name), false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_data(dir.path());
    let convs = sft::read_conversations(&path).unwrap();
    let f = Formatter { tokenizer: &parts.tokenizer, template: &parts.template };
    f.encode_all(&path, &convs[..n], 64, Overlong::Truncate).unwrap().0
}

fn lora_model(name: &str) -> GraphDecoder {
    let parts = ModelParts::open(&tiny(name), false).unwrap();
    let spec = LoraSpec { rank: 4, alpha: 8.0, targets: PROJECTIONS.iter().map(|s| s.to_string()).collect(), seed: 3, dropout: 0.0 };
    let g = GraphDecoder::new(parts.model, &GraphOptions { lora: Some(spec), ..GraphOptions::cpu() }).unwrap();
    randomise_b(&g);
    g
}

/// B starts at zero, which would leave every A without a gradient: fixed pseudo-random values.
fn randomise_b(g: &GraphDecoder) {
    for (i, (n, v)) in g.trainable().into_iter().enumerate() {
        if n.contains("lora_B") {
            let (r, c) = v.as_tensor().dims2().unwrap();
            let vals: Vec<f32> = (0..r * c).map(|k| ((((k + 13 * i) as f32) * 0.618).fract() - 0.5) * 0.2).collect();
            v.set(&Tensor::from_vec(vals, (r, c), &candle_core::Device::Cpu).unwrap()).unwrap();
        }
    }
}

/// The direct loss: every example its own row, the whole model as one graph.
fn direct(g: &GraphDecoder, ex: &[SftExample]) -> (f64, Vec<Vec<f32>>) {
    let rows: Vec<PackedRow> = ex.iter().map(|e| PackedRow { tokens: &e.tokens, segments: vec![e.tokens.len()] }).collect();
    let h = g.hidden_packed(&rows).unwrap();
    let mut states = Vec::new();
    let mut targets = Vec::new();
    for (r, e) in ex.iter().enumerate() {
        for i in 1..e.tokens.len() {
            if e.learn[i] {
                states.push(h.states.get(r).unwrap().get(i - 1).unwrap());
                targets.push(e.tokens[i]);
            }
        }
    }
    let logits = g.logits(&Tensor::stack(&states, 0).unwrap()).unwrap();
    let lsm = candle_nn::ops::log_softmax(&logits, 1).unwrap();
    let idx = Tensor::new(targets.as_slice(), g.device()).unwrap().unsqueeze(1).unwrap();
    let loss = lsm.gather(&idx, 1).unwrap().sum_all().unwrap().neg().unwrap();
    let grads = loss.backward().unwrap();
    let named = g.trainable().into_iter().map(|(_, v)| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect();
    (loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(), named)
}

fn collected(g: &GraphDecoder, store: &candle_core::backprop::GradStore) -> Vec<Vec<f32>> {
    g.trainable().into_iter().map(|(n, v)| store.get(v.as_tensor()).unwrap_or_else(|| panic!("{n} has no gradient")).flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let norm = y.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(norm > 0.0, "{what}: tensor {i} has a zero gradient");
        let diff = x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum::<f32>().sqrt();
        assert!(diff <= 1e-4 * norm, "{what}: tensor {i} differs by {diff} (norm {norm})");
    }
}

/// The layer-by-layer backward (recomputing and keeping) and packed rows give autograd's loss
/// and gradients over the whole model.
fn check_layerwise(name: &str, what: &str, g: &GraphDecoder) {
    let ex = examples(name, 6);
    let (loss, expect) = direct(g, &ex);
    let one_per_row: Vec<Vec<&SftExample>> = ex.iter().map(|e| vec![e]).collect();
    for recompute in [true, false] {
        let (l, grads) = sft::rows_pass(g, &one_per_row, 1.0, recompute, None).unwrap();
        assert!((l - loss).abs() < 1e-4 * loss, "{name} {what}: loss {l} vs {loss}");
        assert_close(&collected(g, &grads.unwrap()), &expect, &format!("{name} {what}, recompute={recompute}"));
    }
    // Three examples packed in one row, three in another: the same loss and gradients.
    let packed: Vec<Vec<&SftExample>> = vec![ex[..3].iter().collect(), ex[3..].iter().collect()];
    let (l, grads) = sft::rows_pass(g, &packed, 1.0, true, None).unwrap();
    assert!((l - loss).abs() < 1e-4 * loss, "{name} {what} packed: loss {l} vs {loss}");
    assert_close(&collected(g, &grads.unwrap()), &expect, &format!("{name} {what}, packed"));
}

#[test]
fn layerwise_backward_packing_and_shards_equal_autograd() {
    for name in ["qwen2", "llama", "gemma3"] {
        check_layerwise(name, "LoRA", &lora_model(name));
    }
}

/// Full fine-tuning: the same, with the embedding, the tied head and every layer's weights and
/// norms among the gradients.
#[test]
fn full_fine_tuning_layerwise_backward_equals_autograd() {
    for name in ["qwen2", "llama", "gemma3"] {
        let parts = ModelParts::open(&tiny(name), false).unwrap();
        let g = GraphDecoder::new(parts.model, &GraphOptions { full: true, ..GraphOptions::cpu() }).unwrap();
        assert!(g.trainable().iter().any(|(n, _)| n == "token_embd.weight"));
        check_layerwise(name, "full", &g);
    }
}

fn options(packing: bool) -> SftOptions {
    SftOptions { rank: 4, alpha: 8.0, targets: PROJECTIONS.iter().map(|s| s.to_string()).collect(), packing, overlong: Overlong::Truncate, recompute: true, dev_fraction: 0.2, full: false, dropout: 0.0 }
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig { epochs: 100, batch_size: 4, lr: 1e-2, max_length: 64, max_steps: Some(steps), eval_steps: Some(steps), metric: "loss".into(), warmup_ratio: 0.0, weight_decay: 0.0, ..TrainConfig::default() }
}

fn task(dir: &Path, name: &str, packing: bool, cfg: &TrainConfig) -> SftTask {
    let train = write_data(dir);
    let parts = ModelParts::open(&tiny(name), false).unwrap();
    let data = SftData::load(&parts, &train, Some(&train), None, cfg.max_length, &options(packing), cfg.seed).unwrap();
    SftTask::new(parts, &tiny(name), data, cfg, options(packing)).unwrap()
}

#[test]
fn every_adapter_tensor_gets_a_gradient_after_the_first_update() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1);
    let mut t = task(dir.path(), "qwen2", false, &cfg);
    train_loop::run(&mut t, &cfg, &dir.path().join("out"), false, &LoopControl::default(), &mut |_| {}).unwrap();
    let all: Vec<usize> = (0..t.train_len()).collect();
    let (_, grads) = t.accumulate(&[&all[..4]], 1, 1.0).unwrap();
    for (name, var) in t.params().iter() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
    assert_eq!(t.params().len(), 2 * 7 * 2, "A and B on seven projections of two layers");
}

#[test]
fn learns_the_mapping_saves_a_peft_adapter_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(80);
    let out = dir.path().join("run");
    let mut t = task(dir.path(), "qwen2", true, &cfg);
    let before = t.evaluate().unwrap();
    let summary = train_loop::run(&mut t, &cfg, &out, false, &LoopControl::default(), &mut |_| {}).unwrap();
    let after = summary.dev.as_ref().unwrap();
    // The tiny random model's logits are small (a frozen, tied embedding of std 0.02), so its
    // loss cannot fall far below ln(vocab); the greedy tokens show what it learned.
    let accuracy = after["token_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.5 && before.metrics["token_accuracy"].as_f64().unwrap() < 0.2, "token accuracy {} -> {accuracy}", before.metrics["token_accuracy"]);
    let after = after["loss"].as_f64().unwrap();
    let before = before.loss;
    assert!(after < before - 0.5, "dev loss {before} -> {after}");

    // The adapter folder is PEFT's layout and loads back into a fresh model to the same loss.
    let cfg_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((cfg_json["peft_type"].as_str(), cfg_json["task_type"].as_str(), cfg_json["r"].as_u64()), (Some("LORA"), Some("CAUSAL_LM"), Some(4)));
    let adapter = DecoderAdapter::open(&out).unwrap();
    assert!(adapter.tensors.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    let model = lora_model("qwen2");
    model.load_lora(&adapter.tensors).unwrap();
    let ex = examples("qwen2", FACTS.len() * 3);
    let (loss, count, _) = sft::score(&model, &ex, 256).unwrap();
    assert!((loss / count as f64 - after).abs() < 1e-3, "reloaded adapter: {} vs {after} (before {before})", loss / count as f64);
    for line in std::fs::read_to_string(out.join("train_log.jsonl")).unwrap().lines().take(1) {
        assert!(line.contains("\"loss\""));
    }

    // Interrupted after 12 steps and resumed: the same adapter, bit for bit.
    let short = config(20);
    let straight = dir.path().join("straight");
    let mut t = task(dir.path(), "qwen2", true, &short);
    train_loop::run(&mut t, &short, &straight, false, &LoopControl::default(), &mut |_| {}).unwrap();
    let resumed = dir.path().join("resumed");
    let mut t = task(dir.path(), "qwen2", true, &short);
    let stop = LoopControl { stop_after: Some(12), ..Default::default() };
    let s = train_loop::run(&mut t, &short, &resumed, false, &stop, &mut |_| {}).unwrap();
    assert_eq!(s.stop, zhiku_train::StopReason::Interrupted);
    let mut t = task(dir.path(), "qwen2", true, &short);
    train_loop::run(&mut t, &short, &resumed, true, &LoopControl::default(), &mut |_| {}).unwrap();
    let (a, b) = (DecoderAdapter::open(&straight).unwrap(), DecoderAdapter::open(&resumed).unwrap());
    for (name, ta) in &a.tensors {
        let (va, vb) = (ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.tensors[name].flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(va, vb, "{name} differs after resuming");
    }
}

/// Full fine-tuning through the loop: the dev loss falls, the model is written as a folder
/// (the base is one) that loads back to the same dev loss, and every weight moved.
#[test]
fn full_fine_tuning_learns_and_writes_a_model_that_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig { lr: 3e-3, ..config(30) };
    let train = write_data(dir.path());
    let parts = ModelParts::open(&tiny("qwen2"), false).unwrap();
    let opts = SftOptions { full: true, ..options(true) };
    let data = SftData::load(&parts, &train, Some(&train), None, cfg.max_length, &opts, cfg.seed).unwrap();
    let mut t = SftTask::new(parts, &tiny("qwen2"), data, &cfg, opts).unwrap();
    let before = t.evaluate().unwrap().loss;
    let out = dir.path().join("run");
    let summary = train_loop::run(&mut t, &cfg, &out, false, &LoopControl::default(), &mut |_| {}).unwrap();
    let after = summary.dev.as_ref().unwrap()["loss"].as_f64().unwrap();
    assert!(after < before - 1.0, "dev loss {before} -> {after}");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let reloaded = ModelParts::open(&out, false).unwrap();
    let base = zhiku_models::decoder::DecoderModel::from_hf_folder(&tiny("qwen2")).unwrap();
    let g = GraphDecoder::new(reloaded.model, &GraphOptions::cpu()).unwrap();
    let ex = examples("qwen2", FACTS.len() * 3);
    let (loss, count, _) = sft::score(&g, &ex, 256).unwrap();
    assert!((loss / count as f64 - after).abs() < 1e-3, "reloaded model: {} vs {after}", loss / count as f64);
    // Every weight changed (the embedding, norms and biases too).
    let (hf_cfg, new) = zhiku_models::decoder::hf::open(&out).unwrap();
    let (_, old) = zhiku_models::decoder::hf::open(&tiny("qwen2")).unwrap();
    use zhiku_models::decoder::WeightSource;
    for name in ["token_embd.weight", "blk.0.attn_norm.weight", "blk.1.attn_q.bias", "blk.1.ffn_down.weight", "output_norm.weight"] {
        let (a, b) = if name.ends_with("weight") && !name.contains("norm") { (new.matrix(name).unwrap().to_f32().unwrap(), old.matrix(name).unwrap().to_f32().unwrap()) } else { (new.vector(name).unwrap(), old.vector(name).unwrap()) };
        assert!(a.iter().zip(&b).any(|(x, y)| x != y), "{name} did not change");
    }
    assert_eq!(hf_cfg.n_layers, base.config.n_layers);
}

/// LoRA dropout: masks are a function of the pass's seed, so a recomputed layer draws the same
/// ones (the recomputing and keeping backward passes agree), the same seed gives the same
/// gradients, and dropout changes them.
#[test]
fn lora_dropout_masks_are_reproducible_across_recomputation() {
    let ex = examples("qwen2", 4);
    let parts = ModelParts::open(&tiny("qwen2"), false).unwrap();
    let spec = LoraSpec { rank: 4, alpha: 8.0, targets: PROJECTIONS.iter().map(|s| s.to_string()).collect(), seed: 3, dropout: 0.3 };
    let g = GraphDecoder::new(parts.model, &GraphOptions { lora: Some(spec), ..GraphOptions::cpu() }).unwrap();
    randomise_b(&g);
    let rows: Vec<Vec<&SftExample>> = ex.iter().map(|e| vec![e]).collect();
    let run = |recompute: bool, seed: Option<u64>| {
        let (l, grads) = sft::rows_pass(&g, &rows, 1.0, recompute, seed).unwrap();
        (l, collected(&g, &grads.unwrap()))
    };
    let (l1, g1) = run(true, Some(7));
    let (l2, g2) = run(false, Some(7));
    assert!((l1 - l2).abs() < 1e-6 * l1);
    assert_close(&g1, &g2, "recomputed vs kept, same masks");
    assert_eq!(run(true, Some(7)).1, g1, "the same seed gives the same gradients");
    let (l0, g0) = run(true, None);
    assert!((l0 - l1).abs() > 1e-6, "dropout changes the loss");
    assert!(g0.iter().zip(&g1).any(|(a, b)| a != b));
}
