//! `zhiku library`: add documents to a content library, list, show and remove them, search it.

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use zhiku_library::chunk::ChunkOptions;
use zhiku_library::document::{collect_files, kind, read_file_with, Kind};
use zhiku_library::media::MediaReaders;
use zhiku_library::{CreateOptions, Library, Mode, SearchOptions};

#[derive(Args, Debug)]
pub struct LibraryArgs {
    #[command(subcommand)]
    command: LibraryCommand,
}

#[derive(Subcommand, Debug)]
enum LibraryCommand {
    /// Add files or folders (.txt, .md, .html, .pdf, .jsonl, .csv; a JSONL or CSV row per document;
    /// audio with --speech-model, images with --ocr-model) to a library, creating it on first use. Unchanged documents are skipped, changed ones replaced.
    Add(AddArgs),
    /// List the documents.
    List(ListArgs),
    /// Show one document with its chunks.
    Show(ShowArgs),
    /// Remove a document and its chunks.
    Remove(RemoveArgs),
    /// Search the library: BM25, dense (the library's encoder) or hybrid (both, fused).
    Search(SearchArgs),
    /// Answer a question from the library with a generative model (GGUF), citing the passages
    /// it used as [1], [2]; "not found in the library" when they do not hold the answer.
    Ask(AskArgs),
    /// Answer a question from a library of question-answer pairs (rows with "question" and
    /// "answer"): the stored answer of the most similar question, with a confidence, or none
    /// when no match reaches the threshold.
    Faq(FaqArgs),
    /// Measure retrieval on queries with known answers: recall@1/5/10 and MRR. QUERIES is JSONL
    /// with "query" and "relevant" (a document id or a list of them) per line.
    Eval(EvalArgs),
    /// Mask personal data (e-mail, phone, ID-card and bank-card numbers) in text from FILE or
    /// standard input, line by line, as `add --mask-pii` would; the counts go to stderr (or with
    /// --json, one object per line with the masked text and counts).
    MaskPii(MaskArgs),
    /// Check that the document store, the full-text index and the vector index agree (replaying
    /// what an interrupted writer left out first). Exits 1 when they do not.
    Check(ListArgs),
}

#[derive(Args, Debug)]
struct LibraryDir {
    /// The library's folder, or a library in PostgreSQL with pgvector:
    /// postgres://USER[:PASSWORD]@HOST[:PORT]/DB#NAME (NAME: a-z, 0-9, _), which several
    /// servers can share.
    #[arg(long, short = 'l', value_name = "DIR|postgres://...#NAME")]
    library: PathBuf,
}

