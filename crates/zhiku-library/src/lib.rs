//! The content library: documents cut into chunks, searched by BM25 (Chinese segmented with
//! jieba), by embeddings from any encoder zhiku loads, or by both fused with reciprocal rank
//! fusion. A library is a folder (see [`store::embedded`] for what lies in it and why it stays
//! consistent after a crash) or tables in PostgreSQL with pgvector (`postgres://...#NAME`, see
//! [`store::postgres`]), which several servers can share.

pub mod analyzer;
pub mod ask;
pub mod chunk;
pub mod document;
pub mod hnsw;
pub mod media;
pub mod pdf;
pub mod pii;
pub mod rerank;
pub mod store;
pub mod testing;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use chunk::ChunkOptions;
use document::Document;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use store::embedded::EmbeddedStore;
use store::postgres::PgLocation;
use store::{DocumentSummary, Store, StoredChunk};
use tantivy::tokenizer::TextAnalyzer;
use zhiku_models::TextModel;

/// The version of the folder layout this build writes and reads.
pub const FORMAT: u32 = 1;
/// Longest query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 4000;

/// `library.json`: how the library was created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LibraryConfig {
    pub format: u32,
    /// The encoder folder that embeds chunks and queries (none: full-text search only).
    pub encoder: Option<PathBuf>,
    pub dimensions: Option<usize>,
    pub chunk_size: usize,
    pub chunk_overlap: usize,
    /// Whether `user_dict.txt` in the folder extends jieba's dictionary.
    pub user_dict: bool,
    /// Whether personal data (e-mail, phone, ID and card numbers) is masked before storing.
    #[serde(default)]
    pub mask_pii: bool,
}

/// Choices made when a library is first created (ignored afterwards).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub encoder: Option<PathBuf>,
    pub chunk: ChunkOptions,
    pub user_dict: Option<PathBuf>,
    pub mask_pii: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Bm25,
    Dense,
    Hybrid,
}

#[derive(Debug, Clone)]
pub struct SearchOptions {
    pub mode: Option<Mode>,
    pub top_k: usize,
    /// Hybrid: the dense ranking's weight in the fusion (BM25 gets 1 - weight).
    pub dense_weight: f64,
    pub filter: store::Filter,
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self { mode: None, top_k: 10, dense_weight: 0.5, filter: store::Filter::default() }
    }
}

/// A retriever's view of a hit: its rank (1 = best) and raw score.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Ranked {
    pub rank: usize,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    /// The document's id.
    pub id: String,
    pub title: String,
    pub source: String,
    pub chunk: String,
    pub chunk_id: i64,
    pub position: usize,
    /// Character span of the chunk in the document.
    pub start: usize,
    pub end: usize,
    /// The page (from 1) the chunk starts on, for PDF documents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<usize>,
    /// Where in the recording the chunk was said, for transcribed audio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<media::TimeSpan>,
    /// BM25 score, cosine similarity, or the fused score (hybrid).
    pub score: f64,
    pub bm25: Option<Ranked>,
    pub dense: Option<Ranked>,
    /// The cross-encoder's relevance, when a reranker reordered the results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerank: Option<f64>,
    /// The chunk with the query's terms in **bold**.
    pub highlighted: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AddReport {
    pub added: usize,
    pub replaced: usize,
    pub unchanged: usize,
    pub chunks: usize,
    /// Personal data masked (libraries created with `mask_pii`).
    pub masked: pii::PiiCounts,
}

pub struct Library {
    dir: PathBuf,
    pub config: LibraryConfig,
    store: Box<dyn Store>,
    analyzer: TextAnalyzer,
    encoder: OnceLock<TextModel>,
    _lock: Option<std::fs::File>,
}

/// Documents stored between two updates of the indexes during an add (each update commits
/// tantivy and rewrites the vector index file).
const SYNC_EVERY: usize = 256;

/// Chunk texts to their unit vectors.
pub type ChunkEmbedder<'a> = dyn FnMut(&[&str]) -> Result<Vec<Vec<f32>>> + 'a;

/// Reciprocal rank fusion's constant: ranks deep in either list still count, a little.
const RRF_K: f64 = 60.0;

