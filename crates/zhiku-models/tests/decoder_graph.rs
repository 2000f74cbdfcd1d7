//! The differentiable decoder ([`GraphDecoder`]) against the generation engine, and its
//! gradients:
//! - logits at every position equal the engine's exact arithmetic on the tiny random qwen2,
//!   llama and gemma3 models (sliding window of 4 over 12 tokens), in both weight forms
//!   (quantised blocks, and the dense tensors a GPU uses), and a padded batch gives each
//!   sequence its own logits;
//! - on the real Qwen2.5-Coder-0.5B GGUF (Q5_0, Q8_0, Q4_K and Q6_K tensors) the gradients
//!   of LoRA adapters on every projection through the quantised weights (our backward pass)
//!   equal candle's own autograd over the dequantised weights, and every parameter gets one;
//! - central finite differences agree with the gradients on the tiny models.

use candle_core::{DType, Device, Tensor, Var};
use std::path::PathBuf;
use zhiku_models::decoder::graph::{GraphDecoder, GraphOptions, LoraSpec, PROJECTIONS};
use zhiku_models::decoder::{DecoderModel, Logits, Step};
use zhiku_models::gguf::GgufFile;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny(name: &str) -> DecoderModel {
    DecoderModel::from_hf_folder(&root().join("tests/fixtures/tiny-llm").join(name)).unwrap()
}

fn qwen() -> DecoderModel {
    let base = std::env::var_os("ZHIKU_MODELS").map(PathBuf::from).unwrap_or_else(|| root().join(".cache/models"));
    let path = base.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(path.is_file(), "{} missing: run scripts/fetch-llms.sh first", path.display());
    DecoderModel::from_gguf(&GgufFile::open(&path).unwrap()).unwrap()
}

fn engine_logits(model: &DecoderModel, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(tokens.len());
    model.forward(&mut [Step { cache: &mut cache, tokens, logits: Logits::All }]).unwrap()
}

fn graph_logits(g: &GraphDecoder, batch: &[&[u32]]) -> Vec<Vec<Vec<f32>>> {
    let h = g.hidden(batch).unwrap();
    let logits = g.logits(&h.states).unwrap().to_dtype(DType::F32).unwrap().to_vec3::<f32>().unwrap();
    logits.into_iter().zip(&h.lengths).map(|(rows, &len)| rows.into_iter().take(len).collect()).collect()
}

fn worst_rel(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let range = y.iter().cloned().fold(f32::NEG_INFINITY, f32::max) - y.iter().cloned().fold(f32::INFINITY, f32::min);
            x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / range
        })
        .fold(0f32, f32::max)
}

#[test]
fn graph_logits_equal_the_engine_on_tiny_models() {
    for name in ["qwen2", "llama", "gemma3"] {
        let mut engine = tiny(name);
        engine.exact = true;
        let vocab = engine.config.vocab as u32;
        let long: Vec<u32> = (0..12).map(|i| (i * 29 + 3) % vocab).collect();
        let short: Vec<u32> = (0..7).map(|i| (i * 13 + 5) % vocab).collect();
        let (expect_long, expect_short) = (engine_logits(&engine, &long), engine_logits(&engine, &short));
        for dense in [false, true] {
            let g = GraphDecoder::new(tiny(name), &GraphOptions { dense, ..GraphOptions::cpu() }).unwrap();
            let got = graph_logits(&g, &[&long, &short]);
            for (seq, expect) in [(&got[0], &expect_long), (&got[1], &expect_short)] {
                let worst = worst_rel(seq, expect);
                assert!(worst < 1e-5, "{name} dense={dense}: logits differ by {worst} of their range");
            }
        }
    }
}