#[derive(Args, Debug)]
struct AddArgs {
    #[command(flatten)]
    dir: LibraryDir,
    /// Files and folders to add (folders are walked for the file types above).
    #[arg(required = true, value_name = "FILES|DIRS")]
    paths: Vec<PathBuf>,
    /// When the library is created: the encoder folder that embeds chunks for dense and hybrid
    /// search (m3e-small, all-MiniLM-L6-v2, or one fine-tuned by zhiku). Without one, the library
    /// searches by BM25 only.
    #[arg(long, value_name = "MODEL_DIR")]
    encoder: Option<PathBuf>,
    /// When the library is created: most characters per chunk.
    #[arg(long, default_value_t = 400)]
    chunk_size: usize,
    /// When the library is created: characters of sentences repeated between neighbouring chunks.
    #[arg(long, default_value_t = 50)]
    chunk_overlap: usize,
    /// When the library is created: extra words for Chinese segmentation (jieba's format: `word [freq] [tag]` per line).
    #[arg(long, value_name = "FILE")]
    user_dict: Option<PathBuf>,
    /// When the library is created: mask e-mail addresses, phone numbers, ID-card and bank-card
    /// numbers (Chinese and international formats) before anything is stored.
    #[arg(long)]
    mask_pii: bool,
    /// A Whisper model folder (CTranslate2 or Hugging Face, as `zhiku transcribe` takes): audio files (.wav,
    /// .flac, .mp3, .ogg, .opus) are transcribed, and hits in them show the time range said.
    #[arg(long, value_name = "DIR")]
    speech_model: Option<PathBuf>,
    /// The spoken language of the audio (ISO code); detected per recording by default.
    #[arg(long)]
    language: Option<String>,
    /// A PP-OCR model folder (as `zhiku ocr` takes): images (.png, .jpg), and PDF pages without a
    /// text layer (scans), are read by OCR.
    #[arg(long, value_name = "DIR")]
    ocr_model: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    dir: LibraryDir,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ShowArgs {
    #[command(flatten)]
    dir: LibraryDir,
    id: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RemoveArgs {
    #[command(flatten)]
    dir: LibraryDir,
    id: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Bm25,
    Dense,
    Hybrid,
}

#[derive(Args, Debug)]
struct SearchArgs {
    #[command(flatten)]
    dir: LibraryDir,
    query: String,
    /// How to rank: bm25, dense or hybrid (default: hybrid when the library has an encoder, else bm25).
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// How many results.
    #[arg(long, short = 'k', default_value_t = 10)]
    top_k: usize,
    /// Hybrid: the weight of the dense ranking in the fusion, from 0 (BM25 only) to 1 (dense only).
    #[arg(long, default_value_t = 0.5)]
    dense_weight: f64,
    /// Only documents from this source (repeat for any of several).
    #[arg(long, value_name = "SOURCE")]
    source: Vec<String>,
    /// Only documents with this tag (repeat: all of them).
    #[arg(long, value_name = "TAG")]
    tag: Vec<String>,
    /// Only documents dated on or after this day (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    from: Option<String>,
    /// Only documents dated on or before this day (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    to: Option<String>,
    /// A cross-encoder (`zhiku train --task reranker`) that reorders the best --rerank-top
    /// chunks by how well each answers the query; each result then shows its "rerank" score.
    #[arg(long, value_name = "MODEL_DIR")]
    rerank: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    rerank_top: usize,
    /// Print `{"results": [{"id", "title", "chunk", "score", ...}]}`, best first.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct FaqArgs {
    #[command(flatten)]
    dir: LibraryDir,
    question: String,
    /// The confidence an answer must reach (default: cosine 0.8 with an encoder, else 0.5 of the
    /// question's terms found).
    #[arg(long)]
    threshold: Option<f64>,
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct AskArgs {
    #[command(flatten)]
    dir: LibraryDir,
    question: String,
    /// The language model (a GGUF file, e.g. Qwen2.5-0.5B-Instruct).
    #[arg(long, value_name = "FILE.gguf")]
    model: PathBuf,
    /// Passages given to the model.
    #[arg(long, short = 'k', default_value_t = 4)]
    top_k: usize,
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    #[arg(long, default_value_t = 384)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON object (answer, found, citations) instead of streaming.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct MaskArgs {
    file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct EvalArgs {
    #[command(flatten)]
    dir: LibraryDir,
    #[arg(long, value_name = "FILE")]
    queries: PathBuf,
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    #[arg(long)]
    json: bool,
}

fn read_queries(path: &std::path::Path) -> Result<Vec<(String, Vec<String>)>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read ({e})", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{at}: invalid JSON ({e})"))?;
        let Some(q) = v.get("query").and_then(|q| q.as_str()) else { bail!("{at}: no \"query\" string") };
        let relevant: Vec<String> = match v.get("relevant") {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(a)) => a.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect(),
            Some(serde_json::Value::Number(n)) => vec![n.to_string()],
            _ => bail!("{at}: no \"relevant\" document id (a string or a list)"),
        };
        out.push((q.to_string(), relevant));
    }
    if out.is_empty() {
        bail!("{}: no queries", path.display())
    }
    Ok(out)
}

