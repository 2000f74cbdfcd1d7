//! LoRA adapters of decoders on disk, in PEFT's layout: `adapter_config.json` (PEFT's keys,
//! `task_type: CAUSAL_LM`, plus zhiku's) and `adapter_model.safetensors` with tensors named
//! `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` (`[r, in]`) and
//! `..lora_B.weight` (`[out, r]`), so `PeftModel.from_pretrained` loads what zhiku writes and
//! zhiku loads what PEFT writes.

use super::graph::{GraphDecoder, LoraSpec, PROJECTIONS};
use super::DecoderConfig;
use crate::slice_ops::RopeStyle;
use crate::classifier::write_atomic;
use crate::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A decoder's LoRA adapter read from a folder.
pub struct DecoderAdapter {
    pub dir: PathBuf,
    /// Rank, alpha and target projections (the seed is unused once weights exist).
    pub spec: LoraSpec,
    /// The base model recorded at training time (a GGUF file or a Hugging Face folder).
    pub base: Option<PathBuf>,
    /// PEFT's names to `[r, in]` / `[out, r]` f32 tensors.
    pub tensors: HashMap<String, Tensor>,
}

/// PEFT's name of a projection's LoRA matrix (`matrix`: "A" or "B"), `module` being the
/// projection's path (`model.layers.3.self_attn.q_proj`).
pub fn lora_tensor_name(module: &str, matrix: &str) -> String {
    format!("base_model.model.{module}.lora_{matrix}.weight")
}

/// Whether `dir` holds an adapter (rather than a whole model).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

/// Whether `dir` holds an adapter of a language model (PEFT's `task_type: CAUSAL_LM`), as
/// opposed to one of an encoder classifier.
pub fn is_decoder_adapter(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(ADAPTER_CONFIG))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|v| v["task_type"].as_str() == Some("CAUSAL_LM"))
}

/// `adapter_config.json` as PEFT writes it for a causal LM.
fn config_json(spec: &LoraSpec, base: &Path, extra: &Value) -> Value {
    let mut v = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base.to_string_lossy(),
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": spec.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
        "zhiku_base_model": base.to_string_lossy(),
    });
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        m.extend(e.clone());
    }
    v
}

/// Writes `model`'s adapters into `dir` (created if needed): each file under a temporary name,
/// then renamed. `extra` adds keys to `adapter_config.json`.
pub fn save(dir: &Path, model: &GraphDecoder, spec: &LoraSpec, base: &Path, extra: &Value) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = model.trainable().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    reorder_rows(&model.config, &mut tensors, Order::Peft)?;
    if tensors.is_empty() {
        bail!("the model has no adapters to save")
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{ADAPTER_WEIGHTS}.tmp"));
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, dir.join(ADAPTER_WEIGHTS)).with_context(|| format!("cannot write {}", dir.join(ADAPTER_WEIGHTS).display()))?;
    write_atomic(&dir.join(ADAPTER_CONFIG), serde_json::to_string_pretty(&config_json(spec, base, extra))?.as_bytes())
}

/// Which row order the query and key projections' `lora_B` are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// transformers' order, in which PEFT's files are.
    Peft,
    /// The loaded model's own order: llama.cpp permuted the rows of each head of a Llama GGUF's
    /// query and key projections (pairs (i, i + d/2) moved to (2i, 2i + 1), see `llama.rs`).
    Engine,
}

/// Puts the `lora_B` rows of the query and key projections into `to`'s order for a model of
/// config `c` (a no-op unless the model's rows were permuted, i.e. a Llama GGUF). An adapter's
/// update `B A x` lands in the projection's output rows, so those rows must follow the weights'.
pub fn reorder_rows(c: &DecoderConfig, tensors: &mut HashMap<String, Tensor>, to: Order) -> Result<()> {
    if c.rope_style != RopeStyle::Interleaved {
        return Ok(());
    }
    for (name, t) in tensors.iter_mut() {
        let heads = if name.contains(".self_attn.q_proj.lora_B") {
            c.n_heads
        } else if name.contains(".self_attn.k_proj.lora_B") {
            c.n_kv_heads
        } else {
            continue;
        };
        let rows = t.dim(0)?;
        if rows != heads * c.head_dim {
            bail!("adapter tensor {name} has {rows} rows; this model needs {}", heads * c.head_dim)
        }
        let index = Tensor::from_vec(head_permutation(heads, c.head_dim, to), rows, t.device())?;
        *t = t.index_select(&index, 0)?;
    }
    Ok(())
}

