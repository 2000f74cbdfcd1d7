use crate::columns::{LabelColumnArgs, TextColumnArgs};
use anyhow::Result;
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use zhiku_data::{read_file, LabelSet};
use zhiku_models::ProblemType;
use zhiku_train::metrics::{ClassificationReport, MultiLabelReport};
use zhiku_train::trainer::argmax;
use zhiku_train::Predictor;

#[derive(Args, Debug)]
#[command(after_help = "Retrieval (--task retrieval): DATA is JSONL pairs ({\"query\", \"positive\"}: every query ranks\n\
the file's distinct positives plus --corpus; recall@1/5/10 and MRR) or labelled candidates\n\
({\"context\" or \"query\", \"response\", \"label\"}, consecutive rows of one context a group: R@1/2/5 and MRR).\n\
MODEL is any encoder folder (sentence-transformers or Hugging Face; not needed for --mode bm25).\n\n\
Generation (--task generation): DATA is conversations ({\"prompt\", \"response\"} or {\"messages\"}); each reply is\n\
generated greedily by --model (a GGUF file or folder) and/or --adapter, and scored against the reference:\n\
ROUGE-1/2/L F1 (as the rouge-score package; characters for Chinese), corpus BLEU (as sacreBLEU), lengths.\n\
  zhiku eval --task generation --adapter runs/replies --data test.jsonl --output preds.jsonl\n  \
zhiku eval --task generation --model qwen.gguf --data test.jsonl --shots 3 --shots-from train.jsonl\n  \
zhiku eval --task generation --predictions other-tool.jsonl --json")]
pub struct EvalArgs {
    /// What to score: classification (a classifier on labelled data), retrieval (an encoder
    /// ranking passages, or BM25) or generation (a language model's replies: ROUGE, BLEU).
    #[arg(long, default_value = "classification")]
    task: String,
    /// A fine-tuned classifier folder or adapter folder (from `zhiku train`, or any
    /// BertForSequenceClassification folder). Repeat it for an ensemble: the models'
    /// probabilities are averaged (they must predict the same labels). For retrieval, an
    /// encoder folder.
    #[arg(long)]
    model: Vec<PathBuf>,
    /// Retrieval: bm25, dense or hybrid (reciprocal rank fusion).
    #[arg(long, default_value = "dense")]
    mode: String,
    /// Retrieval, hybrid: the dense ranking's weight.
    #[arg(long, default_value_t = 0.5)]
    dense_weight: f64,
    /// Retrieval: passages ranked beside the pairs' own (JSONL, a "text" or "answer" per line).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Retrieval: a cross-encoder (from `zhiku train --task reranker`) that reorders the first
    /// stage's best --rerank-top candidates by its probability of label "1".
    #[arg(long)]
    rerank: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    rerank_top: usize,
    /// Base model folder for adapter folders, instead of the one their adapter_config.json names.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Int8 inference: the encoder's linear layers run with 8-bit weights and 7-bit
    /// activations (faster on the CPU, slightly different scores).
    #[arg(long)]
    int8: bool,
    /// Labelled data (.csv, .tsv or .jsonl). Generation: conversations as `zhiku train --task
    /// sft` reads them; the last assistant turn of each is the reference.
    #[arg(long, required_unless_present = "predictions")]
    data: Option<PathBuf>,
    /// Generation: a LoRA adapter folder to run over --model (or over the base it records).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Generation: score saved predictions (JSONL with "prediction" and "reference" strings,
    /// as --output writes them) instead of generating.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Generation: put this many worked examples (the first of --shots-from) in each prompt.
    #[arg(long, default_value_t = 0)]
    shots: usize,
    /// Generation: conversations to take the worked examples from.
    #[arg(long)]
    shots_from: Option<PathBuf>,
    /// Generation: most tokens per reply.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Generation: score only the first N examples.
    #[arg(long)]
    limit: Option<usize>,
    /// Generation: write each prompt, reference and prediction here (JSONL).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Generation: en (ROUGE over words, BLEU 13a) or zh (ROUGE over characters, BLEU zh)
    /// [default: zh if a reference has CJK characters].
    #[arg(long)]
    language: Option<String>,
    /// Generation: products in f32 over the dequantised weights (as transformers computes).
    #[arg(long)]
    exact: bool,
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
    match a.task.as_str() {
        "classification" if a.model.is_empty() => anyhow::bail!("--model is required"),
        "classification" => {}
        "retrieval" => return run_retrieval(&a),
        "generation" => return run_generation(&a),
        other => anyhow::bail!("unknown --task {other:?}: expected classification, retrieval or generation"),
    }
    let data = read_file(a.data.as_ref().expect("clap requires --data without --predictions"), &a.text.columns(Some(&a.label)), a.text.format()?, true)?;
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

fn run_retrieval(a: &EvalArgs) -> Result<i32> {
    use zhiku_train::retrieval::{read_corpus, read_eval_set, RankMode};
    let mode = match a.mode.as_str() {
        "bm25" => RankMode::Bm25,
        "dense" => RankMode::Dense,
        "hybrid" if (0.0..=1.0).contains(&a.dense_weight) => RankMode::Hybrid(a.dense_weight),
        "hybrid" => anyhow::bail!("--dense-weight must be between 0 and 1"),
        other => anyhow::bail!("unknown --mode {other:?}: expected bm25, dense or hybrid"),
    };
    if mode != RankMode::Bm25 && a.model.len() != 1 {
        anyhow::bail!("--mode {} needs one --model encoder folder", a.mode)
    }
    let Some(data) = &a.data else { anyhow::bail!("--data is required") };
    let set = read_eval_set(data)?;
    let corpus = a.corpus.as_deref().map(read_corpus).transpose()?.unwrap_or_default();
    let device = zhiku_models::default_device();
    let model = match mode {
        RankMode::Bm25 => None,
        _ => Some(zhiku_models::TextModel::open(&a.model[0], &device)?),
    };
    let batch = a.batch_size.max(1);
    let mut embed = |texts: &[&str]| -> Result<Vec<Vec<f32>>> { model.as_ref().expect("dense modes open a model").embed_texts(texts, batch) };
    let reranker = a.rerank.as_deref().map(|d| zhiku_library::rerank::CrossEncoder::open(d, &device)).transpose()?;
    let mut rerank_score = |query: &str, passages: &[&str]| -> Result<Vec<f32>> { reranker.as_ref().expect("given").score(query, passages) };
    let second = reranker.as_ref().map(|_| zhiku_train::retrieval::Reranker { top: a.rerank_top.max(1), score: &mut rerank_score });
    let mut scores = zhiku_train::retrieval::evaluate_reranked(&set, &corpus, mode, &mut embed, second)?;
    scores["mode"] = serde_json::json!(if a.rerank.is_some() { format!("{} + rerank top {}", a.mode, a.rerank_top) } else { a.mode.clone() });
    if a.json {
        println!("{}", serde_json::to_string(&scores)?);
    } else {
        let keys: Vec<&str> = scores.as_object().map(|o| o.keys().map(String::as_str).filter(|k| k.contains('@') || *k == "mrr").collect()).unwrap_or_default();
        let line: Vec<String> = keys.iter().map(|k| format!("{k} {:.4}", scores[*k].as_f64().unwrap_or(f64::NAN))).collect();
        println!("{} ({} queries, {} candidates, {})", line.join("  "), scores["queries"], scores["candidates"], scores["mode"].as_str().unwrap_or_default());
    }
    Ok(0)
}

fn run_generation(a: &EvalArgs) -> Result<i32> {
    use zhiku_train::generation_eval as ge;
    let language = a.language.as_deref().map(|l| zhiku_train::text_metrics::Language::parse(l).ok_or_else(|| anyhow::anyhow!("--language must be en or zh, not {l:?}"))).transpose()?;
    let mut rows = if let Some(p) = &a.predictions {
        ge::read_generated(p)?
    } else {
        let data = a.data.as_ref().expect("clap requires --data without --predictions");
        let mut examples = ge::read_eval_examples(data)?;
        if let Some(n) = a.limit {
            examples.truncate(n);
        }
        let shots = match (&a.shots_from, a.shots) {
            (_, 0) => Vec::new(),
            (Some(f), n) => {
                let mut s = ge::read_eval_examples(f)?;
                if s.len() < n {
                    anyhow::bail!("{} has {} conversations; --shots {n} needs that many", f.display(), s.len())
                }
                s.truncate(n);
                s
            }
            (None, _) => anyhow::bail!("--shots needs --shots-from FILE"),
        };
        if a.max_tokens == 0 {
            anyhow::bail!("--max-tokens must be at least 1")
        }
        if a.model.is_empty() && a.adapter.is_none() {
            anyhow::bail!("give the model with --model FILE, an --adapter, or --predictions")
        }
        let adapters: Vec<(String, std::path::PathBuf)> = a.adapter.iter().map(|d| ("adapter".to_string(), d.clone())).collect();
        let mut lm = zhiku_infer::LanguageModel::open_with_adapters(a.model.first().map(|p| p.as_path()), &adapters, true)?;
        lm.model.set_exact(a.exact);
        let bar = if std::io::stderr().is_terminal() && !a.json { indicatif::ProgressBar::new(examples.len() as u64) } else { indicatif::ProgressBar::hidden() };
        let opts = ge::GenerateOptions { max_tokens: a.max_tokens, adapter: a.adapter.as_ref().map(|_| "adapter"), batch: a.batch_size.max(1) };
        let rows = ge::generate_all(&lm, &examples, &shots, &opts, &mut |done, _| bar.set_position(done as u64))?;
        bar.finish_and_clear();
        rows
    };
    if let Some(out) = &a.output {
        ge::write_generated(out, &rows)?;
    }
    if a.predictions.is_some() {
        if let Some(n) = a.limit {
            rows.truncate(n);
        }
    }
    let s = ge::score(&rows, language);
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "ROUGE-1 {:.2}  ROUGE-2 {:.2}  ROUGE-L {:.2}  BLEU {:.2}  ({} examples, {}; prediction length {:.1} vs reference {:.1} {}, {} empty)",
            s.rouge1.f1, s.rouge2.f1, s.rouge_l.f1, s.bleu, s.examples,
            if s.language == zhiku_train::text_metrics::Language::Zh { "characters" } else { "words" },
            s.prediction_length.mean, s.reference_length.mean,
            if s.language == zhiku_train::text_metrics::Language::Zh { "chars" } else { "words" },
            s.empty_predictions
        );
    }
    Ok(0)
}
