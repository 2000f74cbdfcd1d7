//! Classification training: [`Trainer`] checks the settings and runs a [`ClassificationTask`]
//! (a `SequenceClassifier` with cross-entropy or BCE, R-Drop, FGM, class weights, label
//! smoothing, PEFT, mixed precision) on the shared loop in [`crate::train_loop`].

use crate::loss::{bce_with_logits_sum, cross_entropy_sum, multi_hot, symmetric_kl_sum};
use crate::metrics::{tune_thresholds, ClassificationReport, MultiLabelReport};
use crate::sharded::{self, add_grads, sum_grads};
pub use crate::state::*;
use crate::task::TaskData;
use crate::train_loop::{self, DevScores, FinalScores, LoopControl, TrainTask};
use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use zhiku_data::Dataset;
use zhiku_models::{AdapterFolder, ClassifierConfig, DropoutRng, ModelFolder, Params, Pooling, ProblemType, SequenceClassifier, TextTokenizer, TokenizedText};

/// Tokenised examples with label ids, tokenised once per run.
struct Encoded {
    items: Vec<TokenizedText>,
    labels: Vec<Vec<u32>>,
}

pub struct Trainer {
    pub config: TrainConfig,
    pub output: PathBuf,
    model_folder: ModelFolder,
    data: TaskData,
    device: Device,
    interrupt: Arc<AtomicBool>,
    /// For tests: behave as if interrupted after this many optimizer steps.
    pub stop_after: Option<u64>,
}

impl Trainer {
    pub fn new(model_dir: &Path, data: TaskData, output: &Path, config: TrainConfig, device: Device) -> Result<Self> {
        let model_folder = ModelFolder::open(model_dir)?;
        train_loop::validate(&config)?;
        Pooling::parse(&config.pooling)?;
        if !(0.0..1.0).contains(&config.label_smoothing) {
            bail!("--label-smoothing must be in [0, 1)")
        }
        if let ClassWeights::Explicit(w) = &config.class_weights {
            if w.len() != data.labels.len() {
                bail!("--class-weights has {} values for {} labels ({})", w.len(), data.labels.len(), data.labels.names().join(", "))
            }
        }
        let valid = if data.multi_label { ["micro_f1", "macro_f1", "subset_accuracy", "loss"].as_slice() } else { ["accuracy", "macro_f1", "weighted_f1", "loss"].as_slice() };
        if !valid.contains(&config.metric.as_str()) {
            bail!("--metric {:?} is not available here; choose one of {}", config.metric, valid.join(", "))
        }
        if let Some(p) = &config.peft {
            p.validate()?;
            if config.fgm_epsilon.is_some() {
                bail!("--fgm-epsilon perturbs the word embeddings along their gradient, which a frozen base (--peft {}) does not compute; use it with full fine-tuning", p.method())
            }
        }
        if config.fgm_epsilon.is_some_and(|e| !(e > 0.0 && e.is_finite())) {
            bail!("--fgm-epsilon must be a positive number")
        }
        if !(config.rdrop_alpha >= 0.0 && config.rdrop_alpha.is_finite()) {
            bail!("--rdrop-alpha must be 0 or more")
        }
        let mut model_folder = model_folder;
        if let Some(p) = config.dropout {
            if !(0.0..1.0).contains(&p) {
                bail!("--dropout must be in [0, 1)")
            }
            model_folder.config.hidden_dropout_prob = p;
            model_folder.config.attention_probs_dropout_prob = p;
        }
        let max_pos = model_folder.config.max_position_embeddings;
        if config.max_length > max_pos {
            bail!("--max-length {} exceeds the model's limit of {max_pos} positions", config.max_length)
        }
        Ok(Self { config, output: output.to_path_buf(), model_folder, data, device, interrupt: Arc::new(AtomicBool::new(false)), stop_after: None })
    }

    /// A flag that, once set (by a Ctrl-C handler), makes the loop checkpoint and return.
    pub fn interrupt_flag(&self) -> Arc<AtomicBool> {
        self.interrupt.clone()
    }

    pub fn set_interrupt_flag(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = flag;
    }

    /// Runs (or resumes) training; `on_event` sees progress. Writes into the output folder:
    /// the best model (Hugging Face layout, or an adapter folder under PEFT), `checkpoint/`,
    /// `train_log.jsonl`, `metrics.json`, `report.svg` and `report.md`.
    pub fn run(&mut self, resume: bool, on_event: &mut dyn FnMut(TrainEvent)) -> Result<TrainSummary> {
        let mut task = ClassificationTask::new(&self.model_folder, &self.data, &self.config, &self.device)?;
        let control = LoopControl { interrupt: self.interrupt.clone(), stop_after: self.stop_after };
        train_loop::run(&mut task, &self.config, &self.output, resume, &control, on_event)
    }
}

