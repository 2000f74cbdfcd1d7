//! AdamW with decoupled weight decay (Loshchilov & Hutter; `torch.optim.AdamW`), no decay on
//! biases and LayerNorm weights, global gradient-norm clipping.
//!
//! On the CPU the whole update of a parameter is one fused in-place pass over its memory
//! (moments, bias correction, decay, step), because the same update written as separate tensor
//! ops allocates about ten temporaries per parameter and was measured to dominate a step.

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, Layout, Tensor, Var};
use std::collections::HashMap;
use std::sync::Mutex;
use zhiku_models::Params;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// transformers' rule: biases and LayerNorm weights are not decayed.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    m: Tensor,
    v: Tensor,
}

pub struct AdamW {
    pub config: AdamWConfig,
    slots: Vec<Slot>,
    /// Number of updates applied so far (for bias correction).
    pub step: u64,
}

impl AdamW {
    pub fn new(params: &Params, config: AdamWConfig) -> Result<Self> {
        let slots = params
            .iter()
            .map(|(name, var)| {
                Ok(Slot {
                    name: name.to_string(),
                    var: var.clone(),
                    decay: decays(name),
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { config, slots, step: 0 })
    }

    /// L2 norm of all gradients after multiplying them by `scale`.
    pub fn grad_norm(&self, grads: &GradStore, scale: f64) -> Result<f64> {
        let mut total = 0f64;
        for s in &self.slots {
            if let Some(g) = grads.get(&s.var) {
                total += sum_of_squares(g)?;
            }
        }
        Ok(total.sqrt() * scale.abs())
    }

    /// One update with gradients `grads * grad_scale` (the caller folds the loss normaliser and
    /// the clipping factor into `grad_scale`). Parameters without a gradient are left alone.
    pub fn update(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for s in &self.slots {
            let Some(g) = grads.get(&s.var) else { continue };
            let wd = if s.decay { c.weight_decay } else { 0.0 };
            let hyper = Hyper { lr, wd, beta1: c.beta1, beta2: c.beta2, eps: c.eps, bc1, bc2, grad_scale };
            if matches!(s.var.device(), Device::Cpu) && s.var.dtype() == DType::F32 && g.dtype() == DType::F32 {
                let op = FusedAdamW { hyper, m: &s.m, v: &s.v, _lock: Mutex::new(()) };
                let g = g.contiguous()?;
                s.var.as_tensor().inplace_op2(&g, &op)?;
            } else {
                // Any other device or dtype: the same arithmetic as tensor ops.
                let g = (g.to_dtype(DType::F32)? * grad_scale)?;
                let m = ((&s.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                let v = ((&s.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
                let p = s.var.as_tensor().to_dtype(DType::F32)?;
                let p = (&p * (1.0 - lr * wd))?;
                let p = (p - ((m.div(&denom))? * (lr / bc1))?)?;
                s.var.set(&p.to_dtype(s.var.dtype())?)?;
                s.m.inplace_op2(&m, &CopyInto)?;
                s.v.inplace_op2(&v, &CopyInto)?;
            }
        }
        Ok(())
    }

    /// Moments and step count, for checkpoints (`m.<param>`, `v.<param>`, `step`).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("m.{}", s.name), s.m.copy()?);
            out.insert(format!("v.{}", s.name), s.v.copy()?);
        }
        out.insert("step".into(), Tensor::new(&[self.step as i64], &Device::Cpu)?);
        Ok(out)
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for s in &mut self.slots {
            for (key, dst) in [(format!("m.{}", s.name), &s.m), (format!("v.{}", s.name), &s.v)] {
                let Some(t) = state.get(&key) else { bail!("optimizer state has no {key}") };
                if t.shape() != dst.shape() {
                    bail!("optimizer state {key} has shape {:?}, expected {:?}", t.shape(), dst.shape())
                }
                dst.inplace_op2(&t.to_device(dst.device())?.to_dtype(dst.dtype())?.contiguous()?, &CopyInto)?;
            }
        }
        let Some(step) = state.get("step") else { bail!("optimizer state has no step") };
        self.step = step.to_vec1::<i64>()?[0] as u64;
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Hyper {
    lr: f64,
    wd: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    bc1: f64,
    bc2: f64,
    grad_scale: f64,
}

/// The fused CPU update: reads the gradient once and writes parameter, m and v in place.
struct FusedAdamW<'a> {
    hyper: Hyper,
    m: &'a Tensor,
    v: &'a Tensor,
    _lock: Mutex<()>,
}

impl candle_core::InplaceOp2 for FusedAdamW<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(&self, param: &mut CpuStorage, pl: &Layout, grad: &CpuStorage, gl: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (param, grad) else {
            candle_core::bail!("fused adamw expects f32 parameters and gradients")
        };
        let (Some((p0, p1)), Some((g0, g1))) = (pl.contiguous_offsets(), gl.contiguous_offsets()) else {
            candle_core::bail!("fused adamw expects contiguous tensors")
        };
        let p = &mut p[p0..p1];
        let g = &g[g0..g1];
        let h = self.hyper;
        let decay = (1.0 - h.lr * h.wd) as f32;
        let step = (h.lr / h.bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / h.bc2.sqrt()) as f32;
        let (b1, b2, eps, gs) = (h.beta1 as f32, h.beta2 as f32, h.eps as f32, h.grad_scale as f32);
        self.m.inplace_op1(&Moments { g, b: b1, gs, square: false })?;
        self.v.inplace_op1(&Moments { g, b: b2, gs, square: true })?;
        let m = storage_f32(self.m)?;
        let v = storage_f32(self.v)?;
        for i in 0..p.len() {
            let denom = v[i].sqrt() * inv_sqrt_bc2 + eps;
            p[i] = p[i] * decay - step * m[i] / denom;
        }
        Ok(())
    }
}

/// `x <- b·x + (1-b)·f(gs·g)` with `f` the identity (first moment) or the square (second).
struct Moments<'a> {
    g: &'a [f32],
    b: f32,
    gs: f32,
    square: bool,
}

impl candle_core::InplaceOp1 for Moments<'_> {
    fn name(&self) -> &'static str {
        "adamw-moments"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(x) = s else { candle_core::bail!("moments expect f32") };
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("moments expect contiguous storage") };
        let x = &mut x[a..b];
        let (beta, one_minus, gs) = (self.b, 1.0 - self.b, self.gs);
        if self.square {
            for (xi, gi) in x.iter_mut().zip(self.g) {
                let g = gi * gs;
                *xi = beta * *xi + one_minus * g * g;
            }
        } else {
            for (xi, gi) in x.iter_mut().zip(self.g) {
                *xi = beta * *xi + one_minus * gi * gs;
            }
        }
        Ok(())
    }
}

/// Copies `src` into the destination storage in place (keeps tensor identity).
struct CopyInto;

impl candle_core::InplaceOp2 for CopyInto {
    fn name(&self) -> &'static str {
        "copy-into"
    }
    fn cpu_fwd(&self, dst: &mut CpuStorage, dl: &Layout, src: &CpuStorage, sl: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(d), CpuStorage::F32(s)) = (dst, src) else { candle_core::bail!("copy-into expects f32") };
        let (Some((d0, d1)), Some((s0, s1))) = (dl.contiguous_offsets(), sl.contiguous_offsets()) else {
            candle_core::bail!("copy-into expects contiguous tensors")
        };
        d[d0..d1].copy_from_slice(&s[s0..s1]);
        Ok(())
    }
}

