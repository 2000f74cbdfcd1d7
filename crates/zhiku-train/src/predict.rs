//! Inference with a fine-tuned classifier folder.

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use serde::Serialize;
use std::path::Path;
use zhiku_models::{ModelFolder, ProblemType, SequenceClassifier, TextTokenizer, TokenizedText};

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
    pub model: SequenceClassifier,
    pub tokenizer: TextTokenizer,
    pub device: Device,
    pub batch_size: usize,
}

impl Predictor {
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        let folder = ModelFolder::open(dir)?;
        let model = SequenceClassifier::for_inference(&folder, None, device)?;
        let tokenizer = folder.tokenizer(folder.inference_max_length())?;
        Ok(Self { model, tokenizer, device: device.clone(), batch_size: 32 })
    }

    pub fn labels(&self) -> &[String] {
        &self.model.config.labels
    }

    /// Class probabilities for each text (softmax, or per-label sigmoid for multi-label models).
    pub fn probabilities(&self, texts: &[&str], pairs: Option<&[&str]>) -> Result<Vec<Vec<f32>>> {
        if self.model.config.text_pairs && pairs.is_none() {
            bail!("this model was trained on text pairs; give the second text too")
        }
        let items = self.tokenizer.encode_many(texts, pairs)?;
        // Length-sorted batches waste little compute on padding.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| items[i].ids.len());
        let mut out = vec![Vec::new(); items.len()];
        let multi = self.model.config.problem_type == ProblemType::MultiLabel;
        for idx in order.chunks(self.batch_size.max(1)) {
            let batch_items: Vec<&TokenizedText> = idx.iter().map(|&i| &items[i]).collect();
            let batch = self.tokenizer.pad_batch(&batch_items, &self.device)?;
            let logits = self.model.forward(&batch, None)?;
            let p = if multi { candle_nn::ops::sigmoid(&logits)? } else { candle_nn::ops::softmax(&logits, 1)? };
            for (row, &i) in p.to_dtype(DType::F32)?.to_vec2::<f32>()?.into_iter().zip(idx) {
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
        let (labels, top) = self.model.config.decide(p, top_k);
        Prediction { labels, scores: top.into_iter().map(|(label, score)| LabelScore { label, score }).collect() }
    }
}
