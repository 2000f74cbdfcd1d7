//! Hugging Face folders for the decoders: `config.json` and `model.safetensors` (f32, bf16 or
//! f16; widened to f32 at load). Tensors are looked up by their GGUF names and mapped to
//! transformers' names here, so the one loader in `mod.rs` serves both formats. Gemma's norms
//! multiply by (1 + w) in transformers; GGUF files store w + 1, so 1 is added here.

use super::{Arch, DecoderConfig, Dims, WeightSource};
use crate::blocks::GgmlType;
use crate::qmatmul::QMatrix;
use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use serde_json::Value;
use std::path::Path;

/// Tensor name → (dtype, shape, byte range in the map).
type TensorIndex = std::collections::HashMap<String, (GgmlType, Vec<usize>, std::ops::Range<usize>)>;

pub struct HfWeights {
    map: Mmap,
    tensors: TensorIndex,
    arch: Arch,
    path: std::path::PathBuf,
}

/// Reads `dir/config.json` and maps `dir/model.safetensors`.
pub fn open(dir: &Path) -> Result<(DecoderConfig, HfWeights)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?;
    let root: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", cfg_path.display()))?;
    let cfg = root.get("text_config").unwrap_or(&root);
    let config = config(cfg, &root).with_context(|| format!("{}", cfg_path.display()))?;
    let st = dir.join("model.safetensors");
    if !st.is_file() {
        if dir.join("model.safetensors.index.json").is_file() {
            bail!("{}: sharded checkpoints are not supported yet; merge the shards into model.safetensors", dir.display())
        }
        bail!("{} has no model.safetensors", dir.display())
    }
    let file = std::fs::File::open(&st).with_context(|| format!("cannot open {}", st.display()))?;
    // SAFETY: read-only map of a file we do not modify.
    let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", st.display()))?;
    let tensors = index(&map).with_context(|| format!("{} is not a readable safetensors file", st.display()))?;
    Ok((config.clone(), HfWeights { map, tensors, arch: config.arch, path: st }))
}

/// The safetensors header: an 8-byte length, then JSON `{name: {dtype, shape, data_offsets}}`.
fn index(map: &[u8]) -> Result<TensorIndex> {
    if map.len() < 8 {
        bail!("file of {} bytes has no header", map.len())
    }
    let n = u64::from_le_bytes(map[..8].try_into().unwrap()) as usize;
    if n > map.len() - 8 {
        bail!("header length {n} exceeds the file")
    }
    let header: Value = serde_json::from_slice(&map[8..8 + n]).context("header is not JSON")?;
    let mut out = std::collections::HashMap::new();
    for (name, t) in header.as_object().ok_or_else(|| anyhow!("header is not an object"))? {
        if name == "__metadata__" {
            continue;
        }
        let dtype = match t["dtype"].as_str() {
            Some("F32") => GgmlType::F32,
            Some("BF16") => GgmlType::BF16,
            Some("F16") => GgmlType::F16,
            other => bail!("tensor '{name}' has dtype {other:?}; f32, bf16 and f16 are supported"),
        };
        let shape: Vec<usize> = t["shape"].as_array().ok_or_else(|| anyhow!("tensor '{name}' has no shape"))?.iter().map(|v| v.as_u64().unwrap_or(0) as usize).collect();
        let off = t["data_offsets"].as_array().ok_or_else(|| anyhow!("tensor '{name}' has no data_offsets"))?;
        let (a, b) = (off[0].as_u64().unwrap_or(0) as usize + 8 + n, off[1].as_u64().unwrap_or(0) as usize + 8 + n);
        let elems: usize = shape.iter().product();
        if b > map.len() || a > b || b - a != elems * dtype.block_bytes() {
            bail!("tensor '{name}' (bytes {a}..{b}) does not fit the file of {} bytes or its shape: the file is truncated or corrupt", map.len())
        }
        out.insert(name.clone(), (dtype, shape, a..b));
    }
    Ok(out)
}

fn num(cfg: &Value, key: &str) -> Option<f64> {
    cfg.get(key).and_then(Value::as_f64)
}

fn int(cfg: &Value, key: &str) -> Result<usize> {
    cfg.get(key).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| anyhow!("lacks \"{key}\" (an integer)"))
}

