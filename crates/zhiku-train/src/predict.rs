//! Inference with a fine-tuned classifier folder.

use anyhow::{bail, Result};
use candle_core::Device;
use serde::Serialize;
use std::path::{Path, PathBuf};
use zhiku_models::{BaseCache, ClassifierConfig, TextModel};

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

/// One classifier, or an ensemble whose members' probabilities are averaged.
pub struct Predictor {
    /// The members, with the position of each of the first member's labels in their own output.
    members: Vec<(TextModel, Vec<usize>)>,
    config: ClassifierConfig,
    pub batch_size: usize,
}

impl Predictor {
    /// A classifier folder or an adapter folder (on the base it names).
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        Self::open_ensemble(&[dir.to_path_buf()], None, device)
    }

    /// An ensemble of classifiers over the same labels (in any order); `base` overrides the base
    /// model of adapter folders. Adapters on one base share it in memory.
    pub fn open_ensemble(dirs: &[PathBuf], base: Option<&Path>, device: &Device) -> Result<Self> {
        let bases = BaseCache::default();
        let mut members = Vec::new();
        let mut config: Option<ClassifierConfig> = None;
        for dir in dirs {
            let model = TextModel::open_shared(dir, device, &bases, base)?;
            let Some(own) = model.classifier_config().cloned() else {
                bail!(
                    "{} is a base encoder without a classification head; train one first with `zhiku train --model {}`",
                    dir.display(),
                    dir.display()
                )
            };
            let first = config.get_or_insert_with(|| own.clone());
            let mut mine = own.labels.clone();
            mine.sort();
            let mut theirs = first.labels.clone();
            theirs.sort();
            if mine != theirs || own.problem_type != first.problem_type || own.text_pairs != first.text_pairs {
                bail!("{} predicts other labels or another kind of task than {}; an ensemble needs the same labels", dir.display(), dirs[0].display())
            }
            let order = first.labels.iter().map(|l| own.labels.iter().position(|m| m == l).expect("same label sets")).collect();
            members.push((model, order));
        }
        let Some(config) = config else { bail!("no model given") };
        Ok(Self { members, config, batch_size: 32 })
    }

    /// Int8 inference for every member (see `zhiku_models::quant`).
    pub fn quantize_int8(&mut self) -> Result<()> {
        for (m, _) in &mut self.members {
            m.quantize_int8()?;
        }
        Ok(())
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
        let k = self.config.labels.len();
        let mut out = vec![vec![0f32; k]; texts.len()];
        let share = 1.0 / self.members.len() as f32;
        for (model, order_of_labels) in &self.members {
            // Members may tokenise differently (other base models), so each tokenises for itself.
            let items = model.tokenizer.encode_many(texts, pairs)?;
            let rows = zhiku_models::text_model::in_length_order(&items, self.batch_size, |batch| model.classify(batch))?;
            for (o, row) in out.iter_mut().zip(rows) {
                for (acc, &j) in o.iter_mut().zip(order_of_labels) {
                    *acc += share * row[j];
                }
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
