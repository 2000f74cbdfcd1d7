//! A model folder in Hugging Face layout: `config.json`, weights, tokenizer files.

use crate::config::BertConfig;
use crate::tokenizer::TextTokenizer;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Which weights file a folder has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsFile {
    Safetensors(PathBuf),
    /// A PyTorch pickle (`pytorch_model.bin`), read without Python.
    PyTorch(PathBuf),
}

/// A validated model folder. Opening it checks that every file the model needs is there, so
/// that a broken folder fails before any work starts, with the missing file named.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub dir: PathBuf,
    pub config: BertConfig,
    pub weights: WeightsFile,
}

impl ModelFolder {
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            bail!("model folder {} does not exist (expected a Hugging Face folder with config.json, model.safetensors or pytorch_model.bin, and tokenizer.json or vocab.txt)", dir.display())
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            bail!("model folder {} has no config.json", dir.display())
        }
        let config = BertConfig::from_file(&config_path)?;
        let weights = if dir.join("model.safetensors").is_file() {
            WeightsFile::Safetensors(dir.join("model.safetensors"))
        } else if dir.join("pytorch_model.bin").is_file() {
            WeightsFile::PyTorch(dir.join("pytorch_model.bin"))
        } else if dir.join("model.safetensors.index.json").is_file() {
            bail!("{}: sharded checkpoints are not supported yet; merge the shards into model.safetensors", dir.display())
        } else {
            bail!("model folder {} has no weights: expected model.safetensors or pytorch_model.bin", dir.display())
        };
        if !dir.join("tokenizer.json").is_file() && !dir.join("vocab.txt").is_file() {
            bail!("model folder {} has no tokenizer: expected tokenizer.json or vocab.txt", dir.display())
        }
        Ok(Self { dir, config, weights })
    }

    /// The raw `config.json` object (for task heads: `id2label`, zhiku's own keys, ...).
    pub fn raw_config(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.config.raw
    }

    pub fn tokenizer(&self, max_length: usize) -> Result<TextTokenizer> {
        TextTokenizer::from_folder(&self.dir, max_length)
    }

    /// The token limit for inference: what training used (`zhiku_max_length`), else a
    /// sentence-transformers folder's `max_seq_length`, else 512; never over the position table.
    pub fn inference_max_length(&self) -> usize {
        // A sentence-transformers folder says how long a text its encoder reads, as
        // `SentenceTransformer` does; zhiku's own folders record what they were trained with.
        let sentence_transformers = std::fs::read_to_string(self.dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("max_seq_length").and_then(|m| m.as_u64()));
        self.raw_config()
            .get("zhiku_max_length")
            .and_then(|v| v.as_u64())
            .or(sentence_transformers)
            .map(|v| v as usize)
            .unwrap_or(512)
            .min(self.config.max_position_embeddings)
    }

    /// All tensors of the checkpoint, on `device`, under canonical transformers names: encoder
    /// weights under `bert.` (bare `BertModel` checkpoints have no prefix; RoBERTa uses
    /// `roberta.`), TF-style `gamma`/`beta` renamed to `weight`/`bias`, buffers dropped.
    pub fn load_weights(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let raw: Vec<(String, Tensor)> = match &self.weights {
            WeightsFile::Safetensors(p) => candle_core::safetensors::load(p, device)
                .with_context(|| format!("cannot read weights {}", p.display()))?
                .into_iter()
                .collect(),
            WeightsFile::PyTorch(p) => candle_core::pickle::read_all(p)
                .with_context(|| format!("cannot read PyTorch weights {}", p.display()))?
                .into_iter()
                .map(|(n, t)| Ok((n, t.to_device(device)?)))
                .collect::<Result<_>>()?,
        };
        let mut out = HashMap::with_capacity(raw.len());
        for (name, tensor) in raw {
            if let Some(canonical) = canonical_name(&name) {
                out.insert(canonical, tensor);
            }
        }
        Ok(out)
    }
}

/// Maps a checkpoint tensor name to zhiku's (= `BertForSequenceClassification`'s) name, or
/// `None` for tensors zhiku does not use (position-id buffers, pre-training heads).
pub fn canonical_name(name: &str) -> Option<String> {
    if name.ends_with("position_ids") || name.starts_with("cls.") || name.starts_with("lm_head.") {
        return None;
    }
    let mut n = name.to_string();
    for prefix in ["roberta.", "ernie.", "model."] {
        if let Some(rest) = n.strip_prefix(prefix) {
            n = format!("bert.{rest}");
        }
    }
    if n.starts_with("embeddings.") || n.starts_with("encoder.") || n.starts_with("pooler.") {
        n = format!("bert.{n}");
    }
    if let Some(stem) = n.strip_suffix(".gamma") {
        n = format!("{stem}.weight");
    } else if let Some(stem) = n.strip_suffix(".beta") {
        n = format!("{stem}.bias");
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_name("embeddings.word_embeddings.weight").unwrap(), "bert.embeddings.word_embeddings.weight");
        assert_eq!(canonical_name("bert.encoder.layer.0.output.LayerNorm.gamma").unwrap(), "bert.encoder.layer.0.output.LayerNorm.weight");
        assert_eq!(canonical_name("classifier.bias").unwrap(), "classifier.bias");
        assert!(canonical_name("embeddings.position_ids").is_none());
        assert!(canonical_name("cls.predictions.bias").is_none());
    }

    #[test]
    fn missing_folder_and_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelFolder::open(dir.path().join("nope")).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        let err = ModelFolder::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no config.json"), "{err}");
        std::fs::write(dir.path().join("config.json"), BertConfig::tiny(10).raw_json()).unwrap();
        let err = ModelFolder::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no weights"), "{err}");
        std::fs::write(dir.path().join("model.safetensors"), b"").unwrap();
        let err = ModelFolder::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no tokenizer"), "{err}");
    }
}
