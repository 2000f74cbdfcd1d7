//! `zhiku augment`: variants of training texts, written to a file that `zhiku train` reads.
//! EDA edits words; paraphrase and back-translation have a language model rewrite the text.

use crate::columns::{LabelColumnArgs, TextColumnArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use zhiku_data::augment::{augment_examples, AugmentConfig};
use zhiku_data::Example;
use zhiku_rewrite::{Language, Method, Rejections, RewriteOptions};

#[derive(Args, Debug)]
#[command(after_help = "Methods:\n  \
eda               word edits (synonym replacement from WordNet / Tongyici Cilin, insertion, swap, deletion);\n                    \
instant, no model\n  \
paraphrase        a language model rewrites each text in other words, in its own language\n  \
back-translation  a language model translates each text to the other language (zh->en, en->zh) and back\n\n\
Model outputs are cleaned and checked: a copy that is empty, unchanged, a duplicate, in the wrong language,\n\
of an implausible length or cut off is rejected, counted, and tried again with a fresh seed (--attempts).\n\
Each original row is written followed by its variants ({\"augmented\": METHOD, \"source_line\": N}); labels are kept.\n\
An interrupted run resumes from OUTPUT.partial when started again with the same settings.\n\n\
Examples:\n  \
zhiku augment train.jsonl --method eda --copies 2 --output train-eda.jsonl\n  \
zhiku augment train.jsonl --method back-translation --model qwen2.5-0.5b-instruct-q4_k_m.gguf --output train-bt.jsonl\n  \
zhiku train --model m3e-small --train train-bt.jsonl --output runs/bt")]
pub struct AugmentArgs {
    /// The training file (CSV, TSV or JSONL with a text column and, usually, labels).
    input: PathBuf,
    /// Where to write the augmented data (JSONL).
    #[arg(long, short)]
    output: PathBuf,
    /// eda, paraphrase or back-translation.
    #[arg(long, default_value = "eda")]
    method: String,
    /// Variants per text.
    #[arg(long, default_value_t = 2)]
    copies: usize,
    /// Paraphrase and back-translation: a GGUF file or Hugging Face folder of a chat model
    /// (with --adapter: its base, by default the one the adapter records).
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Paraphrase and back-translation: a LoRA adapter folder to rewrite with.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The texts' language: zh, en, or auto (per text: Chinese when it holds a CJK character).
    #[arg(long, default_value = "auto")]
    language: String,
    /// Sampling temperature of the first step (copies differ by their seeds).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Tries per wanted copy before it is given up.
    #[arg(long, default_value_t = 2)]
    attempts: usize,
    /// Texts longer than this many tokens are rewritten in pieces of whole sentences.
    #[arg(long, default_value_t = 192)]
    piece_tokens: usize,
    /// Requests given to the generator together.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// EDA: operations to choose from.
    #[arg(long, default_value = "synonym,insert,swap,delete")]
    ops: String,
    /// EDA: share of words each operation touches.
    #[arg(long, default_value_t = 0.1)]
    rate: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write only the variants, not the original rows.
    #[arg(long)]
    only_variants: bool,
    /// Replace OUTPUT if it exists (and discard a partial run with other settings).
    #[arg(long)]
    overwrite: bool,
    /// Print a JSON summary (rows, variants, rejections by reason, tokens, seconds).
    #[arg(long)]
    json: bool,
    /// Products in f32 over the dequantised weights (as transformers computes).
    #[arg(long)]
    exact: bool,
    #[command(flatten)]
    columns: TextColumnArgs,
    #[command(flatten)]
    labels: LabelColumnArgs,
}

/// The variants of one source row, as the partial file records them.
#[derive(Debug, Clone, Default)]
struct RowVariants {
    texts: Vec<String>,
    pairs: Vec<String>,
    rejected: Rejections,
    tokens: usize,
}

/// Source rows rewritten per call of the generator: the unit of progress saved to the partial
/// file, so a kill loses at most one block.
const BLOCK: usize = 64;

pub fn run(a: AugmentArgs) -> Result<i32> {
    if a.output.exists() && !a.overwrite {
        bail!("{} exists; pass --overwrite to replace it", a.output.display())
    }
    if a.copies == 0 {
        bail!("--copies must be at least 1")
    }
    let data = zhiku_data::read_file(&a.input, &a.columns.columns(Some(&a.labels)), a.columns.format()?, false)?;
    if data.is_empty() {
        bail!("{} holds no rows", a.input.display())
    }
    let started = std::time::Instant::now();
    let language = match a.language.as_str() {
        "auto" => None,
        l => Some(Language::parse(l).with_context(|| format!("unknown --language {l:?}: expected zh, en or auto"))?),
    };
    let bar = if std::io::stderr().is_terminal() && !a.json { ProgressBar::new(data.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} rows [{elapsed_precise}<{eta_precise}]").expect("valid template"));
    bar.set_message(a.method.clone());
    let variants: Vec<RowVariants> = match a.method.as_str() {
        "eda" => {
            if a.model.is_some() || a.adapter.is_some() {
                bail!("--method eda uses no model; --model and --adapter are for paraphrase and back-translation")
            }
            eda(&a, &data.examples)?
        }
        m => {
            let method = Method::parse(m).with_context(|| format!("unknown --method {m:?}: expected eda, paraphrase or back-translation"))?;
            generated(&a, method, language, &data.examples, &bar)?
        }
    };
    bar.finish_and_clear();

    // Each original row, then its variants (a copy needs a text variant, and a pair variant
    // where the row has a pair).
    let multi_label = a.labels.label_separator.is_some();
    let mut out = String::new();
    let mut written = 0usize;
    let mut total = Rejections::default();
    let mut tokens = 0usize;
    for (e, v) in data.examples.iter().zip(&variants) {
        total.add(&v.rejected);
        tokens += v.tokens;
        if !a.only_variants {
            out.push_str(&row(e, &e.text, e.pair.as_deref(), multi_label, None));
        }
        let copies = if e.pair.is_some() { v.texts.len().min(v.pairs.len()) } else { v.texts.len() };
        for k in 0..copies {
            out.push_str(&row(e, &v.texts[k], e.pair.as_ref().map(|_| v.pairs[k].as_str()), multi_label, Some(&a.method)));
            written += 1;
        }
    }
    zhiku_models::classifier::write_atomic(&a.output, out.as_bytes())?;
    let _ = std::fs::remove_file(partial_path(&a.output));
    let wanted = data.len() * a.copies;
    let summary = json!({
        "method": a.method,
        "rows": data.len(),
        "variants": written,
        "wanted": wanted,
        "rejected": total,
        "rejected_total": total.total(),
        "generated_tokens": tokens,
        "seconds": started.elapsed().as_secs_f64(),
        "output": a.output,
    });
    if a.json {
        println!("{summary}");
    } else {
        eprintln!(
            "wrote {} rows ({} originals, {written} variants of {wanted} wanted) to {}{}",
            written + if a.only_variants { 0 } else { data.len() },
            if a.only_variants { 0 } else { data.len() },
            a.output.display(),
            if total.total() > 0 { format!("; rejected {} model outputs: {}", total.total(), serde_json::to_string(&total)?) } else { String::new() }
        );
    }
    Ok(0)
}

fn row(e: &Example, text: &str, pair: Option<&str>, multi_label: bool, method: Option<&str>) -> String {
    let mut o = Map::new();
    o.insert("text".into(), json!(text));
    if let Some(p) = pair {
        o.insert("text_pair".into(), json!(p));
    }
    if multi_label {
        o.insert("label".into(), json!(e.labels));
    } else if let Some(l) = e.labels.first() {
        o.insert("label".into(), json!(l));
    }
    if let Some(m) = method {
        o.insert("augmented".into(), json!(m));
    }
    o.insert("source_line".into(), json!(e.line));
    format!("{}\n", Value::Object(o))
}

/// EDA copies exactly as `zhiku train --augment N --seed S` makes them.
fn eda(a: &AugmentArgs, examples: &[Example]) -> Result<Vec<RowVariants>> {
    let config = AugmentConfig::from_flags(a.copies, &a.ops, a.rate, a.seed).map_err(|e| anyhow::anyhow!("--ops / --rate: {e}"))?;
    let copies = augment_examples(examples, &config);
    // The copies come in the examples' order, each carrying its source's line; a copy
    // identical to its source (nothing to replace) was dropped.
    let mut out: Vec<RowVariants> = vec![RowVariants::default(); examples.len()];
    let mut copies = copies.into_iter().peekable();
    for (e, v) in examples.iter().zip(&mut out) {
        while let Some(c) = copies.next_if(|c| c.line == e.line) {
            v.texts.push(c.text);
            v.pairs.extend(c.pair);
        }
        v.rejected.unchanged = a.copies - v.texts.len();
    }
    Ok(out)
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

/// Paraphrase or back-translation by the model, `BLOCK` rows at a time; each finished block is
/// appended to OUTPUT.partial (its first line the settings), which a rerun with the same
/// settings continues from.
fn generated(a: &AugmentArgs, method: Method, language: Option<Language>, examples: &[Example], bar: &ProgressBar) -> Result<Vec<RowVariants>> {
    if a.model.is_none() && a.adapter.is_none() {
        bail!("--method {} needs --model FILE (a GGUF file or folder of a chat model) or an --adapter", method.name())
    }
    if a.attempts == 0 || a.batch_size == 0 {
        bail!("--attempts and --batch-size must be at least 1")
    }
    let params = zhiku_infer::sampling::SamplingParams { temperature: a.temperature, top_p: a.top_p, ..Default::default() };
    params.validate()?;
    let settings = json!({
        "input": a.input, "method": method.name(), "copies": a.copies, "model": a.model, "adapter": a.adapter,
        "language": a.language, "temperature": a.temperature, "top_p": a.top_p, "attempts": a.attempts,
        "piece_tokens": a.piece_tokens, "seed": a.seed, "exact": a.exact, "rows": examples.len(),
    });
    let partial = partial_path(&a.output);
    let mut done: Vec<RowVariants> = Vec::new();
    if partial.exists() {
        match read_partial(&partial, &settings)? {
            Some(rows) => {
                if !rows.is_empty() {
                    eprintln!("resuming from {}: {} of {} rows already rewritten", partial.display(), rows.len(), examples.len());
                }
                done = rows;
            }
            None if a.overwrite => std::fs::remove_file(&partial)?,
            None => bail!("{} is a partial run with other settings; rerun with the same ones to resume, or pass --overwrite to start again", partial.display()),
        }
    }
    if done.len() > examples.len() {
        bail!("{} holds more rows than {}", partial.display(), a.input.display())
    }
    if done.is_empty() {
        std::fs::write(&partial, format!("{}\n", json!({ "settings": settings })))?;
    }
    bar.set_position(done.len() as u64);
    if done.len() == examples.len() {
        return Ok(done);
    }
    let adapters: Vec<(String, PathBuf)> = a.adapter.iter().map(|d| ("adapter".to_string(), d.clone())).collect();
    let mut lm = zhiku_infer::LanguageModel::open_with_adapters(a.model.as_deref(), &adapters, true)?;
    lm.model.set_exact(a.exact);
    let opts = RewriteOptions {
        method,
        copies: a.copies,
        language,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        attempts: a.attempts,
        piece_tokens: a.piece_tokens,
        adapter: a.adapter.as_ref().map(|_| "adapter"),
        batch: a.batch_size,
    };
    let mut file = std::fs::OpenOptions::new().append(true).open(&partial)?;
    let start = done.len();
    for (b, block) in examples[start..].chunks(BLOCK).enumerate() {
        let first = start + b * BLOCK;
        let rewrite = |texts: Vec<&str>| -> Result<Vec<zhiku_rewrite::Rewrite>> {
            zhiku_rewrite::rewrite_many(&lm, &texts, &opts, &mut |_, _| {}).with_context(|| format!("rows {}-{} of {}", block[0].line, block[block.len() - 1].line, a.input.display()))
        };
        let texts = rewrite(block.iter().map(|e| e.text.as_str()).collect())?;
        let pairs = if block[0].pair.is_some() { Some(rewrite(block.iter().map(|e| e.pair.as_deref().unwrap_or("")).collect())?) } else { None };
        let mut lines = String::new();
        for (i, t) in texts.into_iter().enumerate() {
            let mut v = RowVariants { texts: t.variants.into_iter().map(|x| x.text).collect(), rejected: t.rejected, tokens: t.generated_tokens, pairs: Vec::new() };
            if let Some(p) = &pairs {
                v.pairs = p[i].variants.iter().map(|x| x.text.clone()).collect();
                v.rejected.add(&p[i].rejected);
                v.tokens += p[i].generated_tokens;
            }
            lines.push_str(&format!("{}\n", json!({"row": first + i, "texts": v.texts, "pairs": v.pairs, "rejected": v.rejected, "tokens": v.tokens})));
            done.push(v);
        }
        // One write per block: a kill leaves whole lines, or a last partial line that
        // read_partial drops.
        file.write_all(lines.as_bytes())?;
        file.sync_data()?;
        bar.set_position(done.len() as u64);
    }
    Ok(done)
}

/// The rows a partial run finished, or None when it ran with other settings. A last line cut
/// by a kill is cut off the file, so that appending continues after whole lines.
fn read_partial(path: &Path, settings: &Value) -> Result<Option<Vec<RowVariants>>> {
    let content = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut offset = 0usize;
    let mut rows = Vec::new();
    for (i, line) in content.split_inclusive('\n').enumerate() {
        let whole = line.ends_with('\n');
        let parsed: Option<Value> = if whole { serde_json::from_str(line).ok() } else { None };
        if i == 0 {
            if parsed.as_ref().and_then(|h| h.get("settings")) != Some(settings) {
                return Ok(None);
            }
        } else {
            let Some(v) = parsed else { break };
            if v["row"].as_u64() != Some(rows.len() as u64) {
                bail!("{}: line {}: row {} out of order; remove the file to start again", path.display(), i + 1, v["row"])
            }
            let strings = |k: &str| -> Vec<String> { v[k].as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default() };
            let rejected: Rejections = serde_json::from_value(v["rejected"].clone()).unwrap_or_default();
            rows.push(RowVariants { texts: strings("texts"), pairs: strings("pairs"), rejected, tokens: v["tokens"].as_u64().unwrap_or(0) as usize });
        }
        offset += line.len();
    }
    if offset == 0 {
        return Ok(None);
    }
    if offset < content.len() {
        std::fs::OpenOptions::new().write(true).open(path)?.set_len(offset as u64)?;
    }
    Ok(Some(rows))
}