/// `Σ x²` accumulated in f64; read in place for contiguous f32 CPU tensors (the generic path
/// would allocate an f64 copy of every gradient each step).
fn sum_of_squares(t: &Tensor) -> Result<f64> {
    if t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous() {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(v[a..b].chunks(4096).map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).sum());
        }
    }
    Ok(t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?)
}

/// A contiguous f32 CPU tensor's values (a cheap copy of the moment for the parameter pass).
fn storage_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// One reference AdamW step written out in f64.
    fn reference(p: f64, g: f64, lr: f64, wd: f64, steps: usize) -> f64 {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let (mut p, mut m, mut v) = (p, 0.0, 0.0);
        for t in 1..=steps {
            p *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let mh = m / (1.0 - b1.powi(t as i32));
            let vh = v / (1.0 - b2.powi(t as i32));
            p -= lr * mh / (vh.sqrt() + eps);
        }
        p
    }

    #[test]
    fn matches_reference_and_skips_decay_on_bias_and_layernorm() {
        let dev = Device::Cpu;
        let mut params = Params::default();
        params.insert("x.weight", Var::new(&[1.0f32, -2.0, 0.5], &dev).unwrap());
        params.insert("x.bias", Var::new(&[1.0f32, -2.0, 0.5], &dev).unwrap());
        params.insert("x.LayerNorm.weight", Var::new(&[1.0f32, -2.0, 0.5], &dev).unwrap());
        let mut opt = AdamW::new(&params, AdamWConfig { weight_decay: 0.1, ..Default::default() }).unwrap();
        let grads_raw = [0.3f64, -0.1, 2.0];
        for _ in 0..3 {
            let loss = params
                .iter()
                .map(|(_, v)| v.as_tensor().mul(&Tensor::new(&[0.6f32, -0.2, 4.0], &dev).unwrap()).unwrap().sum_all().unwrap())
                .reduce(|a, b| (a + b).unwrap())
                .unwrap();
            let grads = loss.backward().unwrap();
            opt.update(&grads, 0.01, 0.5).unwrap(); // grad_scale 0.5 halves 0.6 -> 0.3 etc.
        }
        for (name, wd) in [("x.weight", 0.1), ("x.bias", 0.0), ("x.LayerNorm.weight", 0.0)] {
            let got: Vec<f32> = params.get(name).unwrap().to_vec1().unwrap();
            for (i, p0) in [1.0f64, -2.0, 0.5].iter().enumerate() {
                let want = reference(*p0, grads_raw[i], 0.01, wd, 3);
                assert!((got[i] as f64 - want).abs() < 1e-6, "{name}[{i}]: {} vs {want}", got[i]);
            }
        }
        let state = opt.state().unwrap();
        let mut opt2 = AdamW::new(&params, AdamWConfig::default()).unwrap();
        opt2.load_state(&state).unwrap();
        assert_eq!(opt2.step, 3);
    }
}