/// A sequence classifier trained on labelled texts (or text pairs).
pub struct ClassificationTask<'a> {
    folder: &'a ModelFolder,
    data: &'a TaskData,
    config: &'a TrainConfig,
    device: &'a Device,
    model: SequenceClassifier,
    tok: TextTokenizer,
    train: Encoded,
    dev: Encoded,
    class_weights: Option<Vec<f32>>,
    /// Multi-label thresholds tuned at the last evaluation, saved with the model.
    thresholds: Option<Vec<f32>>,
}

impl<'a> ClassificationTask<'a> {
    pub fn new(folder: &'a ModelFolder, data: &'a TaskData, config: &'a TrainConfig, device: &'a Device) -> Result<Self> {
        let head = ClassifierConfig {
            labels: data.labels.names().to_vec(),
            pooling: Pooling::parse(&config.pooling)?,
            problem_type: if data.multi_label { ProblemType::MultiLabel } else { ProblemType::SingleLabel },
            thresholds: None,
            text_pairs: data.train.examples[0].pair.is_some(),
        };
        let mut model = SequenceClassifier::from_folder_peft(folder, Some(head), config.seed, device, config.peft.as_ref())?;
        model.set_precision(config.precision);
        let tok = folder.tokenizer(config.max_length)?;
        let train = encode(&tok, data, &data.training_set())?;
        let dev = encode(&tok, data, &data.dev)?;
        let class_weights = match &config.class_weights {
            ClassWeights::None => None,
            ClassWeights::Balanced => Some(data.balanced_class_weights()),
            ClassWeights::Explicit(w) => Some(w.clone()),
        };
        Ok(Self { folder, data, config, device, model, tok, train, dev, class_weights, thresholds: None })
    }

}

/// Tokenises `d`'s texts (or text pairs) and looks up its label ids in `task`.
fn encode(tok: &TextTokenizer, task: &TaskData, d: &Dataset) -> Result<Encoded> {
    Ok(Encoded { items: tok.encode_many(&d.texts(), d.pairs().as_deref())?, labels: task.label_ids(d) })
}

impl TrainTask for ClassificationTask<'_> {
    fn fingerprint(&self) -> String {
        let d = self.data;
        format!(
            "model={} train={}:{}+{} dev={}:{} labels={}",
            self.folder.dir.display(),
            d.train.path.display(),
            d.train.len(),
            d.augmented.len(),
            d.dev.path.display(),
            d.dev.len(),
            d.labels.names().join("|")
        )
    }

    fn params(&self) -> &Params {
        &self.model.params
    }

    fn total_params(&self) -> usize {
        self.model.params.num_elements() + self.model.fixed.values().map(|t| t.elem_count()).sum::<usize>()
    }

    fn train_len(&self) -> usize {
        self.train.items.len()
    }

    fn dev_len(&self) -> usize {
        self.dev.items.len()
    }

    fn labels(&self) -> &[String] {
        self.data.labels.names()
    }

    fn metrics(&self) -> Vec<(&'static str, bool)> {
        if self.data.multi_label {
            vec![("micro_f1", true), ("macro_f1", true), ("subset_accuracy", true), ("loss", false)]
        } else {
            vec![("accuracy", true), ("macro_f1", true), ("weighted_f1", true), ("loss", false)]
        }
    }

    fn accumulate(&self, group: &[&[usize]], step: u64, loss_scale: f64) -> Result<(f64, GradStore)> {
        self.accumulate_classification(group, step, loss_scale)
    }

    fn evaluate(&mut self) -> Result<DevScores> {
        let view = self.model.inference_view(&self.folder.config)?;
        let eval = evaluate(&view, &self.tok, &self.dev, self.data.multi_label, self.config.eval_batch_size, self.device, self.class_weights.as_deref())?;
        drop(view);
        self.thresholds = eval.thresholds;
        Ok(DevScores { loss: eval.loss, metrics: eval.metrics })
    }

    fn save(&mut self, dir: &Path) -> Result<()> {
        self.model.config.thresholds = self.thresholds.clone();
        if self.model.peft.is_some() {
            self.model.save_adapter(dir, self.folder, &self.tok)
        } else {
            self.model.save(dir, &self.folder.config, &self.tok)
        }
    }

    fn prepare_output(&self, output: &Path) -> Result<()> {
        self.data.save_splits(&output.join("splits"))
    }

    fn final_scores(&self, output: &Path) -> Result<FinalScores> {
        let best = if self.config.peft.is_some() {
            let adapter = AdapterFolder::open(output, Some(&self.folder.dir))?;
            SequenceClassifier::from_adapter(&adapter, &self.folder.load_weights(self.device)?, self.device)?
        } else {
            SequenceClassifier::for_inference(&ModelFolder::open(output)?, None, self.device)?
        };
        let multi = self.data.multi_label;
        let bs = self.config.eval_batch_size;
        let dev = evaluate(&best, &self.tok, &encode(&self.tok, self.data, &self.data.dev)?, multi, bs, self.device, None)?;
        let test = match &self.data.test {
            Some(t) => Some(evaluate(&best, &self.tok, &encode(&self.tok, self.data, t)?, multi, bs, self.device, None)?.report),
            None => None,
        };
        let d = self.data;
        let extra = serde_json::json!({
            "labels": d.labels.names(),
            "train_examples": d.train.len(),
            "augmented_examples": d.augmented.len(),
            "dev_examples": d.dev.len(),
            "test_examples": d.test.as_ref().map(|t| t.len()),
        });
        let serde_json::Value::Object(extra) = extra else { unreachable!("an object") };
        Ok(FinalScores { dev: dev.report, test, extra })
    }
}

