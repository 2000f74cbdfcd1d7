//! The fused CPU linear layer `y = x·Wᵀ + b` with a hand-written backward pass, calling `gemm`
//! directly: the bias is the accumulator's initial value (no separate broadcast add), and the
//! backward pass writes dW in W's own layout (no transposed gradient to copy) and db in one pass.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

struct LinearOp;

fn f32s<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("fused linear expects f32") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("fused linear expects contiguous inputs") };
    Ok(&v[a..b])
}

fn parallelism(flops: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && flops > 1 << 20 { Parallelism::Rayon(threads) } else { Parallelism::None }
}

/// `dst[m×n] = (accumulate ? dst : 0) + lhs[m×k]·rhs[k×n]`, strides in elements.
#[allow(clippy::too_many_arguments)]
fn mm(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, lhs: &[f32], lhs_rs: usize, lhs_cs: usize, rhs: &[f32], rhs_rs: usize, rhs_cs: usize) {
    debug_assert!(dst.len() >= m * n);
    // SAFETY: every slice covers the index ranges the strides describe (checked by callers'
    // shapes), and dst does not alias the inputs.
    unsafe {
        gemm(
            m, n, k,
            dst.as_mut_ptr(), 1, n as isize, accumulate,
            lhs.as_ptr(), lhs_cs as isize, lhs_rs as isize,
            rhs.as_ptr(), rhs_cs as isize, rhs_rs as isize,
            1.0, 1.0, false, false, false,
            parallelism(2 * m * n * k),
        );
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sw: &CpuStorage, lw: &Layout, sb: &CpuStorage, lb: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (f32s(sx, lx)?, f32s(sw, lw)?, f32s(sb, lb)?);
        let (out_dim, in_dim) = lw.shape().dims2()?;
        let rows = x.len() / in_dim;
        if rows <= SMALL_ROWS {
            let y = small_rows_forward(x, rows, in_dim, w, out_dim, b);
            let mut dims = lx.shape().dims().to_vec();
            *dims.last_mut().unwrap() = out_dim;
            return Ok((CpuStorage::F32(y), Shape::from(dims)));
        }
        // The bias, row by row, is the product's starting value.
        let mut y = Vec::with_capacity(rows * out_dim);
        for _ in 0..rows {
            y.extend_from_slice(b);
        }
        // y += x · Wᵀ ; Wᵀ[i, o] = W[o, i] → row stride 1, column stride in_dim.
        mm(rows, out_dim, in_dim, &mut y, true, x, in_dim, 1, w, 1, in_dim);
        let mut dims = lx.shape().dims().to_vec();
        *dims.last_mut().unwrap() = out_dim;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (out_dim, in_dim) = w.dims2()?;
        let rows = x.elem_count() / in_dim;
        let (gx, lx) = x.storage_and_layout();
        let (gw, lw) = w.storage_and_layout();
        let (gg, lg) = grad.storage_and_layout();
        let (Storage::Cpu(sx), Storage::Cpu(sw), Storage::Cpu(sg)) = (&*gx, &*gw, &*gg) else {
            candle_core::bail!("fused linear backward expects CPU tensors")
        };
        let (xs, ws, dy) = (f32s(sx, lx)?, f32s(sw, lw)?, f32s(sg, lg)?);
        let dev = candle_core::Device::Cpu;
        // Gradients nobody will read are not computed: a frozen weight (parameter-efficient
        // tuning) skips the dW product, a constant input (the first layer over frozen
        // embeddings) skips dx.
        let dx = if x.track_op() {
            let mut dx = vec![0f32; rows * in_dim];
            mm(rows, in_dim, out_dim, &mut dx, false, dy, out_dim, 1, ws, in_dim, 1);
            Some(Tensor::from_vec(dx, x.shape(), &dev)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let mut dw = vec![0f32; out_dim * in_dim];
            // dW = dyᵀ · x ; dyᵀ[o, r] = dy[r, o] → row stride 1, column stride out_dim.
            mm(out_dim, in_dim, rows, &mut dw, false, dy, 1, out_dim, xs, in_dim, 1);
            Some(Tensor::from_vec(dw, (out_dim, in_dim), &dev)?)
        } else {
            None
        };
        let db = if b.track_op() {
            let db = dy
                .par_chunks(out_dim * 256)
                .map(|c| {
                    let mut acc = vec![0f32; out_dim];
                    for row in c.chunks_exact(out_dim) {
                        acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                    }
                    acc
                })
                .reduce(|| vec![0f32; out_dim], |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                });
            Some(Tensor::from_vec(db, out_dim, &dev)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// Up to this many rows (a few short texts: serving at low load), the product streams the
/// weights once instead of going through `gemm`.
const SMALL_ROWS: usize = 32;

/// `y = x·Wᵀ + b` for a few rows of `x`. With so few rows the product is bound by reading the
/// weights, and `gemm` reads them three times (pack, write the panel, read it back); here each
/// weight row is read once and used for every row of `x`, which stays in L1. Output features
/// are split across threads.
fn small_rows_forward(x: &[f32], rows: usize, in_dim: usize, w: &[f32], out_dim: usize, b: &[f32]) -> Vec<f32> {
    const FEATURES_PER_TASK: usize = 32;
    // Computed feature-major (`yt[o][r]`), then transposed: tasks write disjoint chunks.
    let mut yt = vec![0f32; out_dim * rows];
    yt.par_chunks_mut(FEATURES_PER_TASK * rows).enumerate().for_each(|(task, chunk)| {
        let first = task * FEATURES_PER_TASK;
        for (k, out) in chunk.chunks_exact_mut(rows).enumerate() {
            let o = first + k;
            let w_row = &w[o * in_dim..(o + 1) * in_dim];
            // Four rows of x per pass over the weight row, so each weight is loaded once per four;
            // a last group of fewer rows repeats its final row in the unused slots.
            for (group, out) in out.chunks_mut(4).enumerate() {
                let row = |i: usize| {
                    let r = group * 4 + i.min(out.len() - 1);
                    &x[r * in_dim..(r + 1) * in_dim]
                };
                let d = dot4([row(0), row(1), row(2), row(3)], w_row);
                for (v, dot) in out.iter_mut().zip(d) {
                    *v = b[o] + dot;
                }
            }
        }
    });
    let mut y = vec![0f32; rows * out_dim];
    for (o, col) in yt.chunks_exact(rows).enumerate() {
        for (r, &v) in col.iter().enumerate() {
            y[r * out_dim + o] = v;
        }
    }
    y
}

/// Dot products of four vectors with `w`.
#[inline(always)]
fn dot4(xs: [&[f32]; 4], w: &[f32]) -> [f32; 4] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        // SAFETY: the target features are enabled at compile time; every slice is at least
        // w.len() long (callers pass rows of the same width).
        unsafe { dot4_avx2(xs, w) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    {
        dot4_portable(xs, w)
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline(always)]
unsafe fn dot4_avx2(xs: [&[f32]; 4], w: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = w.len();
    let n8 = n / 8 * 8;
    let (p0, p1, p2, p3, pw) = (xs[0].as_ptr(), xs[1].as_ptr(), xs[2].as_ptr(), xs[3].as_ptr(), w.as_ptr());
    let (mut a0, mut a1, mut a2, mut a3) = (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
    let mut j = 0;
    while j < n8 {
        let wv = _mm256_loadu_ps(pw.add(j));
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p0.add(j)), wv, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p1.add(j)), wv, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(p2.add(j)), wv, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(p3.add(j)), wv, a3);
        j += 8;
    }
    let hsum = |v: __m256| -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    };
    let mut out = [hsum(a0), hsum(a1), hsum(a2), hsum(a3)];
    for (o, x) in out.iter_mut().zip(&xs) {
        *o += x[n8..n].iter().zip(&w[n8..]).map(|(p, q)| p * q).sum::<f32>();
    }
    out
}

/// The same without AVX2 (eight partial sums per vector; `mul_add` would be a library call on
/// CPUs without FMA).
#[cfg_attr(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"), allow(dead_code))]
fn dot4_portable(xs: [&[f32]; 4], w: &[f32]) -> [f32; 4] {
    let mut acc = [[0f32; 8]; 4];
    let n8 = w.len() / 8 * 8;
    for j in (0..n8).step_by(8) {
        let wv: &[f32; 8] = w[j..j + 8].try_into().unwrap();
        for (a, x) in acc.iter_mut().zip(&xs) {
            let xv: &[f32; 8] = x[j..j + 8].try_into().unwrap();
            for l in 0..8 {
                a[l] += xv[l] * wv[l];
            }
        }
    }
    let mut out = [0f32; 4];
    for (i, (a, x)) in acc.iter().zip(&xs).enumerate() {
        let tail: f32 = x[n8..].iter().zip(&w[n8..]).map(|(p, q)| p * q).sum();
        out[i] = a.iter().sum::<f32>() + tail;
    }
    out
}

/// `x·Wᵀ + b` over the last dimension of `x` (any leading shape).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, LinearOp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    #[test]
    fn dot4_paths_agree() {
        // Widths with and without a remainder after the 8-lane blocks.
        for n in [7, 16, 21, 384] {
            let v = |seed: usize| -> Vec<f32> { (0..n).map(|i| (((seed * 31 + i * 7919) % 997) as f32 / 498.5) - 1.0).collect() };
            let (x0, x1, x2, x3, w) = (v(1), v(2), v(3), v(4), v(5));
            let xs = [&x0[..], &x1[..], &x2[..], &x3[..]];
            let exact: Vec<f32> = xs.iter().map(|x| x.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32).collect();
            for (got, path) in [(dot4(xs, &w), "dot4"), (dot4_portable(xs, &w), "portable")] {
                for (g, e) in got.iter().zip(&exact) {
                    assert!((g - e).abs() < 1e-4, "{path} n={n}: {g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn matches_candle_matmul_with_gradients() {
        let dev = Device::Cpu;
        let mk = |shape: &[usize], seed: u64| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|i| (((seed * 31 + i as u64 * 7919) % 997) as f32 / 498.5) - 1.0).collect();
            Var::from_tensor(&Tensor::from_vec(v, shape, &dev).unwrap()).unwrap()
        };
        // 15 rows: the few-rows kernel; 45 rows: gemm. Odd widths exercise the remainders.
        for (lead, rows_per, in_dim, out_dim) in [(3, 5, 7, 4), (5, 9, 20, 37)] {
            let (x, w, b) = (mk(&[lead, rows_per, in_dim], 1), mk(&[out_dim, in_dim], 2), mk(&[out_dim], 3));
            let up = mk(&[lead, rows_per, out_dim], 4);
            let fused = linear(&x, &w, &b).unwrap();
            let reference = x.broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
            let max = |t: Tensor| t.abs().unwrap().flatten_all().unwrap().max(D::Minus1).unwrap().to_scalar::<f32>().unwrap();
            assert!(max((&fused - &reference).unwrap()) < 1e-5);
            let gf = (fused * up.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (reference * up.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
                let d = max((gf.get(v).unwrap() - gr.get(v).unwrap()).unwrap());
                assert!(d < 1e-4, "grad {name}: {d}");
            }
        }
    }
}
