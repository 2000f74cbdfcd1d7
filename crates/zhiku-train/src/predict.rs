//! Inference with a fine-tuned classifier folder.

use anyhow::{bail, Result};
use candle_core::Device;
use serde::Serialize;
use std::path::Path;
use zhiku_models::{ClassifierConfig, TextModel, TokenizedText};

#[derive(Debug, Clone, Serialize)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// The predicted label (single-label), or the labels over their thresholds (multi-label).
    pub labels: Vec<String>,
    /// Top-k labels with probabilities, best first.
    pub scores: Vec<LabelScore>,
}

pub struct Predictor {
    pub model: TextModel,
    config: ClassifierConfig,
    pub batch_size: usize,
}

impl Predictor {
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        let model = TextModel::open(dir, device)?;
        let Some(config) = model.classifier_config().cloned() else {
            bail!(
                "{} is a base encoder without a classification head; train one first with `zhiku train --model {}`",
                dir.display(),
                dir.display()
            )
        };
        Ok(Self { model, config, batch_size: 32 })
    }

    /// The head's labels, decision rule and thresholds.
    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    pub fn labels(&self) -> &[String] {
        &self.config.labels
    }

    /// Class probabilities for each text (softmax, or per-label sigmoid for multi-label models).
    pub fn probabilities(&self, texts: &[&str], pairs: Option<&[&str]>) -> Result<Vec<Vec<f32>>> {
        if self.config.text_pairs && pairs.is_none() {
            bail!("this model was trained on text pairs; give the second text too")
        }
        let items = self.model.tokenizer.encode_many(texts, pairs)?;
        // Length-sorted batches waste little compute on padding.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| items[i].ids.len());
        let mut out = vec![Vec::new(); items.len()];
        for idx in order.chunks(self.batch_size.max(1)) {
            let batch: Vec<&TokenizedText> = idx.iter().map(|&i| &items[i]).collect();
            for (row, &i) in self.model.classify(&batch)?.into_iter().zip(idx) {
                out[i] = row;
            }
        }
        Ok(out)
    }

    pub fn predict(&self, texts: &[&str], pairs: Option<&[&str]>, top_k: usize) -> Result<Vec<Prediction>> {
        let probs = self.probabilities(texts, pairs)?;
        Ok(probs.into_iter().map(|p| self.decide(&p, top_k)).collect())
    }

    /// Turns probabilities into labels and the top-k list.
    pub fn decide(&self, p: &[f32], top_k: usize) -> Prediction {
        let (labels, top) = self.config.decide(p, top_k);
        Prediction { labels, scores: top.into_iter().map(|(label, score)| LabelScore { label, score }).collect() }
    }
}
