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
    let dir = tempfile::tempdir().unwrap();
    let mut ex = examples_of(&tiny(name), &write_data(dir.path()));
    ex.truncate(n);
    ex
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
    SftOptions { rank: 4, alpha: 8.0, targets: PROJECTIONS.iter().map(|s| s.to_string()).collect(), packing, overlong: Overlong::Truncate, recompute: true, dev_fraction: 0.2, full: false, dropout: 0.0, init_adapter: None }
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

/// Training steps equal PyTorch + PEFT's (`tests/fixtures/tiny-llm/make_peft_training.py`, run
/// in float64 as the exact reference): from the same adapter (`--init-adapter`), on the same
/// conversations with the same recipe, zhiku makes the same token ids and learn flags, each
/// step's loss and gradient norm, every gradient element at a state along the way, and the same
/// adapter after the last step. (Not gemma3: its tiny tokenizer has no pieces for spaces or
/// newlines, which transformers then cannot encode.)
#[test]
fn training_steps_equal_pytorch_and_peft() {
    let dir = tempfile::tempdir().unwrap();
    let data_path = tiny("sft-facts.jsonl");
    for name in ["qwen2", "llama"] {
        let fixture = tiny(&format!("peft-trained-{name}"));
        let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap()).unwrap();
        let steps = reference["steps"].as_u64().unwrap();
        let cfg = TrainConfig {
            epochs: steps as usize,
            batch_size: 8,
            lr: reference["lr"].as_f64().unwrap(),
            max_length: 64,
            max_steps: None,
            eval_steps: Some(steps),
            warmup_ratio: 0.0,
            schedule: "constant".into(),
            weight_decay: reference["weight_decay"].as_f64().unwrap(),
            max_grad_norm: reference["max_grad_norm"].as_f64(),
            metric: "loss".into(),
            ..TrainConfig::default()
        };
        let task_from = |start_dir: PathBuf| {
            let start = DecoderAdapter::open(&start_dir).unwrap();
            let opts = SftOptions { rank: start.spec.rank, alpha: start.spec.alpha, targets: start.spec.targets.clone(), init_adapter: Some(start_dir), ..options(false) };
            let parts = ModelParts::open(&tiny(name), false).unwrap();
            let data = SftData::load(&parts, &data_path, Some(&data_path), None, cfg.max_length, &opts, cfg.seed).unwrap();
            (SftTask::new(parts, &tiny(name), data, &cfg, opts).unwrap(), start)
        };
        let (mut t, start) = task_from(tiny(&format!("peft-lora-{name}")));
        let ids: Vec<Vec<u32>> = serde_json::from_value(reference["ids"].clone()).unwrap();
        let learn: Vec<Vec<bool>> = serde_json::from_value(reference["learn"].clone()).unwrap();
        assert_eq!(t.train_len(), 8, "{name}: one batch of eight conversations");
        let encoded = examples_of(&tiny(name), &data_path);
        for (i, e) in encoded.iter().enumerate() {
            assert_eq!((&e.tokens, &e.learn), (&ids[i], &learn[i]), "{name}: conversation {i}'s tokens or learn flags");
        }

        // Five steps through the loop: AdamW, clipping, the schedule.
        let mut seen = Vec::new();
        train_loop::run(&mut t, &cfg, &dir.path().join(name), false, &LoopControl::default(), &mut |e| {
            if let zhiku_train::TrainEvent::Step(r) = e {
                seen.push((r.loss, r.grad_norm));
            }
        })
        .unwrap();
        assert_eq!(seen.len() as u64, steps);
        // Adam turns float32 rounding into differences that grow step by step (float32 PyTorch
        // itself ends up to 2e-4 from float64 in a gradient norm and 9e-4 in the adapter, as
        // the fixture records), so later steps get looser bounds than the first.
        for (k, (loss, norm)) in seen.iter().enumerate() {
            let (want_loss, want_norm) = (reference["losses"][k].as_f64().unwrap(), reference["grad_norms"][k].as_f64().unwrap());
            let norm_bound = if k == 0 { 2e-5 } else { 5e-3 };
            assert!((loss - want_loss).abs() <= 1e-5 * want_loss, "{name} step {}: loss {loss} vs {want_loss}", k + 1);
            assert!((norm - want_norm).abs() <= norm_bound * want_norm, "{name} step {}: gradient norm {norm} vs {want_norm}", k + 1);
        }
        let (ours, theirs) = (DecoderAdapter::open(&dir.path().join(name)).unwrap(), DecoderAdapter::open(&fixture).unwrap());
        assert_eq!(ours.tensors.len(), theirs.tensors.len());
        for (tensor, want) in &theirs.tensors {
            let got = ours.tensors.get(tensor).unwrap_or_else(|| panic!("{name}: no {tensor}")).flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let before = start.tensors[tensor].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let moved = want.iter().zip(&before).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(moved > 0.0, "{name}: {tensor} did not move");
            assert!(diff <= 1e-2 * moved, "{name}: {tensor} differs by {diff} after {steps} steps (training moved it up to {moved})");
        }

        // Every gradient element at the state after two steps, against float64's: what Adam
        // sees, element by element (float32 PyTorch: median 3e-6, 99th percentile 2e-4).
        let probe = fixture.join(format!("step-{}", reference["probe_step"]));
        let (t, _) = task_from(probe.clone());
        let all: Vec<usize> = (0..8).collect();
        let (_, grads) = t.accumulate(&[&all[..]], 0, 1.0).unwrap();
        let want = candle_core::safetensors::load(probe.join("gradients.safetensors"), &candle_core::Device::Cpu).unwrap();
        assert_eq!(want.len(), t.params().len());
        let mut errors = Vec::new();
        for (n, v) in t.params().iter() {
            let got = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = want.get(n).unwrap_or_else(|| panic!("{name}: PEFT has no gradient for {n}")).flatten_all().unwrap().to_vec1::<f32>().unwrap();
            errors.extend(got.iter().zip(&want).map(|(a, b)| ((a - b).abs() / (b.abs() + 1e-8)) as f64));
        }
        errors.sort_by(f64::total_cmp);
        let at = |q: f64| errors[((errors.len() - 1) as f64 * q) as usize];
        assert!(at(0.5) < 2e-5 && at(0.99) < 2e-3, "{name}: gradient elements' relative errors: median {:.1e}, 99th percentile {:.1e}", at(0.5), at(0.99));
    }
}

/// The training examples of a data file as the SFT reader encodes them for a model.
fn examples_of(model: &Path, path: &Path) -> Vec<SftExample> {
    let parts = ModelParts::open(model, false).unwrap();
    let convs = sft::read_conversations(path).unwrap();
    let f = Formatter { tokenizer: &parts.tokenizer, template: &parts.template };
    f.encode_all(path, &convs, 64, Overlong::Truncate).unwrap().0
}

/// A starting adapter of another shape is refused, naming both shapes.
#[test]
fn a_starting_adapter_of_another_shape_is_refused() {
    let data_path = tiny("sft-facts.jsonl");
    let parts = ModelParts::open(&tiny("qwen2"), false).unwrap();
    let opts = SftOptions { rank: 8, init_adapter: Some(tiny("peft-lora-qwen2")), ..options(false) };
    let cfg = config(1);
    let data = SftData::load(&parts, &data_path, Some(&data_path), None, cfg.max_length, &opts, cfg.seed).unwrap();
    let err = SftTask::new(parts, &tiny("qwen2"), data, &cfg, opts).err().expect("a rank-4 adapter cannot start a rank-8 run").to_string();
    assert!(err.contains("rank 4") && err.contains("rank 8"), "{err}");
}