fn mode_of(m: Option<ModeArg>) -> Option<Mode> {
    m.map(|m| match m {
        ModeArg::Bm25 => Mode::Bm25,
        ModeArg::Dense => Mode::Dense,
        ModeArg::Hybrid => Mode::Hybrid,
    })
}

pub fn run(args: LibraryArgs) -> Result<i32> {
    match args.command {
        LibraryCommand::Add(a) => add(a),
        LibraryCommand::List(a) => {
            let lib = Library::open(&a.dir.library)?;
            let docs = lib.list()?;
            if a.json {
                println!("{}", serde_json::json!({ "documents": docs }));
            } else {
                for d in &docs {
                    println!("{}\t{}\t{} chunks\t{}", d.id, d.title, d.chunks, d.source);
                }
                eprintln!("{} documents", docs.len());
            }
            Ok(0)
        }
        LibraryCommand::Show(a) => {
            let lib = Library::open(&a.dir.library)?;
            let Some((doc, chunks)) = lib.document(&a.id)? else { bail!("no document {} in {}", a.id, a.dir.library.display()) };
            if a.json {
                println!("{}", serde_json::json!({ "document": doc, "chunks": chunks }));
            } else {
                println!("{}  {}\nsource: {}", doc.id, doc.title, doc.source);
                if let Some(d) = &doc.date {
                    println!("date: {d}");
                }
                if !doc.tags.is_empty() {
                    println!("tags: {}", doc.tags.join(", "));
                }
                for (k, v) in &doc.metadata {
                    println!("{k}: {v}");
                }
                println!("{} chunks\n\n{}", chunks.len(), doc.text);
            }
            Ok(0)
        }
        LibraryCommand::Remove(a) => {
            let mut lib = Library::open_for_writing(&a.dir.library, &CreateOptions::default())?;
            if !lib.remove(&a.id)? {
                bail!("no document {} in {}", a.id, a.dir.library.display())
            }
            eprintln!("removed {}", a.id);
            Ok(0)
        }
        LibraryCommand::Search(a) => search(a),
        LibraryCommand::Ask(a) => {
            use std::io::Write;
            if a.top_k == 0 || a.max_tokens == 0 || !(0.0..=2.0).contains(&a.temperature) {
                bail!("--top-k and --max-tokens must be at least 1, --temperature from 0 to 2")
            }
            let lib = Library::open(&a.dir.library)?;
            let lm = zhiku_infer::LanguageModel::open(&a.model)?;
            let options = zhiku_library::ask::AskOptions { top_k: a.top_k, mode: mode_of(a.mode), max_tokens: a.max_tokens, temperature: a.temperature, seed: a.seed };
            let stream = !a.json;
            let answer = zhiku_library::ask::ask(&lib, &lm, &a.question, &options, |t| {
                if stream {
                    print!("{t}");
                    let _ = std::io::stdout().flush();
                }
            })?;
            if a.json {
                println!("{}", serde_json::to_string(&answer)?);
            } else {
                println!();
                // The passages the answer cites; if it cites none, every passage it was given.
                let any_cited = answer.citations.iter().any(|c| c.cited);
                for c in answer.citations.iter().filter(|c| c.cited || !any_cited) {
                    let page = c.page.map(|p| format!("page {p}, ")).unwrap_or_default();
                    let time = c.time.as_ref().map(|t| format!("{}, ", t.label)).unwrap_or_default();
                    println!("[{}] {} ({}, {page}{time}characters {}-{})", c.n, c.title, c.id, c.start, c.end);
                }
            }
            Ok(0)
        }
        LibraryCommand::MaskPii(a) => {
            use std::io::BufRead;
            let reader: Box<dyn BufRead> = match &a.file {
                Some(p) => Box::new(std::io::BufReader::new(std::fs::File::open(p).map_err(|e| anyhow::anyhow!("{}: cannot read ({e})", p.display()))?)),
                None => Box::new(std::io::BufReader::new(std::io::stdin())),
            };
            let mut total = zhiku_library::pii::PiiCounts::default();
            for (i, line) in reader.lines().enumerate() {
                let line = line.map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1))?;
                let (masked, c) = zhiku_library::pii::mask(&line);
                total.add(&c);
                if a.json {
                    println!("{}", serde_json::json!({ "text": masked, "masked": c }));
                } else {
                    println!("{masked}");
                }
            }
            eprintln!("masked: {} e-mail addresses, {} phone numbers, {} ID numbers, {} card numbers", total.email, total.phone, total.id_card, total.bank_card);
            Ok(0)
        }
        LibraryCommand::Eval(a) => {
            let queries = read_queries(&a.queries)?;
            let lib = Library::open(&a.dir.library)?;
            let bar = if std::io::stderr().is_terminal() { ProgressBar::new(queries.len() as u64) } else { ProgressBar::hidden() };
            bar.set_style(ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} queries [{elapsed_precise}<{eta_precise}]").unwrap());
            let m = lib.evaluate(&queries, mode_of(a.mode), |i| bar.set_position(i as u64))?;
            bar.finish_and_clear();
            if a.json {
                println!("{}", serde_json::to_string(&m)?);
            } else {
                println!("{} queries, {:?}: recall@1 {:.4}, recall@5 {:.4}, recall@10 {:.4}, MRR {:.4} ({:.1} s)", m.queries, m.mode, m.recall_1, m.recall_5, m.recall_10, m.mrr, m.seconds);
            }
            Ok(0)
        }
        LibraryCommand::Faq(a) => {
            if a.threshold.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
                bail!("--threshold must be between 0 and 1")
            }
            let lib = Library::open(&a.dir.library)?;
            let r = lib.faq(&a.question, a.threshold, mode_of(a.mode))?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else if r.found {
                println!("{}", r.answer.as_deref().unwrap_or_default());
                eprintln!("(matched \"{}\", confidence {:.3})", r.matched_question.as_deref().unwrap_or_default(), r.confidence);
            } else {
                println!("no stored answer matches this question well enough");
                if let Some(q) = &r.matched_question {
                    eprintln!("(closest: \"{q}\", confidence {:.3} below the threshold {:.3})", r.confidence, r.threshold);
                }
            }
            Ok(0)
        }
        LibraryCommand::Check(a) => {
            let lib = Library::open(&a.dir.library)?;
            let c = lib.check()?;
            if a.json {
                println!("{}", serde_json::json!({ "consistent": c.consistent(), "check": c }));
            } else {
                let vectors = c.vectors.map_or("no vector index".to_string(), |v| format!("{v} vectors"));
                println!("{} documents, {} chunks; {} in the full-text index, {vectors}; {} changes pending, {} mismatched: {}", c.documents, c.chunks, c.fulltext, c.pending, c.mismatched, if c.consistent() { "consistent" } else { "NOT consistent" });
            }
            Ok(if c.consistent() { 0 } else { 1 })
        }
    }
}

