//! Parameter-efficient fine-tuning: LoRA, bottleneck adapters (Houlsby et al. 2019) and prefix
//! tuning (Li & Liang 2021; one learned key/value prefix per layer, as in P-tuning v2).
//!
//! The base encoder's weights stay constants; only the small modules added here and the task
//! head (pooler and classifier) are trained. An adapter folder holds just those trainable
//! tensors (`adapter_model.safetensors`), what they are (`adapter_config.json`, which names the
//! base model folder) and the head's labels (`config.json`), so one base model in memory can
//! carry many task adapters.

use crate::layers::{activate, maybe_dropout, DropoutRng, Linear};
use crate::params::{Init, WeightSource};
use crate::config::Activation;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The linear layers of a BERT layer, by the names LoRA targets match against.
pub const LINEAR_NAMES: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

/// Which parameter-efficient method to add to the encoder, with its settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum PeftConfig {
    /// `W x + (alpha / r) · B A dropout(x)` on the target linear layers; A is `[r, in]`
    /// (Kaiming-uniform), B is `[out, r]` (zeros, so training starts from the base model).
    Lora { r: usize, alpha: f64, dropout: f64, targets: Vec<String> },
    /// A bottleneck `h + up(act(down(h)))` after the attention output and after the feed-forward
    /// output of every layer; LayerNorms are trained too, as in Houlsby et al.
    Adapter { size: usize },
    /// `length` learned key and value vectors per layer that every token can attend to.
    Prefix { length: usize },
}

impl PeftConfig {
    pub fn method(&self) -> &'static str {
        match self {
            PeftConfig::Lora { .. } => "lora",
            PeftConfig::Adapter { .. } => "adapter",
            PeftConfig::Prefix { .. } => "prefix",
        }
    }

    /// Checks the settings; `num_layers` lets LoRA targets be checked against real layer names.
    pub fn validate(&self) -> Result<()> {
        match self {
            PeftConfig::Lora { r, alpha, dropout, targets } => {
                if *r == 0 {
                    bail!("--lora-r must be at least 1")
                }
                if !(alpha.is_finite() && *alpha > 0.0) {
                    bail!("--lora-alpha must be a positive number")
                }
                if !(0.0..1.0).contains(dropout) {
                    bail!("--lora-dropout must be in [0, 1)")
                }
                if targets.is_empty() {
                    bail!("--lora-targets names no layer")
                }
                for t in targets {
                    if !LINEAR_NAMES.iter().any(|n| target_matches(t, n)) {
                        bail!("--lora-targets: {t:?} matches no linear layer; the layers of each encoder block are {}", LINEAR_NAMES.join(", "))
                    }
                }
            }
            PeftConfig::Adapter { size } if *size == 0 => bail!("--adapter-size must be at least 1"),
            PeftConfig::Prefix { length } if *length == 0 => bail!("--prefix-length must be at least 1"),
            _ => {}
        }
        Ok(())
    }

    /// Whether the parameter `name` is trained under this method: the added modules and the
    /// task head, plus the LayerNorms for bottleneck adapters.
    pub fn is_trainable(&self, name: &str) -> bool {
        if is_head_param(name) || is_peft_param(name) {
            return true;
        }
        matches!(self, PeftConfig::Adapter { .. }) && name.contains("LayerNorm")
    }

    /// LoRA settings for the linear layer `layer_name` (one of [`LINEAR_NAMES`]), if targeted.
    fn lora_for(&self, layer_name: &str) -> Option<(usize, f64, f64)> {
        match self {
            PeftConfig::Lora { r, alpha, dropout, targets } if targets.iter().any(|t| target_matches(t, layer_name)) => {
                Some((*r, *alpha / *r as f64, *dropout))
            }
            _ => None,
        }
    }
}

/// PEFT's rule: a target matches a layer when it equals the layer's name or a dotted suffix of
/// it (`value` → `attention.self.value`, `dense` → every dense layer); `all` matches every layer.
pub fn target_matches(target: &str, layer_name: &str) -> bool {
    target == "all" || layer_name == target || layer_name.ends_with(&format!(".{target}"))
}

/// Parameters of the task head, trained and saved with every adapter (a LoRA classifier that
/// reloads with a random head is a known trap elsewhere).
pub fn is_head_param(name: &str) -> bool {
    name.starts_with("classifier.") || name.contains(".pooler.")
}

