//! A decoder with a LoRA adapter merged into its weights, written as GGUF (which llama.cpp
//! loads) or as a Hugging Face folder (which transformers loads).
//!
//! Each adapted projection becomes `W + (alpha / r) · B A`, computed in f32 over the base's
//! dequantised weights and then stored in the output's type; every other tensor is the base's,
//! re-encoded. Inside, tensors keep their GGUF names and the model's row order. The folder gets
//! transformers' names, Llama's query and key rows back in transformers' order (llama.cpp's
//! converter permuted them), and Gemma's norms as transformers stores them (w, where GGUF has
//! w + 1).

use super::adapter::{head_permutation, Order};
use super::lora::LoraWeights;
use super::{hf, Activation, Arch, DecoderConfig, WeightSource};
use crate::blocks::{quantize::quantize, GgmlType};
use crate::classifier::write_atomic;
use crate::gguf::{GgufFile, GgufWriter, TensorEntry, Value as Meta};
use crate::gguf_tokenizer::TokenizerInfo;
use crate::slice_ops::RopeStyle;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::Tokenizer;

/// GGUF tensor name of each projection, in [`PROJECTIONS`](super::graph::PROJECTIONS) order.
const GGUF_PROJECTIONS: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

/// A base model's tensors with an adapter's updates added: what both writers read.
pub struct Merger<'a> {
    pub config: &'a DecoderConfig,
    source: &'a dyn WeightSource,
    adapter: Option<LoraWeights>,
}

impl<'a> Merger<'a> {
    /// `adapter`: its PEFT tensors with their alpha and rank, checked against the model (every
    /// tensor must fit a projection of this model).
    pub fn new(config: &'a DecoderConfig, source: &'a dyn WeightSource, adapter: Option<(f64, usize, &HashMap<String, Tensor>)>) -> Result<Self> {
        let adapter = adapter.map(|(alpha, rank, tensors)| LoraWeights::new("merged", config, alpha, rank, tensors)).transpose()?;
        Ok(Self { config, source, adapter })
    }

    /// The model's tensors by GGUF name, with their shapes (`[rows, cols]` or `[len]`), in the
    /// order llama.cpp writes them.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let c = self.config;
        let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let mut out = vec![("token_embd.weight".to_string(), vec![c.vocab, c.hidden])];
        for i in 0..c.n_layers {
            let mut layer = vec![("attn_norm.weight", vec![c.hidden])];
            layer.extend([("attn_q.weight", vec![q, c.hidden]), ("attn_k.weight", vec![kv, c.hidden]), ("attn_v.weight", vec![kv, c.hidden])]);
            for (b, len) in [("attn_q.bias", q), ("attn_k.bias", kv), ("attn_v.bias", kv)] {
                if self.source.has(&format!("blk.{i}.{b}")) {
                    layer.push((b, vec![len]));
                }
            }
            layer.push(("attn_output.weight", vec![c.hidden, q]));
            if c.qk_norm {
                layer.extend([("attn_q_norm.weight", vec![c.head_dim]), ("attn_k_norm.weight", vec![c.head_dim])]);
            }
            if c.post_norms {
                layer.push(("post_attention_norm.weight", vec![c.hidden]));
            }
            layer.push(("ffn_norm.weight", vec![c.hidden]));
            layer.extend([("ffn_gate.weight", vec![c.ffn, c.hidden]), ("ffn_up.weight", vec![c.ffn, c.hidden]), ("ffn_down.weight", vec![c.hidden, c.ffn])]);
            if c.post_norms {
                layer.push(("post_ffw_norm.weight", vec![c.hidden]));
            }
            out.extend(layer.into_iter().map(|(n, s)| (format!("blk.{i}.{n}"), s)));
        }
        out.push(("output_norm.weight".to_string(), vec![c.hidden]));
        if self.source.has("output.weight") {
            out.push(("output.weight".to_string(), vec![c.vocab, c.hidden]));
        }
        out
    }

    /// A tensor's values (row-major, the model's row order), the adapter's update added.
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let mut v = if shape.len() == 2 { self.source.matrix(name)?.to_f32()? } else { self.source.vector(name)? };
        if v.len() != shape.iter().product::<usize>() {
            bail!("tensor '{name}' has {} values, expected {shape:?} for this configuration", v.len())
        }
        if let (Some(adapter), Some((layer, p))) = (&self.adapter, projection(name)) {
            if let Some(delta) = adapter.delta(layer, p)? {
                v.iter_mut().zip(delta).for_each(|(w, d)| *w += d);
            }
        }
        Ok(v)
    }
}

