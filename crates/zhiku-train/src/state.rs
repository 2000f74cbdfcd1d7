//! What a training run is configured with, where it stands (saved in checkpoints), and what it
//! reports: shared by the loop, checkpoints and the report, so none of them imports another.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use zhiku_models::{PeftConfig, Precision};

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