/// Parameters that parameter-efficient methods add to the encoder.
pub fn is_peft_param(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.") || name.contains(".adapter.") || name.contains(".prefix_")
}

/// The low-rank update of one linear layer.
#[derive(Clone)]
pub struct Lora {
    /// `[r, in]`
    pub a: Tensor,
    /// `[out, r]`
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
}

impl Lora {
    /// `scale · B A dropout(x)` over the last dimension of `x`.
    pub fn delta(&self, x: &Tensor, rng: &mut Option<&mut DropoutRng>) -> Result<Tensor> {
        let x = maybe_dropout(x, self.dropout, rng)?;
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("LoRA input has a last dim");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let (a, b) = (crate::layers::as_dtype(&self.a, x.dtype())?, crate::layers::as_dtype(&self.b, x.dtype())?);
        let low = x.reshape((rows, in_dim))?.matmul(&a.t()?)?;
        let y = (low.matmul(&b.t()?)? * self.scale)?;
        let mut out = dims;
        *out.last_mut().unwrap() = self.b.dim(0)?;
        Ok(y.reshape(out)?)
    }
}

/// Loads the linear layer `{prefix}` and, when `peft` targets it, its LoRA matrices
/// (`{prefix}.lora_A.weight`, `{prefix}.lora_B.weight`).
pub fn load_linear(ws: &mut WeightSource, prefix: &str, layer_name: &str, in_dim: usize, out_dim: usize, std: f64, peft: Option<&PeftConfig>) -> Result<Linear> {
    let mut linear = Linear::load(ws, prefix, in_dim, out_dim, std)?;
    if let Some((r, scale, dropout)) = peft.and_then(|p| p.lora_for(layer_name)) {
        // PEFT's init: Kaiming-uniform with a = sqrt(5) on A, which is U(-1/sqrt(in), 1/sqrt(in)).
        let a = ws.get(&format!("{prefix}.lora_A.weight"), (r, in_dim), Init::Uniform(1.0 / (in_dim as f64).sqrt()))?;
        let b = ws.get(&format!("{prefix}.lora_B.weight"), (out_dim, r), Init::Zeros)?;
        linear.lora = Some(Lora { a, b, scale, dropout });
    }
    Ok(linear)
}

/// A Houlsby bottleneck adapter: `h + up(act(down(h)))`, starting as the identity.
pub struct Bottleneck {
    down: Linear,
    up: Linear,
    activation: Activation,
}

impl Bottleneck {
    pub fn load(ws: &mut WeightSource, prefix: &str, hidden: usize, size: usize, activation: Activation) -> Result<Self> {
        let down = Linear::load(ws, &format!("{prefix}.adapter.down"), hidden, size, 1e-2)?;
        let weight = ws.get(&format!("{prefix}.adapter.up.weight"), (hidden, size), Init::Zeros)?;
        let bias = ws.get(&format!("{prefix}.adapter.up.bias"), hidden, Init::Zeros)?;
        Ok(Self { down, up: Linear { weight, bias: Some(bias), lora: None, int8: None }, activation })
    }

    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let inner = activate(&self.down.forward(h)?, self.activation)?;
        Ok(h.add(&self.up.forward(&inner)?)?)
    }
}

/// Learned attention prefix of one layer: keys and values `[length, hidden]`.
pub struct Prefix {
    pub key: Tensor,
    pub value: Tensor,
}

impl Prefix {
    pub fn load(ws: &mut WeightSource, prefix: &str, length: usize, hidden: usize, std: f64) -> Result<Self> {
        Ok(Self {
            key: ws.get(&format!("{prefix}.attention.self.prefix_key"), (length, hidden), Init::Normal(std))?,
            value: ws.get(&format!("{prefix}.attention.self.prefix_value"), (length, hidden), Init::Normal(std))?,
        })
    }

    /// `[prefix; t]` along the sequence for a batch of projections `t: [batch, seq, hidden]`.
    pub fn prepend(&self, which: &Tensor, t: &Tensor) -> Result<Tensor> {
        let (b, _, h) = t.dims3()?;
        let p = crate::layers::as_dtype(which, t.dtype())?.unsqueeze(0)?.broadcast_as((b, which.dim(0)?, h))?;
        Ok(Tensor::cat(&[&p, t], 1)?)
    }