/// Mean next-token cross-entropy over a batch (the padding positions excluded).
fn loss(g: &GraphDecoder, batch: &[&[u32]]) -> Tensor {
    let h = g.hidden(batch).unwrap();
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (s, seq) in batch.iter().enumerate() {
        for p in 0..seq.len() - 1 {
            rows.push(h.states.get(s).unwrap().get(p).unwrap());
            targets.push(seq[p + 1]);
        }
    }
    let states = Tensor::stack(&rows, 0).unwrap();
    let logits = g.logits(&states).unwrap();
    let targets = Tensor::new(targets.as_slice(), g.device()).unwrap();
    candle_nn::loss::cross_entropy(&logits, &targets).unwrap()
}

/// Gives every adapter's B random values (they start at zero, which would leave A without a
/// gradient), the same in every model built with this seed.
fn randomise_b(g: &GraphDecoder, std: f32) {
    for (i, (name, var)) in g.trainable().into_iter().enumerate() {
        if name.contains("lora_B") {
            let (r, c) = var.as_tensor().dims2().unwrap();
            let v: Vec<f64> = (0..r * c).map(|k| ((((k + 7 * i) as f64) * 0.618).fract() - 0.5) * 2.0 * std as f64).collect();
            set(&var, v);
        }
    }
}

fn all_projections(rank: usize) -> LoraSpec {
    LoraSpec { rank, alpha: 2.0 * rank as f64, targets: PROJECTIONS.iter().map(|s| s.to_string()).collect(), seed: 11, dropout: 0.0 }
}

#[test]
fn gradients_through_quantised_weights_equal_autograd_over_dequantised_weights() {
    let tokens: [&[u32]; 2] = [&[151644, 872, 198, 9707, 11, 1879, 0, 151645, 198, 151644], &[40, 1079, 264, 1273, 13]];
    let grads = |dense: bool| {
        let g = GraphDecoder::new(qwen(), &GraphOptions { dense, lora: Some(all_projections(4)), ..GraphOptions::cpu() }).unwrap();
        randomise_b(&g, 0.02);
        let l = loss(&g, &tokens);
        let store = l.backward().unwrap();
        let named: Vec<(String, Vec<f32>)> =
            g.trainable().into_iter().map(|(n, v)| (n, store.get(v.as_tensor()).expect("a gradient").flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
        (l.to_scalar::<f32>().unwrap(), named)
    };
    let (loss_blocks, blocks) = grads(false);
    let (loss_dense, dense) = grads(true);
    assert_eq!(blocks.len(), 24 * 7 * 2, "an A and a B for each projection of each layer");
    assert!((loss_blocks - loss_dense).abs() < 1e-4 * loss_dense.abs(), "loss {loss_blocks} vs {loss_dense}");
    for ((name, a), (_, b)) in blocks.iter().zip(&dense) {
        let norm = b.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(norm > 0.0, "{name} has no gradient");
        let diff = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
        assert!(diff <= 1e-3 * norm, "{name}: gradients differ by {diff} (norm {norm})");
    }
}

/// In f64 (dense weights), where a difference quotient with a small step is exact enough to
/// check every sampled entry tightly.
#[test]
fn gradients_agree_with_finite_differences_on_tiny_models() {
    for name in ["qwen2", "llama", "gemma3"] {
        let opts = GraphOptions { dtype: DType::F64, dense: true, lora: Some(all_projections(2)), ..GraphOptions::cpu() };
        let g = GraphDecoder::new(tiny(name), &opts).unwrap();
        randomise_b(&g, 0.3);
        let (seq_a, seq_b) = two_sequences(&g);
        let batch: [&[u32]; 2] = [&seq_a, &seq_b];
        let store = loss(&g, &batch).backward().unwrap();
        let params = g.trainable();
        assert!(!params.is_empty());
        // The entry with the largest gradient, and one other, of every third tensor.
        for (pi, (pname, var)) in params.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
            let grad = values_of(store.get(var.as_tensor()).unwrap());
            let k = (0..grad.len()).max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs())).unwrap();
            for k in [k, (k * 7 + 3) % grad.len()] {
                check_entry(&format!("{name} #{pi} {pname}"), var, k, grad[k], || loss(&g, &batch).to_scalar::<f64>().unwrap());
            }
        }
    }
}

