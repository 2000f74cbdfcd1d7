//! The decoder as candle operations: the same model as [`DecoderModel::forward`], written so
//! that gradients flow and so that it runs on any candle device.
//!
//! The generation engine ([`DecoderModel`]) runs plain slice code with a KV cache and integer
//! kernels; it has no backward pass. Fine-tuning needs one, and a GPU needs tensors on the
//! device. [`GraphDecoder`] takes a loaded [`DecoderModel`] and keeps its frozen weights in one
//! of two forms:
//! - **blocks** (CPU, f32): the file's quantised blocks, multiplied by our kernels through a
//!   candle custom op whose backward pass is `dy · W` over weights dequantised a chunk at a
//!   time ([`QMatrix::matmul_transposed`]), so a quantised base model is never widened whole;
//! - **dense**: dequantised once into a tensor of the chosen dtype on the device (f16 or bf16
//!   on a GPU, where candle's matmuls run), which is what a `cuda` build uses.
//!
//! Low-rank adapters ([`LoraSpec`]) can be attached to any of the seven projections of every
//! layer; they are the trainable parameters ([`GraphDecoder::trainable`]), named as PEFT names
//! them so that adapters can be saved in its format. The token embedding stays frozen: its rows
//! are looked up on the host and uploaded.
//!
//! Full fine-tuning ([`GraphOptions::full`], for small models) makes every weight a dense
//! variable instead: the embedding (gathered with `index_select`, and shared with a tied output
//! projection), every projection and bias, every norm.
//!
//! Sequences of a batch are right-padded; the attention mask combines causality, each
//! sequence's length and, on sliding-window layers, the window. Attention, norms and the
//! softmax run in f32 whatever the dtype of the weights (in f64 for an f64 model, which
//! finite-difference checks use).

use super::{Activation, CausalLm, DecoderConfig, DecoderModel, DeviceKv, KvCache, Logits, Step};
use crate::qmatmul::QMatrix;
use crate::slice_ops::{RopeStyle, RopeTable};
use anyhow::{bail, Result};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// Low-rank adapters to attach: `W x + (alpha / rank) · B A x`, A initialised uniform in
/// ±1/√in (as PEFT's Kaiming default), B at zero (so the adapted model starts as the base).
#[derive(Debug, Clone)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    /// Projection names as in Hugging Face models: `q_proj`, `k_proj`, `v_proj`, `o_proj`,
    /// `gate_proj`, `up_proj`, `down_proj`.
    pub targets: Vec<String>,
    pub seed: u64,
    /// Dropout on each adapter's input in training (PEFT's `lora_dropout`): `B A drop(x)`.
    pub dropout: f64,
}

pub const PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// How the frozen weights are held.
#[derive(Debug, Clone)]
pub struct GraphOptions {
    pub device: Device,
    /// Dtype of dense weights and of the activations between layers.
    pub dtype: DType,
    /// Dequantise into dense tensors even on the CPU (what a GPU runs, checkable on a CPU).
    pub dense: bool,
    pub lora: Option<LoraSpec>,
    /// Full fine-tuning: every weight (embedding, projections, norms, biases) dense and
    /// trainable, named by its GGUF name ([`GraphDecoder::trainable`]).
    pub full: bool,
}

impl GraphOptions {
    pub fn cpu() -> Self {
        Self { device: Device::Cpu, dtype: DType::F32, dense: false, lora: None, full: false }
    }
}

/// `y = x · Wᵀ` over quantised blocks (CPU, f32), differentiable with respect to `x`.
struct BlockProduct(Arc<QMatrix>);

/// `dx = dy · W`, the backward pass of [`BlockProduct`].
struct BlockProductTransposed(Arc<QMatrix>);

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("quantised product expects f32 activations") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("quantised product expects contiguous activations") };
    Ok(&v[a..b])
}

fn with_last_dim(l: &Layout, last: usize) -> Shape {
    let mut dims = l.shape().dims().to_vec();
    *dims.last_mut().expect("at least one dimension") = last;
    Shape::from(dims)
}

impl CustomOp1 for BlockProduct {
    fn name(&self) -> &'static str {
        "quantized-product"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let m = &self.0;
        let x = f32_slice(s, l)?;
        if l.shape().dims().last() != Some(&m.cols) {
            candle_core::bail!("quantised product: input {:?} does not end in {}", l.shape(), m.cols)
        }
        let n = x.len() / m.cols;
        let mut y = vec![0f32; n * m.rows];
        // Few rows: f32 over dequantised rows, so that forward and backward use the same
        // arithmetic (the integer kernels round the activations to 8 bits).
        if n >= crate::qmatmul::GEMM_ROWS {
            m.matmul(x, n, &mut y);
        } else {
            m.matmul_exact(x, n, &mut y).map_err(candle_core::Error::wrap)?;
        }
        Ok((CpuStorage::F32(y), with_last_dim(l, m.rows)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&BlockProductTransposed(self.0.clone()))?))
    }
}

