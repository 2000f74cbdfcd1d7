//! Fused CPU kernels with hand-written backward passes, as candle custom ops.
//!
//! Composed from candle's element-wise ops, LayerNorm, the attention softmax, GELU and dropout
//! each cost several full passes over memory plus a temporary per op, forward and backward;
//! profiles showed these, not the matrix multiplies, dominating a training step. Each op here is
//! one parallel pass forward and one backward. On other devices (CUDA) the composed
//! differentiable versions in `layers.rs` are used, so behaviour is the same everywhere; tests
//! check the fused and composed versions agree, values and gradients.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: expected f32") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{what}: expected a contiguous tensor") };
    Ok(&v[a..b])
}

/// A new vector of `n` values written by `fill(start, chunk)` over parallel chunks, each chunk
/// covering `start..start + chunk.len()`; `fill` must write every element of its chunk. Saves
/// zeroing memory that is overwritten anyway.
fn par_fill(n: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    const CHUNK: usize = 16384;
    let mut out: Vec<f32> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n].par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| fill(i * CHUNK, c));
    // SAFETY: every chunk of the first n elements was written by `fill`.
    unsafe { out.set_len(n) };
    out
}

/// Whether the fused CPU kernels apply to these tensors.
pub fn fused_ok(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && std::env::var_os("ZHIKU_NO_FUSED").is_none()
}

/// Rows per parallel task: enough work per task to amortise scheduling.
fn rows_per_task(rows: usize, width: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let by_threads = rows.div_ceil(threads * 4).max(1);
    let min_rows = (16384 / width.max(1)).max(1);
    by_threads.max(min_rows).min(rows.max(1))
}

// ---------------------------------------------------------------- LayerNorm

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "layer norm input")?;
        let w = slice(s2, l2, "layer norm weight")?;
        let b = slice(s3, l3, "layer norm bias")?;
        let h = w.len();
        let mut out = vec![0f32; x.len()];
        let chunk = rows_per_task(x.len() / h, h) * h;
        out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(o, xs)| {
            for (orow, xrow) in o.chunks_exact_mut(h).zip(xs.chunks_exact(h)) {
                let (mean, rstd) = moments(xrow, self.eps);
                for i in 0..h {
                    orow[i] = (xrow[i] - mean) * rstd * w[i] + b[i];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = w.elem_count();
        let rows = x.elem_count() / h;
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormBwd { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows, 1)?.reshape(h)?;
        let db = packed.narrow(0, rows + 1, 1)?.reshape(h)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

#[inline]
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let h = row.len() as f32;
    let mean = row.iter().sum::<f32>() / h;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Backward of LayerNorm, packed as `[rows + 2, h]`: dx rows, then dw, then db.
struct LayerNormBwd {
    eps: f32,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "fused-layer-norm-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "layer norm input")?;
        let w = slice(s2, l2, "layer norm weight")?;
        let g = slice(s3, l3, "layer norm grad")?;
        let h = w.len();
        let rows = x.len() / h;
        let mut out = vec![0f32; (rows + 2) * h];
        let (dx_all, dwdb) = out.split_at_mut(rows * h);
        let chunk = rows_per_task(rows, h) * h;
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx_all
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .zip(g.par_chunks(chunk))
            .map(|((dx, xs), gs)| {
                let mut dw = vec![0f32; h];
                let mut db = vec![0f32; h];
                let mut xhat = vec![0f32; h];
                for ((dxr, xr), gr) in dx.chunks_exact_mut(h).zip(xs.chunks_exact(h)).zip(gs.chunks_exact(h)) {
                    let (mean, rstd) = moments(xr, self.eps);
                    let (mut sum_g, mut sum_gx) = (0f32, 0f32);
                    for i in 0..h {
                        xhat[i] = (xr[i] - mean) * rstd;
                        let gw = gr[i] * w[i];
                        sum_g += gw;
                        sum_gx += gw * xhat[i];
                        dw[i] += gr[i] * xhat[i];
                        db[i] += gr[i];
                    }
                    let (mg, mgx) = (sum_g / h as f32, sum_gx / h as f32);
                    for i in 0..h {
                        dxr[i] = rstd * (gr[i] * w[i] - mg - xhat[i] * mgx);
                    }
                }
                (dw, db)
            })
            .collect();
        let (dw_out, db_out) = dwdb.split_at_mut(h);
        for (dw, db) in partials {
            for i in 0..h {
                dw_out[i] += dw[i];
                db_out[i] += db[i];
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, h))))
    }
}

