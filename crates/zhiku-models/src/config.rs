//! `config.json` of a BERT-family model, as transformers writes it.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// The fields of a Hugging Face `BertConfig` that the encoder needs. Unknown fields are kept in
/// [`BertConfig::raw`] so that a fine-tuned model's `config.json` carries them forward.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(skip)]
    pub raw: serde_json::Map<String, serde_json::Value>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_pos() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_init_range() -> f64 {
    0.02
}
fn default_model_type() -> String {
    "bert".into()
}

/// The activation functions transformers names in `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU with erf (transformers' "gelu").
    GeluErf,
    /// The tanh approximation ("gelu_new", "gelu_pytorch_tanh", "gelu_fast").
    GeluTanh,
    Relu,
}

impl BertConfig {
    pub fn from_json_str(text: &str) -> Result<Self> {
        let raw: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)?;
        let mut cfg: BertConfig = serde_json::from_value(serde_json::Value::Object(raw.clone()))?;
        cfg.raw = raw;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json_str(&text).with_context(|| format!("{}: not a usable BERT config", path.display()))
    }

    fn validate(&self) -> Result<()> {
        if !matches!(self.model_type.as_str(), "bert" | "roberta" | "xlm-roberta" | "ernie") {
            bail!("model_type {:?} is not a BERT-family encoder zhiku supports (bert, roberta, ernie)", self.model_type)
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            )
        }
        if let Some(p) = &self.position_embedding_type {
            if p != "absolute" {
                bail!("position_embedding_type {p:?} is not supported (only \"absolute\")")
            }
        }
        self.activation()?;
        Ok(())
    }

    pub fn activation(&self) -> Result<Activation> {
        Ok(match self.hidden_act.as_str() {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => bail!("hidden_act {other:?} is not supported"),
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// A small configuration for tests: random weights, fast forward and backward.
    pub fn tiny(vocab_size: usize) -> Self {
        let text = serde_json::json!({
            "vocab_size": vocab_size, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64,
            "model_type": "bert", "hidden_act": "gelu", "layer_norm_eps": 1e-12,
        });
        Self::from_json_str(&text.to_string()).expect("tiny config is valid")
    }

    /// Parameter count of the encoder (embeddings, layers and pooler).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let i = self.intermediate_size;
        let emb = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h;
        let layer = 4 * (h * h + h) + 2 * (h * i) + i + h + 4 * h;
        emb + self.num_hidden_layers * layer + h * h + h
    }
}

impl BertConfig {
    /// The config as JSON text (the raw object it was read from).
    pub fn raw_json(&self) -> String {
        serde_json::to_string_pretty(&self.raw).expect("a JSON map serialises")
    }
}