impl CustomOp1 for BlockProductTransposed {
    fn name(&self) -> &'static str {
        "quantized-product-transposed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let m = &self.0;
        let dy = f32_slice(s, l)?;
        let n = dy.len() / m.rows;
        let mut dx = vec![0f32; n * m.cols];
        m.matmul_transposed(dy, n, &mut dx);
        Ok((CpuStorage::F32(dx), with_last_dim(l, m.cols)))
    }
}

enum FrozenWeight {
    Blocks(Arc<QMatrix>),
    /// `[out, in]` on the device.
    Dense(Tensor),
}

/// A rank-r update `scale · B A` of one projection.
pub struct Lora {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    /// Dropout on the adapter's input when a training pass gives a mask seed.
    pub dropout: f64,
}

/// One projection: frozen weight, optional frozen bias, optional adapter.
pub struct GraphLinear {
    /// The module's Hugging Face path (`model.layers.3.self_attn.q_proj`).
    pub name: String,
    weight: FrozenWeight,
    bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

impl GraphLinear {
    /// `x[.., in] → [.., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_masked(x, None)
    }

    /// [`GraphLinear::forward`]; with `dropout_seed` (a training pass), the adapter's input
    /// goes through dropout whose mask is a function of the seed alone, so a recomputed pass
    /// draws the same mask.
    pub fn forward_masked(&self, x: &Tensor, dropout_seed: Option<u64>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("input has dimensions");
        let rows = x.elem_count() / in_dim.max(1);
        let x2 = x.reshape((rows, in_dim))?;
        let mut y = match &self.weight {
            FrozenWeight::Blocks(m) => x2.contiguous()?.apply_op1(BlockProduct(m.clone()))?,
            FrozenWeight::Dense(w) => x2.matmul(&w.t()?)?,
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = &self.lora {
            let input = match dropout_seed {
                Some(seed) if l.dropout > 0.0 => crate::layers::seeded_dropout(&x2, l.dropout, seed)?,
                _ => x2.clone(),
            };
            let low = input.matmul(&l.a.as_tensor().t()?)?.matmul(&l.b.as_tensor().t()?)?;
            y = (y + (low * l.scale)?)?;
        }
        let out = y.dim(1)?;
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = out;
        Ok(y.reshape(out_dims)?)
    }
}

struct GraphLayer {
    attn_norm: Tensor,
    q: GraphLinear,
    k: GraphLinear,
    v: GraphLinear,
    o: GraphLinear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate: GraphLinear,
    up: GraphLinear,
    down: GraphLinear,
    post_ffn_norm: Option<Tensor>,
}

/// A decoder as differentiable candle operations (see the module's documentation).
pub struct GraphDecoder {
    pub config: DecoderConfig,
    device: Device,
    dtype: DType,
    embed: Arc<QMatrix>,
    layers: Vec<GraphLayer>,
    final_norm: Tensor,
    lm_head: GraphLinear,
    rope: RopeTable,
    rope_local: Option<RopeTable>,
    /// Full fine-tuning: the weights as variables.
    full: Option<FullParams>,
}

/// Every weight of a fully fine-tuned model as a variable, by GGUF name: the embedding (also
/// the output projection when tied), each layer's, and the head's (final norm, untied output).
struct FullParams {
    embed: Var,
    layers: Vec<Vec<(String, Var)>>,
    head: Vec<(String, Var)>,
}

/// One row of a training batch: a sequence, or several packed end to end (`segments`: their
/// lengths in order, summing to the row's length).
#[derive(Debug, Clone)]
pub struct PackedRow<'a> {
    pub tokens: &'a [u32],
    pub segments: Vec<usize>,
}

/// A batch's attention masks and rotary tables (see [`GraphDecoder::geometry`]).
pub struct BatchGeometry {
    /// The padded length of the rows.
    pub t: usize,
    global_mask: Tensor,
    local_mask: Option<Tensor>,
    global_rope: (Tensor, Tensor),
    local_rope: Option<(Tensor, Tensor)>,
    /// Training passes: the seed of this batch's LoRA dropout masks (`None`: no dropout).
    pub dropout_seed: Option<u64>,
}

/// The final hidden states of a right-padded batch.
#[derive(Debug)]
pub struct Hidden {
    /// `[batch, max_len, hidden]`, final norm applied.
    pub states: Tensor,
    pub lengths: Vec<usize>,
}