impl ClassificationTask<'_> {
    /// Forward and backward over the micro-batches of one optimizer step, with the loss divided
    /// by the normaliser of the whole step, so gradients equal those of one large batch, and
    /// multiplied by `loss_scale` (fp16 loss scaling; the caller unscales). Returns the scaled
    /// loss.
    fn accumulate_classification(&self, group: &[&[usize]], step: u64, loss_scale: f64) -> Result<(f64, GradStore)> {
        let (model, tok, data, multi, class_weights) = (&self.model, &self.tok, &self.train, self.data.multi_label, self.class_weights.as_deref());
        let k = model.config.labels.len();
        let total_norm: f64 = group
            .iter()
            .map(|idx| {
                if multi {
                    (idx.len() * k) as f64
                } else {
                    idx.iter().map(|&i| class_weights.map_or(1.0, |w| w[data.labels[i][0] as usize] as f64)).sum()
                }
            })
            .sum();
        let mut loss_total = 0.0;
        let mut acc: Option<GradStore> = None;
        let cfg = self.config;
        for (m, idx) in group.iter().enumerate() {
            let items: Vec<&TokenizedText> = idx.iter().map(|&i| &data.items[i]).collect();
            let batch = tok.pad_batch(&items, self.device)?;
            // The task loss of the micro-batch's rows `rows` (a data-parallel shard).
            let task_loss = |logits: &Tensor, rows: &Range<usize>| -> Result<Tensor> {
                let idx = &idx[rows.clone()];
                Ok(if multi {
                    let ids: Vec<Vec<u32>> = idx.iter().map(|&i| data.labels[i].clone()).collect();
                    bce_with_logits_sum(logits, &multi_hot(&ids, k, self.device)?)?.0
                } else {
                    let y: Vec<u32> = idx.iter().map(|&i| data.labels[i][0]).collect();
                    cross_entropy_sum(logits, &y, class_weights, cfg.label_smoothing)?.0
                })
            };
            // Each forward pass of a micro-batch draws its own dropout masks from a stream
            // seeded by (run seed, step, micro-batch, pass), so every step can be replayed; masks
            // are indexed by row, so they do not depend on how the batch is sharded.
            let pass_rng = |pass: u64, rows: &Range<usize>| DropoutRng::for_step(cfg.seed, step, m as u64 | (pass << 32)).for_rows(rows.start);
            let clean = sharded::forward_backward(model, &batch, |part, rows| {
                let logits = model.forward(part, Some(&mut pass_rng(0, &rows)))?;
                let mut loss_sum = task_loss(&logits, &rows)?;
                if cfg.rdrop_alpha > 0.0 {
                    // R-Drop: a second pass with other dropout masks; both pay the task loss and
                    // the symmetric KL between their predictions pulls them together.
                    let second = model.forward(part, Some(&mut pass_rng(1, &rows)))?;
                    let kl = symmetric_kl_sum(&logits, &second, multi)?;
                    loss_sum = (((loss_sum + task_loss(&second, &rows)?)? * 0.5)? + (kl * (cfg.rdrop_alpha * 0.5))?)?;
                }
                Ok((loss_sum * (loss_scale / total_norm))?)
            })?;
            loss_total += clean.loss;
            let mut grads = clean.grads;
            if let Some(epsilon) = cfg.fgm_epsilon {
                // FGM: step the word embeddings by ε along their normalised gradient (of the
                // whole micro-batch), and learn from the loss there too.
                let Some(word) = model.params.get(WORD_EMBEDDINGS) else { bail!("--fgm-epsilon needs trainable word embeddings") };
                if let Some(g) = grads.get(word) {
                    let norm = g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?.sqrt();
                    if norm > 0.0 && norm.is_finite() {
                        let clean = word.as_tensor().copy()?;
                        word.set(&(&clean + (g * (epsilon / norm))?)?)?;
                        let adversarial = sharded::forward_backward(model, &batch, |part, rows| {
                            let logits = model.forward(part, Some(&mut pass_rng(2, &rows)))?;
                            Ok((task_loss(&logits, &rows)? * (loss_scale / total_norm))?)
                        });
                        word.set(&clean)?;
                        add_grads(&mut grads, &adversarial?.grads, &model.params)?;
                    }
                }
            }
            sum_grads(&mut acc, grads, &model.params)?;
        }
        Ok((loss_total, acc.expect("a step has at least one micro-batch")))
    }
}

