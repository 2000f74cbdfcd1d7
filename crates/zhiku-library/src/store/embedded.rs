//! The default store, all in the library's folder: SQLite (`library.sqlite`) holds documents,
//! chunks, embeddings and a change log, and is the source of truth; the full-text index
//! (`fulltext/`, tantivy) and the vector index (`vectors.hnsw`) are derived from it and each
//! records the last change it reflects (tantivy's commit payload, the index file's header).
//!
//! A write commits to SQLite first, then brings both indexes up to date. A crash or a
//! `kill -9` in between leaves an index behind, never ahead, and the next writer replays the
//! changes it missed; searches look their hits up in SQLite, so a removed chunk never shows.

use super::{DocumentSummary, Filter, Store, StoreCheck, StoredChunk};
use crate::analyzer::ANALYZER;
use crate::chunk::Chunk;
use crate::document::Document;
use crate::hnsw::{Hnsw, HnswParams};
use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery, TermSetQuery};
use tantivy::schema::{IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, FAST, INDEXED, STORED};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL, source TEXT NOT NULL,
    date TEXT, tags TEXT NOT NULL, metadata TEXT NOT NULL, hash TEXT NOT NULL, added INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id TEXT NOT NULL, position INTEGER NOT NULL,
    start INTEGER NOT NULL, end INTEGER NOT NULL, text TEXT NOT NULL, embedding BLOB);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(doc_id, position);
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, chunk_id INTEGER NOT NULL);
";

pub struct EmbeddedStore {
    dir: PathBuf,
    db: Connection,
    index: Index,
    reader: IndexReader,
    writer: Option<IndexWriter>,
    chunk_field: tantivy::schema::Field,
    text_field: tantivy::schema::Field,
    vectors: Option<Hnsw>,
    dimensions: Option<usize>,
    /// Vector changes applied in memory since `vectors.hnsw` was last written.
    vectors_unsaved: usize,
}

/// The fewest unsaved vector changes that make `sync_indexes` rewrite the vector index file.
const VECTORS_SAVE_MIN: usize = 256;

impl EmbeddedStore {
    /// Opens (creating when absent) the store in `dir`. `writable` takes tantivy's writer,
    /// which one process at a time may hold (the library holds its own lock around it).
    pub fn open(dir: &Path, dimensions: Option<usize>, analyzer: TextAnalyzer, writable: bool) -> Result<Self> {
        let db_path = dir.join("library.sqlite");
        let db = Connection::open(&db_path).with_context(|| format!("{}: cannot open", db_path.display()))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(std::time::Duration::from_secs(30))?;
        db.execute_batch(SCHEMA).with_context(|| format!("{}: cannot set up the tables", db_path.display()))?;

        let ft = dir.join("fulltext");
        std::fs::create_dir_all(&ft)?;
        let index = if ft.join("meta.json").exists() {
            Index::open_in_dir(&ft).with_context(|| format!("{}: cannot open the full-text index", ft.display()))?
        } else {
            let mut sb = Schema::builder();
            sb.add_u64_field("chunk", INDEXED | STORED | FAST);
            sb.add_text_field("text", TextOptions::default().set_indexing_options(TextFieldIndexing::default().set_tokenizer(ANALYZER).set_index_option(IndexRecordOption::WithFreqsAndPositions)));
            Index::create_in_dir(&ft, sb.build())?
        };
        index.tokenizers().register(ANALYZER, analyzer);
        let schema = index.schema();
        let chunk_field = schema.get_field("chunk")?;
        let text_field = schema.get_field("text")?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let writer = if writable { Some(index.writer_with_num_threads(1, 32 << 20)?) } else { None };

        let vpath = dir.join("vectors.hnsw");
        let vectors = match dimensions {
            Some(d) if vpath.exists() => {
                let h = Hnsw::load(&vpath)?;
                if h.dim() != d {
                    bail!("{}: vectors of {} dimensions, but the library's encoder gives {d}", vpath.display(), h.dim())
                }
                Some(h)
            }
            Some(d) => Some(Hnsw::new(d, HnswParams::default())),
            None => None,
        };
        Ok(Self { dir: dir.to_path_buf(), db, index, reader, writer, chunk_field, text_field, vectors, dimensions, vectors_unsaved: 0 })
    }

