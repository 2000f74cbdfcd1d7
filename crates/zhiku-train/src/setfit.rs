//! Few-shot classification the SetFit way (Tunstall et al. 2022): first fine-tune the sentence
//! encoder contrastively on pairs of labelled texts (same label: cosine similarity pulled to 1;
//! different labels: to 0), then fit a logistic-regression head on the tuned embeddings.
//!
//! The head is linear over mean-pooled embeddings, so the result is an ordinary zhiku classifier
//! folder (pooling "mean", `classifier.*` = the regression's weights) that `predict`, `eval` and
//! `serve` use as they are.

use crate::metrics::ClassificationReport;
use crate::optim::{AdamW, AdamWConfig};
use crate::schedule::{LrSchedule, ScheduleKind};
use crate::task::TaskData;
use crate::trainer::{argmax, StopReason, TrainSummary};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor, D};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::time::Instant;
use zhiku_models::{ClassifierConfig, DropoutRng, ModelFolder, Pooling, ProblemType, SequenceClassifier, TokenizedText};

#[derive(Debug, Clone)]
pub struct SetFitConfig {
    /// Pair-sampling rounds: each round draws one positive and one negative pair per example.
    pub iterations: usize,
    /// Epochs over the pairs.
    pub epochs: usize,
    /// Pairs per step.
    pub batch_size: usize,
    pub lr: f64,
    pub max_length: usize,
    pub seed: u64,
    /// Inverse L2 strength of the logistic regression (scikit-learn's `C`).
    pub c: f64,
}

impl Default for SetFitConfig {
    fn default() -> Self {
        Self { iterations: 20, epochs: 1, batch_size: 16, lr: 2e-5, max_length: 128, seed: 42, c: 1.0 }
    }
}

/// Progress while the encoder trains: (step, total steps, loss).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64, f64);

/// SetFit's pairs: for every round and example, one partner with the same label (target 1) and
/// one with another label (target 0).
pub fn sample_pairs(labels: &[usize], iterations: usize, rng: &mut ChaCha8Rng) -> Vec<(usize, usize, f32)> {
    let k = labels.iter().max().map_or(0, |m| m + 1);
    let mut by_label: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &l) in labels.iter().enumerate() {
        by_label[l].push(i);
    }
    let mut pairs = Vec::new();
    for _ in 0..iterations {
        for (i, &l) in labels.iter().enumerate() {
            if let Some(&j) = by_label[l].iter().filter(|&&j| j != i).collect::<Vec<_>>().choose(rng) {
                pairs.push((i, *j, 1.0));
            }
            let others: Vec<usize> = (0..labels.len()).filter(|&j| labels[j] != l).collect();
            if let Some(&j) = others.choose(rng) {
                pairs.push((i, j, 0.0));
            }
        }
    }
    pairs.shuffle(rng);
    pairs
}

/// Multinomial logistic regression with L2 penalty, fitted by full-batch gradient descent with
/// Adam to the objective of scikit-learn's `LogisticRegression(C)`:
/// `0.5·‖W‖² + C·Σ_i CE_i` (bias not penalised). Returns (weights `[k][d]`, bias `[k]`).
pub fn fit_logistic_regression(x: &[Vec<f32>], y: &[usize], k: usize, c: f64, iterations: usize) -> (Vec<Vec<f32>>, Vec<f32>) {
    let (n, d) = (x.len(), x.first().map_or(0, |r| r.len()));
    let mut w = vec![vec![0f64; d]; k];
    let mut b = vec![0f64; k];
    let (mut mw, mut vw) = (vec![vec![0f64; d]; k], vec![vec![0f64; d]; k]);
    let (mut mb, mut vb) = (vec![0f64; k], vec![0f64; k]);
    // Divided through by C·n: mean cross-entropy plus ‖W‖²/(2Cn); same minimiser.
    let l2 = 1.0 / (c * n as f64);
    let lr = 0.05;
    for t in 1..=iterations {
        let mut gw = vec![vec![0f64; d]; k];
        let mut gb = vec![0f64; k];
        for (xi, &yi) in x.iter().zip(y) {
            let z: Vec<f64> = (0..k).map(|j| b[j] + w[j].iter().zip(xi).map(|(a, &v)| a * v as f64).sum::<f64>()).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            for j in 0..k {
                let g = (e[j] / s - if j == yi { 1.0 } else { 0.0 }) / n as f64;
                gb[j] += g;
                for (acc, &v) in gw[j].iter_mut().zip(xi) {
                    *acc += g * v as f64;
                }
            }
        }
        let (b1, b2) = (0.9f64, 0.999f64);
        let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for j in 0..k {
            for q in 0..d {
                let g = gw[j][q] + l2 * w[j][q];
                mw[j][q] = b1 * mw[j][q] + (1.0 - b1) * g;
                vw[j][q] = b2 * vw[j][q] + (1.0 - b2) * g * g;
                w[j][q] -= lr * (mw[j][q] / c1) / ((vw[j][q] / c2).sqrt() + 1e-8);
            }
            mb[j] = b1 * mb[j] + (1.0 - b1) * gb[j];
            vb[j] = b2 * vb[j] + (1.0 - b2) * gb[j] * gb[j];
            b[j] -= lr * (mb[j] / c1) / ((vb[j] / c2).sqrt() + 1e-8);
        }
    }
    (w.into_iter().map(|r| r.into_iter().map(|v| v as f32).collect()).collect(), b.into_iter().map(|v| v as f32).collect())
}

