//! A BERT encoder (transformers' `BertModel`) on candle, trainable end to end.

use crate::config::{Activation, BertConfig};
use crate::layers::{additive_mask, as_dtype, maybe_dropout, DropoutRng, LayerNorm, Linear};
use crate::params::{Init, WeightSource};
use crate::peft::{load_linear, Bottleneck, PeftConfig, Prefix};
use anyhow::Result;
use candle_core::{DType, Tensor, D};

struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
}

struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    norm: LayerNorm,
}

struct FeedForward {
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
}

struct Layer {
    attention: SelfAttention,
    ffn: FeedForward,
    /// Bottleneck adapters after the attention output and after the feed-forward output.
    adapters: Option<(Bottleneck, Bottleneck)>,
    prefix: Option<Prefix>,
}

/// The encoder: embeddings, `num_hidden_layers` transformer layers and (optionally) the pooler.
pub struct BertModel {
    pub config: BertConfig,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pooler: Option<Linear>,
    activation: Activation,
    /// Mixed precision: the type activations are computed in (`None`: the weights' type).
    compute: Option<DType>,
}

/// Name prefix of encoder weights inside a task model (`bert.encoder.layer.0...`).
pub const ENCODER_PREFIX: &str = "bert";

impl BertModel {
    /// Builds the encoder from `ws` under `prefix` (usually [`ENCODER_PREFIX`]).
    pub fn load(ws: &mut WeightSource, config: &BertConfig, prefix: &str, with_pooler: bool) -> Result<Self> {
        Self::load_with_peft(ws, config, prefix, with_pooler, None)
    }

    /// Like [`Self::load`], with the modules of a parameter-efficient method added.
    pub fn load_with_peft(ws: &mut WeightSource, config: &BertConfig, prefix: &str, with_pooler: bool, peft: Option<&PeftConfig>) -> Result<Self> {
        let h = config.hidden_size;
        let std = config.initializer_range;
        let eps = config.layer_norm_eps;
        let p = |s: &str| format!("{prefix}.{s}");
        let embeddings = Embeddings {
            word: ws.get(&p("embeddings.word_embeddings.weight"), (config.vocab_size, h), Init::Normal(std))?,
            position: ws.get(&p("embeddings.position_embeddings.weight"), (config.max_position_embeddings, h), Init::Normal(std))?,
            token_type: ws.get(&p("embeddings.token_type_embeddings.weight"), (config.type_vocab_size, h), Init::Normal(std))?,
            norm: LayerNorm::load(ws, &p("embeddings.LayerNorm"), h, eps)?,
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let layer_prefix = format!("{prefix}.encoder.layer.{i}");
            let l = |s: &str| format!("{layer_prefix}.{s}");
            let lin = |ws: &mut WeightSource, name: &str, i: usize, o: usize| load_linear(ws, &l(name), name, i, o, std, peft);
            let attention = SelfAttention {
                query: lin(ws, "attention.self.query", h, h)?,
                key: lin(ws, "attention.self.key", h, h)?,
                value: lin(ws, "attention.self.value", h, h)?,
                output: lin(ws, "attention.output.dense", h, h)?,
                norm: LayerNorm::load(ws, &l("attention.output.LayerNorm"), h, eps)?,
            };
            let ffn = FeedForward {
                intermediate: lin(ws, "intermediate.dense", h, config.intermediate_size)?,
                output: lin(ws, "output.dense", config.intermediate_size, h)?,
                norm: LayerNorm::load(ws, &l("output.LayerNorm"), h, eps)?,
            };
            let adapters = match peft {
                Some(PeftConfig::Adapter { size }) => Some((
                    Bottleneck::load(ws, &l("attention.output"), h, *size, config.activation()?)?,
                    Bottleneck::load(ws, &l("output"), h, *size, config.activation()?)?,
                )),
                _ => None,
            };
            let prefix_kv = match peft {
                Some(PeftConfig::Prefix { length }) => Some(Prefix::load(ws, &layer_prefix, *length, h, std)?),
                _ => None,
            };
            layers.push(Layer { attention, ffn, adapters, prefix: prefix_kv });
        }
        let pooler = if with_pooler { Some(Linear::load(ws, &p("pooler.dense"), h, h, std)?) } else { None };
        Ok(Self { config: config.clone(), embeddings, layers, pooler, activation: config.activation()?, compute: None })
    }