fn config(cfg: &Value, root: &Value) -> Result<DecoderConfig> {
    let model_type = cfg.get("model_type").or(root.get("model_type")).and_then(Value::as_str).unwrap_or("");
    let arch = match model_type {
        "qwen2" => Arch::Qwen2,
        "llama" => Arch::Llama,
        "gemma3" | "gemma3_text" => Arch::Gemma3,
        other => bail!("model type '{other}' is not supported (supported: qwen2, llama, gemma3)"),
    };
    let hidden = int(cfg, "hidden_size")?;
    let n_heads = int(cfg, "num_attention_heads")?;
    let n_kv_heads = cfg.get("num_key_value_heads").and_then(Value::as_u64).map(|v| v as usize).unwrap_or(n_heads);
    if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        bail!("{n_heads} query heads cannot share {n_kv_heads} key/value heads")
    }
    let head_dim = cfg.get("head_dim").and_then(Value::as_u64).map(|v| v as usize).unwrap_or(hidden / n_heads);
    let n_layers = int(cfg, "num_hidden_layers")?;
    // transformers 5 writes `rope_parameters` (per layer type for Gemma 3); older configs
    // `rope_theta` / `rope_local_base_freq` / `rope_scaling`.
    let rope = cfg.get("rope_parameters");
    let (global, local) = match rope.and_then(|r| r.get("full_attention")) {
        Some(full) => (Some(full), rope.and_then(|r| r.get("sliding_attention"))),
        None => (rope, None),
    };
    for r in [global, local, cfg.get("rope_scaling")].into_iter().flatten() {
        if let Some(t) = r.get("rope_type").or(r.get("type")).and_then(Value::as_str) {
            if t != "default" {
                bail!("rotary scaling '{t}' is not supported")
            }
        }
    }
    let rope_theta = global.and_then(|r| num(r, "rope_theta")).or(num(cfg, "rope_theta")).unwrap_or(10000.0);
    let rope_theta_local = local.and_then(|r| num(r, "rope_theta")).or(num(cfg, "rope_local_base_freq")).unwrap_or(10000.0);
    if cfg.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
        bail!("sliding-window attention for {model_type} is not supported")
    }
    let dims = Dims {
        n_layers,
        hidden,
        ffn: int(cfg, "intermediate_size")?,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab: int(cfg, "vocab_size")?,
        context_length: int(cfg, "max_position_embeddings")?,
    };
    let mut c = DecoderConfig::new(arch, dims, num(cfg, "rms_norm_eps").unwrap_or(1e-6) as f32, rope_theta);
    c.rope_theta_local = rope_theta_local;
    if arch == Arch::Gemma3 {
        super::gemma3::set_family(&mut c);
        if let Some(s) = num(cfg, "query_pre_attn_scalar") {
            c.attn_scale = 1.0 / (s as f32).sqrt();
        }
        c.sliding_window = cfg.get("sliding_window").and_then(Value::as_u64).map(|w| w as usize);
        if c.sliding_window.is_some() {
            c.sliding_layers = match cfg.get("layer_types").and_then(Value::as_array) {
                Some(t) => t.iter().map(|v| v.as_str() == Some("sliding_attention")).collect(),
                None => {
                    let every = cfg.get("sliding_window_pattern").and_then(Value::as_u64).unwrap_or(super::gemma3::SLIDING_PATTERN as u64) as usize;
                    (0..n_layers).map(|i| (i + 1) % every != 0).collect()
                }
            };
        }
        for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if cfg.get(key).is_some_and(|v| !v.is_null()) {
                bail!("{key} is not supported")
            }
        }
    }
    if c.sliding_layers.len() != n_layers {
        bail!("layer_types lists {} layers for {n_layers}", c.sliding_layers.len())
    }
    Ok(c)
}

/// transformers' name for a GGUF tensor name, and whether the GGUF value is transformers' plus 1
/// (Gemma's norms).
pub fn hf_name(arch: Arch, name: &str) -> (String, bool) {
        let gemma = arch == Arch::Gemma3;
        let fixed = match name {
            "token_embd.weight" => Some(("model.embed_tokens.weight", false)),
            "output_norm.weight" => Some(("model.norm.weight", gemma)),
            "output.weight" => Some(("lm_head.weight", false)),
            _ => None,
        };
        if let Some((n, plus)) = fixed {
            return (n.to_string(), plus);
        }
        let Some(rest) = name.strip_prefix("blk.") else { return (name.to_string(), false) };
        let (layer, part) = rest.split_once('.').unwrap_or((rest, ""));
        let (hf, plus) = match part {
            "attn_norm.weight" => ("input_layernorm.weight", gemma),
            "attn_q.weight" => ("self_attn.q_proj.weight", false),
            "attn_k.weight" => ("self_attn.k_proj.weight", false),
            "attn_v.weight" => ("self_attn.v_proj.weight", false),
            "attn_q.bias" => ("self_attn.q_proj.bias", false),
            "attn_k.bias" => ("self_attn.k_proj.bias", false),
            "attn_v.bias" => ("self_attn.v_proj.bias", false),
            "attn_output.weight" => ("self_attn.o_proj.weight", false),
            "attn_q_norm.weight" => ("self_attn.q_norm.weight", gemma),
            "attn_k_norm.weight" => ("self_attn.k_norm.weight", gemma),
            "post_attention_norm.weight" => ("post_attention_layernorm.weight", gemma),
            // Llama and Qwen2 call the norm before the MLP "post_attention_layernorm".
            "ffn_norm.weight" if gemma => ("pre_feedforward_layernorm.weight", true),
            "ffn_norm.weight" => ("post_attention_layernorm.weight", false),
            "post_ffw_norm.weight" => ("post_feedforward_layernorm.weight", gemma),
            "ffn_gate.weight" => ("mlp.gate_proj.weight", false),
            "ffn_up.weight" => ("mlp.up_proj.weight", false),
            "ffn_down.weight" => ("mlp.down_proj.weight", false),
            other => return (format!("model.layers.{layer}.{other}"), false),
        };
        (format!("model.layers.{layer}.{hf}"), plus)
}

impl HfWeights {
    fn hf_name(&self, name: &str) -> (String, bool) {
        hf_name(self.arch, name)
    }

    fn values(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (hf, plus_one) = self.hf_name(name);
        let (dtype, shape, range) = self.tensors.get(&hf).ok_or_else(|| anyhow!("{} has no tensor '{hf}'", self.path.display()))?;
        let mut v = vec![0f32; shape.iter().product()];
        dtype.dequantize(&self.map[range.clone()], &mut v).with_context(|| format!("tensor '{hf}'"))?;
        if plus_one {
            v.iter_mut().for_each(|x| *x += 1.0);
        }
        Ok((shape.clone(), v))
    }
}

impl WeightSource for HfWeights {
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(&self.hf_name(name).0)
    }
    fn matrix(&self, name: &str) -> Result<QMatrix> {
        let (shape, v) = self.values(name)?;
        let [rows, cols] = shape[..] else { bail!("tensor for '{name}' has shape {shape:?}, expected a matrix") };
        QMatrix::from_f32(v, rows, cols, GgmlType::F32)
    }
    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.values(name)?.1)
    }
}
