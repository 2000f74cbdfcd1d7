//! LoRA adapters in the generation engine: several adapters over one base in memory, each
//! sequence choosing its own (its [`KvCache`](super::KvCache) records which, since the keys
//! and values it holds were computed with that adapter).
//!
//! After every base projection `y = W x` of a row whose sequence has an adapter, the row gets
//! `y += (alpha / r) · B (A x)` in f32: `r · (in + out)` multiply-adds per row and projection,
//! about 1-2% of the base's for rank 8 on these models, and no copy of the base weights.

use super::graph::PROJECTIONS;
use super::DecoderConfig;
use crate::slice_ops as ops;
use anyhow::{bail, Result};
use candle_core::Tensor;
use rayon::prelude::*;
use std::collections::HashMap;

/// One projection's low-rank pair.
struct Pair {
    rank: usize,
    /// `[r, in]`, pre-multiplied by the scale.
    a: Vec<f32>,
    /// `[out, r]`.
    b: Vec<f32>,
}

/// An adapter's weights for every layer and projection (in [`PROJECTIONS`] order).
pub struct LoraWeights {
    pub name: String,
    layers: Vec<[Option<Pair>; 7]>,
}

/// Input and output sizes of projection `p` (in [`PROJECTIONS`] order).
fn dims(c: &DecoderConfig, p: usize) -> (usize, usize) {
    let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    match p {
        0 => (c.hidden, q),
        1 | 2 => (c.hidden, kv),
        3 => (q, c.hidden),
        4 | 5 => (c.hidden, c.ffn),
        _ => (c.ffn, c.hidden),
    }
}

/// PEFT's module path of projection `p` in layer `li`.
pub fn module_name(li: usize, p: usize) -> String {
    let block = if p < 4 { "self_attn" } else { "mlp" };
    format!("model.layers.{li}.{block}.{}", PROJECTIONS[p])
}

impl LoraWeights {
    /// Checks and takes an adapter's tensors (PEFT's names, see
    /// [`DecoderAdapter`](super::adapter::DecoderAdapter)) for a model of config `c`.
    pub fn new(name: &str, c: &DecoderConfig, alpha: f64, rank: usize, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let mut tensors = tensors.clone();
        super::adapter::reorder_rows(c, &mut tensors, super::adapter::Order::Engine)?;
        let tensors = &tensors;
        let scale = (alpha / rank as f64) as f32;
        let mut used = 0;
        let mut layers = Vec::with_capacity(c.n_layers);
        for li in 0..c.n_layers {
            let mut row: [Option<Pair>; 7] = Default::default();
            for (p, slot) in row.iter_mut().enumerate() {
                let module = module_name(li, p);
                let (ka, kb) = (super::adapter::lora_tensor_name(&module, "A"), super::adapter::lora_tensor_name(&module, "B"));
                let (a, b) = match (tensors.get(&ka), tensors.get(&kb)) {
                    (None, None) => continue,
                    (Some(a), Some(b)) => (a, b),
                    _ => bail!("adapter {name}: {module} has only one of lora_A and lora_B"),
                };
                let (fan_in, fan_out) = dims(c, p);
                if a.dims() != [rank, fan_in] || b.dims() != [fan_out, rank] {
                    bail!("adapter {name}: {module} has A {:?} and B {:?}; this model needs [{rank}, {fan_in}] and [{fan_out}, {rank}] (another base model?)", a.dims(), b.dims())
                }
                let a: Vec<f32> = a.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
                *slot = Some(Pair { rank, a: a.into_iter().map(|v| v * scale).collect(), b: b.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()? });
                used += 2;
            }
            layers.push(row);
        }
        if used == 0 {
            bail!("adapter {name} has no LoRA tensors for this model's projections")
        }
        if used != tensors.len() {
            let extra = tensors.keys().find(|k| !(0..c.n_layers).any(|li| (0..7).any(|p| k.contains(&format!("{}.lora_", module_name(li, p)))))).cloned().unwrap_or_default();
            bail!("adapter {name}: tensor {extra} has no place in this model")
        }
        Ok(Self { name: name.to_string(), layers })
    }

    /// The dense update `(alpha / r) · B A` of projection `p` (in [`PROJECTIONS`] order) of a
    /// layer, `[out, in]` row-major in the model's row order; `None` where the adapter leaves
    /// it alone.
    pub fn delta(&self, layer: usize, p: usize) -> Result<Option<Vec<f32>>> {
        let Some(pair) = &self.layers[layer][p] else { return Ok(None) };
        let (fan_in, fan_out) = (pair.a.len() / pair.rank, pair.b.len() / pair.rank);
        let a = Tensor::from_slice(&pair.a, (pair.rank, fan_in), &candle_core::Device::Cpu)?;
        let b = Tensor::from_slice(&pair.b, (fan_out, pair.rank), &candle_core::Device::Cpu)?;
        Ok(Some(b.matmul(&a)?.flatten_all()?.to_vec1()?))
    }

    /// `out[r] += B (A x[r])` for the rows whose flag is set (`out`: rows of `fan_out`,
    /// `x`: rows of `fan_in`).
    pub fn add(&self, layer: usize, p: usize, x: &[f32], out: &mut [f32], rows: &[bool]) {
        let Some(pair) = &self.layers[layer][p] else { return };
        let fan_in = x.len() / rows.len().max(1);
        let fan_out = out.len() / rows.len().max(1);
        out.par_chunks_mut(fan_out).zip(x.par_chunks(fan_in)).zip(rows.par_iter()).for_each(|((o, xr), &on)| {
            if !on {
                return;
            }
            let t: Vec<f32> = pair.a.chunks_exact(fan_in).map(|ar| ops::dot(ar, xr)).collect();
            for (ov, br) in o.iter_mut().zip(pair.b.chunks_exact(pair.rank)) {
                *ov += ops::dot(br, &t);
            }
        });
    }
}