/// LayerNorm over the last dimension: fused on the CPU, composed elsewhere.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> anyhow::Result<Tensor> {
    if fused_ok(x) {
        Ok(x.contiguous()?.apply_op3(w, b, LayerNormOp { eps: eps as f32 })?)
    } else {
        crate::layers::layer_norm_composed(x, w, b, eps)
    }
}

// ---------------------------------------------------------------- masked softmax

/// `softmax(scores + mask)` over the last dim; scores `[b, heads, q, k]`, mask `[b, k]` additive.
struct MaskedSoftmax;

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = slice(s1, l1, "attention scores")?;
        let m = slice(s2, l2, "attention mask")?;
        let dims = l1.shape().dims();
        let k = dims[dims.len() - 1];
        let batch = dims[0];
        let per_batch = s.len() / batch; // heads * q * k
        let mut out = vec![0f32; s.len()];
        let chunk = rows_per_task(s.len() / k, k) * k;
        out.par_chunks_mut(chunk).zip(s.par_chunks(chunk)).enumerate().for_each(|(ci, (o, sc))| {
            let base = ci * chunk;
            for (r, (orow, srow)) in o.chunks_exact_mut(k).zip(sc.chunks_exact(k)).enumerate() {
                let b = (base + r * k) / per_batch;
                let mrow = &m[b * k..(b + 1) * k];
                for i in 0..k {
                    orow[i] = srow[i] + mrow[i];
                }
                softmax_row(orow);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, _s: &Tensor, _m: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ds = res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd)?;
        Ok((Some(ds), None))
    }
}