    fn last_change(&self) -> Result<i64> {
        Ok(self.db.query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| r.get(0))?)
    }

    fn fulltext_applied(&self) -> Result<i64> {
        let metas = self.index.load_metas()?;
        Ok(metas.payload.as_deref().and_then(|p| p.parse().ok()).unwrap_or(0))
    }

    /// How many changes the indexes have yet to apply (0 when current).
    pub fn pending(&self) -> Result<i64> {
        let last = self.last_change()?;
        let ft = self.fulltext_applied()?;
        let v = self.vectors.as_ref().map_or(last, |v| v.applied);
        Ok(last - ft.min(v))
    }

    fn log_chunks(tx: &rusqlite::Transaction, op: &str, doc_id: &str) -> Result<()> {
        tx.execute("INSERT INTO changes (op, chunk_id) SELECT ?1, id FROM chunks WHERE doc_id = ?2 ORDER BY id", params![op, doc_id])?;
        Ok(())
    }
}

/// Changes after `seq`: (op, chunk id), oldest first.
fn changes_after(db: &Connection, seq: i64) -> Result<Vec<(String, i64)>> {
    let mut st = db.prepare_cached("SELECT op, chunk_id FROM changes WHERE seq > ?1 ORDER BY seq")?;
    let rows = st.query_map([seq], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A chunk's embedding, if the chunk is stored and has one.
fn embedding(db: &Connection, chunk: i64) -> Result<Option<Vec<f32>>> {
    let mut st = db.prepare_cached("SELECT embedding FROM chunks WHERE id = ?1")?;
    Ok(st.query_row([chunk], |r| r.get::<_, Option<Vec<u8>>>(0)).optional()?.flatten().map(|b| from_blob(&b)))
}

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn row_chunk(r: &rusqlite::Row) -> rusqlite::Result<StoredChunk> {
    Ok(StoredChunk { id: r.get(0)?, doc_id: r.get(1)?, position: r.get::<_, i64>(2)? as usize, start: r.get::<_, i64>(3)? as usize, end: r.get::<_, i64>(4)? as usize, text: r.get(5)? })
}

impl Store for EmbeddedStore {
    fn check(&self) -> Result<StoreCheck> {
        let documents: i64 = self.db.query_row("SELECT COUNT(*) FROM documents", [], |r| r.get(0))?;
        let ids: Vec<i64> = self.db.prepare("SELECT id FROM chunks")?.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        let stored: std::collections::HashSet<i64> = ids.iter().copied().collect();
        let searcher = self.reader.searcher();
        let mut indexed = std::collections::HashSet::new();
        for segment in searcher.segment_readers() {
            let column = segment.fast_fields().u64("chunk")?;
            let alive = segment.alive_bitset();
            for doc in 0..segment.max_doc() {
                if alive.is_none_or(|a| a.is_alive(doc)) {
                    if let Some(v) = column.first(doc) {
                        indexed.insert(v as i64);
                    }
                }
            }
        }
        let mut mismatched = stored.symmetric_difference(&indexed).count();
        let vectors = self.vectors.as_ref().map(|v| {
            mismatched += ids.iter().filter(|&&id| !v.contains(id)).count();
            v.len()
        });
        Ok(StoreCheck { documents: documents as usize, chunks: ids.len(), fulltext: indexed.len(), vectors, pending: self.pending()?, mismatched })
    }

    fn document_hash(&self, id: &str) -> Result<Option<String>> {
        Ok(self.db.query_row("SELECT hash FROM documents WHERE id = ?1", [id], |r| r.get(0)).optional()?)
    }

    fn put(&mut self, doc: &Document, hash: &str, chunks: &[Chunk], embeddings: Option<&[Vec<f32>]>) -> Result<()> {
        if let Some(e) = embeddings {
            if e.len() != chunks.len() || e.iter().any(|v| Some(v.len()) != self.dimensions) {
                bail!("{} embeddings for {} chunks, or of the wrong size", e.len(), chunks.len())
            }
        }
        let tx = self.db.transaction()?;
        Self::log_chunks(&tx, "remove", &doc.id)?;
        tx.execute("DELETE FROM chunks WHERE doc_id = ?1", [&doc.id])?;
        let added = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        tx.execute(
            "INSERT OR REPLACE INTO documents (id, title, text, source, date, tags, metadata, hash, added) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![doc.id, doc.title, doc.text, doc.source, doc.date, serde_json::to_string(&doc.tags)?, serde_json::to_string(&doc.metadata)?, hash, added],
        )?;
        {
            let mut ins = tx.prepare("INSERT INTO chunks (doc_id, position, start, end, text, embedding) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
            for (i, c) in chunks.iter().enumerate() {
                let blob = embeddings.map(|e| to_blob(&e[i]));
                ins.execute(params![doc.id, c.position as i64, c.start as i64, c.end as i64, c.text, blob])?;
            }
        }
        Self::log_chunks(&tx, "add", &doc.id)?;
        tx.commit()?;
        Ok(())
    }

    fn remove(&mut self, id: &str) -> Result<bool> {
        let tx = self.db.transaction()?;
        Self::log_chunks(&tx, "remove", id)?;
        tx.execute("DELETE FROM chunks WHERE doc_id = ?1", [id])?;
        let n = tx.execute("DELETE FROM documents WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(n > 0)
    }

    fn sync_indexes(&mut self) -> Result<()> {
        let last = self.last_change()?;
        let ft_applied = self.fulltext_applied()?;
        if ft_applied < last {
            let changes = changes_after(&self.db, ft_applied)?;
            let Some(writer) = self.writer.as_mut() else { bail!("the store was opened read-only") };
            let mut text_of = self.db.prepare("SELECT text FROM chunks WHERE id = ?1")?;
            for (op, chunk) in &changes {
                writer.delete_term(Term::from_field_u64(self.chunk_field, *chunk as u64));
                if op == "add" {
                    // A chunk added and removed again within the changes is no longer there.
                    if let Some(text) = text_of.query_row([chunk], |r| r.get::<_, String>(0)).optional()? {
                        writer.add_document(doc!(self.chunk_field => *chunk as u64, self.text_field => text))?;
                    }
                }
            }
            let mut prepared = writer.prepare_commit()?;
            prepared.set_payload(&last.to_string());
            prepared.commit()?;
            self.reader.reload()?;
        }
        if let Some(vectors) = self.vectors.as_mut() {
            if vectors.applied < last {
                for (op, chunk) in changes_after(&self.db, vectors.applied)? {
                    vectors.remove(chunk);
                    if op == "add" {
                        if let Some(e) = embedding(&self.db, chunk)? {
                            vectors.insert(chunk, &e)?;
                        }
                    }
                }
                self.vectors_unsaved += (last - vectors.applied) as usize;
                vectors.applied = last;
                // The file is rewritten whole, so it is written only once the changes since the
                // last write reach a quarter of the index (and at `persist`): total writes stay
                // a few times the final size instead of growing with its square. What a crash
                // loses here the change log replays.
                if self.vectors_unsaved >= (vectors.len() / 4).max(VECTORS_SAVE_MIN) {
                    vectors.save(&self.dir.join("vectors.hnsw"))?;
                    self.vectors_unsaved = 0;
                }
            }
        }
        Ok(())
    }

    fn persist(&mut self) -> Result<()> {
        self.sync_indexes()?;
        if let (Some(vectors), true) = (self.vectors.as_ref(), self.vectors_unsaved > 0) {
            vectors.save(&self.dir.join("vectors.hnsw"))?;
            self.vectors_unsaved = 0;
        }
        Ok(())
    }

    fn document(&self, id: &str) -> Result<Option<Document>> {
        let row = self
            .db
            .query_row("SELECT id, title, text, source, date, tags, metadata FROM documents WHERE id = ?1", [id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, Option<String>>(4)?, r.get::<_, String>(5)?, r.get::<_, String>(6)?))
            })
            .optional()?;
        let Some((id, title, text, source, date, tags, metadata)) = row else { return Ok(None) };
        Ok(Some(Document { id, title, text, source, date, tags: serde_json::from_str(&tags)?, metadata: serde_json::from_str(&metadata)? }))
    }

    fn document_head(&self, id: &str) -> Result<Option<super::DocumentHead>> {
        let row: Option<(String, String, String)> = self.db.prepare_cached("SELECT title, source, metadata FROM documents WHERE id = ?1")?.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
        Ok(row.map(|(t, s, m)| (t, s, serde_json::from_str(&m).unwrap_or_default())))
    }

    fn list(&self) -> Result<Vec<DocumentSummary>> {
        let mut st = self.db.prepare(
            "SELECT d.id, d.title, d.source, d.date, d.tags, length(d.text), (SELECT COUNT(*) FROM chunks c WHERE c.doc_id = d.id) FROM documents d ORDER BY d.added, d.id",
        )?;
        let rows = st.query_map([], |r| {
            let tags: String = r.get(4)?;
            Ok(DocumentSummary { id: r.get(0)?, title: r.get(1)?, source: r.get(2)?, date: r.get(3)?, tags: serde_json::from_str(&tags).unwrap_or_default(), characters: r.get::<_, i64>(5)? as usize, chunks: r.get::<_, i64>(6)? as usize })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn chunks(&self, ids: &[i64]) -> Result<Vec<StoredChunk>> {
        let mut st = self.db.prepare_cached("SELECT id, doc_id, position, start, end, text FROM chunks WHERE id = ?1")?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = st.query_row([id], row_chunk).optional()? {
                out.push(c);
            }
        }
        Ok(out)
    }

    fn document_chunks(&self, id: &str) -> Result<Vec<StoredChunk>> {
        let mut st = self.db.prepare("SELECT id, doc_id, position, start, end, text FROM chunks WHERE doc_id = ?1 ORDER BY position")?;
        let rows = st.query_map([id], row_chunk)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn full_text(&self, terms: &[String], k: usize, allowed: Option<&[i64]>) -> Result<Vec<(i64, f32)>> {
        if terms.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let mut seen = std::collections::HashSet::new();
        let clauses: Vec<(Occur, Box<dyn Query>)> = terms
            .iter()
            .filter(|t| seen.insert(t.as_str()))
            .map(|t| (Occur::Should, Box::new(TermQuery::new(Term::from_field_text(self.text_field, t), IndexRecordOption::WithFreqs)) as Box<dyn Query>))
            .collect();
        let mut query: Box<dyn Query> = Box::new(BooleanQuery::new(clauses));
        if let Some(allowed) = allowed {
            // The filter must match but adds nothing to the score (boost 0).
            let ids = allowed.iter().map(|&id| Term::from_field_u64(self.chunk_field, id as u64));
            let only: Box<dyn Query> = Box::new(BoostQuery::new(Box::new(TermSetQuery::new(ids)), 0.0));
            query = Box::new(BooleanQuery::new(vec![(Occur::Must, query), (Occur::Must, only)]));
        }
        let searcher = self.reader.searcher();
        let top = searcher.search(&query, &TopDocs::with_limit(k))?;
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let d: TantivyDocument = searcher.doc(addr)?;
            if let Some(id) = d.get_first(self.chunk_field).and_then(|v| v.as_u64()) {
                out.push((id as i64, score));
            }
        }
        Ok(out)
    }

    fn nearest(&self, vector: &[f32], k: usize, allowed: Option<&[i64]>) -> Result<Vec<(i64, f32)>> {
        let Some(v) = self.vectors.as_ref() else { bail!("this library has no encoder, so no vectors: search it with --mode bm25") };
        let Some(allowed) = allowed else { return Ok(v.search(vector, k, crate::hnsw::ef_search(k, v.len()))) };
        // A filtered search scans the allowed chunks' embeddings: exact, whatever the filter
        // keeps.
        let mut scored = Vec::with_capacity(allowed.len());
        for &id in allowed {
            if let Some(e) = embedding(&self.db, id)? {
                scored.push((id, crate::hnsw::cosine(vector, &e)));
            }
        }
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        Ok(scored)
    }

    fn filter(&self, filter: &Filter) -> Result<Vec<i64>> {
        let mut sql = String::from("SELECT c.id, d.tags FROM chunks c JOIN documents d ON d.id = c.doc_id");
        let mut conds = Vec::new();
        let mut args: Vec<String> = Vec::new();
        if !filter.sources.is_empty() {
            conds.push(format!("d.source IN ({})", vec!["?"; filter.sources.len()].join(", ")));
            args.extend(filter.sources.iter().cloned());
        }
        if let Some(from) = &filter.date_from {
            conds.push("d.date >= ?".to_string());
            args.push(from.clone());
        }
        if let Some(to) = &filter.date_to {
            conds.push("d.date <= ?".to_string());
            args.push(to.clone());
        }
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        let mut st = self.db.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(args.iter()), |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, tags) = row?;
            if !filter.tags.is_empty() {
                let have: Vec<String> = serde_json::from_str(&tags).unwrap_or_default();
                if !filter.tags.iter().all(|t| have.contains(t)) {
                    continue;
                }
            }
            out.push(id);
        }
        Ok(out)
    }
}