impl Library {
    fn read_config(dir: &Path) -> Result<Option<LibraryConfig>> {
        let path = dir.join("library.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let raw: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        if let Some(f) = raw.get("format").and_then(|f| f.as_u64()) {
            if f > FORMAT as u64 {
                bail!("{}: written by a newer zhiku (library format {f}; this one reads up to {FORMAT}); upgrade zhiku", path.display())
            }
        }
        Ok(Some(serde_json::from_value(raw).with_context(|| format!("{}: not a library description", path.display()))?))
    }

    fn analyzer_for(dir: &Path, config: &LibraryConfig) -> Result<TextAnalyzer> {
        let dict = dir.join("user_dict.txt");
        analyzer::analyzer(config.user_dict.then_some(dict.as_path()))
    }

    /// The file whose lock admits one writer at a time.
    fn lock_file(dir: &Path) -> Result<std::fs::File> {
        Ok(std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?)
    }

    /// The store, with its indexes brought up to date (replaying what an interrupted writer
    /// left out) when this process may write.
    fn open_store(dir: &Path, config: &LibraryConfig, analyzer: &TextAnalyzer, writable: bool) -> Result<Box<dyn Store>> {
        let mut store = EmbeddedStore::open(dir, config.dimensions, analyzer.clone(), writable)?;
        if writable {
            store.persist()?;
        }
        Ok(Box::new(store))
    }

    /// Opens an existing library to read it: a folder, or `postgres://...#NAME`.
    pub fn open(dir: &Path) -> Result<Self> {
        if let Some(location) = dir.to_str().and_then(PgLocation::parse) {
            return Self::open_postgres(&location?, None);
        }
        let Some(config) = Self::read_config(dir)? else { bail!("{}: not a library (no library.json); create one with `zhiku library add`", dir.display()) };
        let analyzer = Self::analyzer_for(dir, &config)?;
        // Take the writer's lock if free, to replay what an interrupted writer left out.
        let lock = Self::lock_file(dir)?;
        let writable = lock.try_lock().is_ok();
        let store = Self::open_store(dir, &config, &analyzer, writable)?;
        Ok(Self { dir: dir.to_path_buf(), config, store, analyzer, encoder: OnceLock::new(), _lock: writable.then_some(lock) })
    }

    /// A new library's description, loading its encoder (kept for its first use).
    fn new_config(create: &CreateOptions, encoder: &OnceLock<TextModel>) -> Result<LibraryConfig> {
        let (enc_path, dims) = match &create.encoder {
            Some(p) => {
                let m = TextModel::open(p, &Device::Cpu).with_context(|| format!("{}: cannot load the encoder", p.display()))?;
                let dims = m.dimensions();
                let _ = encoder.set(m);
                (Some(std::fs::canonicalize(p)?), Some(dims))
            }
            None => (None, None),
        };
        Ok(LibraryConfig { format: FORMAT, encoder: enc_path, dimensions: dims, chunk_size: create.chunk.size, chunk_overlap: create.chunk.overlap, user_dict: create.user_dict.is_some(), mask_pii: create.mask_pii })
    }

    /// A library in PostgreSQL: its description in `zhiku_libraries`, created from `create`
    /// when given and absent. Writers need no lock of ours: every write is one transaction.
    fn open_postgres(location: &PgLocation, create: Option<&CreateOptions>) -> Result<Self> {
        let mut client = store::postgres::connect(location)?;
        let encoder = OnceLock::new();
        let shown = format!("{}#{}", location.url, location.name);
        let config = match (store::postgres::read_config(&mut client, &location.name)?, create) {
            (Some(text), _) => {
                let config: LibraryConfig = serde_json::from_str(&text).with_context(|| format!("{shown}: not a library description"))?;
                if config.format > FORMAT {
                    bail!("{shown}: written by a newer zhiku (library format {}; this one reads up to {FORMAT}); upgrade zhiku", config.format)
                }
                config
            }
            (None, Some(create)) => {
                if create.user_dict.is_some() {
                    bail!("--user-dict is for libraries in a folder; a PostgreSQL library uses jieba's dictionary")
                }
                let config = Self::new_config(create, &encoder)?;
                store::postgres::write_config(&mut client, &location.name, &serde_json::to_string_pretty(&config)?)?;
                // Another process may have created it at the same moment: use what is stored.
                let text = store::postgres::read_config(&mut client, &location.name)?.expect("just written");
                serde_json::from_str(&text)?
            }
            (None, None) => bail!("{shown}: no such library; create it with `zhiku library add --library {shown} FILES`"),
        };
        let analyzer = analyzer::analyzer(None)?;
        let store = store::postgres::PgStore::open(client, location, config.dimensions, analyzer.clone())?;
        Ok(Self { dir: PathBuf::from(shown), config, store: Box::new(store), analyzer, encoder, _lock: None })
    }