    /// Last hidden states `[batch, seq, hidden]`. `rng` is `Some` in training mode (dropout on).
    /// In inference mode on the CPU the batch is cut into one shard per core, run concurrently
    /// (see [`crate::shard`]); training shards at the loss instead, so that each shard's backward
    /// pass runs on its own core too.
    pub fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, attention_mask: &Tensor, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let rows = input_ids.dim(0)?;
        let shards = if rng.is_none() { crate::shard::shard_count(rows, input_ids.device()) } else { 1 };
        if shards <= 1 {
            return self.forward_rows(input_ids, token_type_ids, attention_mask, rng);
        }
        let ranges = crate::shard::split_rows(rows, shards);
        let parts = crate::shard::run(shards, |i| {
            let (start, len) = (ranges[i].start, ranges[i].len());
            self.forward_rows(&input_ids.narrow(0, start, len)?, &token_type_ids.narrow(0, start, len)?, &attention_mask.narrow(0, start, len)?, None)
        })?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    fn forward_rows(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        mut rng: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        let (_b, seq) = input_ids.dims2()?;
        let cfg = &self.config;
        if seq > cfg.max_position_embeddings {
            anyhow::bail!("sequence of {seq} tokens exceeds max_position_embeddings {}", cfg.max_position_embeddings)
        }
        let e = &self.embeddings;
        let words = embed(&e.word, input_ids)?;
        let types = embed(&e.token_type, token_type_ids)?;
        let positions = e.position.narrow(0, 0, seq)?;
        let x = words.add(&types)?.broadcast_add(&positions)?;
        let x = e.norm.forward(&x)?;
        // The additive mask and the attention softmax stay in the weights' precision.
        let mask = additive_mask(attention_mask, x.dtype())?;
        let x = match self.compute {
            Some(dtype) => x.to_dtype(dtype)?,
            None => x,
        };
        let mut x = maybe_dropout(&x, cfg.hidden_dropout_prob, &mut rng)?;
        let mask_values: Vec<f32> = if crate::kernels::fused_ok(&x) { mask.flatten_all()?.to_vec1()? } else { Vec::new() };
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, &mask, &mask_values, &mut rng)?;
        }
        Ok(x)
    }

    fn layer_forward(&self, layer: &Layer, x: &Tensor, mask: &Tensor, mask_values: &[f32], rng: &mut Option<&mut DropoutRng>) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, l, h) = x.dims3()?;
        let heads = cfg.num_attention_heads;
        let d = cfg.head_dim();
        let a = &layer.attention;
        let (q, k, v) = (a.query.forward_t(x, rng)?, a.key.forward_t(x, rng)?, a.value.forward_t(x, rng)?);
        let ctx = if crate::kernels::fused_ok(x) && layer.prefix.is_none() {
            let p = cfg.attention_probs_dropout_prob;
            let dropout = match rng {
                Some(r) if p > 0.0 => Some((p as f32, r.next_seed(heads * l * l))),
                _ => None,
            };
            crate::attention::fused_attention(&q, &k, &v, heads, mask_values, dropout)?
        } else {
            // Prefix tuning prepends learned keys and values that every token may attend to.
            let (k, v, mask) = match &layer.prefix {
                Some(p) => {
                    let open = Tensor::zeros((b, p.len()), mask.dtype(), mask.device())?;
                    (p.prepend(&p.key, &k)?, p.prepend(&p.value, &v)?, Tensor::cat(&[&open, mask], 1)?)
                }
                None => (k, v, mask.clone()),
            };
            let split = |t: Tensor| -> Result<Tensor> {
                let len = t.dim(1)?;
                Ok(t.reshape((b, len, heads, d))?.transpose(1, 2)?.contiguous()?)
            };
            let q = split((q * (1.0 / (d as f64).sqrt()))?)?;
            let k = split(k)?;
            let v = split(v)?;
            let scores = q.matmul(&k.t()?)?;
            let probs = crate::kernels::masked_softmax(&as_dtype(&scores, mask.dtype())?, &mask)?;
            let probs = as_dtype(&probs, scores.dtype())?;
            let probs = maybe_dropout(&probs, cfg.attention_probs_dropout_prob, rng)?;
            probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h))?
        };
        let mut attn = maybe_dropout(&a.output.forward_t(&ctx, rng)?, cfg.hidden_dropout_prob, rng)?;
        if let Some((after_attention, _)) = &layer.adapters {
            attn = after_attention.forward(&attn)?;
        }
        let x = a.norm.forward(&attn.add(x)?)?;
        let f = &layer.ffn;
        let inter = f.intermediate.forward_activated(&x, self.activation, rng)?;
        let mut out = maybe_dropout(&f.output.forward_t(&inter, rng)?, cfg.hidden_dropout_prob, rng)?;
        if let Some((_, after_ffn)) = &layer.adapters {
            out = after_ffn.forward(&out)?;
        }
        f.norm.forward(&out.add(&x)?)
    }

    /// Mixed precision: compute activations in `dtype` (bf16 or f16) over the weights as they
    /// are (f32 masters); `None` computes in the weights' type.
    pub fn set_compute_dtype(&mut self, dtype: Option<DType>) {
        self.compute = dtype;
    }

    pub fn compute_dtype(&self) -> Option<DType> {
        self.compute
    }

    /// Switches the encoder layers' linear layers (attention projections and feed-forward) to
    /// int8 weights for inference; returns how many. Requires f32 weights on the CPU.
    pub fn quantize_int8(&mut self) -> Result<usize> {
        let mut n = 0;
        for layer in &mut self.layers {
            let a = &mut layer.attention;
            let f = &mut layer.ffn;
            for lin in [&mut a.query, &mut a.key, &mut a.value, &mut a.output, &mut f.intermediate, &mut f.output] {
                if !(lin.weight.device().is_cpu() && lin.weight.dtype() == candle_core::DType::F32) {
                    anyhow::bail!("int8 inference runs on the CPU with f32 weights")
                }
                lin.quantize_int8()?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// transformers' pooler: `tanh(dense(hidden[:, 0]))`.
    pub fn pool(&self, hidden: &Tensor) -> Result<Tensor> {
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        match &self.pooler {
            Some(p) => Ok(p.forward(&cls)?.tanh()?),
            None => anyhow::bail!("this model was built without a pooler"),
        }
    }
}

/// Row lookup `table[ids]` for ids of any shape; differentiable with respect to `table`.
fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let dims = ids.dims().to_vec();
    let flat = ids.flatten_all()?;
    let rows = table.index_select(&flat, 0)?;
    let mut out = dims;
    out.push(table.dim(D::Minus1)?);
    Ok(rows.reshape(out)?)
}

/// Mean of hidden states over non-padded positions: `[batch, hidden]`.
pub fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    let m = attention_mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&m)?.sum(1)?;
    let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    Ok(summed.broadcast_div(&counts)?)
}

/// The hidden state of the first (`[CLS]`) token: `[batch, hidden]`.
pub fn cls_pool(hidden: &Tensor) -> Result<Tensor> {
    Ok(hidden.narrow(1, 0, 1)?.squeeze(1)?)
}