fn add(a: AddArgs) -> Result<i32> {
    let create = CreateOptions { encoder: a.encoder.clone(), chunk: ChunkOptions { size: a.chunk_size, overlap: a.chunk_overlap }, user_dict: a.user_dict.clone(), mask_pii: a.mask_pii };
    if a.chunk_size == 0 {
        bail!("--chunk-size must be at least 1")
    }
    let files = collect_files(&a.paths)?;
    if files.is_empty() {
        bail!("no .txt, .md, .html, .pdf, .jsonl, .csv, audio or image files under the paths given")
    }
    // The media models load only when there are files for them.
    let has = |k: Kind| files.iter().any(|f| kind(f) == Some(k));
    let media = MediaReaders::load(
        a.speech_model.as_deref().filter(|_| has(Kind::Audio)),
        a.ocr_model.as_deref().filter(|_| has(Kind::Image) || has(Kind::Pdf)),
        a.language.clone(),
    )?;
    let mut lib = Library::open_for_writing(&a.dir.library, &create)?;
    if a.encoder.is_some() && lib.config.encoder.as_deref() != a.encoder.as_deref().and_then(|p| std::fs::canonicalize(p).ok()).as_deref() {
        eprintln!("note: the library already exists; its encoder stays {}", lib.config.encoder.as_ref().map_or("none".to_string(), |p| p.display().to_string()));
    }
    // Files are read and added one at a time: a bad file is reported and the rest still go in.
    let mut errors = Vec::new();
    let mut total = zhiku_library::AddReport::default();
    let bar = if std::io::stderr().is_terminal() && !a.json { ProgressBar::new(files.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} files [{elapsed_precise}<{eta_precise}] {msg}").unwrap());
    for f in &files {
        match read_file_with(f, &media).and_then(|docs| lib.add(&docs, |_| {})) {
            Ok(r) => {
                total.added += r.added;
                total.replaced += r.replaced;
                total.unchanged += r.unchanged;
                total.chunks += r.chunks;
                total.masked.add(&r.masked);
            }
            Err(e) => {
                bar.suspend(|| eprintln!("error: {e:#}"));
                errors.push(format!("{e:#}"));
            }
        }
        bar.inc(1);
        bar.set_message(format!("{} added, {} chunks", total.added + total.replaced, total.chunks));
    }
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::json!({ "added": total.added, "replaced": total.replaced, "unchanged": total.unchanged, "chunks": total.chunks, "masked": total.masked, "errors": errors }));
    } else {
        eprintln!("{} added, {} replaced, {} unchanged ({} chunks); {} files with errors", total.added, total.replaced, total.unchanged, total.chunks, errors.len());
        if lib.config.mask_pii {
            let m = total.masked;
            eprintln!("masked: {} e-mail addresses, {} phone numbers, {} ID numbers, {} card numbers", m.email, m.phone, m.id_card, m.bank_card);
        }
    }
    Ok(if errors.is_empty() { 0 } else { 1 })
}

