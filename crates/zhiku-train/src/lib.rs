//! The fine-tuning engine: losses, AdamW, learning-rate schedules, the training loop with
//! gradient accumulation, clipping, evaluation, early stopping, checkpoints and resume, plus
//! metrics, prediction and the training report.
//!
//! Data flows one way: [`task::TaskData`] (labelled examples) -> [`Trainer`] (tensors through
//! `zhiku_models::SequenceClassifier`) -> a Hugging Face model folder, a JSONL log and a report.

pub mod bench;
pub mod checkpoint;
pub mod generation_eval;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod predict;
pub mod report;
pub mod retrieval;
pub mod schedule;
pub mod setfit;
pub mod sft;
pub mod sharded;
pub mod state;
pub mod task;
pub mod text_metrics;
pub mod train_loop;
pub mod trainer;

pub use metrics::{ClassificationReport, MultiLabelReport};
pub use optim::{AdamW, AdamWConfig};
pub use predict::{Prediction, Predictor};
pub use schedule::{LrSchedule, ScheduleKind};
pub use task::{DataConfig, TaskData};
pub use trainer::{StopReason, TrainConfig, TrainEvent, TrainSummary, Trainer};
