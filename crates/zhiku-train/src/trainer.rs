//! The training loop.

use crate::checkpoint;
use crate::loss::{bce_with_logits_sum, cross_entropy_sum, multi_hot, symmetric_kl_sum};
use crate::metrics::{tune_thresholds, ClassificationReport, MultiLabelReport};
use crate::optim::{AdamW, AdamWConfig};
use crate::report;
use crate::schedule::{LrSchedule, ScheduleKind};
use crate::sharded::{self, add_grads};
use crate::task::TaskData;
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use zhiku_data::Dataset;
use zhiku_models::{AdapterFolder, ClassifierConfig, DropoutRng, ModelFolder, PeftConfig, Pooling, Precision, ProblemType, SequenceClassifier, TextTokenizer, TokenizedText};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ClassWeights {
    None,
    /// Inverse class frequency.
    Balanced,
    Explicit(Vec<f32>),
}

/// Every knob of a run. Defaults follow common fine-tuning recipes (CLUE / transformers).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Examples per forward pass (a micro-batch).
    pub batch_size: usize,
    /// Micro-batches per optimizer step: the effective batch is `batch_size * grad_accum`.
    pub grad_accum: usize,
    pub lr: f64,
    pub max_length: usize,
    pub seed: u64,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    pub schedule: String,
    pub max_grad_norm: Option<f64>,
    pub label_smoothing: f64,
    pub class_weights: ClassWeights,
    pub pooling: String,
    /// Dev metric that picks the best checkpoint and drives early stopping.
    pub metric: String,
    /// Stop after this many evaluations without improvement.
    pub patience: Option<usize>,
    /// Evaluate every N optimizer steps (otherwise at the end of every epoch).
    pub eval_steps: Option<u64>,
    /// Stop after this many optimizer steps in total (for quick runs and benchmarks).
    pub max_steps: Option<u64>,
    pub eval_batch_size: usize,
    /// A parameter-efficient method (LoRA, bottleneck adapters, prefix tuning): only its modules
    /// and the head train, and the output is an adapter folder on the base model.
    #[serde(default)]
    pub peft: Option<PeftConfig>,
    /// FGM adversarial training: size of the step on the word embeddings (None: off).
    #[serde(default)]
    pub fgm_epsilon: Option<f64>,
    /// R-Drop: weight of the symmetric KL between two dropout passes (0: off).
    #[serde(default)]
    pub rdrop_alpha: f64,
    /// Overrides the encoder's hidden and attention dropout probabilities.
    #[serde(default)]
    pub dropout: Option<f64>,
    /// Also save the model at the end of every epoch, as `epoch-N/` in the output folder (for
    /// checkpoint averaging with `zhiku average`).
    #[serde(default)]
    pub save_every_epoch: bool,
    /// Mixed precision: fp32 (off), or bf16 / fp16 activations over f32 master weights; fp16
    /// adds dynamic loss scaling.
    #[serde(default)]
    pub precision: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 16,
            grad_accum: 1,
            lr: 5e-5,
            max_length: 128,
            seed: 42,
            weight_decay: 0.01,
            warmup_ratio: 0.1,
            schedule: "linear".into(),
            max_grad_norm: Some(1.0),
            label_smoothing: 0.0,
            class_weights: ClassWeights::None,
            pooling: "pooler".into(),
            metric: "macro_f1".into(),
            patience: None,
            eval_steps: None,
            max_steps: None,
            eval_batch_size: 64,
            peft: None,
            fgm_epsilon: None,
            rdrop_alpha: 0.0,
            dropout: None,
            save_every_epoch: false,
            precision: Precision::Fp32,
        }
    }
}

/// Where the loop is; saved in checkpoints so `--resume` continues exactly.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TrainerState {
    pub global_step: u64,
    pub epoch: usize,
    /// Optimizer steps already done within `epoch`.
    pub step_in_epoch: usize,
    pub best_metric: Option<f64>,
    pub best_step: u64,
    pub evals_without_improvement: usize,
    pub history: Vec<EvalRecord>,
    pub losses: Vec<(u64, f64)>,
    /// The run's configuration (a resumed run must use the same one).
    pub config: Option<TrainConfig>,
    pub fingerprint: String,
    /// fp16 dynamic loss scaling: the current scale and finite steps since it last changed.
    #[serde(default)]
    pub loss_scale: Option<LossScale>,
}

