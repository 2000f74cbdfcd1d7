//! Building blocks written only with candle ops that have a backward pass.
//!
//! candle's fused `layer_norm`, `softmax_last_dim` and its `Dropout` module are avoided on
//! purpose: the first two have no backward (gradients silently stop), and candle's dropout
//! draws from an unseeded RNG, so runs could not be reproduced or resumed exactly.

use crate::config::Activation;
use crate::params::{Init, WeightSource};
use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `y = x W^T + b`, with transformers' `[out, in]` weight layout, plus an optional LoRA update.
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<crate::peft::Lora>,
    /// Int8 weights for inference; when set, `weight` is no longer used (and may be empty).
    pub int8: Option<std::sync::Arc<crate::quant::QuantLinear>>,
}

impl Linear {
    pub fn load(ws: &mut WeightSource, prefix: &str, in_dim: usize, out_dim: usize, std: f64) -> Result<Self> {
        let weight = ws.get(&format!("{prefix}.weight"), (out_dim, in_dim), Init::Normal(std))?;
        let bias = ws.get(&format!("{prefix}.bias"), out_dim, Init::Zeros)?;
        Ok(Self { weight, bias: Some(bias), lora: None, int8: None })
    }

    /// The layer in training or inference mode: `rng` drives LoRA's dropout when training.
    pub fn forward_t(&self, x: &Tensor, rng: &mut Option<&mut DropoutRng>) -> Result<Tensor> {
        let y = self.forward_base(x)?;
        match &self.lora {
            Some(lora) => Ok(y.add(&lora.delta(x, rng)?)?),
            None => Ok(y),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, &mut None)
    }

    /// `act(forward_t(x))`; an int8 layer without LoRA applies an erf GELU in its own epilogue.
    pub fn forward_activated(&self, x: &Tensor, act: Activation, rng: &mut Option<&mut DropoutRng>) -> Result<Tensor> {
        match (&self.int8, &self.lora, act) {
            (Some(q), None, Activation::GeluErf) => Ok(q.forward_gelu(x)?),
            _ => activate(&self.forward_t(x, rng)?, act),
        }
    }

    /// Switches the layer to int8 weights (inference only: the int8 path has no backward) and
    /// releases its f32 weight.
    pub fn quantize_int8(&mut self) -> Result<()> {
        let q = crate::quant::QuantLinear::new(&self.weight, self.bias.as_ref())?;
        self.int8 = Some(std::sync::Arc::new(q));
        self.weight = Tensor::zeros(0, self.weight.dtype(), self.weight.device())?;
        Ok(())
    }

    fn forward_base(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(q) = &self.int8 {
            return Ok(q.forward(x)?);
        }
        if let (true, Some(b), true) = (crate::kernels::fused_ok(x), &self.bias, self.weight.dtype() == x.dtype()) {
            return Ok(crate::linear::linear(x, &self.weight, b)?);
        }
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("linear input has a last dim");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        // Mixed precision: the f32 master weight is cast to the activations' type (a
        // differentiable cast, so its gradient returns in f32).
        let y = x.reshape((rows, in_dim))?.matmul(&as_dtype(&self.weight, x.dtype())?.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&as_dtype(b, x.dtype())?)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.weight.dim(0)?;
        Ok(y.reshape(out_dims)?)
    }
}

/// LayerNorm over the last dimension, composed from differentiable ops.
#[derive(Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(ws: &mut WeightSource, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        let weight = ws.get(&format!("{prefix}.weight"), dim, Init::Ones)?;
        let bias = ws.get(&format!("{prefix}.bias"), dim, Init::Zeros)?;
        Ok(Self { weight, bias, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() != self.weight.dtype() {
            // Mixed precision: normalise in the weights' (f32) precision.
            let y = crate::kernels::layer_norm(&x.to_dtype(self.weight.dtype())?, &self.weight, &self.bias, self.eps)?;
            return Ok(y.to_dtype(x.dtype())?);
        }
        crate::kernels::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// `t` in `dtype` (a differentiable cast; no copy when it already is).
pub fn as_dtype(t: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok(if t.dtype() == dtype { t.clone() } else { t.to_dtype(dtype)? })
}

/// LayerNorm composed from differentiable candle ops (the reference for the fused kernel, and
/// the path on devices without one).
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(weight)?.broadcast_add(bias)?)
}

/// Softmax over the last dimension, composed from differentiable ops.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::GeluErf => crate::kernels::gelu_erf(x)?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Relu => x.relu()?,
    })
}

/// The randomness of one forward pass in training mode: a seeded stream of dropout masks.
/// Seeding it from (run seed, step) makes every step reproducible, also after `--resume`.
/// Masks are counter-based and indexed by position in the whole batch: a pass over rows
/// `first_row..` of a batch ([`Self::for_rows`]) draws exactly those rows' part of the masks a
/// pass over the whole batch would, so data-parallel shards train like one batch.
pub struct DropoutRng {
    rng: ChaCha8Rng,
    first_row: u64,
}

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed), first_row: 0 }
    }

    /// The same stream, for a pass over the rows of a batch that start at `first_row`.
    pub fn for_rows(mut self, first_row: usize) -> Self {
        self.first_row = first_row as u64;
        self
    }

    /// Seed for one micro-batch of one optimizer step of a run.
    pub fn for_step(run_seed: u64, step: u64, micro_batch: u64) -> Self {
        let mixed = run_seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(step.wrapping_mul(0xBF58_476D_1CE4_E5B9))
            .wrapping_add(micro_batch.wrapping_mul(0x94D0_49BB_1331_11EB));
        Self::new(mixed)
    }

    /// A fresh seed from this stream for a kernel that generates its own counter-based mask
    /// with `per_row` mask elements per batch row (offset to this pass's first row).
    pub fn next_seed(&mut self, per_row: usize) -> u64 {
        self.rng.random::<u64>().wrapping_add(self.first_row.wrapping_mul(per_row as u64))
    }

    /// Inverted dropout: zero each element with probability `p`, scale survivors by 1/(1-p).
    pub fn dropout(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        // One draw from the seeded stream seeds a counter-based generator for this mask.
        let per_row = x.elem_count() / x.dim(0)?.max(1);
        seeded_dropout(x, p, self.next_seed(per_row))
    }
}

/// Inverted dropout whose mask is a function of `seed` alone (counter-based), so that a pass
/// recomputed with the same seed draws the same mask.
pub fn seeded_dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    let mask = crate::kernels::dropout_mask(x.elem_count(), p, seed);
    let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?.to_dtype(x.dtype())?.to_device(x.device())?;
    crate::kernels::apply_mask(x, &mask)
}

/// Applies dropout when training (`rng` is `Some`), the identity otherwise.
pub fn maybe_dropout(x: &Tensor, p: f64, rng: &mut Option<&mut DropoutRng>) -> Result<Tensor> {
    match rng {
        Some(r) => r.dropout(x, p),
        None => Ok(x.clone()),
    }
}

/// An additive attention mask `[batch, seq]`: 0 where attended, a large negative where padded.
pub fn additive_mask(attention_mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let m = attention_mask.to_dtype(DType::F32)?;
    Ok(((m - 1.0)? * 1e9)?.to_dtype(dtype)?)
}
