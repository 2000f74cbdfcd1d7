//! AdamW with decoupled weight decay (Loshchilov & Hutter; `torch.optim.AdamW`), no decay on
//! biases and LayerNorm weights, global gradient-norm clipping.
//!
//! On the CPU the moments live in plain buffers and the whole update of a parameter is one fused
//! in-place pass over its memory (moments, bias correction, decay, step), because the same update
//! written as separate tensor ops allocates about ten temporaries per parameter and was measured
//! to dominate a step.

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

/// First and second moments of one parameter.
enum Moments {
    /// f32 CPU parameters: plain buffers the fused update writes in place.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Any other device or dtype: tensors updated with tensor ops.
    Device { m: Tensor, v: Tensor },
}

/// One tensor of the optimizer's state as the safetensors writer reads it.
enum StateView<'a> {
    Host(Vec<usize>, &'a [f32]),
    Tensor(Tensor),
}

impl safetensors::View for StateView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self {
            Self::Host(..) => safetensors::Dtype::F32,
            Self::Tensor(t) => safetensors::View::dtype(t),
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Self::Host(shape, _) => shape,
            Self::Tensor(t) => safetensors::View::shape(t),
        }
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            // One tensor's bytes at a time (the writer drops each before the next).
            Self::Host(_, v) => std::borrow::Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Self::Tensor(t) => safetensors::View::data(t),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            Self::Host(_, v) => v.len() * 4,
            Self::Tensor(t) => safetensors::View::data_len(t),
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    moments: Moments,
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
                let moments = if var.device().is_cpu() && var.dtype() == DType::F32 {
                    Moments::Host { m: vec![0.0; var.elem_count()], v: vec![0.0; var.elem_count()] }
                } else {
                    Moments::Device { m: var.zeros_like()?, v: var.zeros_like()? }
                };
                Ok(Slot { name: name.to_string(), var: var.clone(), decay: decays(name), moments })
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
        for s in &mut self.slots {
            let Some(g) = grads.get(&s.var) else { continue };
            let wd = if s.decay { c.weight_decay } else { 0.0 };
            let hyper = Hyper { lr, wd, beta1: c.beta1, beta2: c.beta2, eps: c.eps, bc1, bc2, grad_scale };
            match &mut s.moments {
                Moments::Host { m, v } => {
                    let g = g.to_dtype(DType::F32)?.contiguous()?;
                    let op = FusedAdamW { hyper, moments: Mutex::new((m.as_mut_slice(), v.as_mut_slice())) };
                    s.var.as_tensor().inplace_op2(&g, &op)?;
                }
                Moments::Device { m: m0, v: v0 } => {
                    // The same arithmetic as tensor ops.
                    let g = (g.to_dtype(DType::F32)? * grad_scale)?;
                    let m = ((&*m0 * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                    let v = ((&*v0 * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
                    let p = s.var.as_tensor().to_dtype(DType::F32)?;
                    let p = (&p * (1.0 - lr * wd))?;
                    let p = (p - ((m.div(&denom))? * (lr / bc1))?)?;
                    s.var.set(&p.to_dtype(s.var.dtype())?)?;
                    *m0 = m;
                    *v0 = v;
                }
            }
        }
        Ok(())
    }

    /// Moments and step count, for checkpoints (`m.<param>`, `v.<param>`, `step`).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for s in &self.slots {
            let (m, v) = match &s.moments {
                Moments::Host { m, v } => (Tensor::from_slice(m, s.var.shape(), &Device::Cpu)?, Tensor::from_slice(v, s.var.shape(), &Device::Cpu)?),
                Moments::Device { m, v } => (m.copy()?, v.copy()?),
            };
            out.insert(format!("m.{}", s.name), m);
            out.insert(format!("v.{}", s.name), v);
        }
        out.insert("step".into(), Tensor::new(&[self.step as i64], &Device::Cpu)?);
        Ok(out)
    }

    /// Writes [`AdamW::state`] to a safetensors file one tensor at a time, without first
    /// copying every moment (twice the model's size) into memory.
    pub fn save_state(&self, path: &std::path::Path) -> Result<()> {
        let step = Tensor::new(&[self.step as i64], &Device::Cpu)?;
        let mut views: Vec<(String, StateView)> = vec![("step".into(), StateView::Tensor(step))];
        for s in &self.slots {
            let shape = s.var.dims().to_vec();
            let (m, v) = match &s.moments {
                Moments::Host { m, v } => (StateView::Host(shape.clone(), m), StateView::Host(shape, v)),
                Moments::Device { m, v } => (StateView::Tensor(m.clone()), StateView::Tensor(v.clone())),
            };
            views.push((format!("m.{}", s.name), m));
            views.push((format!("v.{}", s.name), v));
        }
        safetensors::serialize_to_file(views, None, path)?;
        Ok(())
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for s in &mut self.slots {
            let mut saved = Vec::with_capacity(2);
            for key in [format!("m.{}", s.name), format!("v.{}", s.name)] {
                let Some(t) = state.get(&key) else { bail!("optimizer state has no {key}") };
                if t.shape() != s.var.shape() {
                    bail!("optimizer state {key} has shape {:?}, expected {:?}", t.shape(), s.var.shape())
                }
                saved.push(t);
            }
            match &mut s.moments {
                Moments::Host { m, v } => {
                    *m = saved[0].to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                    *v = saved[1].to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                }
                Moments::Device { m, v } => {
                    *m = saved[0].to_device(s.var.device())?.to_dtype(m.dtype())?;
                    *v = saved[1].to_device(s.var.device())?.to_dtype(v.dtype())?;
                }
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

/// The fused CPU update: one pass that reads the gradient and writes m, v and the parameter.
/// (The moments sit behind a Mutex only because candle hands the op over by shared reference.)
struct FusedAdamW<'a> {
    hyper: Hyper,
    moments: Mutex<(&'a mut [f32], &'a mut [f32])>,
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
        let mut guard = self.moments.lock().map_err(|_| candle_core::Error::Msg("adamw moments poisoned".into()))?;
        let (m, v) = &mut *guard;
        if m.len() != p.len() || v.len() != p.len() || g.len() != p.len() {
            candle_core::bail!("fused adamw: parameter, gradient and moments differ in size")
        }
        for (((pi, &gi), mi), vi) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let gi = gi * gs;
            *mi = b1 * *mi + (1.0 - b1) * gi;
            *vi = b2 * *vi + (1.0 - b2) * gi * gi;
            *pi = *pi * decay - step * *mi / (vi.sqrt() * inv_sqrt_bc2 + eps);
        }
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
        // The file checkpoints write holds the same state.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        opt.save_state(&path).unwrap();
        let saved = candle_core::safetensors::load(&path, &dev).unwrap();
        assert_eq!(saved.len(), state.len());
        for (k, t) in &state {
            let values = |t: &Tensor| t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            assert_eq!(values(&saved[k]), values(t), "{k}");
        }
    }
}