fn search(a: SearchArgs) -> Result<i32> {
    let lib = Library::open(&a.dir.library)?;
    let mode = mode_of(a.mode);
    if a.top_k == 0 {
        bail!("--top-k must be at least 1")
    }
    let filter = zhiku_library::store::Filter { sources: a.source.clone(), tags: a.tag.clone(), date_from: a.from.clone(), date_to: a.to.clone() };
    let reranker = a.rerank.as_deref().map(|d| zhiku_library::rerank::CrossEncoder::open(d, &zhiku_models::default_device())).transpose()?;
    let first_stage = if reranker.is_some() { a.top_k.max(a.rerank_top) } else { a.top_k };
    let mut results = lib.search(&a.query, &SearchOptions { mode, top_k: first_stage, dense_weight: a.dense_weight, filter })?;
    if let Some(r) = &reranker {
        zhiku_library::rerank::rerank(&mut results, &a.query, r, a.rerank_top)?;
        results.truncate(a.top_k);
    }
    if a.json {
        println!("{}", serde_json::json!({ "mode": mode.unwrap_or_else(|| lib.default_mode()), "results": results }));
        return Ok(0);
    }
    if results.is_empty() {
        eprintln!("no results");
    }
    for (i, r) in results.iter().enumerate() {
        let why = [r.bm25.map(|b| format!("bm25 #{} {:.2}", b.rank, b.score)), r.dense.map(|d| format!("dense #{} {:.3}", d.rank, d.score)), r.rerank.map(|s| format!("rerank {s:.3}"))].into_iter().flatten().collect::<Vec<_>>().join(", ");
        let page = r.page.map(|p| format!(" page {p}")).unwrap_or_default();
        let page = page + &r.time.as_ref().map(|t| format!(" {}", t.label)).unwrap_or_default();
        println!("{}. {} [{}]{page} score {:.4} ({why})", i + 1, r.title, r.id, r.score);
        println!("   {}", r.highlighted.replace('\n', " "));
    }
    Ok(0)
}
