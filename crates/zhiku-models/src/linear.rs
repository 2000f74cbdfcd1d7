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

/// `x·Wᵀ + b` over the last dimension of `x` (any leading shape).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, LinearOp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    #[test]
    fn matches_candle_matmul_with_gradients() {
        let dev = Device::Cpu;
        let mk = |shape: &[usize], seed: u64| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|i| (((seed * 31 + i as u64 * 7919) % 997) as f32 / 498.5) - 1.0).collect();
            Var::from_tensor(&Tensor::from_vec(v, shape, &dev).unwrap()).unwrap()
        };
        let (x, w, b) = (mk(&[3, 5, 7], 1), mk(&[4, 7], 2), mk(&[4], 3));
        let up = mk(&[3, 5, 4], 4);
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