/// Mean-pooled embeddings of `items`, in batches, without dropout.
fn embed_all(model: &SequenceClassifier, tok: &zhiku_models::TextTokenizer, items: &[TokenizedText], device: &Device) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(64) {
        let refs: Vec<&TokenizedText> = chunk.iter().collect();
        let batch = tok.pad_batch(&refs, device)?;
        out.extend(model.embed(&batch, None)?.detach().to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Trains a SetFit classifier on `data.train` from the sentence encoder in `model_dir` and writes
/// it to `output` (a plain classifier folder); scores it on dev and test.
pub fn train(model_dir: &Path, data: &TaskData, output: &Path, cfg: &SetFitConfig, device: &Device, progress: Progress) -> Result<TrainSummary> {
    let started = Instant::now();
    if data.multi_label {
        bail!("--setfit handles single-label tasks")
    }
    if data.train.examples.iter().any(|e| e.pair.is_some()) {
        bail!("--setfit classifies single texts, not text pairs")
    }
    let folder = ModelFolder::open(model_dir)?;
    let labels = data.labels.names().to_vec();
    let head = ClassifierConfig { labels: labels.clone(), pooling: Pooling::Mean, problem_type: ProblemType::SingleLabel, thresholds: None, text_pairs: false };
    let model = SequenceClassifier::from_folder(&folder, Some(head), cfg.seed, device)?;
    let tok = folder.tokenizer(cfg.max_length)?;
    let train_items = tok.encode_many(&data.train.texts(), None)?;
    let y: Vec<usize> = data.label_ids(&data.train).iter().map(|l| l[0] as usize).collect();

    // 1. Contrastive fine-tuning of the encoder (the head gets no gradient and is left alone).
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let pairs = sample_pairs(&y, cfg.iterations, &mut rng);
    let steps_per_epoch = pairs.len().div_ceil(cfg.batch_size.max(1));
    let total = (steps_per_epoch * cfg.epochs) as u64;
    let schedule = LrSchedule { kind: ScheduleKind::Linear, base_lr: cfg.lr, warmup_steps: (0.1 * total as f64).ceil() as u64, total_steps: total };
    let mut opt = AdamW::new(&model.params, AdamWConfig::default())?;
    let mut step = 0u64;
    for _ in 0..cfg.epochs {
        for chunk in pairs.chunks(cfg.batch_size.max(1)) {
            let refs: Vec<&TokenizedText> = chunk.iter().map(|p| &train_items[p.0]).chain(chunk.iter().map(|p| &train_items[p.1])).collect();
            let batch = tok.pad_batch(&refs, device)?;
            let mut drop = DropoutRng::for_step(cfg.seed, step, 0);
            let emb = model.embed(&batch, Some(&mut drop))?;
            let m = chunk.len();
            let (a, b) = (emb.narrow(0, 0, m)?, emb.narrow(0, m, m)?);
            let dot = (&a * &b)?.sum(D::Minus1)?;
            let norms = ((a.sqr()?.sum(D::Minus1)? * b.sqr()?.sum(D::Minus1)?)?.sqrt()? + 1e-12)?;
            let cos = dot.div(&norms)?;
            let target = Tensor::from_vec(chunk.iter().map(|p| p.2).collect::<Vec<f32>>(), m, device)?;
            let loss = (cos - target)?.sqr()?.mean_all()?;
            let value = loss.to_scalar::<f32>()? as f64;
            let grads = loss.backward()?;
            let norm = opt.grad_norm(&grads, 1.0)?;
            let clip = if norm > 1.0 { 1.0 / (norm + 1e-6) } else { 1.0 };
            opt.update(&grads, schedule.lr(step), clip)?;
            step += 1;
            progress(step, total, value);
        }
    }

    // 2. Logistic regression on the tuned embeddings, written into the linear head.
    let x = embed_all(&model, &tok, &train_items, device)?;
    let (w, b) = fit_logistic_regression(&x, &y, labels.len(), cfg.c, 500);
    let hidden = x.first().map_or(0, |r| r.len());
    let set = |name: &str, t: Tensor| -> Result<()> {
        model.params.get(name).expect("the head is trainable").set(&t)?;
        Ok(())
    };
    set("classifier.weight", Tensor::from_vec(w.concat(), (labels.len(), hidden), device)?)?;
    set("classifier.bias", Tensor::from_vec(b, labels.len(), device)?)?;
    model.save(output, &folder.config, &tok)?;

    // 3. Scores on dev and test with what was saved.
    let predictor = crate::Predictor::open(output, device)?;
    let score = |d: &zhiku_data::Dataset| -> Result<serde_json::Value> {
        let probs = predictor.probabilities(&d.texts(), None)?;
        let pred: Vec<usize> = probs.iter().map(|p| argmax(p)).collect();
        let gold: Vec<usize> = data.label_ids(d).iter().map(|l| l[0] as usize).collect();
        Ok(serde_json::to_value(ClassificationReport::new(&labels, &gold, &pred))?)
    };
    let dev = score(&data.dev)?;
    let test = data.test.as_ref().map(&score).transpose()?;
    let trainable = model.params.num_elements();
    let summary = TrainSummary {
        stop: StopReason::Finished,
        steps: step,
        best_step: step,
        best_dev_metric: dev.get("macro_f1").and_then(|v| v.as_f64()),
        metric: "macro_f1".into(),
        dev: Some(dev),
        test,
        output: output.to_path_buf(),
        seconds: started.elapsed().as_secs_f64(),
        trainable_params: trainable,
        total_params: trainable,
    };
    let metrics = serde_json::json!({"summary": &summary, "method": "setfit", "pairs": pairs.len(), "train_examples": data.train.len()});
    zhiku_models::classifier::write_atomic(&output.join("metrics.json"), serde_json::to_string_pretty(&metrics)?.as_bytes())?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_balanced_and_labelled_right() {
        let labels = [0, 0, 1, 1, 2, 2];
        let pairs = sample_pairs(&labels, 3, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(pairs.len(), 2 * 3 * labels.len());
        for &(i, j, t) in &pairs {
            assert_ne!(i, j);
            assert_eq!(t == 1.0, labels[i] == labels[j]);
        }
        assert_eq!(pairs.iter().filter(|p| p.2 == 1.0).count(), pairs.len() / 2);
    }

    #[test]
    fn logistic_regression_separates_and_regularises() {
        let x: Vec<Vec<f32>> = vec![vec![1.0, 0.0], vec![0.9, 0.1], vec![0.0, 1.0], vec![0.1, 0.8], vec![-1.0, -1.0], vec![-0.8, -0.9]];
        let y = [0, 0, 1, 1, 2, 2];
        let (w, b) = fit_logistic_regression(&x, &y, 3, 1.0, 500);
        for (xi, &yi) in x.iter().zip(&y) {
            let z: Vec<f32> = (0..3).map(|j| b[j] + w[j][0] * xi[0] + w[j][1] * xi[1]).collect();
            assert_eq!(argmax(&z), yi);
        }
        // A smaller C shrinks the weights.
        let (ws, _) = fit_logistic_regression(&x, &y, 3, 0.01, 500);
        let size = |w: &[Vec<f32>]| w.iter().flatten().map(|v| v * v).sum::<f32>();
        assert!(size(&ws) < size(&w) * 0.5);
    }
}
