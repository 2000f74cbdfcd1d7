//! Fused multi-head self-attention on the CPU: `softmax(QKᵀ·scale + mask)·V` per (batch, head),
//! reading Q, K, V straight from the projections' `[batch, seq, heads·dim]` layout and writing
//! the context in the same layout, so no transposed copies, no `[b, h, s, s]` score tensor
//! between ops, and one parallel task per (batch, head). The backward pass is hand-written;
//! attention-probability dropout uses a counter-based mask that forward and backward regenerate
//! identically from a seed.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::sync::Mutex;

pub struct FusedAttention {
    pub heads: usize,
    pub scale: f32,
    /// Additive key mask `[batch, seq]` (0 or a large negative).
    pub mask: Vec<f32>,
    /// Dropout on the attention probabilities: (p, seed).
    pub dropout: Option<(f32, u64)>,
    /// Whether a backward pass will follow (then the softmax outputs are kept for it).
    pub keep_for_backward: bool,
    /// Softmax outputs saved by the forward pass for the backward pass.
    probs: Mutex<Option<Vec<f32>>>,
}

impl FusedAttention {
    pub fn new(heads: usize, scale: f32, mask: Vec<f32>, dropout: Option<(f32, u64)>, keep_for_backward: bool) -> Self {
        Self { heads, scale, mask, dropout, keep_for_backward, probs: Mutex::new(None) }
    }
}

/// Self-attention context `[batch, seq, heads·dim]` from projections of the same layout.
pub fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, mask: &[f32], dropout: Option<(f32, u64)>) -> Result<Tensor> {
    let d = q.dim(2)? / heads;
    let keep = q.track_op() || k.track_op() || v.track_op();
    let op = FusedAttention::new(heads, 1.0 / (d as f32).sqrt(), mask.to_vec(), dropout, keep);
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the wrapper (which is Sync), not the raw pointer.
    fn at(&self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` with explicit row/column strides, single-threaded (the
/// parallelism is across (batch, head) tasks).
#[allow(clippy::too_many_arguments)]
unsafe fn mm(m: usize, n: usize, k: usize, dst: *mut f32, dst_rs: isize, accumulate: bool, lhs: *const f32, lhs_rs: isize, lhs_cs: isize, rhs: *const f32, rhs_rs: isize, rhs_cs: isize) {
    gemm(m, n, k, dst, 1, dst_rs, accumulate, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, 1.0, 1.0, false, false, false, Parallelism::None);
}

/// Where a block of queries stands among the keys, for [`attention_rows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryMask {
    /// Every query sees every key (an encoder; cross-attention).
    None,
    /// Query row `r` is at position `first + r` and sees keys `0..=first + r` (a decoder's new
    /// tokens against its cache, which already holds them).
    Causal { first: usize },
}

/// Multi-head attention on plain slices, for inference: per head, `softmax(Q Kᵀ · scale) · V`
/// for `n` query rows (`q_stride` floats apart) against `m` key and value rows (`kv_stride`
/// apart), the heads side by side in each row (`heads · d` wide); writes `out` as `[n, heads · d]`.
/// One task per head, each with its own `n × m` score buffer.
#[allow(clippy::too_many_arguments)]
pub fn attention_rows(q: &[f32], q_stride: usize, k: &[f32], v: &[f32], kv_stride: usize, n: usize, m: usize, heads: usize, d: usize, scale: f32, mask: QueryMask, out: &mut [f32]) {
    let hd = heads * d;
    assert!(q.len() >= (n.max(1) - 1) * q_stride + hd && k.len() >= (m.max(1) - 1) * kv_stride + hd && v.len() >= (m.max(1) - 1) * kv_stride + hd, "attention input shapes");
    assert_eq!(out.len(), n * hd, "attention output shape");
    if n == 0 {
        return;
    }
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..heads).into_par_iter().for_each_init(
        || vec![0f32; n * m],
        |p, h| {
            let base = h * d;
            // SAFETY: the strides cover the slices (asserted above); this task writes only the
            // columns base..base + d of `out`.
            unsafe {
                mm(n, m, d, p.as_mut_ptr(), m as isize, false, q.as_ptr().add(base), q_stride as isize, 1, k.as_ptr().add(base), 1, kv_stride as isize);
            }
            for (r, row) in p.chunks_exact_mut(m).enumerate() {
                let visible = match mask {
                    QueryMask::None => m,
                    QueryMask::Causal { first } => (first + r + 1).min(m),
                };
                for x in row[..visible].iter_mut() {
                    *x *= scale;
                }
                for x in row[visible..].iter_mut() {
                    *x = f32::NEG_INFINITY;
                }
                crate::kernels::softmax_row(row);
            }
            unsafe {
                mm(n, d, m, out_ptr.at(base), hd as isize, false, p.as_ptr(), m as isize, 1, v.as_ptr().add(base), kv_stride as isize, 1);
            }
        },
    );
}

/// One query per cache (beam search: each hypothesis's new token against its own
/// self-attention cache): query row `b` of `q` (`q_stride` floats apart) attends to the first
/// `m` rows of `caches[b]`'s keys and values (`kv_stride` apart); writes `out` as
/// `[caches, heads · d]`. One task per (cache, head), all in one parallel call, with plain dot
/// products and AXPYs: a GEMM call per head for a single query, and a parallel call per cache,
/// cost more than the arithmetic.
#[allow(clippy::too_many_arguments)]
pub fn attention_per_cache(q: &[f32], q_stride: usize, caches: &[(&[f32], &[f32])], kv_stride: usize, m: usize, heads: usize, d: usize, scale: f32, out: &mut [f32]) {
    let hd = heads * d;
    let n = caches.len();
    assert!(n == 0 || q.len() >= (n - 1) * q_stride + hd, "attention query shape");
    assert!(m > 0 && caches.iter().all(|(k, v)| k.len() >= (m - 1) * kv_stride + hd && v.len() >= (m - 1) * kv_stride + hd), "attention cache shapes");
    assert_eq!(out.len(), n * hd, "attention output shape");
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..n * heads).into_par_iter().for_each_init(
        || vec![0f32; m],
        |p, task| {
            let (b, base) = (task / heads, (task % heads) * d);
            let (k, v) = caches[b];
            let qh = &q[b * q_stride + base..b * q_stride + base + d];
            for (j, s) in p.iter_mut().enumerate() {
                *s = crate::slice_ops::dot(qh, &k[j * kv_stride + base..j * kv_stride + base + d]) * scale;
            }
            crate::kernels::softmax_row(p);
            // SAFETY: `out` is n × hd (asserted above); this task alone writes row b's columns
            // base..base + d.
            let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(b * hd + base), d) };
            o.fill(0.0);
            for (j, &w) in p.iter().enumerate() {
                crate::slice_ops::axpy(w, &v[j * kv_stride + base..j * kv_stride + base + d], o);
            }
        },
    );
}