/// Dynamic loss scaling for fp16 (PyTorch's `GradScaler` rule): the loss is multiplied by
/// `scale` before the backward pass so small gradients do not vanish in fp16; a step whose
/// gradients overflow is skipped and the scale halved; after `GROWTH_INTERVAL` finite steps in
/// a row it doubles.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LossScale {
    pub scale: f64,
    pub finite_steps: u64,
}

impl LossScale {
    pub const INITIAL: f64 = 65536.0;
    pub const GROWTH_INTERVAL: u64 = 2000;

    pub fn new() -> Self {
        Self { scale: Self::INITIAL, finite_steps: 0 }
    }

    /// Records whether this step's gradients were finite.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.finite_steps += 1;
            if self.finite_steps >= Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.finite_steps = 0;
            }
        } else {
            self.scale = (self.scale * 0.5).max(1.0);
            self.finite_steps = 0;
        }
    }
}

impl Default for LossScale {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub examples_per_s: f64,
    pub elapsed_s: f64,
    /// fp16: the loss scale this step used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// Whether the update was skipped (gradients not finite).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    pub epoch: f64,
    pub dev_loss: f64,
    pub metric: f64,
    pub metrics: serde_json::Value,
}

pub enum TrainEvent<'a> {
    /// `trainable` of `total` parameters are trained.
    Started { total_steps: u64, done_steps: u64, train_examples: usize, dev_examples: usize, labels: &'a [String], trainable: usize, total: usize },
    Step(&'a StepRecord),
    Eval(&'a EvalRecord, bool),
    Checkpoint(&'a Path),
    Message(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StopReason {
    Finished,
    EarlyStopped,
    MaxSteps,
    Interrupted,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub stop: StopReason,
    pub steps: u64,
    pub best_step: u64,
    pub best_dev_metric: Option<f64>,
    pub metric: String,
    pub dev: Option<serde_json::Value>,
    pub test: Option<serde_json::Value>,
    pub output: PathBuf,
    pub seconds: f64,
    /// Parameters trained, of all the model's parameters.
    pub trainable_params: usize,
    pub total_params: usize,
}

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
        if config.batch_size == 0 || config.grad_accum == 0 || config.epochs == 0 {
            bail!("--batch-size, --grad-accum and --epochs must be at least 1")
        }
        if !(config.lr > 0.0 && config.lr.is_finite()) {
            bail!("--lr must be a positive number, got {}", config.lr)
        }
        if ScheduleKind::parse(&config.schedule).is_none() {
            bail!("unknown --schedule {:?}: expected linear, cosine or constant", config.schedule)
        }
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

    fn fingerprint(&self) -> String {
        let d = &self.data;
        format!(
            "model={} train={}:{}+{} dev={}:{} labels={}",
            self.model_folder.dir.display(),
            d.train.path.display(),
            d.train.len(),
            d.augmented.len(),
            d.dev.path.display(),
            d.dev.len(),
            d.labels.names().join("|")
        )
    }

    fn encode(&self, tok: &TextTokenizer, data: &Dataset) -> Result<Encoded> {
        let items = tok.encode_many(&data.texts(), data.pairs().as_deref())?;
        Ok(Encoded { items, labels: self.data.label_ids(data) })
    }

    /// Runs (or resumes) training; `on_event` sees progress. Writes into the output folder:
    /// the best model (Hugging Face layout), `checkpoint/`, `train_log.jsonl`, `metrics.json`,
    /// `report.svg` and `report.md`.
    pub fn run(&mut self, resume: bool, on_event: &mut dyn FnMut(TrainEvent)) -> Result<TrainSummary> {
        let started = Instant::now();
        let cfg = self.config.clone();
        let out = self.output.clone();
        let ckpt_dir = out.join("checkpoint");
        let multi = self.data.multi_label;
        let labels = self.data.labels.names().to_vec();
        let head = ClassifierConfig {
            labels: labels.clone(),
            pooling: Pooling::parse(&cfg.pooling)?,
            problem_type: if multi { ProblemType::MultiLabel } else { ProblemType::SingleLabel },
            thresholds: None,
            text_pairs: self.data.train.examples[0].pair.is_some(),
        };
        let mut model = SequenceClassifier::from_folder_peft(&self.model_folder, Some(head), cfg.seed, &self.device, cfg.peft.as_ref())?;
        model.set_precision(cfg.precision);
        let tok = self.model_folder.tokenizer(cfg.max_length)?;
        let mut opt = AdamW::new(&model.params, AdamWConfig { weight_decay: cfg.weight_decay, ..Default::default() })?;

        let loss_scale = (cfg.precision == Precision::Fp16).then(LossScale::new);
        let mut state = TrainerState { config: Some(cfg.clone()), fingerprint: self.fingerprint(), loss_scale, ..Default::default() };
        if resume {
            let ck = checkpoint::load(&ckpt_dir, &self.device)?;
            if ck.state.fingerprint != state.fingerprint || ck.state.config.as_ref() != Some(&cfg) {
                bail!(
                    "{} was written by a run with other data or settings; resume with the same command line (or start afresh with --overwrite)\n  checkpoint: {}\n  now:        {}",
                    ckpt_dir.display(),
                    ck.state.fingerprint,
                    state.fingerprint
                )
            }
            model.params.load_values(&ck.params)?;
            opt.load_state(&ck.optimizer)?;
            state = ck.state;
        }
        std::fs::create_dir_all(&out).with_context(|| format!("cannot create output folder {}", out.display()))?;
        self.data.save_splits(&out.join("splits"))?;

        let train = self.encode(&tok, &self.data.training_set())?;
        let dev = self.encode(&tok, &self.data.dev)?;
        let class_weights: Option<Vec<f32>> = match &cfg.class_weights {
            ClassWeights::None => None,
            ClassWeights::Balanced => Some(self.data.balanced_class_weights()),
            ClassWeights::Explicit(w) => Some(w.clone()),
        };
        let n = train.items.len();
        let micro_per_epoch = n.div_ceil(cfg.batch_size);
        let steps_per_epoch = micro_per_epoch.div_ceil(cfg.grad_accum);
        let mut total_steps = (steps_per_epoch * cfg.epochs) as u64;
        if let Some(m) = cfg.max_steps {
            total_steps = total_steps.min(m);
        }
        let warmup = (cfg.warmup_ratio * total_steps as f64).ceil() as u64;
        let schedule = LrSchedule { kind: ScheduleKind::parse(&cfg.schedule).unwrap(), base_lr: cfg.lr, warmup_steps: warmup, total_steps };
        let params = (model.params.num_elements(), model.params.num_elements() + model.fixed.values().map(|t| t.elem_count()).sum::<usize>());
        on_event(TrainEvent::Started {
            total_steps,
            done_steps: state.global_step,
            train_examples: n,
            dev_examples: dev.items.len(),
            labels: &labels,
            trainable: params.0,
            total: params.1,
        });

        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(out.join("train_log.jsonl"))?;
        let mut stop = StopReason::Finished;
        let mut window = (Instant::now(), 0usize);
        'epochs: while state.epoch < cfg.epochs {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed ^ (state.epoch as u64 + 1).wrapping_mul(0x9E37_79B9)));
            let micro: Vec<&[usize]> = order.chunks(cfg.batch_size).collect();
            while state.step_in_epoch < steps_per_epoch {
                let first = state.step_in_epoch * cfg.grad_accum;
                let group = &micro[first..(first + cfg.grad_accum).min(micro.len())];
                let scale = state.loss_scale.map_or(1.0, |s| s.scale);
                let (loss, grads) = self.accumulate(&model, &tok, &train, group, multi, class_weights.as_deref(), state.global_step, scale)?;
                let loss = loss / scale;
                let norm = opt.grad_norm(&grads, 1.0 / scale)?;
                let clip = match cfg.max_grad_norm {
                    Some(max) if norm > max => max / (norm + 1e-6),
                    _ => 1.0,
                };
                let lr = schedule.lr(state.global_step);
                // Gradients that overflowed (fp16) or went bad are not applied: the step is
                // skipped (and under fp16 the loss scale halved), as PyTorch's GradScaler does.
                if norm.is_finite() {
                    opt.update(&grads, lr, clip / scale)?;
                } else {
                    let why = if state.loss_scale.is_some() { format!(" (fp16 loss scale {scale} halved)") } else { String::new() };
                    on_event(TrainEvent::Message(format!("step {}: gradients not finite, update skipped{why}", state.global_step + 1)));
                }
                if let Some(s) = &mut state.loss_scale {
                    s.update(norm.is_finite());
                }
                state.global_step += 1;
                state.step_in_epoch += 1;
                window.1 += group.iter().map(|g| g.len()).sum::<usize>();
                let rec = StepRecord {
                    step: state.global_step,
                    epoch: state.epoch as f64 + state.step_in_epoch as f64 / steps_per_epoch as f64,
                    loss,
                    lr,
                    grad_norm: norm,
                    examples_per_s: window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9),
                    elapsed_s: started.elapsed().as_secs_f64(),
                    loss_scale: state.loss_scale.map(|_| scale),
                    skipped: !norm.is_finite(),
                };
                if window.0.elapsed().as_secs_f64() > 10.0 {
                    window = (Instant::now(), 0);
                }
                state.losses.push((rec.step, rec.loss));
                writeln!(log, "{}", serde_json::to_string(&rec)?)?;
                on_event(TrainEvent::Step(&rec));

                let end_of_epoch = state.step_in_epoch == steps_per_epoch;
                let last_step = state.global_step >= total_steps;
                let due = match cfg.eval_steps {
                    Some(k) => state.global_step.is_multiple_of(k) || last_step,
                    None => end_of_epoch || last_step,
                };
                if due {
                    let improved = self.evaluate_and_keep_best(&mut model, &tok, &dev, &mut state, class_weights.as_deref(), &mut log, on_event)?;
                    if let (false, Some(p)) = (improved, cfg.patience) {
                        if state.evals_without_improvement >= p {
                            stop = StopReason::EarlyStopped;
                        }
                    }
                }
                if last_step && stop == StopReason::Finished && !(end_of_epoch && state.epoch + 1 == cfg.epochs) {
                    stop = StopReason::MaxSteps;
                }
                if end_of_epoch {
                    state.epoch += 1;
                    state.step_in_epoch = 0;
                    if cfg.save_every_epoch {
                        let dir = out.join(format!("epoch-{}", state.epoch));
                        if model.peft.is_some() {
                            model.save_adapter(&dir, &self.model_folder, &tok)?;
                        } else {
                            model.save(&dir, &self.model_folder.config, &tok)?;
                        }
                    }
                }
                let interrupted = self.interrupt.load(Ordering::SeqCst) || self.stop_after.is_some_and(|s| state.global_step >= s);
                if interrupted || end_of_epoch || last_step || stop != StopReason::Finished {
                    checkpoint::save(&ckpt_dir, &model.params.tensors(), &opt.state()?, &state)?;
                    on_event(TrainEvent::Checkpoint(&ckpt_dir));
                }
                if interrupted {
                    return Ok(TrainSummary {
                        stop: StopReason::Interrupted,
                        steps: state.global_step,
                        best_step: state.best_step,
                        best_dev_metric: state.best_metric,
                        metric: cfg.metric.clone(),
                        dev: None,
                        test: None,
                        output: out,
                        seconds: started.elapsed().as_secs_f64(),
                        trainable_params: params.0,
                        total_params: params.1,
                    });
                }
                if last_step || stop != StopReason::Finished {
                    break 'epochs;
                }
                if end_of_epoch {
                    break; // next epoch, with a new order
                }
            }
        }
        self.finish(stop, state, &tok, multi, started, params, on_event)
    }

    /// Forward and backward over the micro-batches of one optimizer step, with the loss divided
    /// by the normaliser of the whole step, so gradients equal those of one large batch, and
    /// multiplied by `loss_scale` (fp16 loss scaling; the caller unscales). Returns the scaled
    /// loss.
    #[allow(clippy::too_many_arguments)]
    fn accumulate(
        &self,
        model: &SequenceClassifier,
        tok: &TextTokenizer,
        data: &Encoded,
        group: &[&[usize]],
        multi: bool,
        class_weights: Option<&[f32]>,
        step: u64,
        loss_scale: f64,
    ) -> Result<(f64, GradStore)> {
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
        let cfg = &self.config;
        for (m, idx) in group.iter().enumerate() {
            let items: Vec<&TokenizedText> = idx.iter().map(|&i| &data.items[i]).collect();
            let batch = tok.pad_batch(&items, &self.device)?;
            // The task loss of the micro-batch's rows `rows` (a data-parallel shard).
            let task_loss = |logits: &Tensor, rows: &Range<usize>| -> Result<Tensor> {
                let idx = &idx[rows.clone()];
                Ok(if multi {
                    let ids: Vec<Vec<u32>> = idx.iter().map(|&i| data.labels[i].clone()).collect();
                    bce_with_logits_sum(logits, &multi_hot(&ids, k, &self.device)?)?.0
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
                        add_grads(&mut grads, &adversarial?.grads, model)?;
                    }
                }
            }
            acc = Some(match acc {
                None => grads,
                Some(mut a) => {
                    add_grads(&mut a, &grads, model)?;
                    a
                }
            });
        }
        Ok((loss_total, acc.expect("a step has at least one micro-batch")))
    }

    /// Evaluates on dev; saves the model into the output folder when the metric improves.
    #[allow(clippy::too_many_arguments)]
    fn evaluate_and_keep_best(
        &self,
        model: &mut SequenceClassifier,
        tok: &TextTokenizer,
        dev: &Encoded,
        state: &mut TrainerState,
        class_weights: Option<&[f32]>,
        log: &mut std::fs::File,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<bool> {
        let cfg = &self.config;
        let view = model.inference_view(&self.model_folder.config)?;
        let eval = evaluate(&view, tok, dev, self.data.multi_label, cfg.eval_batch_size, &self.device, class_weights)?;
        drop(view);
        let value = if cfg.metric == "loss" { eval.loss } else { eval.metrics[&cfg.metric].as_f64().unwrap_or(0.0) };
        let better = match state.best_metric {
            None => true,
            Some(b) if cfg.metric == "loss" => value < b - 1e-12,
            Some(b) => value > b + 1e-12,
        };
        let rec = EvalRecord { step: state.global_step, epoch: state.epoch as f64, dev_loss: eval.loss, metric: value, metrics: eval.metrics.clone() };
        writeln!(log, "{}", serde_json::json!({ "eval": &rec }))?;
        state.history.push(rec.clone());
        if better {
            state.best_metric = Some(value);
            state.best_step = state.global_step;
            state.evals_without_improvement = 0;
            model.config.thresholds = eval.thresholds.clone();
            if model.peft.is_some() {
                model.save_adapter(&self.output, &self.model_folder, tok)?;
            } else {
                model.save(&self.output, &self.model_folder.config, tok)?;
            }
        } else {
            state.evals_without_improvement += 1;
        }
        on_event(TrainEvent::Eval(&rec, better));
        Ok(better)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(&self, stop: StopReason, state: TrainerState, tok: &TextTokenizer, multi: bool, started: Instant, params: (usize, usize), on_event: &mut dyn FnMut(TrainEvent)) -> Result<TrainSummary> {
        // The output folder now holds the best model: evaluate exactly what was saved.
        on_event(TrainEvent::Message(format!("best dev {} {:.4} at step {}", self.config.metric, state.best_metric.unwrap_or(f64::NAN), state.best_step)));
        let best = if self.config.peft.is_some() {
            let adapter = AdapterFolder::open(&self.output, Some(&self.model_folder.dir))?;
            SequenceClassifier::from_adapter(&adapter, &self.model_folder.load_weights(&self.device)?, &self.device)?
        } else {
            SequenceClassifier::for_inference(&ModelFolder::open(&self.output)?, None, &self.device)?
        };
        let dev = evaluate(&best, tok, &self.encode(tok, &self.data.dev)?, multi, self.config.eval_batch_size, &self.device, None)?;
        let test = match &self.data.test {
            Some(t) => Some(evaluate(&best, tok, &self.encode(tok, t)?, multi, self.config.eval_batch_size, &self.device, None)?),
            None => None,
        };
        let summary = TrainSummary {
            stop,
            steps: state.global_step,
            best_step: state.best_step,
            best_dev_metric: state.best_metric,
            metric: self.config.metric.clone(),
            dev: Some(dev.report.clone()),
            test: test.as_ref().map(|t| t.report.clone()),
            output: self.output.clone(),
            seconds: started.elapsed().as_secs_f64(),
            trainable_params: params.0,
            total_params: params.1,
        };
        let metrics = serde_json::json!({
            "summary": &summary,
            "config": &self.config,
            "labels": self.data.labels.names(),
            "train_examples": self.data.train.len(),
            "augmented_examples": self.data.augmented.len(),
            "dev_examples": self.data.dev.len(),
            "test_examples": self.data.test.as_ref().map(|t| t.len()),
        });
        zhiku_models::classifier::write_atomic(&self.output.join("metrics.json"), serde_json::to_string_pretty(&metrics)?.as_bytes())?;
        report::write(&self.output, &state, &summary, &self.config)?;
        Ok(summary)
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

#[cfg(test)]
mod tests {
    use super::LossScale;

    #[test]
    fn loss_scale_halves_on_overflow_and_grows_after_a_run_of_finite_steps() {
        let mut s = LossScale::new();
        s.update(false);
        assert_eq!(s.scale, LossScale::INITIAL / 2.0);
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!(s.scale, LossScale::INITIAL / 2.0);
        s.update(true);
        assert_eq!(s.scale, LossScale::INITIAL);
        assert_eq!(s.finite_steps, 0);
        for _ in 0..40 {
            s.update(false);
        }
        assert_eq!(s.scale, 1.0, "the scale never drops below 1");
    }
}