/// Weights held in memory by GGUF name (`[rows, cols]` or `[len]`, f32): a fully fine-tuned
/// model's, to write out through a [`Merger`]. The tensors share their storage with the model,
/// so wrapping them copies nothing; each is read out when the writer asks for it.
pub struct MemoryWeights(pub HashMap<String, Tensor>);

impl MemoryWeights {
    fn values(&self, name: &str) -> Result<(&Tensor, Vec<f32>)> {
        let Some(t) = self.0.get(name) else { bail!("no tensor '{name}'") };
        Ok((t, t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?))
    }
}

impl WeightSource for MemoryWeights {
    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    fn matrix(&self, name: &str) -> Result<crate::qmatmul::QMatrix> {
        let (t, v) = self.values(name)?;
        let (rows, cols) = t.dims2().with_context(|| format!("tensor '{name}' is not a matrix"))?;
        crate::qmatmul::QMatrix::from_f32(v, rows, cols, GgmlType::F32)
    }
    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.values(name)?.1)
    }
}

/// The layer and projection index of a GGUF projection weight (`blk.3.attn_q.weight`).
fn projection(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, part) = rest.split_once('.')?;
    Some((layer.parse().ok()?, GGUF_PROJECTIONS.iter().position(|p| *p == part)?))
}

/// llama.cpp's `general.file_type` of a file whose matrices are `ty`.
fn file_type(ty: GgmlType) -> Result<u32> {
    Ok(match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q8_0 => 7,
        other => bail!("GGUF output in {} is not supported (choose f32, f16 or q8_0)", other.name()),
    })
}

/// Writes the merged model as a GGUF file with `base`'s metadata (tokenizer, chat template,
/// hyperparameters): matrices in `ty` (F32, F16 or Q8_0; a matrix whose rows are not whole
/// Q8_0 blocks falls back to F16, as llama.cpp's quantiser does), vectors in F32. `progress` is
/// called with (tensors done, tensors in all).
pub fn write_gguf(base: &GgufFile, merger: &Merger, ty: GgmlType, path: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<()> {
    let mut w = GgufWriter::new();
    for (k, v) in &base.metadata {
        // The type and alignment are this file's own; imatrix notes describe the old quantisation.
        if k == "general.file_type" || k == "general.alignment" || k.starts_with("quantize.") {
            continue;
        }
        w.meta(k, v.clone());
    }
    w.meta("general.file_type", Meta::U32(file_type(ty)?));
    // Each tensor is made and written in turn: a model is never held whole a second time.
    let tensors = merger.tensors();
    let infos: Vec<TensorEntry> = tensors
        .iter()
        .map(|(name, shape)| {
            let t = match shape.len() {
                2 if ty == GgmlType::Q8_0 && !shape[1].is_multiple_of(32) => GgmlType::F16,
                2 => ty,
                _ => GgmlType::F32,
            };
            TensorEntry { name: name.clone(), dims: shape.iter().rev().copied().collect(), dtype: t, len: t.bytes_for(shape.iter().product()) }
        })
        .collect();
    w.write_streaming(path, &infos, &mut |i| {
        let (name, shape) = &tensors[i];
        let bytes = quantize(infos[i].dtype, &merger.values(name, shape)?);
        progress(i + 1, tensors.len());
        Ok(bytes)
    })
}

/// Writes the merged model as a Hugging Face folder: `config.json`, `model.safetensors` in
/// `dtype`, `generation_config.json`, and the tokenizer (`tokenizer.json`,
/// `tokenizer_config.json` with the chat template). `dir` must not exist yet or be empty; the
/// caller renames it into place.
pub fn write_hf_folder(dir: &Path, merger: &Merger, dtype: DType, tokenizer: &Tokenizer, info: &TokenizerInfo, progress: &mut dyn FnMut(usize, usize)) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        bail!("Hugging Face output in {dtype:?} is not supported (choose f32, f16 or bf16)")
    }
    let c = merger.config;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let list = merger.tensors();
    let mut tensors = HashMap::new();
    for (i, (name, shape)) in list.iter().enumerate() {
        let mut values = merger.values(name, shape)?;
        let (hf_name, plus_one) = hf::hf_name(c.arch, name);
        if plus_one {
            values.iter_mut().for_each(|v| *v -= 1.0);
        }
        if c.rope_style == RopeStyle::Interleaved {
            let heads = if name.contains(".attn_q.") {
                Some(c.n_heads)
            } else if name.contains(".attn_k.") {
                Some(c.n_kv_heads)
            } else {
                None
            };
            if let Some(heads) = heads {
                values = permute_rows(&values, &head_permutation(heads, c.head_dim, Order::Peft));
            }
        }
        tensors.insert(hf_name, Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?.to_dtype(dtype)?);
        progress(i + 1, list.len());
    }
    let tied = !tensors.contains_key("lm_head.weight");
    // Written under a temporary name and renamed, so a folder never holds half a model.
    let tmp = dir.join(".model.safetensors.partial");
    candle_core::safetensors::save(&tensors, &tmp).context("cannot write model.safetensors")?;
    std::fs::rename(&tmp, dir.join("model.safetensors")).context("cannot write model.safetensors")?;
    drop(tensors);
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    let json = |name: &str, v: &Value| write_atomic(&dir.join(name), serde_json::to_string_pretty(v)?.as_bytes());
    json("config.json", &hf_config(c, tied, dtype, info))?;
    json("generation_config.json", &json!({"bos_token_id": info.bos, "eos_token_id": info.stop_tokens, "do_sample": false}))?;
    json(
        "tokenizer_config.json",
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": token(info.bos),
            "eos_token": token(info.eos),
            "add_bos_token": info.add_bos,
            "chat_template": info.chat_template,
            "model_max_length": c.context_length,
            "clean_up_tokenization_spaces": false,
        }),
    )?;
    tokenizer.save(dir.join("tokenizer.json"), false).map_err(|e| anyhow::anyhow!("cannot write tokenizer.json: {e}"))?;
    Ok(())
}

