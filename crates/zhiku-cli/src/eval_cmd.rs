use crate::columns::{LabelColumnArgs, TextColumnArgs};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use zhiku_data::{read_file, LabelSet};
use zhiku_models::ProblemType;
use zhiku_train::metrics::{ClassificationReport, MultiLabelReport};
use zhiku_train::trainer::argmax;
use zhiku_train::Predictor;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A fine-tuned classifier folder or adapter folder (from `zhiku train`, or any
    /// BertForSequenceClassification folder). Repeat it for an ensemble: the models'
    /// probabilities are averaged (they must predict the same labels).
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// Base model folder for adapter folders, instead of the one their adapter_config.json names.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Int8 inference: the encoder's linear layers run with 8-bit weights and 7-bit
    /// activations (faster on the CPU, slightly different scores).
    #[arg(long)]
    int8: bool,
    /// Labelled data (.csv, .tsv or .jsonl).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    text: TextColumnArgs,
    #[command(flatten)]
    label: LabelColumnArgs,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Print one JSON object (accuracy, macro_f1, per_class, confusion, ...) instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(a: EvalArgs) -> Result<i32> {
    let data = read_file(&a.data, &a.text.columns(Some(&a.label)), a.text.format()?, true)?;
    let device = zhiku_models::default_device();
    let mut predictor = Predictor::open_ensemble(&a.model, a.base.as_deref(), &device)?;
    if a.int8 {
        predictor.quantize_int8()?;
    }
    predictor.batch_size = a.batch_size;
    let labels = LabelSet::new(predictor.labels().to_vec());
    labels.check(&data)?;
    let probs = predictor.probabilities(&data.texts(), data.pairs().as_deref())?;
    let names = predictor.labels().to_vec();
    let value = if predictor.config().problem_type == ProblemType::MultiLabel {
        let gold: Vec<Vec<bool>> = data.examples.iter().map(|e| names.iter().map(|n| e.labels.contains(n)).collect()).collect();
        let thresholds = predictor.config().thresholds.clone().unwrap_or_else(|| vec![0.5; names.len()]);
        let r = MultiLabelReport::new(&names, &probs, &gold, &thresholds);
        if !a.json {
            println!("micro-F1 {:.4}  macro-F1 {:.4}  subset accuracy {:.4}  ({} examples)", r.micro_f1, r.macro_f1, r.subset_accuracy, r.examples);
            for c in &r.per_class {
                println!("{:<20} P {:.4} R {:.4} F1 {:.4} support {}", c.label, c.precision, c.recall, c.f1, c.support);
            }
        }
        serde_json::to_value(&r)?
    } else {
        let gold: Vec<usize> = data.examples.iter().map(|e| labels.id(&e.labels[0]).expect("checked above")).collect();
        let pred: Vec<usize> = probs.iter().map(|p| argmax(p)).collect();
        let r = ClassificationReport::new(&names, &gold, &pred);
        if !a.json {
            print!("{}", r.to_table());
        }
        serde_json::to_value(&r)?
    };
    if a.json {
        println!("{}", serde_json::to_string(&value)?);
    }
    Ok(0)
}
