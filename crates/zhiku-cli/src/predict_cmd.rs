use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use crate::columns::TextColumnArgs;
use zhiku_data::{read_file, Format};
use zhiku_train::Predictor;

#[derive(Args, Debug)]
#[command(after_help = "Texts come from the arguments, from --file, or else from standard input, one per line.\n\
Output: one line per text, `LABEL<TAB>SCORE`, or with --json one JSON object per line:\n\
{\"text\": ..., \"labels\": [...], \"scores\": [{\"label\": ..., \"score\": ...}, ...]}")]
pub struct PredictArgs {
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
    /// Texts to label.
    texts: Vec<String>,
    /// Read texts from a file: .csv/.tsv/.jsonl (the --text-column), or any other file as one text per line.
    #[arg(long)]
    file: Option<PathBuf>,
    #[command(flatten)]
    text: TextColumnArgs,
    /// How many top labels (with probabilities) to show per text.
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// One JSON object per text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: PredictArgs) -> Result<i32> {
    let (texts, pairs): (Vec<String>, Option<Vec<String>>) = if !a.texts.is_empty() {
        (a.texts.clone(), None)
    } else if let Some(path) = &a.file {
        match a.text.format()?.or_else(|| Format::from_path(path)) {
            Some(fmt) => {
                let ds = read_file(path, &a.text.columns(None), Some(fmt), false)?;
                let pairs = ds.pairs().map(|p| p.into_iter().map(str::to_string).collect());
                (ds.texts().into_iter().map(str::to_string).collect(), pairs)
            }
            None => (read_lines(std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?, &path.display().to_string())?, None),
        }
    } else {
        if std::io::stdin().is_terminal() {
            eprintln!("reading texts from standard input, one per line (Ctrl-D to finish)");
        }
        (read_lines(std::io::stdin().lock(), "<stdin>")?, None)
    };
    if texts.is_empty() {
        bail!("no texts to label: pass them as arguments, with --file, or on standard input")
    }
    let device = zhiku_models::default_device();
    let mut predictor = Predictor::open_ensemble(&a.model, a.base.as_deref(), &device)?;
    if a.int8 {
        predictor.quantize_int8()?;
    }
    predictor.batch_size = a.batch_size;
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let pair_refs: Option<Vec<&str>> = pairs.as_ref().map(|p| p.iter().map(|s| s.as_str()).collect());
    let preds = predictor.predict(&refs, pair_refs.as_deref(), a.top_k)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (text, p) in texts.iter().zip(&preds) {
        if a.json {
            writeln!(out, "{}", serde_json::json!({"text": text, "labels": p.labels, "scores": p.scores}))?;
        } else if a.top_k <= 1 {
            writeln!(out, "{}\t{:.4}", p.labels.join(","), p.scores[0].score)?;
        } else {
            let ranked: Vec<String> = p.scores.iter().map(|s| format!("{}:{:.4}", s.label, s.score)).collect();
            writeln!(out, "{}\t{}", p.labels.join(","), ranked.join(" "))?;
        }
    }
    out.flush()?;
    Ok(0)
}

/// Non-empty lines, with a clear error (and line number) on invalid UTF-8.
fn read_lines(reader: impl std::io::Read, name: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(reader).split(b'\n').enumerate() {
        let bytes = line?;
        let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{name}:{}: not valid UTF-8 text", i + 1))?;
        let text = text.trim_end_matches('\r');
        if !text.trim().is_empty() {
            out.push(text.to_string());
        }
    }
    Ok(out)
}
