use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use zhiku_data::{read_file, Columns, Format, LabelSet};
use zhiku_models::ProblemType;
use zhiku_train::metrics::{ClassificationReport, MultiLabelReport};
use zhiku_train::trainer::argmax;
use zhiku_train::Predictor;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A fine-tuned classifier folder (written by `zhiku train`, or any BertForSequenceClassification folder).
    #[arg(long)]
    model: PathBuf,
    /// Labelled data (.csv, .tsv or .jsonl).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "text")]
    text_column: String,
    #[arg(long)]
    pair_column: Option<String>,
    #[arg(long, default_value = "label")]
    label_column: String,
    #[arg(long)]
    label_separator: Option<String>,
    /// File format when the extension does not tell: csv, tsv or jsonl.
    #[arg(long)]
    format: Option<String>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Print one JSON object (accuracy, macro_f1, per_class, confusion, ...) instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(a: EvalArgs) -> Result<i32> {
    let format = a.format.as_deref().map(|f| Format::parse(f).with_context(|| format!("unknown --format {f:?}"))).transpose()?;
    let columns = Columns { text: a.text_column, pair: a.pair_column, label: a.label_column, label_separator: a.label_separator };
    let data = read_file(&a.data, &columns, format, true)?;
    let device = zhiku_models::default_device();
    let mut predictor = Predictor::open(&a.model, &device)?;
    predictor.batch_size = a.batch_size;
    let labels = LabelSet::new(predictor.labels().to_vec());
    labels.check(&data)?;
    let texts: Vec<&str> = data.examples.iter().map(|e| e.text.as_str()).collect();
    let pairs: Option<Vec<&str>> = columns_pairs(&data);
    let probs = predictor.probabilities(&texts, pairs.as_deref())?;
    let names = predictor.labels().to_vec();
    let value = if predictor.model.config.problem_type == ProblemType::MultiLabel {
        let gold: Vec<Vec<bool>> = data.examples.iter().map(|e| names.iter().map(|n| e.labels.contains(n)).collect()).collect();
        let thresholds = predictor.model.config.thresholds.clone().unwrap_or_else(|| vec![0.5; names.len()]);
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

fn columns_pairs(data: &zhiku_data::Dataset) -> Option<Vec<&str>> {
    data.examples.first()?.pair.as_ref()?;
    Some(data.examples.iter().map(|e| e.pair.as_deref().unwrap_or("")).collect())
}