impl GraphDecoder {
    /// Takes over a loaded model's weights.
    pub fn new(model: DecoderModel, opts: &GraphOptions) -> Result<Self> {
        if opts.full && (opts.lora.is_some() || !opts.device.is_cpu()) {
            bail!("full fine-tuning runs on the CPU, without adapters")
        }
        let dense = opts.dense || opts.full || !opts.device.is_cpu() || opts.dtype != DType::F32;
        let DecoderModel { config, embed, layers, final_norm, lm_head, rope, rope_local, .. } = model;
        // Full fine-tuning: each weight a variable, recorded under its GGUF name.
        let registry: std::cell::RefCell<Vec<(String, Var)>> = Default::default();
        let trainable = |name: String, t: Tensor| -> Result<Tensor> {
            if !opts.full {
                return Ok(t);
            }
            let v = Var::from_tensor(&t)?;
            let out = v.as_tensor().clone();
            registry.borrow_mut().push((name, v));
            Ok(out)
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.lora.as_ref().map_or(0, |l| l.seed));
        if let Some(spec) = &opts.lora {
            if spec.rank == 0 {
                bail!("LoRA rank must be at least 1")
            }
            if let Some(t) = spec.targets.iter().find(|t| !PROJECTIONS.contains(&t.as_str())) {
                bail!("unknown LoRA target '{t}' (choose from {})", PROJECTIONS.join(", "))
            }
        }
        let vector = |v: Vec<f32>| -> Result<Tensor> { Ok(Tensor::from_vec(v.clone(), v.len(), &opts.device)?) };
        let embed = Arc::new(embed);
        // Norm weights are read in f32 (f64 for an f64 model); trained ones are stored so.
        let norm_vector = |v: Vec<f32>| -> Result<Tensor> {
            let t = vector(v)?;
            Ok(if opts.full && opts.dtype == DType::F64 { t.to_dtype(DType::F64)? } else { t })
        };
        let linear = |name: String, gguf: String, m: QMatrix, bias: Option<Vec<f32>>, rng: &mut rand_chacha::ChaCha8Rng| -> Result<GraphLinear> {
            let (rows, cols) = (m.rows, m.cols);
            let weight = if dense {
                let w = Tensor::from_vec(m.to_f32()?, (rows, cols), &Device::Cpu)?.to_dtype(opts.dtype)?.to_device(&opts.device)?;
                FrozenWeight::Dense(trainable(format!("{gguf}.weight"), w)?)
            } else {
                FrozenWeight::Blocks(Arc::new(m))
            };
            let bias = bias.map(|b| -> Result<Tensor> { trainable(format!("{gguf}.bias"), vector(b)?.to_dtype(opts.dtype)?) }).transpose()?;
            let short = name.rsplit('.').next().unwrap_or("");
            let lora = match &opts.lora {
                Some(spec) if spec.targets.iter().any(|t| t == short) => {
                    let bound = 1.0 / (cols as f64).sqrt();
                    let a: Vec<f32> = (0..spec.rank * cols).map(|_| rng.random_range(-bound..bound) as f32).collect();
                    let a = Tensor::from_vec(a, (spec.rank, cols), &Device::Cpu)?.to_dtype(opts.dtype)?.to_device(&opts.device)?;
                    let b = Tensor::zeros((rows, spec.rank), opts.dtype, &opts.device)?;
                    Some(Lora { a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)?, scale: spec.alpha / spec.rank as f64, dropout: spec.dropout })
                }
                _ => None,
            };
            Ok(GraphLinear { name, weight, bias, lora })
        };
        // The embedding first: as a variable it is also the tied output projection.
        let embed_var = if opts.full {
            let t = Tensor::from_vec(embed.to_f32()?, (embed.rows, embed.cols), &Device::Cpu)?.to_dtype(opts.dtype)?;
            Some(Var::from_tensor(&t)?)
        } else {
            None
        };
        let mut graph_layers = Vec::with_capacity(layers.len());
        let mut layer_params = Vec::with_capacity(layers.len());
        for (i, l) in layers.into_iter().enumerate() {
            let attn = |p: &str| format!("model.layers.{i}.self_attn.{p}");
            let mlp = |p: &str| format!("model.layers.{i}.mlp.{p}");
            let g = |p: &str| format!("blk.{i}.{p}");
            let norm = |name: &str, v: Vec<f32>| trainable(g(&format!("{name}.weight")), norm_vector(v)?);
            let opt = |name: &str, v: Option<Vec<f32>>| v.map(|v| norm(name, v)).transpose();
            graph_layers.push(GraphLayer {
                attn_norm: norm("attn_norm", l.attn_norm)?,
                q: linear(attn("q_proj"), g("attn_q"), l.wq, l.bq, &mut rng)?,
                k: linear(attn("k_proj"), g("attn_k"), l.wk, l.bk, &mut rng)?,
                v: linear(attn("v_proj"), g("attn_v"), l.wv, l.bv, &mut rng)?,
                o: linear(attn("o_proj"), g("attn_output"), l.wo, None, &mut rng)?,
                q_norm: opt("attn_q_norm", l.q_norm)?,
                k_norm: opt("attn_k_norm", l.k_norm)?,
                post_attn_norm: opt("post_attention_norm", l.post_attn_norm)?,
                ffn_norm: norm("ffn_norm", l.ffn_norm)?,
                gate: linear(mlp("gate_proj"), g("ffn_gate"), l.w_gate, None, &mut rng)?,
                up: linear(mlp("up_proj"), g("ffn_up"), l.w_up, None, &mut rng)?,
                down: linear(mlp("down_proj"), g("ffn_down"), l.w_down, None, &mut rng)?,
                post_ffn_norm: opt("post_ffw_norm", l.post_ffn_norm)?,
            });
            layer_params.push(std::mem::take(&mut *registry.borrow_mut()));
        }
        // A tied output projection shares the embedding's blocks (or their dense copy).
        let final_norm = trainable("output_norm.weight".into(), norm_vector(final_norm)?)?;
        let lm_weight = match lm_head {
            Some(m) if dense => FrozenWeight::Dense(trainable("output.weight".into(), Tensor::from_vec(m.to_f32()?, (m.rows, m.cols), &Device::Cpu)?.to_dtype(opts.dtype)?.to_device(&opts.device)?)?),
            Some(m) => FrozenWeight::Blocks(Arc::new(m)),
            None => match &embed_var {
                Some(v) => FrozenWeight::Dense(v.as_tensor().clone()),
                None if dense => FrozenWeight::Dense(Tensor::from_vec(embed.to_f32()?, (embed.rows, embed.cols), &Device::Cpu)?.to_dtype(opts.dtype)?.to_device(&opts.device)?),
                None => FrozenWeight::Blocks(embed.clone()),
            },
        };
        let lm_head = GraphLinear { name: "lm_head".into(), weight: lm_weight, bias: None, lora: None };
        let full = embed_var.map(|embed| FullParams { embed, layers: layer_params, head: registry.take() });
        Ok(Self { config, device: opts.device.clone(), dtype: opts.dtype, embed, layers: graph_layers, final_norm, lm_head, rope, rope_local, full })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The trainable parameters: the adapters' with PEFT's names
    /// (`base_model.model.<module>.lora_A.weight`), or in full fine-tuning every weight with its
    /// GGUF name (`token_embd.weight`, `blk.0.attn_q.weight`, ...).
    pub fn trainable(&self) -> Vec<(String, Var)> {
        if let Some(f) = &self.full {
            let mut out = vec![("token_embd.weight".to_string(), f.embed.clone())];
            out.extend(f.layers.iter().flatten().cloned());
            out.extend(f.head.iter().cloned());
            return out;
        }
        let mut out = Vec::new();
        for l in &self.layers {
            for p in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
                if let Some(lora) = &p.lora {
                    out.push((super::adapter::lora_tensor_name(&p.name, "A"), lora.a.clone()));
                    out.push((super::adapter::lora_tensor_name(&p.name, "B"), lora.b.clone()));
                }
            }
        }
        out
    }

    /// Sets the adapters from tensors named as [`GraphDecoder::trainable`] names them, in PEFT's
    /// row order (as [`DecoderAdapter`](super::adapter::DecoderAdapter) reads them): every
    /// adapter of this model must be there with its shape, and nothing else.
    pub fn load_lora(&self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let mut tensors = tensors.clone();
        super::adapter::reorder_rows(&self.config, &mut tensors, super::adapter::Order::Engine)?;
        let own = self.trainable();
        for (name, var) in &own {
            let Some(t) = tensors.get(name) else { bail!("the adapter has no tensor {name}") };
            if t.shape() != var.shape() {
                bail!("adapter tensor {name} has shape {:?}; this model needs {:?} (another base model or rank?)", t.dims(), var.dims())
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        if let Some(extra) = tensors.keys().find(|n| !own.iter().any(|(o, _)| o == *n)) {
            bail!("adapter tensor {extra} has no place in this model (its layers or projections differ)")
        }
        Ok(())
    }

    /// Runs a batch of token sequences (each from position 0) to the final normed hidden
    /// states; shorter sequences are padded on the right.
    pub fn hidden(&self, batch: &[&[u32]]) -> Result<Hidden> {
        let rows: Vec<PackedRow> = batch.iter().map(|s| PackedRow { tokens: s, segments: vec![s.len()] }).collect();
        self.hidden_packed(&rows)
    }

    /// [`GraphDecoder::hidden`] over rows that may each hold several sequences end to end.
    pub fn hidden_packed(&self, rows: &[PackedRow]) -> Result<Hidden> {
        let geometry = self.geometry(rows)?;
        let mut x = self.embed_rows(rows, geometry.t)?;
        for li in 0..self.layers.len() {
            x = self.layer_forward(li, &x, &geometry)?;
        }
        Ok(Hidden { states: self.final_norm(&x)?, lengths: rows.iter().map(|r| r.tokens.len()).collect() })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The masks and rotary tables of a batch of (packed) rows, built once for all layers.
    /// A query sees the keys at or before it in its own sequence (and, on sliding layers,
    /// inside the window); positions restart at every sequence. Padding queries see their
    /// row's first token, so that no softmax row is empty.
    pub fn geometry(&self, rows: &[PackedRow]) -> Result<BatchGeometry> {
        let c = &self.config;
        let t = rows.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
        if t == 0 {
            bail!("a batch needs at least one token")
        }
        // Each token's sequence (usize::MAX for padding) and position within it.
        let mut seq = vec![usize::MAX; rows.len() * t];
        let mut pos = vec![0usize; rows.len() * t];
        for (r, row) in rows.iter().enumerate() {
            if row.segments.iter().sum::<usize>() != row.tokens.len() || row.segments.contains(&0) {
                bail!("row {r}: sequence lengths {:?} do not make up its {} tokens", row.segments, row.tokens.len())
            }
            let mut i = 0;
            for (si, &len) in row.segments.iter().enumerate() {
                if len > c.context_length {
                    bail!("sequence of {len} tokens is longer than the context of {}", c.context_length)
                }
                for p in 0..len {
                    seq[r * t + i] = si;
                    pos[r * t + i] = p;
                    i += 1;
                }
            }
        }
        let mask = |window: Option<usize>| -> Result<Tensor> {
            self.additive_mask(rows.len(), t, t, |r, i| {
                if seq[r * t + i] == usize::MAX {
                    return 0..=0;
                }
                let start = i - pos[r * t + i];
                window.map_or(start, |w| start.max((i + 1).saturating_sub(w)))..=i
            })
        };
        let rope = |table: &RopeTable| -> Result<(Tensor, Tensor)> {
            let half = table.half;
            let (cos, sin) = table.first(t);
            let (mut cs, mut sn) = (Vec::with_capacity(rows.len() * t * half), Vec::with_capacity(rows.len() * t * half));
            for &p in &pos {
                cs.extend_from_slice(&cos[p * half..(p + 1) * half]);
                sn.extend_from_slice(&sin[p * half..(p + 1) * half]);
            }
            let acc = self.accumulate();
            let shape = (rows.len(), 1, t, half);
            Ok((Tensor::from_vec(cs, shape, &self.device)?.to_dtype(acc)?, Tensor::from_vec(sn, shape, &self.device)?.to_dtype(acc)?))
        };
        Ok(BatchGeometry {
            t,
            global_mask: mask(None)?,
            local_mask: c.sliding_window.map(|w| mask(Some(w))).transpose()?,
            global_rope: rope(&self.rope)?,
            local_rope: self.rope_local.as_ref().map(rope).transpose()?,
            dropout_seed: None,
        })
    }

    /// Token embeddings of a batch's rows `[rows, t, hidden]`, right-padded with zeros; a
    /// constant unless the model is fully fine-tuned.
    pub fn embed_rows(&self, rows: &[PackedRow], t: usize) -> Result<Tensor> {
        let batch: Vec<&[u32]> = rows.iter().map(|r| r.tokens).collect();
        self.embed(&batch, t)
    }

    /// Whether every weight is trained ([`GraphOptions::full`]).
    pub fn is_full(&self) -> bool {
        self.full.is_some()
    }

    /// Full fine-tuning: the variables the head reads after the last layer (final norm, an
    /// untied output projection, and the embedding when tied to it).
    pub fn head_trainable(&self) -> Vec<Var> {
        let Some(f) = &self.full else { return Vec::new() };
        let mut out: Vec<Var> = f.head.iter().map(|(_, v)| v.clone()).collect();
        if !f.head.iter().any(|(n, _)| n == "output.weight") {
            out.push(f.embed.clone());
        }
        out
    }

    /// Full fine-tuning: the embedding variable.
    pub fn embed_trainable(&self) -> Option<Var> {
        self.full.as_ref().map(|f| f.embed.clone())
    }

    /// Full fine-tuning: every weight by GGUF name (`[rows, cols]` or `[len]`), sharing the
    /// model's storage, for writing the model out.
    pub fn full_weights(&self) -> Result<std::collections::HashMap<String, Tensor>> {
        if self.full.is_none() {
            bail!("the model is not fully fine-tuned")
        }
        Ok(self.trainable().into_iter().map(|(name, v)| (name, v.as_tensor().clone())).collect())
    }

    /// Layer `li` over `x` (`[rows, t, hidden]`): what a checkpointed backward pass recomputes.
    pub fn layer_forward(&self, li: usize, x: &Tensor, geometry: &BatchGeometry) -> Result<Tensor> {
        let sliding = self.config.sliding_layers.get(li).copied().unwrap_or(false);
        let (mask, rope) = match (sliding, &geometry.local_mask, &geometry.local_rope) {
            (true, Some(m), Some(r)) => (m, r),
            (true, Some(m), None) => (m, &geometry.global_rope),
            _ => (&geometry.global_mask, &geometry.global_rope),
        };
        let seed = geometry.dropout_seed.map(|s| mix(s, li as u64));
        self.layer(&self.layers[li], x, mask, rope, None, seed)
    }

    /// The final RMSNorm.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, &self.final_norm, self.config.rms_eps)
    }

    /// The adapters' parameters of layer `li` (for a checkpointed backward pass, which
    /// collects each layer's gradients as it recomputes it).
    pub fn layer_trainable(&self, li: usize) -> Vec<Var> {
        if let Some(f) = &self.full {
            return f.layers[li].iter().map(|(_, v)| v.clone()).collect();
        }
        let l = &self.layers[li];
        [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].into_iter().filter_map(|p| p.lora.as_ref()).flat_map(|lora| [lora.a.clone(), lora.b.clone()]).collect()
    }

    /// Token embeddings `[batch, t, hidden]` on the device (right-padded with zeros).
    fn embed(&self, batch: &[&[u32]], t: usize) -> Result<Tensor> {
        let c = &self.config;
        let b = batch.len();
        if let Some(f) = &self.full {
            // A gather from the variable (differentiable); padding reads token 0, whose
            // outputs no loss uses and no real query attends to.
            let mut ids = vec![0u32; b * t];
            for (si, seq) in batch.iter().enumerate() {
                for (p, &tok) in seq.iter().enumerate() {
                    if tok as usize >= c.vocab {
                        bail!("token id {tok} is outside the vocabulary of {}", c.vocab)
                    }
                    ids[si * t + p] = tok;
                }
            }
            let x = f.embed.as_tensor().index_select(&Tensor::from_vec(ids, b * t, &self.device)?, 0)?.reshape((b, t, c.hidden))?;
            return Ok(match c.embed_scale {
                Some(s) => (x * s as f64)?,
                None => x,
            });
        }
        let mut x = vec![0f32; b * t * c.hidden];
        for (si, seq) in batch.iter().enumerate() {
            for (p, &tok) in seq.iter().enumerate() {
                if tok as usize >= c.vocab {
                    bail!("token id {tok} is outside the vocabulary of {}", c.vocab)
                }
                let off = (si * t + p) * c.hidden;
                self.embed.row(tok as usize, &mut x[off..off + c.hidden])?;
            }
        }
        if let Some(s) = c.embed_scale {
            x.iter_mut().for_each(|v| *v *= s);
        }
        Ok(Tensor::from_vec(x, (b, t, c.hidden), &Device::Cpu)?.to_device(&self.device)?.to_dtype(self.dtype)?)
    }

    /// Every layer and the final norm over embeddings `x` of tokens at positions
    /// `offset..offset + t`; with a cache (one sequence), keys and values are appended to it and
    /// attention reads all its positions.
    fn layers_from(&self, mut x: Tensor, lengths: &[usize], offset: usize, mut cache: Option<&mut DeviceKv>) -> Result<Tensor> {
        let c = &self.config;
        let t = x.dim(1)?;
        let global_mask = self.mask(lengths, t, offset, None)?;
        let local_mask = match c.sliding_window {
            Some(w) => Some(self.mask(lengths, t, offset, Some(w))?),
            None => None,
        };
        let global_rope = self.rope_tensors(&self.rope, offset, t)?;
        let local_rope = match &self.rope_local {
            Some(r) => Some(self.rope_tensors(r, offset, t)?),
            None => None,
        };
        for (li, l) in self.layers.iter().enumerate() {
            let sliding = c.sliding_layers.get(li).copied().unwrap_or(false);
            let mask = if sliding { local_mask.as_ref().unwrap_or(&global_mask) } else { &global_mask };
            let rope = if sliding { local_rope.as_ref().unwrap_or(&global_rope) } else { &global_rope };
            let layer_cache = cache.as_deref_mut().map(|kv| (&kv.k[li], &kv.v[li], offset));
            x = self.layer(l, &x, mask, rope, layer_cache, None)?;
        }
        rms_norm(&x, &self.final_norm, c.rms_eps)
    }

    /// Logits `[.., vocab]` of hidden states (all of them, or the rows a loss needs).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// The dtype of attention, norms and softmax.
    fn accumulate(&self) -> DType {
        if self.dtype == DType::F64 { DType::F64 } else { DType::F32 }
    }

    fn layer(&self, l: &GraphLayer, x: &Tensor, mask: &Tensor, rope: &(Tensor, Tensor), cache: Option<(&Tensor, &Tensor, usize)>, dropout_seed: Option<u64>) -> Result<Tensor> {
        let c = &self.config;
        // Each projection's mask from its own seed.
        let seed = |p: u64| dropout_seed.map(|s| mix(s, 1000 + p));
        let acc = self.accumulate();
        let (b, t, _) = x.dims3()?;
        let (nh, kvh, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        let h = rms_norm(x, &l.attn_norm, c.rms_eps)?;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> { Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.to_dtype(acc)?) };
        let mut q = heads(l.q.forward_masked(&h, seed(0))?, nh)?;
        let mut k = heads(l.k.forward_masked(&h, seed(1))?, kvh)?;
        let mut v = heads(l.v.forward_masked(&h, seed(2))?, kvh)?;
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            q = rms_norm(&q, qn, c.rms_eps)?;
            k = rms_norm(&k, kn, c.rms_eps)?;
        }
        q = apply_rope(&q, rope, c.rope_style)?;
        k = apply_rope(&k, rope, c.rope_style)?;
        if let Some((kc, vc, offset)) = cache {
            // One sequence: append this step's keys and values, attend to all of them.
            kc.slice_set(&k.squeeze(0)?.contiguous()?, 1, offset)?;
            vc.slice_set(&v.squeeze(0)?.contiguous()?, 1, offset)?;
            k = kc.narrow(1, 0, offset + t)?.unsqueeze(0)?;
            v = vc.narrow(1, 0, offset + t)?.unsqueeze(0)?;
        }
        let keys = k.dim(2)?;
        let group = nh / kvh;
        if group > 1 {
            let expand = |y: &Tensor| -> Result<Tensor> { Ok(y.unsqueeze(2)?.broadcast_as((b, kvh, group, keys, hd))?.contiguous()?.reshape((b, nh, keys, hd))?) };
            k = expand(&k)?;
            v = expand(&v)?;
        }
        let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * c.attn_scale as f64)?;
        let probs = softmax_last(&scores.broadcast_add(mask)?)?;
        let attn = probs.matmul(&v.contiguous()?)?.transpose(1, 2)?.contiguous()?.reshape((b, t, nh * hd))?.to_dtype(self.dtype)?;
        let mut o = l.o.forward_masked(&attn, seed(3))?;
        if let Some(w) = &l.post_attn_norm {
            o = rms_norm(&o, w, c.rms_eps)?;
        }
        let x = (x + o)?;
        let h = rms_norm(&x, &l.ffn_norm, c.rms_eps)?;
        let gate = l.gate.forward_masked(&h, seed(4))?;
        let act = match c.activation {
            Activation::Silu => gate.silu()?,
            Activation::GeluTanh => gate.gelu()?,
        };
        let mut o = l.down.forward_masked(&(act * l.up.forward_masked(&h, seed(5))?)?, seed(6))?;
        if let Some(w) = &l.post_ffn_norm {
            o = rms_norm(&o, w, c.rms_eps)?;
        }
        Ok((x + o)?)
    }

    /// Additive mask `[batch, 1, t, offset + t]` for queries at positions `offset..offset + t`:
    /// a query sees keys at or before it, inside its sequence and (sliding layers) inside the
    /// window. Padding queries see their sequence's keys, so that no row is empty.
    fn mask(&self, lengths: &[usize], t: usize, offset: usize, window: Option<usize>) -> Result<Tensor> {
        self.additive_mask(lengths.len(), t, offset + t, |s, i| {
            let pos = offset + i;
            let last = pos.min(offset + lengths[s].max(1) - 1);
            window.map_or(0, |w| (pos + 1).saturating_sub(w))..=last
        })
    }

    /// The one mask builder of both paths: `[batch, 1, queries, keys]`, 0 where query `(b, i)`
    /// may attend (the key indices `visible(b, i)`) and a large negative number elsewhere.
    fn additive_mask(&self, batch: usize, queries: usize, keys: usize, visible: impl Fn(usize, usize) -> std::ops::RangeInclusive<usize>) -> Result<Tensor> {
        const BLOCKED: f32 = -1e30;
        let mut m = vec![BLOCKED; batch * queries * keys];
        for b in 0..batch {
            for i in 0..queries {
                let row = &mut m[(b * queries + i) * keys..(b * queries + i + 1) * keys];
                let range = visible(b, i);
                let (start, end) = (*range.start(), (*range.end()).min(keys.saturating_sub(1)));
                if start <= end {
                    row[start..=end].fill(0.0);
                }
            }
        }
        Ok(Tensor::from_vec(m, (batch, 1, queries, keys), &self.device)?.to_dtype(self.accumulate())?)
    }

    fn rope_tensors(&self, table: &RopeTable, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let half = table.half;
        let (cos, sin) = table.first(offset + t);
        let (cos, sin) = (&cos[offset * half..], &sin[offset * half..]);
        let acc = self.accumulate();
        Ok((Tensor::from_slice(cos, (t, half), &self.device)?.to_dtype(acc)?, Tensor::from_slice(sin, (t, half), &self.device)?.to_dtype(acc)?))
    }
}