pub struct Evaluation {
    pub loss: f64,
    /// Scalar metrics by name (accuracy, macro_f1, ...).
    pub metrics: serde_json::Value,
    /// The full report (per-class metrics, confusion matrix).
    pub report: serde_json::Value,
    pub thresholds: Option<Vec<f32>>,
}

/// Runs the model over `data` in length-sorted batches (little padding) and scores it.
fn evaluate(
    model: &SequenceClassifier,
    tok: &TextTokenizer,
    data: &Encoded,
    multi: bool,
    batch_size: usize,
    device: &Device,
    class_weights: Option<&[f32]>,
) -> Result<Evaluation> {
    let k = model.config.labels.len();
    let mut order: Vec<usize> = (0..data.items.len()).collect();
    order.sort_by_key(|&i| data.items[i].ids.len());
    let mut probs = vec![Vec::new(); data.items.len()];
    let (mut loss_sum, mut norm_sum) = (0.0, 0.0);
    for idx in order.chunks(batch_size.max(1)) {
        let items: Vec<&TokenizedText> = idx.iter().map(|&i| &data.items[i]).collect();
        let batch = tok.pad_batch(&items, device)?;
        let logits = model.forward(&batch, None)?;
        let (l, nrm) = if multi {
            let ids: Vec<Vec<u32>> = idx.iter().map(|&i| data.labels[i].clone()).collect();
            bce_with_logits_sum(&logits, &multi_hot(&ids, k, device)?)?
        } else {
            let y: Vec<u32> = idx.iter().map(|&i| data.labels[i][0]).collect();
            cross_entropy_sum(&logits, &y, class_weights, 0.0)?
        };
        loss_sum += l.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        norm_sum += nrm;
        let p = if multi { candle_nn::ops::sigmoid(&logits)? } else { candle_nn::ops::softmax(&logits, 1)? };
        for (row, &i) in p.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?.into_iter().zip(idx) {
            probs[i] = row;
        }
    }
    let loss = loss_sum / norm_sum.max(1e-12);
    let labels = &model.config.labels;
    if multi {
        let gold: Vec<Vec<bool>> = data.labels.iter().map(|ids| (0..k).map(|j| ids.contains(&(j as u32))).collect()).collect();
        let thresholds = tune_thresholds(&probs, &gold, k);
        let r = MultiLabelReport::new(labels, &probs, &gold, &thresholds);
        Ok(Evaluation {
            loss,
            metrics: serde_json::json!({"micro_f1": r.micro_f1, "macro_f1": r.macro_f1, "subset_accuracy": r.subset_accuracy, "loss": loss}),
            report: serde_json::to_value(&r)?,
            thresholds: Some(thresholds),
        })
    } else {
        let gold: Vec<usize> = data.labels.iter().map(|l| l[0] as usize).collect();
        let pred: Vec<usize> = probs.iter().map(|p| argmax(p)).collect();
        let r = ClassificationReport::new(labels, &gold, &pred);
        Ok(Evaluation {
            loss,
            metrics: serde_json::json!({"accuracy": r.accuracy, "macro_f1": r.macro_f1, "weighted_f1": r.weighted_f1, "loss": loss}),
            report: serde_json::to_value(&r)?,
            thresholds: None,
        })
    }
}

/// The word-embedding table, which FGM perturbs.
const WORD_EMBEDDINGS: &str = "bert.embeddings.word_embeddings.weight";

pub fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::MIN), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0
}

/// Loads model tensors for tests and tools that compare runs.
pub fn load_model_tensors(dir: &Path) -> Result<std::collections::HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?)
}
