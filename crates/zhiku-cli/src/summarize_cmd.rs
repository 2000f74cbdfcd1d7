//! `zhiku summarize`: lead, extractive and abstractive summaries of documents.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use serde_json::{json, Value};
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use zhiku_library::document::{self, Document};
use zhiku_summarize::abstractive::{self, AbstractiveOptions};

#[derive(Args, Debug)]
#[command(after_help = "Inputs: files as `zhiku library add` reads them (.txt, .md, .html, .pdf; .jsonl and .csv give one document\n\
per row, from its \"text\" field, and keep the row's other fields, e.g. \"reference\"), --text, or standard input.\n\n\
Methods:\n  \
lead         the first --sentences sentences\n  \
extractive   the --sentences most central sentences, in their order: --scorer textrank (shared words, jieba for\n               \
Chinese) or centrality (cosine of sentence embeddings from --encoder)\n  \
abstractive  a language model (--model and/or --adapter) writes it; texts longer than its context are cut into\n               \
pieces, each summarised, and the summaries summarised again (map-reduce)\n\n\
Examples:\n  \
zhiku summarize report.pdf --sentences 3\n  \
zhiku summarize --method abstractive --model qwen.gguf lecture-notes.md\n  \
zhiku summarize --method abstractive --adapter runs/headlines --instruction \"Write a headline for this news article.\" articles.jsonl --output headlines.jsonl\n  \
zhiku eval --task generation --predictions headlines.jsonl")]
pub struct SummarizeArgs {
    /// Files to summarise (one summary per document): text, Markdown, HTML, PDF, JSONL, CSV;
    /// audio with --speech-model, images and scanned PDFs with --ocr-model.
    files: Vec<PathBuf>,
    /// A Whisper model folder: audio files are transcribed, then summarised.
    #[arg(long, value_name = "DIR")]
    speech_model: Option<PathBuf>,
    /// A PP-OCR model folder: images, and PDF pages without a text layer, are read by OCR, then summarised.
    #[arg(long, value_name = "DIR")]
    ocr_model: Option<PathBuf>,
    /// Summarise this text (instead of files or standard input).
    #[arg(long, conflicts_with = "files")]
    text: Option<String>,
    /// lead, extractive or abstractive.
    #[arg(long, default_value = "extractive")]
    method: String,
    /// Lead and extractive: sentences in the summary.
    #[arg(long, default_value_t = 3)]
    sentences: usize,
    /// Extractive: textrank or centrality.
    #[arg(long, default_value = "textrank")]
    scorer: String,
    /// Extractive with --scorer centrality: a sentence encoder folder (sentence-transformers or
    /// Hugging Face).
    #[arg(long)]
    encoder: Option<PathBuf>,
    /// Abstractive: a GGUF file or Hugging Face folder (with --adapter: its base, by default
    /// the one the adapter records).
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Abstractive: a LoRA adapter folder (from `zhiku train --task sft`).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Abstractive: the instruction before the text [default: "Summarize the following text in
    /// a few sentences." or its Chinese for Chinese text]. An adapter wants the prompt it was
    /// trained with.
    #[arg(long)]
    instruction: Option<String>,
    /// Abstractive: a system message.
    #[arg(long)]
    system: Option<String>,
    /// Abstractive: most tokens per summary.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Abstractive: most tokens of text per request [default: what the context leaves, at most
    /// 3072]; longer texts are summarised by map-reduce.
    #[arg(long)]
    chunk_tokens: Option<usize>,
    /// Abstractive: requests generated together.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Abstractive: products in f32 over the dequantised weights (as transformers computes).
    #[arg(long)]
    exact: bool,
    /// Write one JSON line per document here ({"id", "source", "prediction", "reference"?, ...};
    /// `zhiku eval --task generation --predictions` scores it).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print one JSON line per document.
    #[arg(long)]
    json: bool,
}

pub fn run(a: SummarizeArgs) -> Result<i32> {
    let docs = inputs(&a)?;
    let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    let bar = if std::io::stderr().is_terminal() && !a.json && docs.len() > 1 { ProgressBar::new(docs.len() as u64) } else { ProgressBar::hidden() };
    let results: Vec<Value> = match a.method.as_str() {
        "lead" => texts.iter().map(|t| extract_json(&zhiku_summarize::lead(t, a.sentences))).collect(),
        "extractive" => {
            let encoder = match a.scorer.as_str() {
                "textrank" => None,
                "centrality" => {
                    let Some(dir) = &a.encoder else { bail!("--scorer centrality needs --encoder DIR (a sentence encoder folder)") };
                    Some(zhiku_models::TextModel::open(dir, &zhiku_models::default_device())?)
                }
                other => bail!("unknown --scorer {other:?}: expected textrank or centrality"),
            };
            let mut out = Vec::with_capacity(texts.len());
            for t in &texts {
                let sentences = zhiku_summarize::split_sentences(t);
                let graph = match &encoder {
                    None => zhiku_summarize::textrank_graph(&sentences)?,
                    Some(m) => zhiku_summarize::embedding_graph(&m.embed_texts(&sentences.iter().map(|s| s.text.as_str()).collect::<Vec<_>>(), 32)?),
                };
                out.push(extract_json(&zhiku_summarize::extract(&sentences, &zhiku_summarize::pagerank(&graph), a.sentences)));
                bar.inc(1);
            }
            out
        }
        "abstractive" => {
            if a.model.is_none() && a.adapter.is_none() {
                bail!("--method abstractive needs --model FILE (a GGUF file or folder) or an --adapter")
            }
            if a.max_tokens == 0 {
                bail!("--max-tokens must be at least 1")
            }
            let adapters: Vec<(String, PathBuf)> = a.adapter.iter().map(|d| ("adapter".to_string(), d.clone())).collect();
            let mut lm = zhiku_infer::LanguageModel::open_with_adapters(a.model.as_deref(), &adapters, true)?;
            lm.model.set_exact(a.exact);
            let opts = AbstractiveOptions {
                instruction: a.instruction.as_deref(),
                system: a.system.as_deref(),
                max_tokens: a.max_tokens,
                chunk_tokens: a.chunk_tokens,
                adapter: a.adapter.as_ref().map(|_| "adapter"),
                ..Default::default()
            };
            let done = abstractive::summarize_many(&lm, &texts, &opts, a.batch_size, &mut |d, _| bar.set_position(d as u64))?;
            done.into_iter().map(|s| json!({"prediction": s.summary, "chunks": s.chunks, "rounds": s.rounds, "generated_tokens": s.generated_tokens})).collect()
        }
        other => bail!("unknown --method {other:?}: expected lead, extractive or abstractive"),
    };
    bar.finish_and_clear();
    let rows: Vec<Value> = docs
        .iter()
        .zip(results)
        .map(|(d, mut r)| {
            r["id"] = json!(d.id);
            r["source"] = json!(d.source);
            r["method"] = json!(a.method);
            if let Some(reference) = d.metadata.get("reference") {
                r["reference"] = reference.clone();
            }
            r
        })
        .collect();
    if let Some(path) = &a.output {
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        zhiku_models::classifier::write_atomic(path, text.as_bytes())?;
    }
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    if a.json {
        for r in &rows {
            writeln!(w, "{r}")?;
        }
    } else if a.output.is_none() || rows.len() == 1 {
        for (d, r) in docs.iter().zip(&rows) {
            if rows.len() > 1 {
                writeln!(w, "== {} ({})", d.title, d.source)?;
            }
            writeln!(w, "{}", r["prediction"].as_str().unwrap_or_default())?;
        }
    } else {
        eprintln!("wrote {} summaries to {}", rows.len(), a.output.as_ref().expect("checked").display());
    }
    Ok(0)
}

fn extract_json(e: &zhiku_summarize::Extract) -> Value {
    json!({
        "prediction": e.summary,
        "sentences": e.sentences.iter().map(|(s, score)| json!({"index": s.index, "start": s.start, "end": s.end, "score": score})).collect::<Vec<_>>(),
        "total_sentences": e.total,
    })
}

/// The documents to summarise: files, --text, or standard input.
fn inputs(a: &SummarizeArgs) -> Result<Vec<Document>> {
    let one = |text: String, source: &str| -> Result<Vec<Document>> {
        if text.trim().is_empty() {
            bail!("the text to summarise is empty")
        }
        Ok(vec![Document { id: source.into(), title: source.into(), text, source: source.into(), date: None, tags: Vec::new(), metadata: Default::default() }])
    };
    if let Some(t) = &a.text {
        return one(t.clone(), "text");
    }
    if a.files.is_empty() {
        if std::io::stdin().is_terminal() {
            eprintln!("reading the text from standard input (end with Ctrl-D)");
        }
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read standard input")?;
        return one(s, "stdin");
    }
    let media = zhiku_library::media::MediaReaders::load(a.speech_model.as_deref(), a.ocr_model.as_deref(), None)?;
    let mut docs = Vec::new();
    for f in &a.files {
        docs.extend(document::read_file_with(f, &media)?);
    }
    if docs.is_empty() {
        bail!("no documents to summarise")
    }
    Ok(docs)
}
