//! Speed measurements for `zhiku bench`: a full training step (forward, backward, AdamW) and
//! batched inference on synthetic full-length sequences, with FLOP counts to relate the
//! timings to the hardware's peak.

use crate::loss::cross_entropy_sum;
use crate::optim::{AdamW, AdamWConfig};
use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::time::Instant;
use zhiku_models::{BertConfig, ClassifierConfig, DropoutRng, EncodedBatch, ModelFolder, Pooling, Precision, ProblemType, SequenceClassifier};

#[derive(Debug, Clone, Serialize)]
pub struct TrainBench {
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub median_s: f64,
    /// Forward (with the loss) and backward time of the slowest data-parallel shard.
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    pub gflop_per_step: f64,
    pub gflops: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InferBench {
    pub batch: usize,
    pub seq: usize,
    pub batches: usize,
    pub seq_per_s: f64,
    pub gflop_per_seq: f64,
    pub gflops: f64,
}

/// Forward FLOPs of one sequence of `seq` tokens through the encoder (multiply-add = 2 FLOPs):
/// per token and layer `8h² + 4hi` in the dense layers and `4·seq·h` in attention.
pub fn forward_flops(cfg: &BertConfig, seq: usize) -> f64 {
    let (h, i, l) = (cfg.hidden_size as f64, cfg.intermediate_size as f64, cfg.num_hidden_layers as f64);
    seq as f64 * l * (8.0 * h * h + 4.0 * h * i + 4.0 * seq as f64 * h)
}

fn synthetic_batch(cfg: &BertConfig, batch: usize, seq: usize, device: &Device, seed: u64) -> Result<EncodedBatch> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Ordinary tokens: above the special and unused ids at the start of a BERT vocabulary
    // (the first 1000), or the upper half of a small test vocabulary.
    let low = (cfg.vocab_size / 2).min(1000) as u32;
    let ids: Vec<u32> = (0..batch * seq).map(|_| rng.random_range(low..(cfg.vocab_size as u32).max(low + 1))).collect();
    Ok(EncodedBatch {
        input_ids: Tensor::from_vec(ids, (batch, seq), device)?,
        token_type_ids: Tensor::zeros((batch, seq), candle_core::DType::U32, device)?,
        attention_mask: Tensor::ones((batch, seq), candle_core::DType::U32, device)?,
        lengths: vec![seq; batch],
    })
}

fn head() -> ClassifierConfig {
    ClassifierConfig { labels: (0..5).map(|i| format!("c{i}")).collect(), pooling: Pooling::Pooler, problem_type: ProblemType::SingleLabel, thresholds: None, text_pairs: false }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One timed training step as the trainer runs it; `precision` chooses the compute type over f32
/// master weights (fp16 runs without loss scaling here: it changes no timing).
pub fn train_step(folder: &ModelFolder, batch: usize, seq: usize, steps: usize, device: &Device, precision: Precision) -> Result<TrainBench> {
    let mut model = SequenceClassifier::from_folder(folder, Some(head()), 0, device)?;
    model.set_precision(precision);
    let mut opt = AdamW::new(&model.params, AdamWConfig::default())?;
    let data = synthetic_batch(&folder.config, batch, seq, device, 1)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 5).collect();
    let (mut total, mut fwd, mut bwd, mut upd) = (vec![], vec![], vec![], vec![]);
    for step in 0..steps + 1 {
        let t0 = Instant::now();
        // The trainer's own step: data-parallel shards, each with its forward and backward.
        let pass = crate::sharded::forward_backward(&model, &data, |part, rows| {
            let logits = model.forward(part, Some(&mut DropoutRng::for_step(0, step as u64, 0).for_rows(rows.start)))?;
            let (loss, _) = cross_entropy_sum(&logits, &labels[rows], None, 0.0)?;
            Ok((loss / batch as f64)?)
        })?;
        let t2 = Instant::now();
        opt.update(&pass.grads, 1e-5, 1.0)?;
        device.synchronize()?;
        let t3 = Instant::now();
        if step > 0 {
            // The first step pays one-off allocation and thread-pool start-up.
            fwd.push(pass.forward_s);
            bwd.push(pass.backward_s);
            upd.push((t3 - t2).as_secs_f64());
            total.push((t3 - t0).as_secs_f64());
        }
    }
    let gflop = 3.0 * batch as f64 * forward_flops(&folder.config, seq) / 1e9;
    let med = median(total);
    Ok(TrainBench { batch, seq, steps, median_s: med, forward_s: median(fwd), backward_s: median(bwd), optimizer_s: median(upd), gflop_per_step: gflop, gflops: gflop / med })
}