/// Row `i` of the result is row `perm[i]` of the source: llama.cpp's permutation (row 2j + t of
/// a head is transformers' row t·d/2 + j) or its inverse.
pub(super) fn head_permutation(heads: usize, head_dim: usize, to: Order) -> Vec<u32> {
    let half = head_dim / 2;
    let mut perm = vec![0u32; heads * head_dim];
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let (engine, peft) = (h * head_dim + 2 * j + t, h * head_dim + t * half + j);
                match to {
                    Order::Engine => perm[engine] = peft as u32,
                    Order::Peft => perm[peft] = engine as u32,
                }
            }
        }
    }
    perm
}

impl DecoderAdapter {
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        let at = |what: String| anyhow::anyhow!("{}: {what}", path.display());
        if v["peft_type"].as_str() != Some("LORA") {
            return Err(at(format!("peft_type is {}, not LORA (only LoRA adapters of decoders are supported)", v["peft_type"])));
        }
        let rank = v["r"].as_u64().filter(|&r| r > 0).ok_or_else(|| at("\"r\" must be a positive integer".into()))? as usize;
        let alpha = v["lora_alpha"].as_f64().ok_or_else(|| at("\"lora_alpha\" must be a number".into()))?;
        if v["use_dora"].as_bool() == Some(true) || v["use_rslora"].as_bool() == Some(true) {
            return Err(at("DoRA and rsLoRA adapters are not supported".into()));
        }
        if v["rank_pattern"].as_object().is_some_and(|m| !m.is_empty()) || v["alpha_pattern"].as_object().is_some_and(|m| !m.is_empty()) {
            return Err(at("per-module ranks (rank_pattern, alpha_pattern) are not supported".into()));
        }
        let targets: Vec<String> = match &v["target_modules"] {
            Value::Array(a) => a.iter().filter_map(|t| t.as_str()).map(|t| t.rsplit('.').next().unwrap_or(t).to_string()).collect(),
            Value::String(s) if s == "all-linear" => PROJECTIONS.iter().map(|p| p.to_string()).collect(),
            other => return Err(at(format!("\"target_modules\" {other} is not a list of projections"))),
        };
        if let Some(t) = targets.iter().find(|t| !PROJECTIONS.contains(&t.as_str())) {
            return Err(at(format!("target module '{t}' is not one of {}", PROJECTIONS.join(", "))));
        }
        let dropout = v["lora_dropout"].as_f64().unwrap_or(0.0);
        let base = v["zhiku_base_model"].as_str().or(v["base_model_name_or_path"].as_str()).filter(|s| !s.is_empty()).map(PathBuf::from);
        let weights = dir.join(ADAPTER_WEIGHTS);
        if !weights.is_file() {
            bail!("adapter folder {} has no {ADAPTER_WEIGHTS}", dir.display())
        }
        let raw = candle_core::safetensors::load(&weights, &Device::Cpu).with_context(|| format!("cannot read {}", weights.display()))?;
        // PEFT names tensors without the adapter name when saving; accept ".default." too.
        let tensors = raw.into_iter().map(|(n, t)| Ok((n.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B."), t.to_dtype(candle_core::DType::F32)?))).collect::<Result<_>>()?;
        Ok(Self { dir: dir.to_path_buf(), spec: LoraSpec { rank, alpha, targets, seed: 0, dropout }, base, tensors })
    }

    /// The base model: `base` if given, else the one recorded, which must exist.
    pub fn base_model(&self, base: Option<&Path>) -> Result<PathBuf> {
        match base.map(Path::to_path_buf).or_else(|| self.base.clone()) {
            Some(p) if p.exists() => Ok(p),
            Some(p) => bail!("adapter {} was trained on {}, which is not there; pass the base model with --model", self.dir.display(), p.display()),
            None => bail!("adapter {} names no base model; pass it with --model", self.dir.display()),
        }
    }
}