impl CausalLm for GraphDecoder {
    fn config(&self) -> &DecoderConfig {
        &self.config
    }

    fn new_cache(&self, capacity: usize) -> KvCache {
        let c = &self.config;
        let capacity = capacity.min(c.context_length);
        let zeros = || Tensor::zeros((c.n_kv_heads, capacity, c.head_dim), self.accumulate(), &self.device).expect("device memory for the cache");
        let device = DeviceKv { k: (0..c.n_layers).map(|_| zeros()).collect(), v: (0..c.n_layers).map(|_| zeros()).collect() };
        KvCache { kv_dim: c.n_kv_heads * c.head_dim, capacity, len: 0, k: Vec::new(), v: Vec::new(), device: Some(device), adapter: None }
    }

    /// Each step in turn (the device does the batching within a step's tokens).
    fn forward(&self, steps: &mut [Step]) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let mut out = Vec::new();
        for s in steps.iter_mut() {
            let n = s.tokens.len();
            if n == 0 {
                bail!("a step has no tokens")
            }
            let offset = s.cache.len;
            if offset + n > s.cache.capacity {
                bail!("sequence of {} tokens does not fit its cache of {} positions (context length {})", offset + n, s.cache.capacity, c.context_length)
            }
            if s.cache.adapter.is_some() {
                bail!("this engine runs its own adapters (GraphOptions::lora), not a cache's")
            }
            let Some(kv) = s.cache.device.as_mut() else { bail!("this cache was made by another engine") };
            let x = self.embed(&[s.tokens], n)?;
            let states = self.layers_from(x, &[n], offset, Some(kv))?;
            s.cache.len += n;
            let rows = match s.logits {
                Logits::None => continue,
                Logits::Last => states.narrow(1, n - 1, 1)?,
                Logits::All => states,
            };
            let logits = self.logits(&rows)?.to_dtype(DType::F32)?.squeeze(0)?.to_vec2::<f32>()?;
            out.extend(logits);
        }
        Ok(out)
    }

    fn kv_bytes_per_position(&self) -> usize {
        let c = &self.config;
        2 * self.accumulate().size_in_bytes() * c.n_layers * c.n_kv_heads * c.head_dim
    }

    fn weight_bytes_per_token(&self) -> usize {
        let bytes = |p: &GraphLinear| match &p.weight {
            FrozenWeight::Blocks(m) => m.weight_bytes(),
            FrozenWeight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
        };
        self.layers.iter().map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].into_iter().map(bytes).sum::<usize>()).sum::<usize>() + bytes(&self.lm_head)
    }

    /// Always f32 over dequantised weights.
    fn set_exact(&mut self, _exact: bool) {}

    fn engine(&self) -> String {
        format!("{:?} ({:?} weights)", self.device, self.dtype)
    }
}