    /// Opens a library to change it, creating it with `create` when the folder has none. Waits
    /// while another process writes to it. `dir` may be `postgres://...#NAME`.
    pub fn open_for_writing(dir: &Path, create: &CreateOptions) -> Result<Self> {
        if let Some(location) = dir.to_str().and_then(PgLocation::parse) {
            return Self::open_postgres(&location?, Some(create));
        }
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let lock = Self::lock_file(dir)?;
        if lock.try_lock().is_err() {
            eprintln!("waiting for another process writing to {} ...", dir.display());
            lock.lock()?;
        }
        let (config, encoder) = match Self::read_config(dir)? {
            Some(c) => (c, OnceLock::new()),
            None => {
                let encoder = OnceLock::new();
                let config = Self::new_config(create, &encoder)?;
                if let Some(d) = &create.user_dict {
                    std::fs::copy(d, dir.join("user_dict.txt")).with_context(|| format!("{}: cannot read the user dictionary", d.display()))?;
                }
                let path = dir.join("library.json");
                let tmp = dir.join("library.json.tmp");
                std::fs::write(&tmp, serde_json::to_string_pretty(&config)?)?;
                std::fs::rename(&tmp, &path)?;
                (config, encoder)
            }
        };
        let analyzer = Self::analyzer_for(dir, &config)?;
        let store = Self::open_store(dir, &config, &analyzer, true)?;
        Ok(Self { dir: dir.to_path_buf(), config, store, analyzer, encoder, _lock: Some(lock) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn encoder(&self) -> Result<Option<&TextModel>> {
        let Some(path) = &self.config.encoder else { return Ok(None) };
        if self.encoder.get().is_none() {
            let m = TextModel::open(path, &Device::Cpu).with_context(|| format!("{}: cannot load the library's encoder", path.display()))?;
            let _ = self.encoder.set(m);
        }
        Ok(self.encoder.get())
    }

    fn embed(&self, texts: &[&str]) -> Result<Option<Vec<Vec<f32>>>> {
        let Some(m) = self.encoder()? else { return Ok(None) };
        Ok(Some(m.embed_texts(texts, 32)?))
    }

    /// Adds documents (a new id is added, a changed one replaces its chunks, an identical one
    /// is skipped), committing each to the store as it goes; the indexes catch up every
    /// `SYNC_EVERY` documents and at the end. `progress` is told how many are done.
    pub fn add(&mut self, docs: &[Document], progress: impl FnMut(usize)) -> Result<AddReport> {
        self.add_embedded_by(docs, None, progress)
    }

    /// [`Self::add`] with the chunks' vectors from `embed` instead of the library's encoder
    /// (vectors computed elsewhere, e.g. on a GPU or by a benchmark; they must come from the
    /// same model for searches to make sense).
    pub fn add_embedded_by(&mut self, docs: &[Document], mut embed: Option<&mut ChunkEmbedder>, mut progress: impl FnMut(usize)) -> Result<AddReport> {
        let mut report = AddReport::default();
        let options = ChunkOptions { size: self.config.chunk_size, overlap: self.config.chunk_overlap };
        let mut since_sync = 0;
        for (i, doc) in docs.iter().enumerate() {
            let masked;
            let doc = if self.config.mask_pii {
                let (d, counts) = mask_document(doc);
                report.masked.add(&counts);
                masked = d;
                &masked
            } else {
                doc
            };
            let hash = doc.content_hash();
            let old = self.store.document_hash(&doc.id)?;
            if old.as_deref() == Some(hash.as_str()) {
                report.unchanged += 1;
                progress(i + 1);
                continue;
            }
            let chunks = chunk::chunk(&doc.text, options);
            if chunks.is_empty() {
                bail!("{} ({}): empty document", doc.id, doc.source)
            }
            let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
            let embeddings = match embed.as_mut() {
                Some(f) if self.config.dimensions.is_some() => Some(f(&texts)?),
                _ => self.embed(&texts)?,
            };
            // The store checks the vectors' count and size (given ones may be wrong).
            self.store.put(doc, &hash, &chunks, embeddings.as_deref()).with_context(|| format!("{} ({})", doc.id, doc.source))?;
            report.chunks += chunks.len();
            if old.is_some() {
                report.replaced += 1;
            } else {
                report.added += 1;
            }
            since_sync += 1;
            if since_sync >= SYNC_EVERY {
                self.store.sync_indexes()?;
                since_sync = 0;
            }
            progress(i + 1);
        }
        self.store.persist()?;
        Ok(report)
    }

    /// The chunks nearest a unit vector in the vector index (approximate: HNSW), best first.
    pub fn nearest(&self, vector: &[f32], k: usize) -> Result<Vec<(i64, f32)>> {
        self.store.nearest(vector, k, None)
    }

    /// Stored chunks by id (ids no longer stored are left out).
    pub fn chunks_by_id(&self, ids: &[i64]) -> Result<Vec<StoredChunk>> {
        self.store.chunks(ids)
    }

    /// The unit vector of a query under the library's encoder.
    pub fn embed_query(&self, text: &str) -> Result<Vec<f32>> {
        match self.embed(&[text])? {
            Some(mut v) => Ok(v.remove(0)),
            None => bail!("this library has no encoder"),
        }
    }

    pub fn remove(&mut self, id: &str) -> Result<bool> {
        let removed = self.store.remove(id)?;
        self.store.persist()?;
        Ok(removed)
    }

    /// Whether the store's parts agree (see [`store::StoreCheck`]).
    pub fn check(&self) -> Result<store::StoreCheck> {
        self.store.check()
    }

    pub fn list(&self) -> Result<Vec<DocumentSummary>> {
        self.store.list()
    }

    pub fn document(&self, id: &str) -> Result<Option<(Document, Vec<StoredChunk>)>> {
        let Some(d) = self.store.document(id)? else { return Ok(None) };
        let chunks = self.store.document_chunks(id)?;
        Ok(Some((d, chunks)))
    }

    /// The mode a search runs in when none is asked for: hybrid with an encoder, else BM25.
    pub fn default_mode(&self) -> Mode {
        if self.config.encoder.is_some() { Mode::Hybrid } else { Mode::Bm25 }
    }

    pub fn search(&self, query: &str, options: &SearchOptions) -> Result<Vec<SearchResult>> {
        let chars = query.chars().count();
        if query.trim().is_empty() {
            bail!("empty query")
        }
        if chars > MAX_QUERY_CHARS {
            bail!("the query is {chars} characters long; the limit is {MAX_QUERY_CHARS}")
        }
        if !(0.0..=1.0).contains(&options.dense_weight) {
            bail!("--dense-weight must be between 0 and 1 (got {})", options.dense_weight)
        }
        let mode = options.mode.unwrap_or_else(|| self.default_mode());
        if mode != Mode::Bm25 && self.config.encoder.is_none() {
            bail!("this library was created without an encoder: only --mode bm25 works (recreate it with --encoder DIR for dense and hybrid search)")
        }
        let k = options.top_k.max(1);
        let depth = if mode == Mode::Hybrid { (4 * k).max(50) } else { k };
        let mut analyzer = self.analyzer.clone();
        let terms: Vec<String> = analyzer::terms(&mut analyzer, query).into_iter().map(|t| t.0).collect();
        let mut filter = options.filter.clone();
        for d in [&mut filter.date_from, &mut filter.date_to].into_iter().flatten() {
            *d = document::normalize_date(d).ok_or_else(|| anyhow::anyhow!("{d}: not a date (YYYY-MM-DD)"))?;
        }
        let allowed = if filter.is_empty() { None } else { Some(self.store.filter(&filter)?) };
        let bm25 = if mode != Mode::Dense { self.store.full_text(&terms, depth, allowed.as_deref())? } else { Vec::new() };
        let dense = if mode != Mode::Bm25 {
            let v = self.embed(&[query])?.expect("an encoder").remove(0);
            self.store.nearest(&v, depth, allowed.as_deref())?
        } else {
            Vec::new()
        };
        let rank_of = |list: &[(i64, f32)], id: i64| list.iter().position(|x| x.0 == id).map(|p| Ranked { rank: p + 1, score: list[p].1 });
        let mut scored: Vec<(i64, f64)> = match mode {
            Mode::Bm25 => bm25.iter().map(|&(id, s)| (id, s as f64)).collect(),
            Mode::Dense => dense.iter().map(|&(id, s)| (id, s as f64)).collect(),
            Mode::Hybrid => {
                let w = options.dense_weight;
                let mut ids: Vec<i64> = bm25.iter().chain(dense.iter()).map(|x| x.0).collect();
                ids.sort_unstable();
                ids.dedup();
                ids.into_iter()
                    .map(|id| {
                        let b = rank_of(&bm25, id).map_or(0.0, |r| (1.0 - w) / (RRF_K + r.rank as f64));
                        let d = rank_of(&dense, id).map_or(0.0, |r| w / (RRF_K + r.rank as f64));
                        (id, b + d)
                    })
                    .collect()
            }
        };
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // Hits are looked up in SQLite: a chunk an index still holds but the store no longer
        // does is dropped.
        let wanted: Vec<i64> = scored.iter().map(|x| x.0).collect();
        let chunks = self.store.chunks(&wanted)?;
        let mut out = Vec::new();
        let query_terms: std::collections::HashSet<&str> = terms.iter().map(String::as_str).collect();
        for c in chunks {
            if out.len() >= k {
                break;
            }
            let score = scored.iter().find(|x| x.0 == c.id).map_or(0.0, |x| x.1);
            let Some((title, source, metadata)) = self.store.document_head(&c.doc_id)? else { continue };
            let highlighted = highlight(&mut analyzer, &c.text, &query_terms);
            out.push(SearchResult {
                id: c.doc_id.clone(),
                title,
                source,
                chunk_id: c.id,
                position: c.position,
                start: c.start,
                end: c.end,
                page: document::page_of(&metadata, c.start),
                time: media::time_span(&metadata, c.start, c.end),
                score,
                bm25: rank_of(&bm25, c.id),
                dense: rank_of(&dense, c.id),
                rerank: None,
                highlighted,
                chunk: c.text,
            });
        }
        Ok(out)
    }
}

/// A document with personal data masked in its title, text and string metadata.
pub fn mask_document(doc: &Document) -> (Document, pii::PiiCounts) {
    let mut counts = pii::PiiCounts::default();
    let mut d = doc.clone();
    let mut m = |s: &mut String| {
        let (t, c) = pii::mask(s);
        counts.add(&c);
        *s = t;
    };
    m(&mut d.title);
    m(&mut d.text);
    for v in d.metadata.values_mut() {
        if let serde_json::Value::String(s) = v {
            m(s);
        }
    }
    (d, counts)
}

/// The answer to a question from a library of question-answer pairs.
#[derive(Debug, Clone, Serialize)]
pub struct FaqAnswer {
    /// Whether the best match's confidence reached the threshold.
    pub found: bool,
    pub answer: Option<String>,
    /// The stored question that matched best, its document id, and how sure the match is:
    /// cosine similarity with an encoder, else the share of the question's terms it contains.
    pub matched_question: Option<String>,
    pub id: Option<String>,
    pub confidence: f64,
    pub threshold: f64,
    /// The next best matches (question, answer, confidence).
    pub alternatives: Vec<(String, Option<String>, f64)>,
}

impl Library {
    /// The default confidence a FAQ answer must reach: cosine similarity with an encoder, share
    /// of the question's terms without.
    pub fn default_faq_threshold(&self) -> f64 {
        if self.config.encoder.is_some() { 0.8 } else { 0.5 }
    }

    /// Answers `question` with the stored answer of the most similar stored question, or says
    /// there is none whose confidence reaches `threshold`.
    pub fn faq(&self, question: &str, threshold: Option<f64>, mode: Option<Mode>) -> Result<FaqAnswer> {
        let threshold = threshold.unwrap_or_else(|| self.default_faq_threshold());
        let results = self.search(question, &SearchOptions { mode, top_k: 4, ..Default::default() })?;
        let mut analyzer = self.analyzer.clone();
        let q_terms: std::collections::HashSet<String> = analyzer::terms(&mut analyzer, question).into_iter().map(|t| t.0).collect();
        let mut scored = Vec::new();
        for r in &results {
            let confidence = match self.config.encoder {
                Some(_) => match r.dense {
                    Some(d) => d.score as f64,
                    None => {
                        let v = self.embed(&[question, &r.chunk])?.expect("an encoder");
                        v[0].iter().zip(&v[1]).map(|(a, b)| (a * b) as f64).sum()
                    }
                },
                None => {
                    let have: std::collections::HashSet<String> = analyzer::terms(&mut analyzer, &r.chunk).into_iter().map(|t| t.0).collect();
                    if q_terms.is_empty() { 0.0 } else { q_terms.iter().filter(|t| have.contains(*t)).count() as f64 / q_terms.len() as f64 }
                }
            };
            let answer = self.store.document(&r.id)?.and_then(|d| d.metadata.get("answer").and_then(|a| a.as_str()).map(str::to_string));
            scored.push((r.id.clone(), r.chunk.clone(), answer, confidence));
        }
        let mut rest = scored.into_iter();
        let Some((id, q, answer, confidence)) = rest.next() else {
            return Ok(FaqAnswer { found: false, answer: None, matched_question: None, id: None, confidence: 0.0, threshold, alternatives: Vec::new() });
        };
        let found = confidence >= threshold && answer.is_some();
        Ok(FaqAnswer { found, answer, matched_question: Some(q), id: Some(id), confidence, threshold, alternatives: rest.map(|(_, q, a, c)| (q, a, c)).collect() })
    }
}

/// Retrieval quality over queries with known relevant documents.
#[derive(Debug, Clone, Serialize)]
pub struct RetrievalMetrics {
    pub queries: usize,
    /// Share of queries with a relevant document among the first k results, for k = 1, 5, 10.
    #[serde(rename = "recall@1")]
    pub recall_1: f64,
    #[serde(rename = "recall@5")]
    pub recall_5: f64,
    #[serde(rename = "recall@10")]
    pub recall_10: f64,
    /// Mean reciprocal rank of the first relevant document within the first 10 (0 beyond).
    pub mrr: f64,
    pub mode: Mode,
    pub seconds: f64,
}

impl Library {
    /// Runs every query and scores where its first relevant document ranks (documents, not
    /// chunks: a document's first chunk in the results is its rank).
    pub fn evaluate(&self, queries: &[(String, Vec<String>)], mode: Option<Mode>, mut progress: impl FnMut(usize)) -> Result<RetrievalMetrics> {
        let start = std::time::Instant::now();
        let mode = mode.unwrap_or_else(|| self.default_mode());
        let (mut r1, mut r5, mut r10, mut mrr) = (0usize, 0usize, 0usize, 0f64);
        for (i, (q, relevant)) in queries.iter().enumerate() {
            let results = self.search(q, &SearchOptions { mode: Some(mode), top_k: 30, ..Default::default() })?;
            let mut docs: Vec<&str> = Vec::new();
            for r in &results {
                if !docs.contains(&r.id.as_str()) {
                    docs.push(&r.id);
                }
            }
            if let Some(rank) = docs.iter().take(10).position(|d| relevant.iter().any(|x| x == d)) {
                r1 += (rank < 1) as usize;
                r5 += (rank < 5) as usize;
                r10 += 1;
                mrr += 1.0 / (rank + 1) as f64;
            }
            progress(i + 1);
        }
        let n = queries.len().max(1) as f64;
        Ok(RetrievalMetrics { queries: queries.len(), recall_1: r1 as f64 / n, recall_5: r5 as f64 / n, recall_10: r10 as f64 / n, mrr: mrr / n, mode, seconds: start.elapsed().as_secs_f64() })
    }
}

/// `text` with every run of characters that analyses to a query term in **bold**.
pub fn highlight(analyzer: &mut TextAnalyzer, text: &str, terms: &std::collections::HashSet<&str>) -> String {
    let mut spans: Vec<(usize, usize)> = analyzer::terms(analyzer, text).into_iter().filter(|t| terms.contains(t.0.as_str())).map(|t| (t.1, t.2)).collect();
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut out = String::with_capacity(text.len() + 4 * merged.len());
    let mut at = 0;
    for (s, e) in merged {
        out.push_str(&text[at..s]);
        out.push_str("**");
        out.push_str(&text[s..e]);
        out.push_str("**");
        at = e;
    }
    out.push_str(&text[at..]);
    out
}
