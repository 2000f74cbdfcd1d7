//! Tiny random models on disk, for fast tests of everything that consumes a model folder.

use crate::bert::{BertModel, ENCODER_PREFIX};
use crate::config::BertConfig;
use crate::params::WeightSource;
use anyhow::Result;
use candle_core::{DType, Device};
use std::path::Path;

/// Writes a complete Hugging Face-layout folder (config.json, model.safetensors, vocab.txt) of
/// a 2-layer, 16-wide random BERT whose vocabulary is BERT's special tokens plus `words`.
/// `dropout` sets both dropout probabilities.
pub fn write_tiny_model(dir: &Path, words: &[&str], dropout: f64, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
    vocab.extend(words.iter().map(|w| w.to_lowercase()));
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n") + "\n")?;
    let mut cfg = BertConfig::tiny(vocab.len());
    cfg.raw.insert("hidden_dropout_prob".into(), dropout.into());
    cfg.raw.insert("attention_probs_dropout_prob".into(), dropout.into());
    cfg.raw.insert("architectures".into(), serde_json::json!(["BertModel"]));
    let cfg = BertConfig::from_json_str(&cfg.raw_json())?;
    std::fs::write(dir.join("config.json"), cfg.raw_json())?;
    let mut ws = WeightSource::random(seed, &Device::Cpu, DType::F32);
    BertModel::load(&mut ws, &cfg, ENCODER_PREFIX, true)?;
    candle_core::safetensors::save(&ws.params.tensors(), dir.join("model.safetensors"))?;
    Ok(())
}

/// A two-row batch for `BertConfig::tiny(40)` models: a padded row and a text pair.
pub fn tiny_batch() -> crate::EncodedBatch {
    let dev = Device::Cpu;
    let ids = candle_core::Tensor::new(&[[2u32, 7, 9, 11, 3, 0], [2, 5, 3, 13, 17, 3]], &dev).unwrap();
    let types = candle_core::Tensor::new(&[[0u32, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]], &dev).unwrap();
    let mask = candle_core::Tensor::new(&[[1u32, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], &dev).unwrap();
    crate::EncodedBatch { input_ids: ids, token_type_ids: types, attention_mask: mask, lengths: vec![5, 6] }
}