/// A seed derived from `seed` and `n` (SplitMix64's finaliser), so that every layer and
/// projection draws an independent mask.
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// RMSNorm over the last dimension, in f32 (f64 for f64 input), returned in the input's dtype.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let dtype = x.dtype();
    let acc = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
    let xf = x.to_dtype(acc)?;
    let inv = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps as f64)?.sqrt()?.recip()?;
    Ok(xf.broadcast_mul(&inv)?.broadcast_mul(&w.to_dtype(acc)?)?.to_dtype(dtype)?)
}

/// Softmax over the last dimension; the maximum is subtracted as a constant (it cancels in
/// the gradient).
fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Rotary embedding of `[batch, heads, t, head_dim]` (f32) with tables `[t, head_dim / 2]`.
fn apply_rope(x: &Tensor, (cos, sin): &(Tensor, Tensor), style: RopeStyle) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    let half = d / 2;
    Ok(match style {
        RopeStyle::Halves => {
            let x1 = x.narrow(D::Minus1, 0, half)?;
            let x2 = x.narrow(D::Minus1, half, half)?;
            let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
            let b2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
            Tensor::cat(&[a, b2], D::Minus1)?
        }
        RopeStyle::Interleaved => {
            let pairs = x.reshape((b, h, t, half, 2))?;
            let x1 = pairs.narrow(4, 0, 1)?.squeeze(4)?;
            let x2 = pairs.narrow(4, 1, 1)?.squeeze(4)?;
            let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
            let b2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
            Tensor::stack(&[a, b2], 4)?.reshape((b, h, t, d))?
        }
    })
}