fn dropout_keep(seed: u64, index: u64, threshold: u32) -> bool {
    let mut z = seed.wrapping_add(index).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 32) as u32 >= threshold
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("fused attention expects f32") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("fused attention expects contiguous inputs") };
    Ok(&v[a..b])
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, sq: &CpuStorage, lq: &Layout, sk: &CpuStorage, lk: &Layout, sv: &CpuStorage, lv: &Layout) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (contiguous_f32(sq, lq)?, contiguous_f32(sk, lk)?, contiguous_f32(sv, lv)?);
        let (b, s, hd) = lq.shape().dims3()?;
        let h = self.heads;
        let d = hd / h;
        let mut out = vec![0f32; b * s * hd];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let threshold = self.dropout.map(|(p, _)| (p as f64 * u32::MAX as f64) as u32);
        let keep_scale = self.dropout.map_or(1.0, |(p, _)| 1.0 / (1.0 - p));
        let one_head = |task: usize, p: &mut [f32]| {
            let (bi, hi) = (task / h, task % h);
            let base = bi * s * hd + hi * d;
            let mask = &self.mask[bi * s..(bi + 1) * s];
            unsafe {
                // P = Q Kᵀ (rows of Q and K are `hd` apart).
                mm(s, s, d, p.as_mut_ptr(), s as isize, false, q.as_ptr().add(base), hd as isize, 1, k.as_ptr().add(base), 1, hd as isize);
            }
            for row in p.chunks_exact_mut(s) {
                for (x, m) in row.iter_mut().zip(mask) {
                    *x = *x * self.scale + m;
                }
                crate::kernels::softmax_row(row);
            }
            let dropped;
            let pv: &[f32] = match (self.dropout, threshold) {
                (Some((_, seed)), Some(t)) => {
                    let start = (task * s * s) as u64;
                    dropped = p.iter().enumerate().map(|(i, &x)| if dropout_keep(seed, start + i as u64, t) { x * keep_scale } else { 0.0 }).collect::<Vec<f32>>();
                    &dropped
                }
                _ => p,
            };
            unsafe {
                // O = P V, written into the context rows of this head.
                mm(s, d, s, out_ptr.at(base), hd as isize, false, pv.as_ptr(), s as isize, 1, v.as_ptr().add(base), hd as isize, 1);
            }
        };
        if self.keep_for_backward {
            let mut probs = vec![0f32; b * h * s * s];
            probs.par_chunks_mut(s * s).enumerate().for_each(|(task, p)| one_head(task, p));
            *self.probs.lock().unwrap() = Some(probs);
        } else {
            // Inference: one reusable score buffer per thread instead of all heads' probabilities.
            (0..b * h).into_par_iter().for_each_init(|| vec![0f32; s * s], |p, task| one_head(task, p));
        }
        Ok((CpuStorage::F32(out), lq.shape().clone()))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let probs = self.probs.lock().unwrap().take();
        let Some(probs) = probs else { candle_core::bail!("fused attention: backward called twice or before forward") };
        let grad = grad.contiguous()?;
        let (b, s, hd) = q.dims3()?;
        let h = self.heads;
        let d = hd / h;
        let (gq, lq) = q.storage_and_layout();
        let (gk, lk) = k.storage_and_layout();
        let (gv, lv) = v.storage_and_layout();
        let (gg, lg) = grad.storage_and_layout();
        let (Storage::Cpu(sq), Storage::Cpu(sk), Storage::Cpu(sv), Storage::Cpu(sg)) = (&*gq, &*gk, &*gv, &*gg) else {
            candle_core::bail!("fused attention backward expects CPU tensors")
        };
        let (q, k, v, dout) = (contiguous_f32(sq, lq)?, contiguous_f32(sk, lk)?, contiguous_f32(sv, lv)?, contiguous_f32(sg, lg)?);
        let mut dq = vec![0f32; b * s * hd];
        let mut dk = vec![0f32; b * s * hd];
        let mut dv = vec![0f32; b * s * hd];
        let (pq, pk, pv) = (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
        let threshold = self.dropout.map(|(p, _)| (p as f64 * u32::MAX as f64) as u32);
        let keep_scale = self.dropout.map_or(1.0, |(p, _)| 1.0 / (1.0 - p));
        probs.par_chunks(s * s).enumerate().for_each(|(task, p)| {
            let (bi, hi) = (task / h, task % h);
            let base = bi * s * hd + hi * d;
            let start = (task * s * s) as u64;
            let keep = |i: usize| match (self.dropout, threshold) {
                (Some((_, seed)), Some(t)) => if dropout_keep(seed, start + i as u64, t) { keep_scale } else { 0.0 },
                _ => 1.0,
            };
            let pd: Vec<f32> = if self.dropout.is_some() { p.iter().enumerate().map(|(i, &x)| x * keep(i)).collect() } else { Vec::new() };
            let pd_ref: &[f32] = if self.dropout.is_some() { &pd } else { p };
            let mut dp = vec![0f32; s * s];
            unsafe {
                // dV = Pdᵀ dO
                mm(s, d, s, pv.at(base), hd as isize, false, pd_ref.as_ptr(), 1, s as isize, dout.as_ptr().add(base), hd as isize, 1);
                // dPd = dO Vᵀ
                mm(s, s, d, dp.as_mut_ptr(), s as isize, false, dout.as_ptr().add(base), hd as isize, 1, v.as_ptr().add(base), 1, hd as isize);
            }
            for (r, (dprow, prow)) in dp.chunks_exact_mut(s).zip(p.chunks_exact(s)).enumerate() {
                if self.dropout.is_some() {
                    for (c, x) in dprow.iter_mut().enumerate() {
                        *x *= keep(r * s + c);
                    }
                }
                let dot: f32 = dprow.iter().zip(prow).map(|(a, b)| a * b).sum();
                for (x, &pp) in dprow.iter_mut().zip(prow) {
                    *x = pp * (*x - dot) * self.scale;
                }
            }
            unsafe {
                // dQ = dS K ; dK = dSᵀ Q
                mm(s, d, s, pq.at(base), hd as isize, false, dp.as_ptr(), s as isize, 1, k.as_ptr().add(base), hd as isize, 1);
                mm(s, d, s, pk.at(base), hd as isize, false, dp.as_ptr(), 1, s as isize, q.as_ptr().add(base), hd as isize, 1);
            }
        });
        let dev = candle_core::Device::Cpu;
        let shape = (b, s, hd);
        Ok((Some(Tensor::from_vec(dq, shape, &dev)?), Some(Tensor::from_vec(dk, shape, &dev)?), Some(Tensor::from_vec(dv, shape, &dev)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (((seed * 7919 + i as u64 * 104729) % 1000) as f32 / 500.0) - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn per_cache_attention_equals_one_call_per_cache() {
        // Three queries (strided as in a fused QKV row), each against its own cache of 7 rows.
        let (heads, d, m, n) = (4, 8, 7, 3);
        let hd = heads * d;
        let vals = |len: usize, seed: u64| -> Vec<f32> { (0..len).map(|i| (((seed * 7919 + i as u64 * 104729) % 1000) as f32 / 500.0) - 1.0).collect() };
        let q = vals(n * 3 * hd, 1);
        let caches: Vec<(Vec<f32>, Vec<f32>)> = (0..n).map(|b| (vals(m * hd, 10 + b as u64), vals(m * hd, 20 + b as u64))).collect();
        let refs: Vec<(&[f32], &[f32])> = caches.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        let mut got = vec![0f32; n * hd];
        attention_per_cache(&q, 3 * hd, &refs, hd, m, heads, d, 0.35, &mut got);
        for (b, (k, v)) in refs.iter().enumerate() {
            let mut want = vec![0f32; hd];
            attention_rows(&q[b * 3 * hd..], 3 * hd, k, v, hd, 1, m, heads, d, 0.35, QueryMask::None, &mut want);
            let gap = want.iter().zip(&got[b * hd..(b + 1) * hd]).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(gap < 1e-5, "cache {b}: {gap}");
        }
    }

    /// The composed reference: split heads, softmax(QKᵀ/√d + mask)·V, merge heads.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, mask: &Tensor) -> Tensor {
        let (b, s, hd) = q.dims3().unwrap();
        let d = hd / heads;
        let split = |t: &Tensor| t.reshape((b, s, heads, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let scores = (split(q).matmul(&split(k).t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let scores = scores.broadcast_add(&mask.reshape((b, 1, 1, s)).unwrap()).unwrap();
        let probs = crate::layers::softmax_last(&scores).unwrap();
        probs.matmul(&split(v)).unwrap().transpose(1, 2).unwrap().reshape((b, s, hd)).unwrap()
    }

    #[test]
    fn matches_composed_attention_with_gradients() {
        let (b, s, heads, d) = (2, 7, 3, 4);
        let q = Var::from_tensor(&rand(&[b, s, heads * d], 1)).unwrap();
        let k = Var::from_tensor(&rand(&[b, s, heads * d], 2)).unwrap();
        let v = Var::from_tensor(&rand(&[b, s, heads * d], 3)).unwrap();
        let mut m = vec![0f32; b * s];
        m[s + 5..2 * s].iter_mut().for_each(|x| *x = -1e9);
        let mask = Tensor::from_vec(m.clone(), (b, s), &Device::Cpu).unwrap();
        let up = rand(&[b, s, heads * d], 4);
        let fused = fused_attention(&q, &k, &v, heads, &m, None).unwrap();
        let composed = reference(&q, &k, &v, heads, &mask);
        let diff = (&fused - &composed).unwrap().abs().unwrap().flatten_all().unwrap().max(D::Minus1).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "values differ by {diff}");
        let gf = (fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
            let d = (gf.get(var).unwrap() - gc.get(var).unwrap()).unwrap().abs().unwrap().flatten_all().unwrap().max(D::Minus1).unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-5, "grad {name} differs by {d}");
        }
    }

    #[test]
    fn dropout_is_reproducible_and_differentiable() {
        let q = Var::from_tensor(&rand(&[1, 5, 4], 1)).unwrap();
        let m = vec![0f32; 5];
        let a = fused_attention(&q, &q, &q, 2, &m, Some((0.3, 11))).unwrap();
        let b = fused_attention(&q, &q, &q, 2, &m, Some((0.3, 11))).unwrap();
        let c = fused_attention(&q, &q, &q, 2, &m, None).unwrap();
        assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), c.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let g = a.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&q).is_some());
    }
}