/// Row `i` of the result is row `perm[i]` of `values` (rows of `values.len() / perm.len()`).
fn permute_rows(values: &[f32], perm: &[u32]) -> Vec<f32> {
    let cols = values.len() / perm.len();
    perm.iter().flat_map(|&r| &values[r as usize * cols..(r as usize + 1) * cols]).copied().collect()
}

/// transformers' `config.json` for this configuration (the keys transformers 5 writes, with
/// `rope_theta` too for older versions).
fn hf_config(c: &DecoderConfig, tied: bool, dtype: DType, info: &TokenizerInfo) -> Value {
    let dtype = match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    };
    let mut v = json!({
        "hidden_size": c.hidden,
        "intermediate_size": c.ffn,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "num_hidden_layers": c.n_layers,
        "vocab_size": c.vocab,
        "max_position_embeddings": c.context_length,
        "rms_norm_eps": c.rms_eps,
        "tie_word_embeddings": tied,
        "bos_token_id": info.bos,
        "eos_token_id": info.eos,
        "dtype": dtype,
        "torch_dtype": dtype,
        "rope_theta": c.rope_theta,
        "use_cache": true,
    });
    let extra = match c.arch {
        Arch::Qwen2 => json!({
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
            "use_sliding_window": false, "sliding_window": null,
            "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        }),
        Arch::Llama => json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "attention_bias": false, "mlp_bias": false,
            "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        }),
        Arch::Gemma3 => json!({
            "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
            "hidden_activation": if c.activation == Activation::GeluTanh { "gelu_pytorch_tanh" } else { "silu" },
            "query_pre_attn_scalar": (1.0 / (c.attn_scale as f64 * c.attn_scale as f64)).round(),
            "sliding_window": c.sliding_window,
            "layer_types": c.sliding_layers.iter().map(|&s| if s { "sliding_attention" } else { "full_attention" }).collect::<Vec<_>>(),
            "rope_local_base_freq": c.rope_theta_local,
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": c.rope_theta},
                "sliding_attention": {"rope_type": "default", "rope_theta": c.rope_theta_local},
            },
            "attn_logit_softcapping": null, "final_logit_softcapping": null,
        }),
    };
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        m.extend(e);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_names_parse() {
        assert_eq!(projection("blk.3.attn_q.weight"), Some((3, 0)));
        assert_eq!(projection("blk.12.ffn_down.weight"), Some((12, 6)));
        assert_eq!(projection("blk.0.attn_q.bias"), None);
        assert_eq!(projection("blk.0.attn_norm.weight"), None);
        assert_eq!(projection("token_embd.weight"), None);
    }

    #[test]
    fn row_permutation_and_its_inverse_cancel() {
        let values: Vec<f32> = (0..2 * 8 * 3).map(|v| v as f32).collect();
        let there = permute_rows(&values, &head_permutation(2, 8, Order::Engine));
        assert_ne!(there, values);
        assert_eq!(permute_rows(&there, &head_permutation(2, 8, Order::Peft)), values);
    }
}