/// Inference throughput; `int8` quantises the encoder's linear layers first.
pub fn inference(folder: &ModelFolder, batch: usize, seq: usize, batches: usize, device: &Device, int8: bool, precision: Precision) -> Result<InferBench> {
    let mut model = SequenceClassifier::for_inference(folder, Some(head()), device)?;
    model.set_precision(precision);
    if int8 {
        model.quantize_int8()?;
    }
    let data = synthetic_batch(&folder.config, batch, seq, device, 2)?;
    model.forward(&data, None)?.to_dtype(candle_core::DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    let t0 = Instant::now();
    for _ in 0..batches {
        model.forward(&data, None)?.to_dtype(candle_core::DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    }
    device.synchronize()?;
    let secs = t0.elapsed().as_secs_f64();
    let seq_per_s = (batch * batches) as f64 / secs;
    let gflop = forward_flops(&folder.config, seq) / 1e9;
    Ok(InferBench { batch, seq, batches, seq_per_s, gflop_per_seq: gflop, gflops: gflop * seq_per_s })
}

/// Peak resident memory of this process so far, in MiB (Linux; `None` elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// GFLOP/s of a large square f32 matrix multiply on `device`: the practical ceiling that the
/// encoder's dense layers can approach on this machine.
pub fn gemm_ceiling(device: &Device) -> Result<f64> {
    let n = 2048;
    let a = Tensor::ones((n, n), candle_core::DType::F32, device)?;
    let b = Tensor::ones((n, n), candle_core::DType::F32, device)?;
    a.matmul(&b)?.sum_all()?.to_scalar::<f32>()?;
    let reps = 3;
    let t0 = Instant::now();
    for _ in 0..reps {
        a.matmul(&b)?;
    }
    device.synchronize()?;
    Ok(reps as f64 * 2.0 * (n * n * n) as f64 / t0.elapsed().as_secs_f64() / 1e9)
}

/// Measured peak FMA throughput of this CPU in GFLOP/s, all `threads` cores at once: each thread
/// runs 12 independent chains of the widest FMA the CPU has (512-bit with AVX-512, else 256-bit,
/// else scalar) with no memory traffic, so it is the number no kernel can beat. Takes ~0.3 s.
pub fn fma_peak_gflops(threads: usize) -> f64 {
    let iters: u64 = 40_000_000;
    let rates: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(move || {
                    let t0 = Instant::now();
                    let flops = fma_chains(iters);
                    flops / t0.elapsed().as_secs_f64() / 1e9
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).collect()
    });
    rates.iter().sum()
}

/// Runs `iters` rounds of 12 dependent FMA chains; returns the FLOPs done.
fn fma_chains(iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { fma_x86::chains512(iters) };
        }
        if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX and FMA (checked above).
            return unsafe { fma_x86::chains256(iters) };
        }
    }
    let mut acc = [0f32; 12];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(0.999, 0.0001);
        }
    }
    std::hint::black_box(acc);
    iters as f64 * 12.0 * 2.0
}

#[cfg(target_arch = "x86_64")]
mod fma_x86 {
    use std::arch::x86_64::*;

    /// One function per vector width: 12 FMA chains of `$lanes`-wide vectors.
    macro_rules! chains {
        ($name:ident, $feature:literal, $set1:ident, $zero:ident, $fma:ident, $lanes:expr) => {
            #[target_feature(enable = $feature)]
            pub unsafe fn $name(iters: u64) -> f64 {
                let (x, y) = ($set1(0.999), $set1(0.0001));
                let mut a = [$zero(); 12];
                for _ in 0..iters {
                    for v in a.iter_mut() {
                        *v = $fma(*v, x, y);
                    }
                }
                std::hint::black_box(a);
                iters as f64 * 12.0 * $lanes * 2.0
            }
        };
    }

    chains!(chains512, "avx512f", _mm512_set1_ps, _mm512_setzero_ps, _mm512_fmadd_ps, 16.0);
    chains!(chains256, "avx,fma", _mm256_set1_ps, _mm256_setzero_ps, _mm256_fmadd_ps, 8.0);
}