/// `dS = P ⊙ (dP − Σ_row dP ⊙ P)`.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "fused-softmax-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = slice(s1, l1, "softmax output")?;
        let g = slice(s2, l2, "softmax grad")?;
        let dims = l1.shape().dims();
        let k = dims[dims.len() - 1];
        let mut out = vec![0f32; p.len()];
        let chunk = rows_per_task(p.len() / k, k) * k;
        out.par_chunks_mut(chunk).zip(p.par_chunks(chunk)).zip(g.par_chunks(chunk)).for_each(|((o, pc), gc)| {
            for ((orow, prow), grow) in o.chunks_exact_mut(k).zip(pc.chunks_exact(k)).zip(gc.chunks_exact(k)) {
                let dot: f32 = prow.iter().zip(grow).map(|(a, b)| a * b).sum();
                for i in 0..k {
                    orow[i] = prow[i] * (grow[i] - dot);
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Attention probabilities: `softmax(scores + mask)`; `mask` is additive `[batch, keys]`.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> anyhow::Result<Tensor> {
    if fused_ok(scores) {
        Ok(scores.contiguous()?.apply_op2(&mask.contiguous()?, MaskedSoftmax)?)
    } else {
        let (b, k) = mask.dims2()?;
        let m = mask.reshape((b, 1, 1, k))?;
        crate::layers::softmax_last(&scores.broadcast_add(&m)?)
    }
}

// ---------------------------------------------------------------- exp, erf, GELU

/// Sum with eight independent accumulators, so the loop vectorises (a single f32 accumulator
/// forces a serial chain of additions).
#[inline(always)]
pub fn sum8(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// In-place softmax of one row that already holds the logits.
#[inline(always)]
pub fn softmax_row(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for x in row.iter_mut() {
        *x = fast_exp(*x - max);
    }
    let inv = 1.0 / sum8(row);
    row.iter_mut().for_each(|x| *x *= inv);
}

/// `e^x` to about 2 ulp, written so loops over it vectorise (libm's `expf` is a call per
/// element): Cody–Waite reduction to `r ∈ [-ln2/2, ln2/2]`, a degree-6 polynomial, and the
/// power of two assembled in the exponent bits. Inputs below -87 give ~0, as they should here.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5·2²³: adding it rounds to the nearest integer, which then sits in the low mantissa
    // bits. Unlike `round()` and `as i32` (round-half-away and a saturating conversion, both
    // scalar code on x86), this keeps the loop in vector instructions.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let k = shifted - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // The low 23 bits of `shifted` hold k + 2²² (k in [-126, 127]); shifting them into the
    // exponent field gives 2^k.
    let k_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(k_bits.wrapping_add(127) << 23)
}

const SQRT_2_INV: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// erf with max abs error ~1.5e-7 (Abramowitz & Stegun 7.1.26, as PyTorch's vectorised erf):
/// one division, a degree-5 polynomial and one `fast_exp`, all of which vectorise.
#[inline]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let z = x.abs();
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
    let r = 1.0 - poly * fast_exp(-z * z);
    r.copysign(x)
}

/// Exact (erf) GELU in place, on one thread: for kernels that apply it to a block of their own
/// output while it is still in cache (the int8 linear layer's epilogue).
pub fn gelu_erf_in_place(xs: &mut [f32]) {
    for v in xs {
        *v = gelu_erf_one(*v);
    }
}

#[inline(always)]
fn gelu_erf_one(v: f32) -> f32 {
    0.5 * v * (1.0 + erf(v * SQRT_2_INV))
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "gelu input")?;
        let out = par_fill(x.len(), |start, o| {
            for (o, &v) in o.iter_mut().zip(&x[start..]) {
                o.write(gelu_erf_one(v));
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluErfBwd)?))
    }
}

struct GeluErfBwd;

impl CustomOp2 for GeluErfBwd {
    fn name(&self) -> &'static str {
        "fused-gelu-erf-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "gelu input")?;
        let g = slice(s2, l2, "gelu grad")?;
        let inv_sqrt_2pi = 0.398_942_3_f32;
        let out = par_fill(x.len(), |start, o| {
            for ((o, &v), &gr) in o.iter_mut().zip(&x[start..]).zip(&g[start..]) {
                let cdf = 0.5 * (1.0 + erf(v * SQRT_2_INV));
                let pdf = inv_sqrt_2pi * fast_exp(-0.5 * v * v);
                o.write(gr * (cdf + v * pdf));
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Exact (erf) GELU: fused on the CPU, candle's `gelu_erf` elsewhere.
pub fn gelu_erf(x: &Tensor) -> anyhow::Result<Tensor> {
    if fused_ok(x) {
        Ok(x.contiguous()?.apply_op1(GeluErf)?)
    } else {
        Ok(x.gelu_erf()?)
    }
}

// ---------------------------------------------------------------- dropout

/// `x ⊙ mask` whose backward is `grad ⊙ mask` only (candle's `mul` would also compute the
/// useless gradient with respect to the mask).
struct MaskMul;

impl CustomOp2 for MaskMul {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "dropout input")?;
        let m = slice(s2, l2, "dropout mask")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(16384).zip(x.par_chunks(16384)).zip(m.par_chunks(16384)).for_each(|((o, xs), ms)| {
            for ((o, a), b) in o.iter_mut().zip(xs).zip(ms) {
                *o = a * b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, mask: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.contiguous()?.apply_op2_no_bwd(mask, &MaskMulNoGrad)?), None))
    }
}

struct MaskMulNoGrad;

impl CustomOp2 for MaskMulNoGrad {
    fn name(&self) -> &'static str {
        "fused-dropout-bwd"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        MaskMul.cpu_fwd(s1, l1, s2, l2)
    }
}

/// Multiplies by a dropout mask (values 0 or 1/(1-p)).
pub fn apply_mask(x: &Tensor, mask: &Tensor) -> anyhow::Result<Tensor> {
    if fused_ok(x) {
        Ok(x.contiguous()?.apply_op2(mask, MaskMul)?)
    } else {
        Ok(x.mul(mask)?)
    }
}

/// A dropout mask from a counter-based generator (SplitMix64 of seed + index): the same seed
/// gives the same mask whatever the thread count, and generation is parallel.
pub fn dropout_mask(n: usize, p: f64, seed: u64) -> Vec<f32> {
    let scale = (1.0 / (1.0 - p)) as f32;
    let threshold = (p * u32::MAX as f64) as u32;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(16384).enumerate().for_each(|(ci, chunk)| {
        let base = (ci * 16384) as u64;
        for (i, o) in chunk.iter_mut().enumerate() {
            let r = (splitmix64(seed.wrapping_add(base + i as u64)) >> 32) as u32;
            *o = if r < threshold { 0.0 } else { scale };
        }
    });
    out
}

#[inline]
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------- cross-entropy

/// `loss_i = logsumexp(logits_i) − logits_i[target_i]` for each row of `[n, vocab]` logits.
/// The backward pass recomputes the softmax from the logits, so neither probabilities nor
/// log-probabilities are stored: with a vocabulary of 150k, that is what bounds the memory of
/// a language-model loss.
struct CrossEntropyRows(std::sync::Arc<Vec<u32>>);

fn check_targets(targets: &[u32], n: usize, vocab: usize) -> Result<()> {
    if targets.len() != n {
        candle_core::bail!("cross-entropy: {} targets for {n} rows", targets.len())
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("cross-entropy: target {t} is outside the vocabulary of {vocab}")
    }
    Ok(())
}

/// `(max, ln Σ exp(x − max))` of a row.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&x| fast_exp(x - max)).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += fast_exp(c[i] - max);
        }
    }
    max + (acc.iter().sum::<f32>() + tail).ln()
}