    pub fn len(&self) -> usize {
        self.key.dim(0).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The files of an adapter folder.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

pub fn is_adapter_folder(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

/// `adapter_config.json`, with PEFT's keys where they exist (`peft_type`, `r`, `lora_alpha`,
/// `target_modules`, `base_model_name_or_path`) and ours (`zhiku_peft`) to rebuild it exactly.
pub fn adapter_config_json(peft: &PeftConfig, base_dir: &Path) -> Value {
    let base = std::fs::canonicalize(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
    let mut v = json!({
        "base_model_name_or_path": base.display().to_string(),
        "task_type": "SEQ_CLS",
        "modules_to_save": ["classifier", "pooler"],
        "zhiku_peft": peft,
    });
    let extra = match peft {
        PeftConfig::Lora { r, alpha, dropout, targets } => {
            json!({"peft_type": "LORA", "r": r, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": targets})
        }
        PeftConfig::Adapter { size } => json!({"peft_type": "BOTTLENECK_ADAPTER", "adapter_size": size}),
        PeftConfig::Prefix { length } => json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": length}),
    };
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

/// An adapter folder, opened and checked: its method, its base model folder and its tensors.
pub struct AdapterFolder {
    pub dir: PathBuf,
    pub peft: PeftConfig,
    pub base_dir: PathBuf,
}

impl AdapterFolder {
    /// Opens `dir`; `base` overrides the base model folder recorded at training time.
    pub fn open(dir: &Path, base: Option<&Path>) -> Result<Self> {
        let path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        let peft = match v.get("zhiku_peft") {
            Some(z) => serde_json::from_value(z.clone()).with_context(|| format!("{}: invalid \"zhiku_peft\" entry", path.display()))?,
            None => from_peft_library(&v).with_context(|| format!("{}", path.display()))?,
        };
        peft.validate().with_context(|| format!("{}", path.display()))?;
        let base_dir = match base {
            Some(b) => b.to_path_buf(),
            None => {
                let recorded = v.get("base_model_name_or_path").and_then(|b| b.as_str()).unwrap_or_default();
                if recorded.is_empty() {
                    bail!("{}: no base_model_name_or_path; pass the base model folder with --base", path.display())
                }
                let p = PathBuf::from(recorded);
                if p.is_relative() { dir.join(p) } else { p }
            }
        };
        if !base_dir.join("config.json").is_file() {
            bail!(
                "adapter {} was trained on the base model {}, which is not there; pass the base model folder with --base DIR (or set base_model_name_or_path in its adapter_config.json)",
                dir.display(),
                base_dir.display()
            )
        }
        if !dir.join(ADAPTER_WEIGHTS).is_file() {
            bail!("adapter folder {} has no {ADAPTER_WEIGHTS}", dir.display())
        }
        Ok(Self { dir: dir.to_path_buf(), peft, base_dir })
    }

    /// The adapter's own tensors (added modules and task head), under zhiku's names (PEFT's
    /// `base_model.model.` prefix removed).
    pub fn load_weights(&self, device: &candle_core::Device) -> Result<HashMap<String, Tensor>> {
        let p = self.dir.join(ADAPTER_WEIGHTS);
        let raw = candle_core::safetensors::load(&p, device).with_context(|| format!("cannot read adapter weights {}", p.display()))?;
        Ok(raw.into_iter().map(|(k, v)| (k.strip_prefix(PEFT_PREFIX).map(str::to_string).unwrap_or(k), v)).collect())
    }

    /// The folder's own `config.json` (zhiku writes one with the head's labels; Python PEFT
    /// does not).
    fn own_config(&self) -> Result<Option<serde_json::Map<String, Value>>> {
        let path = self.dir.join("config.json");
        if !path.is_file() {
            return Ok(None);
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        v.as_object().cloned().map(Some).with_context(|| format!("{}: not a JSON object", path.display()))
    }

    /// The head's settings: from the folder's `config.json` when zhiku wrote it, else (an adapter
    /// trained with Python PEFT) as many `LABEL_i` labels as the saved classifier in `weights`
    /// (from [`Self::load_weights`]) has rows, on transformers' pooler head.
    pub fn head_raw_config(&self, weights: &HashMap<String, Tensor>) -> Result<serde_json::Map<String, Value>> {
        if let Some(raw) = self.own_config()? {
            return Ok(raw);
        }
        let Some(head) = weights.get("classifier.weight") else {
            bail!("adapter {} has neither a config.json with labels nor a saved classifier (PEFT: task_type SEQ_CLS saves it)", self.dir.display())
        };
        let n = head.dim(0)?;
        let mut raw = serde_json::Map::new();
        raw.insert("architectures".into(), json!(["BertForSequenceClassification"]));
        raw.insert("id2label".into(), Value::Object((0..n).map(|i| (i.to_string(), json!(format!("LABEL_{i}")))).collect()));
        Ok(raw)
    }

    /// The tokenizer to run the adapter with: its own (zhiku's adapters carry one) or else the
    /// base's, limited to the length it was trained with (512 when unknown) and to `base`'s
    /// position table.
    pub fn tokenizer(&self, base: &crate::folder::ModelFolder) -> Result<crate::tokenizer::TextTokenizer> {
        let trained = self.own_config()?.and_then(|c| c.get("zhiku_max_length").and_then(|v| v.as_u64()));
        let max_length = trained.map_or(512, |v| v as usize).min(base.config.max_position_embeddings);
        let has_own = self.dir.join("tokenizer.json").is_file() || self.dir.join("vocab.txt").is_file();
        crate::tokenizer::TextTokenizer::from_folder(if has_own { &self.dir } else { &base.dir }, max_length)
    }
}

/// The key prefix PEFT gives every tensor of an adapter (`base_model.model.bert...`).
pub const PEFT_PREFIX: &str = "base_model.model.";

/// A LoRA adapter written by Python PEFT (`adapter_config.json` with `peft_type: LORA`).
fn from_peft_library(v: &Value) -> Result<PeftConfig> {
    let kind = v.get("peft_type").and_then(|t| t.as_str()).unwrap_or_default();
    if kind != "LORA" {
        bail!("peft_type {kind:?} is not supported: zhiku reads its own adapters and PEFT's LORA adapters")
    }
    let targets = match v.get("target_modules") {
        Some(Value::Array(a)) => a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
        Some(Value::String(s)) => bail!("target_modules as a regular expression ({s:?}) is not supported; list the modules"),
        _ => bail!("no target_modules"),
    };
    for unsupported in ["use_dora", "use_rslora"] {
        if v.get(unsupported).and_then(|x| x.as_bool()) == Some(true) {
            bail!("{unsupported} adapters are not supported")
        }
    }
    if v.get("bias").and_then(|b| b.as_str()).is_some_and(|b| b != "none") {
        bail!("LoRA adapters that train biases (bias != \"none\") are not supported")
    }
    let c = PeftConfig::Lora {
        r: v.get("r").and_then(|x| x.as_u64()).context("no r")? as usize,
        alpha: v.get("lora_alpha").and_then(|x| x.as_f64()).context("no lora_alpha")?,
        dropout: v.get("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0),
        targets,
    };
    c.validate()?;
    Ok(c)
}

/// Folds every LoRA pair in `tensors` into its base weight (`W + scale · B A`) and drops the
/// pairs, giving a plain model's tensors. Only LoRA merges; other methods add computation that
/// no weight can absorb.
pub fn merge_lora(tensors: &mut HashMap<String, Tensor>, peft: &PeftConfig) -> Result<usize> {
    let PeftConfig::Lora { r, alpha, .. } = peft else {
        bail!("only LoRA adapters can be merged into the base weights ({} adds modules that must run as they are)", peft.method())
    };
    let scale = alpha / *r as f64;
    let layers: Vec<String> = tensors.keys().filter_map(|k| k.strip_suffix(".lora_A.weight").map(str::to_string)).collect();
    for layer in &layers {
        let a = tensors.remove(&format!("{layer}.lora_A.weight")).expect("listed above");
        let Some(b) = tensors.remove(&format!("{layer}.lora_B.weight")) else { bail!("{layer} has lora_A but no lora_B") };
        let wname = format!("{layer}.weight");
        let Some(w) = tensors.get(&wname) else { bail!("LoRA targets {layer}, which has no base weight") };
        let merged = (w + (b.matmul(&a)? * scale)?)?;
        tensors.insert(wname, merged);
    }
    Ok(layers.len())
}
