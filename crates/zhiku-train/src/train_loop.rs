//! The one training loop every task runs on: AdamW with warm-up and a schedule, gradient
//! accumulation, clipping, fp16 loss scaling, evaluation on dev with early stopping and the
//! best model kept, checkpoints and exact resume, Ctrl-C, `train_log.jsonl`, `metrics.json`
//! and the report. What differs between tasks (the model, the loss of a micro-batch, the dev
//! metrics, what is saved) is behind [`TrainTask`].

use crate::checkpoint;
use crate::optim::{AdamW, AdamWConfig};
use crate::report;
use crate::schedule::{LrSchedule, ScheduleKind};
use crate::state::{EvalRecord, LossScale, StepRecord, StopReason, TrainConfig, TrainEvent, TrainSummary, TrainerState};
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use zhiku_models::{Params, Precision};

/// A dev evaluation: the loss and the scalar metrics by name (the run's `--metric` among them).
pub struct DevScores {
    pub loss: f64,
    pub metrics: Value,
}

/// The scores of the saved best model once training ends, and what else the task reports in
/// `metrics.json`.
pub struct FinalScores {
    pub dev: Value,
    pub test: Option<Value>,
    pub extra: Map<String, Value>,
}

/// One kind of training: classification, retrieval, ...
pub trait TrainTask {
    /// What the resumed run must match: model, data, task options.
    fn fingerprint(&self) -> String;
    /// The trained parameters (the optimizer's and the checkpoint's).
    fn params(&self) -> &Params;
    /// All the model's parameters, trained or not.
    fn total_params(&self) -> usize;
    /// Training units: the loop shuffles their indices and hands micro-batches of them over.
    fn train_len(&self) -> usize;
    fn dev_len(&self) -> usize;
    /// Label names, for tasks that have them.
    fn labels(&self) -> &[String] {
        &[]
    }
    /// The metrics `--metric` may name, and whether each is better higher.
    fn metrics(&self) -> Vec<(&'static str, bool)>;
    /// Forward and backward over the micro-batches of one optimizer step, the loss normalised
    /// over the whole step (so the gradients equal one large batch's) and multiplied by
    /// `loss_scale`. Returns the scaled loss and the gradients.
    fn accumulate(&self, group: &[&[usize]], step: u64, loss_scale: f64) -> Result<(f64, GradStore)>;
    fn evaluate(&mut self) -> Result<DevScores>;
    /// Saves the model as it is now into `dir` (the best so far, or an epoch's copy).
    fn save(&mut self, dir: &Path) -> Result<()>;
    /// Anything written before the first step (splits carved out of the data).
    fn prepare_output(&self, _output: &Path) -> Result<()> {
        Ok(())
    }
    /// Scores what was saved in `output` (the best model) on dev and test.
    fn final_scores(&self, output: &Path) -> Result<FinalScores>;
}

/// Outside control of a run: Ctrl-C, and for tests an interruption after a number of steps.
#[derive(Clone, Default)]
pub struct LoopControl {
    pub interrupt: Arc<AtomicBool>,
    pub stop_after: Option<u64>,
}

/// Checks the loop's settings, shared by every task.
pub fn validate(config: &TrainConfig) -> Result<()> {
    if config.batch_size == 0 || config.grad_accum == 0 || config.epochs == 0 {
        bail!("--batch-size, --grad-accum and --epochs must be at least 1")
    }
    if !(config.lr > 0.0 && config.lr.is_finite()) {
        bail!("--lr must be a positive number, got {}", config.lr)
    }
    if ScheduleKind::parse(&config.schedule).is_none() {
        bail!("unknown --schedule {:?}: expected linear, cosine or constant", config.schedule)
    }
    Ok(())
}

/// Runs (or resumes) training of `task`; `on_event` sees progress. Writes into `output`: the
/// best model (by the task's `save`), `checkpoint/`, `train_log.jsonl`, `metrics.json`,
/// `report.svg` and `report.md`.
pub fn run(task: &mut dyn TrainTask, cfg: &TrainConfig, output: &Path, resume: bool, control: &LoopControl, on_event: &mut dyn FnMut(TrainEvent)) -> Result<TrainSummary> {
    validate(cfg)?;
    let started = Instant::now();
    let metrics = task.metrics();
    let Some(&(_, higher_is_better)) = metrics.iter().find(|m| m.0 == cfg.metric) else {
        bail!("--metric {:?} is not available here; choose one of {}", cfg.metric, metrics.iter().map(|m| m.0).collect::<Vec<_>>().join(", "))
    };
    let out = output.to_path_buf();
    let ckpt_dir = out.join("checkpoint");
    let mut opt = AdamW::new(task.params(), AdamWConfig { weight_decay: cfg.weight_decay, ..Default::default() })?;
    let loss_scale = (cfg.precision == Precision::Fp16).then(LossScale::new);
    let mut state = TrainerState { config: Some(cfg.clone()), fingerprint: task.fingerprint(), loss_scale, ..Default::default() };
    if resume {
        let device = task.params().iter().next().map(|(_, v)| v.device().clone()).unwrap_or(candle_core::Device::Cpu);
        let ck = checkpoint::load(&ckpt_dir, &device)?;
        if ck.state.fingerprint != state.fingerprint || ck.state.config.as_ref() != Some(cfg) {
            bail!(
                "{} was written by a run with other data or settings; resume with the same command line (or start afresh with --overwrite)\n  checkpoint: {}\n  now:        {}",
                ckpt_dir.display(),
                ck.state.fingerprint,
                state.fingerprint
            )
        }
        task.params().load_values(&ck.params)?;
        opt.load_state(&ck.optimizer)?;
        state = ck.state;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create output folder {}", out.display()))?;
    task.prepare_output(&out)?;

    let n = task.train_len();
    if n == 0 {
        bail!("no training examples")
    }
    let micro_per_epoch = n.div_ceil(cfg.batch_size);
    let steps_per_epoch = micro_per_epoch.div_ceil(cfg.grad_accum);
    let mut total_steps = (steps_per_epoch * cfg.epochs) as u64;
    if let Some(m) = cfg.max_steps {
        total_steps = total_steps.min(m);
    }
    let warmup = (cfg.warmup_ratio * total_steps as f64).ceil() as u64;
    let schedule = LrSchedule { kind: ScheduleKind::parse(&cfg.schedule).expect("validated"), base_lr: cfg.lr, warmup_steps: warmup, total_steps };
    let params = (task.params().num_elements(), task.total_params());
    on_event(TrainEvent::Started { total_steps, done_steps: state.global_step, train_examples: n, dev_examples: task.dev_len(), labels: task.labels(), trainable: params.0, total: params.1 });

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
            let (loss, grads) = task.accumulate(group, state.global_step, scale)?;
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
                let improved = evaluate_and_keep_best(task, cfg, higher_is_better, &out, &mut state, &mut log, on_event)?;
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
                    task.save(&out.join(format!("epoch-{}", state.epoch)))?;
                }
            }
            let interrupted = control.interrupt.load(Ordering::SeqCst) || control.stop_after.is_some_and(|s| state.global_step >= s);
            if interrupted || end_of_epoch || last_step || stop != StopReason::Finished {
                checkpoint::save(&ckpt_dir, &task.params().tensors(), &opt, &state)?;
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

    // The optimizer's moments (twice the trainable weights) are no longer needed: freed before
    // the best model is read back for scoring, which can then reuse their memory.
    drop(opt);
    // The output folder now holds the best model: score exactly what was saved.
    on_event(TrainEvent::Message(format!("best dev {} {:.4} at step {}", cfg.metric, state.best_metric.unwrap_or(f64::NAN), state.best_step)));
    let scores = task.final_scores(&out)?;
    let summary = TrainSummary {
        stop,
        steps: state.global_step,
        best_step: state.best_step,
        best_dev_metric: state.best_metric,
        metric: cfg.metric.clone(),
        dev: Some(scores.dev),
        test: scores.test,
        output: out.clone(),
        seconds: started.elapsed().as_secs_f64(),
        trainable_params: params.0,
        total_params: params.1,
    };
    let mut metrics = Map::new();
    metrics.insert("summary".into(), serde_json::to_value(&summary)?);
    metrics.insert("config".into(), serde_json::to_value(cfg)?);
    metrics.extend(scores.extra);
    zhiku_models::classifier::write_atomic(&out.join("metrics.json"), serde_json::to_string_pretty(&Value::Object(metrics))?.as_bytes())?;
    report::write(&out, &state, &summary, cfg)?;
    Ok(summary)
}

/// Evaluates on dev; saves the model into the output folder when the metric improves.
fn evaluate_and_keep_best(
    task: &mut dyn TrainTask,
    cfg: &TrainConfig,
    higher_is_better: bool,
    out: &Path,
    state: &mut TrainerState,
    log: &mut std::fs::File,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<bool> {
    let eval = task.evaluate()?;
    let value = if cfg.metric == "loss" { eval.loss } else { eval.metrics.get(&cfg.metric).and_then(Value::as_f64).unwrap_or(0.0) };
    let better = match state.best_metric {
        None => true,
        Some(b) if higher_is_better => value > b + 1e-12,
        Some(b) => value < b - 1e-12,
    };
    let rec = EvalRecord { step: state.global_step, epoch: state.epoch as f64, dev_loss: eval.loss, metric: value, metrics: eval.metrics };
    writeln!(log, "{}", serde_json::json!({ "eval": &rec }))?;
    state.history.push(rec.clone());
    if better {
        state.best_metric = Some(value);
        state.best_step = state.global_step;
        state.evals_without_improvement = 0;
        task.save(out)?;
    } else {
        state.evals_without_improvement += 1;
    }
    on_event(TrainEvent::Eval(&rec, better));
    Ok(better)
}