impl CustomOp1 for CrossEntropyRows {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "logits")?;
        let (n, v) = l.shape().dims2()?;
        check_targets(&self.0, n, v)?;
        let mut out = vec![0f32; n];
        out.par_iter_mut().zip(x.par_chunks(v)).zip(self.0.par_iter()).for_each(|((o, row), &t)| *o = log_sum_exp(row) - row[t as usize]);
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = CrossEntropyRowsBwd(self.0.clone());
        Ok(Some(logits.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

/// `dlogits_i = g_i · (softmax(logits_i) − onehot(target_i))`.
struct CrossEntropyRowsBwd(std::sync::Arc<Vec<u32>>);

impl CustomOp2 for CrossEntropyRowsBwd {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "logits")?;
        let g = slice(s2, l2, "loss gradient")?;
        let (n, v) = l1.shape().dims2()?;
        check_targets(&self.0, n, v)?;
        let lse: Vec<f32> = x.par_chunks(v).map(log_sum_exp).collect();
        let out = par_fill(n * v, |start, chunk| {
            // Chunks are whole numbers of elements, not rows: walk the rows they cover.
            let mut i = 0;
            while i < chunk.len() {
                let (r, c0) = ((start + i) / v, (start + i) % v);
                let (row, lse) = (&x[r * v..(r + 1) * v], lse[r]);
                let take = (v - c0).min(chunk.len() - i);
                for (k, o) in chunk[i..i + take].iter_mut().enumerate() {
                    let c = c0 + k;
                    let p = fast_exp(row[c] - lse) - if c == self.0[r] as usize { 1.0 } else { 0.0 };
                    o.write(g[r] * p);
                }
                i += take;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Per-row cross-entropy of `[n, vocab]` logits against `targets` (fused on the CPU in f32;
/// composed candle operations elsewhere).
pub fn cross_entropy_rows(logits: &Tensor, targets: &[u32]) -> anyhow::Result<Tensor> {
    if fused_ok(logits) {
        return Ok(logits.contiguous()?.apply_op1(CrossEntropyRows(std::sync::Arc::new(targets.to_vec())))?);
    }
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let idx = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    Ok((lse - shifted.gather(&idx, 1)?)?.squeeze(1)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fused_cross_entropy_matches_the_composed_loss_and_gradient() {
        let (n, v) = (5, 37);
        let data: Vec<f32> = (0..n * v).map(|i| (i as f32 * 0.7321).sin() * 4.0).collect();
        let targets: Vec<u32> = vec![0, 36, 5, 17, 5];
        let weights = Tensor::new(&[1.0f32, 0.5, 2.0, 0.0, 1.5], &candle_core::Device::Cpu).unwrap();
        let run = |fused: bool| {
            let x = candle_core::Var::from_vec(data.clone(), (n, v), &candle_core::Device::Cpu).unwrap();
            let losses = if fused {
                cross_entropy_rows(x.as_tensor(), &targets).unwrap()
            } else {
                let lsm = crate::layers::softmax_last(x.as_tensor()).unwrap().log().unwrap();
                let idx = Tensor::new(targets.as_slice(), &candle_core::Device::Cpu).unwrap().unsqueeze(1).unwrap();
                lsm.gather(&idx, 1).unwrap().squeeze(1).unwrap().neg().unwrap()
            };
            let total = (losses.clone() * &weights).unwrap().sum_all().unwrap();
            let g = total.backward().unwrap().get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (losses.to_vec1::<f32>().unwrap(), g)
        };
        let (lf, gf) = run(true);
        let (lc, gc) = run(false);
        for (a, b) in lf.iter().zip(&lc).chain(gf.iter().zip(&gc)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let x = Tensor::new(&[[0f32, 1.0]], &candle_core::Device::Cpu).unwrap();
        assert!(cross_entropy_rows(&x, &[2]).is_err(), "a target outside the vocabulary");
    }

    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| ((splitmix64(seed * 1000 + i as u64) >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn fast_exp_is_accurate() {
        for i in -8700..8800 {
            let x = i as f32 * 0.01;
            let rel = ((fast_exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            assert!(rel < 5e-7, "exp({x}): rel err {rel}");
        }
        // Below the clamp the result is negligible, as softmax and erf need.
        assert!(fast_exp(-1e4) < 1e-37 && fast_exp(-1e30) >= 0.0);
    }

    #[test]
    fn erf_is_accurate() {
        for i in -400..400 {
            let x = i as f32 * 0.01;
            let want = libm_erf(x as f64);
            assert!((erf(x) as f64 - want).abs() < 5e-7, "erf({x}): {} vs {want}", erf(x));
        }
    }

    fn libm_erf(x: f64) -> f64 {
        // erf via the composed candle op (libm), as the reference.
        Tensor::new(&[x], &Device::Cpu).unwrap().erf().unwrap().to_vec1::<f64>().unwrap()[0]
    }

    /// Fused and composed versions agree in value and in every input's gradient.
    #[test]
    fn fused_ops_match_composed_ops() {
        let x = Var::from_tensor(&rand(&[3, 5, 24], 1)).unwrap();
        let w = Var::from_tensor(&rand(&[24], 2)).unwrap();
        let b = Var::from_tensor(&rand(&[24], 3)).unwrap();
        let up = rand(&[3, 5, 24], 4);
        let check = |fused: &dyn Fn() -> Tensor, composed: &dyn Fn() -> Tensor, vars: &[&Var], what: &str| {
            let (f, c) = (fused(), composed());
            assert!(max_diff(&f, &c) < 1e-5, "{what} values: {}", max_diff(&f, &c));
            let gf = (f * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (c * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for (i, v) in vars.iter().enumerate() {
                let d = max_diff(gf.get(v).unwrap(), gc.get(v).unwrap());
                assert!(d < 1e-4, "{what} grad {i}: {d}");
            }
        };
        check(
            &|| layer_norm(&x, &w, &b, 1e-12).unwrap(),
            &|| crate::layers::layer_norm_composed(&x, &w, &b, 1e-12).unwrap(),
            &[&x, &w, &b],
            "layer norm",
        );
        check(&|| gelu_erf(&x).unwrap(), &|| x.gelu_erf().unwrap(), &[&x], "gelu");
        let mask = Tensor::new(&[[0f32; 24], [0f32; 24], [0f32; 24]], &Device::Cpu).unwrap();
        let mut m = mask.to_vec2::<f32>().unwrap();
        m[1][20..].iter_mut().for_each(|v| *v = -1e9);
        let mask = Tensor::new(m, &Device::Cpu).unwrap();
        let s = Var::from_tensor(&rand(&[3, 2, 5, 24], 5)).unwrap();
        let up4 = rand(&[3, 2, 5, 24], 6);
        let pf = masked_softmax(&s, &mask).unwrap();
        let pc = crate::layers::softmax_last(&s.broadcast_add(&mask.reshape((3, 1, 1, 24)).unwrap()).unwrap()).unwrap();
        assert!(max_diff(&pf, &pc) < 1e-6);
        let gf = (pf * &up4).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (pc * &up4).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(gf.get(&s).unwrap(), gc.get(&s).unwrap()) < 1e-5);
        let dm = Tensor::from_vec(dropout_mask(3 * 5 * 24, 0.25, 9), (3, 5, 24), &Device::Cpu).unwrap();
        check(&|| apply_mask(&x, &dm).unwrap(), &|| x.mul(&dm).unwrap(), &[&x], "dropout");
        let kept = dropout_mask(100_000, 0.25, 1).iter().filter(|&&v| v > 0.0).count();
        assert!((kept as f64 / 100_000.0 - 0.75).abs() < 0.01);
    }
}