/// Two token sequences of different lengths (the second padded in a batch).
fn two_sequences(g: &GraphDecoder) -> (Vec<u32>, Vec<u32>) {
    let vocab = g.config.vocab as u32;
    ((0..9).map(|i| (i * 31 + 2) % vocab).collect(), (0..6).map(|i| (i * 17 + 1) % vocab).collect())
}

/// A central difference quotient of `f` in entry `k` of `var` against the gradient `analytic`.
fn check_entry(what: &str, var: &Var, k: usize, analytic: f64, f: impl Fn() -> f64) {
    let values = values_of(var.as_tensor());
    let eps = 1e-6;
    let at = |delta: f64| {
        let mut v = values.clone();
        v[k] += delta;
        set(var, v);
        f()
    };
    let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
    set(var, values.clone());
    assert!((numeric - analytic).abs() <= 1e-5 * analytic.abs().max(1e-2), "{what}[{k}]: finite difference {numeric} vs gradient {analytic}");
}

fn values_of(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

fn set(var: &Var, values: Vec<f64>) {
    let t = var.as_tensor();
    var.set(&Tensor::from_vec(values, t.shape().clone(), &Device::Cpu).unwrap().to_dtype(t.dtype()).unwrap()).unwrap();
}

#[test]
fn bad_batches_and_adapters_are_errors() {
    let g = GraphDecoder::new(tiny("qwen2"), &GraphOptions::cpu()).unwrap();
    assert!(g.hidden(&[]).is_err());
    assert!(g.hidden(&[&[]]).unwrap_err().to_string().contains("at least one token"));
    let vocab = g.config.vocab as u32;
    assert!(g.hidden(&[&[vocab]]).unwrap_err().to_string().contains("outside the vocabulary"));
    let bad = LoraSpec { targets: vec!["qkv".into()], ..all_projections(2) };
    let err = GraphDecoder::new(tiny("qwen2"), &GraphOptions { lora: Some(bad), ..GraphOptions::cpu() }).err().unwrap();
    assert!(err.to_string().contains("unknown LoRA target 'qkv'"), "{err}");
}

/// Full fine-tuning: every weight (embedding, projections, biases, norms) is a variable with a
/// gradient, and the gradients agree with finite differences (f64).
#[test]
fn full_fine_tuning_gradients_agree_with_finite_differences() {
    for name in ["qwen2", "llama", "gemma3"] {
        let opts = GraphOptions { dtype: DType::F64, full: true, ..GraphOptions::cpu() };
        let g = GraphDecoder::new(tiny(name), &opts).unwrap();
        let (seq_a, seq_b) = two_sequences(&g);
        let batch: [&[u32]; 2] = [&seq_a, &seq_b];
        let store = loss(&g, &batch).backward().unwrap();
        let params = g.trainable();
        // The embedding, every layer's weights and norms, the final norm (and biases, q/k norms).
        let per_layer = if name == "qwen2" { 12 } else if name == "gemma3" { 13 } else { 9 };
        let head = if g.trainable().iter().any(|(n, _)| n == "output.weight") { 2 } else { 1 };
        assert_eq!(params.len(), 1 + g.config.n_layers * per_layer + head, "{name}: {:?}", params.iter().map(|p| &p.0).collect::<Vec<_>>());
        for (pname, var) in &params {
            let grad = values_of(store.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: {pname} has no gradient")));
            assert!(grad.iter().any(|v| *v != 0.0), "{name}: {pname} has a zero gradient");
        }
        for (pi, (pname, var)) in params.iter().enumerate().filter(|(i, (n, _))| i % 4 == 0 || n.contains("norm") || n.contains("embd") || n.contains("bias")) {
            let grad = values_of(store.get(var.as_tensor()).unwrap());
            let k = (0..grad.len()).max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs())).unwrap();
            check_entry(&format!("{name} #{pi} {pname}"), var, k, grad[k], || loss(&g, &batch).to_scalar::<f64>().unwrap());
        }
    }
}
