//! The store on PostgreSQL with pgvector, for several servers sharing one library: documents,
//! chunks (with their vectors in a `vector` column under an HNSW index) and a postings table
//! for BM25 live in tables prefixed with the library's name, and every write is one
//! transaction, so the full-text and vector parts can never disagree with the documents.
//!
//! Terms come from the same analyzer as the embedded store's (jieba's search mode, English
//! stemming), computed here rather than by PostgreSQL's text search, which has no Chinese
//! segmentation; BM25 is Lucene's formula (k1 1.2, b 0.75) in SQL over the postings, with the
//! corpus statistics kept in a one-row table updated in the same transactions.

use super::{DocumentHead, DocumentSummary, Filter, Store, StoreCheck, StoredChunk};
use crate::chunk::Chunk;
use crate::document::Document;
use anyhow::{bail, Context, Result};
use postgres::{Client, NoTls};
use std::collections::HashMap;
use std::sync::Mutex;
use tantivy::tokenizer::TextAnalyzer;

/// Where a PostgreSQL library is: the connection URL and the library's name.
#[derive(Debug, Clone, PartialEq)]
pub struct PgLocation {
    pub url: String,
    pub name: String,
}

impl PgLocation {
    /// `postgres://USER@HOST:PORT/DB#NAME` (the name defaults to "default"); None for anything
    /// that is not a PostgreSQL URL.
    pub fn parse(location: &str) -> Option<Result<Self>> {
        if !(location.starts_with("postgres://") || location.starts_with("postgresql://")) {
            return None;
        }
        let (url, name) = location.split_once('#').unwrap_or((location, "default"));
        Some(if name.is_empty() || name.len() > 40 || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            Err(anyhow::anyhow!("{location}: the library name after '#' must be 1-40 characters of a-z, 0-9 and _"))
        } else {
            Ok(Self { url: url.to_string(), name: name.to_string() })
        })
    }
}

/// Connects, naming the server in the error.
pub fn connect(location: &PgLocation) -> Result<Client> {
    Client::connect(&location.url, NoTls).with_context(|| format!("cannot connect to PostgreSQL at {}", redact(&location.url)))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if url[s + 3..at].contains(':') => {
            let user_end = s + 3 + url[s + 3..at].find(':').expect("checked");
            format!("{}:***{}", &url[..user_end], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// The library's `library.json`, kept in the database: `zhiku_libraries(name, config)`.
pub fn read_config(client: &mut Client, name: &str) -> Result<Option<String>> {
    client.batch_execute("CREATE TABLE IF NOT EXISTS zhiku_libraries (name TEXT PRIMARY KEY, config TEXT NOT NULL)")?;
    Ok(client.query_opt("SELECT config FROM zhiku_libraries WHERE name = $1", &[&name])?.map(|r| r.get(0)))
}

/// Records a new library's configuration, unless another process just did (then its wins).
pub fn write_config(client: &mut Client, name: &str, config: &str) -> Result<()> {
    client.execute("INSERT INTO zhiku_libraries (name, config) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", &[&name, &config])?;
    Ok(())
}

pub struct PgStore {
    client: Mutex<Client>,
    /// Table names: `zk_NAME_documents`, `_chunks`, `_postings`, `_stats`.
    p: String,
    dimensions: Option<usize>,
    analyzer: TextAnalyzer,
}

fn vector_literal(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 10 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

impl PgStore {
    /// Opens the library's tables over `client` (from [`connect`]), creating them (and the
    /// `vector` extension) when absent.
    pub fn open(mut client: Client, location: &PgLocation, dimensions: Option<usize>, analyzer: TextAnalyzer) -> Result<Self> {
        let p = format!("zk_{}_", location.name);
        let vector_column = match dimensions {
            Some(d) => {
                client.batch_execute("CREATE EXTENSION IF NOT EXISTS vector").context("cannot enable pgvector (CREATE EXTENSION vector): is it installed on the server?")?;
                format!(", embedding vector({d})")
            }
            None => String::new(),
        };
        let mut ddl = format!(
            "CREATE TABLE IF NOT EXISTS {p}documents (id TEXT PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL, source TEXT NOT NULL,
                 date TEXT, tags JSONB NOT NULL, metadata JSONB NOT NULL, hash TEXT NOT NULL, added BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS {p}chunks (id BIGSERIAL PRIMARY KEY, doc_id TEXT NOT NULL REFERENCES {p}documents(id) ON DELETE CASCADE,
                 position INT NOT NULL, start_char INT NOT NULL, end_char INT NOT NULL, text TEXT NOT NULL, terms INT NOT NULL{vector_column});
             CREATE INDEX IF NOT EXISTS {p}chunks_by_document ON {p}chunks (doc_id, position);
             CREATE TABLE IF NOT EXISTS {p}postings (term TEXT NOT NULL, chunk_id BIGINT NOT NULL REFERENCES {p}chunks(id) ON DELETE CASCADE,
                 tf INT NOT NULL, PRIMARY KEY (term, chunk_id));
             CREATE INDEX IF NOT EXISTS {p}postings_by_chunk ON {p}postings (chunk_id);
             CREATE TABLE IF NOT EXISTS {p}stats (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), chunks BIGINT NOT NULL, terms BIGINT NOT NULL);
             INSERT INTO {p}stats (chunks, terms) VALUES (0, 0) ON CONFLICT DO NOTHING;"
        );
        if dimensions.is_some() {
            ddl.push_str(&format!("CREATE INDEX IF NOT EXISTS {p}chunks_hnsw ON {p}chunks USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 128);"));
        }
        client.batch_execute(&ddl).with_context(|| format!("cannot set up the tables of library {:?}", location.name))?;
        Ok(Self { client: Mutex::new(client), p, dimensions, analyzer })
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes a document's chunks (their postings go with them) and takes them off the stats.
    fn delete_chunks(tx: &mut postgres::Transaction, p: &str, doc_id: &str) -> Result<()> {
        tx.execute(
            &format!(
                "WITH gone AS (DELETE FROM {p}chunks WHERE doc_id = $1 RETURNING terms)
                 UPDATE {p}stats SET chunks = chunks - (SELECT COUNT(*) FROM gone), terms = terms - (SELECT COALESCE(SUM(terms), 0) FROM gone)"
            ),
            &[&doc_id],
        )?;
        Ok(())
    }
}

fn row_chunk(r: &postgres::Row) -> StoredChunk {
    StoredChunk { id: r.get(0), doc_id: r.get(1), position: r.get::<_, i32>(2) as usize, start: r.get::<_, i32>(3) as usize, end: r.get::<_, i32>(4) as usize, text: r.get(5) }
}

impl Store for PgStore {
    fn check(&self) -> Result<StoreCheck> {
        let p = &self.p;
        let mut c = self.client();
        let documents: i64 = c.query_one(&format!("SELECT COUNT(*) FROM {p}documents"), &[])?.get(0);
        let chunks: i64 = c.query_one(&format!("SELECT COUNT(*) FROM {p}chunks"), &[])?.get(0);
        let indexed: i64 = c.query_one(&format!("SELECT COUNT(DISTINCT chunk_id) FROM {p}postings"), &[])?.get(0);
        let empty: i64 = c.query_one(&format!("SELECT COUNT(*) FROM {p}chunks WHERE terms = 0"), &[])?.get(0);
        let unindexed: i64 = c.query_one(&format!("SELECT COUNT(*) FROM {p}chunks c WHERE terms > 0 AND NOT EXISTS (SELECT 1 FROM {p}postings WHERE chunk_id = c.id)"), &[])?.get(0);
        let stats = c.query_one(&format!("SELECT chunks, terms, (SELECT COALESCE(SUM(terms), 0)::BIGINT FROM {p}chunks) FROM {p}stats"), &[])?;
        let stats_off = (stats.get::<_, i64>(0) != chunks || stats.get::<_, i64>(1) != stats.get::<_, i64>(2)) as usize;
        let vectors = match self.dimensions {
            Some(_) => Some(c.query_one(&format!("SELECT COUNT(*) FROM {p}chunks WHERE embedding IS NOT NULL"), &[])?.get::<_, i64>(0) as usize),
            None => None,
        };
        let missing_vectors = vectors.map_or(0, |v| chunks as usize - v);
        // Chunks without any term (punctuation only) have no postings and need none.
        Ok(StoreCheck { documents: documents as usize, chunks: chunks as usize, fulltext: (indexed + empty) as usize, vectors, pending: 0, mismatched: unindexed as usize + stats_off + missing_vectors })
    }

    fn document_hash(&self, id: &str) -> Result<Option<String>> {
        Ok(self.client().query_opt(&format!("SELECT hash FROM {}documents WHERE id = $1", self.p), &[&id])?.map(|r| r.get(0)))
    }

    fn put(&mut self, doc: &Document, hash: &str, chunks: &[Chunk], embeddings: Option<&[Vec<f32>]>) -> Result<()> {
        if let Some(e) = embeddings {
            if e.len() != chunks.len() || e.iter().any(|v| Some(v.len()) != self.dimensions) {
                bail!("{} embeddings for {} chunks, or of the wrong size", e.len(), chunks.len())
            }
        }
        let mut analyzer = self.analyzer.clone();
        let terms: Vec<HashMap<String, i32>> = chunks
            .iter()
            .map(|c| {
                let mut counts = HashMap::new();
                for (t, _, _) in crate::analyzer::terms(&mut analyzer, &c.text) {
                    *counts.entry(t).or_insert(0) += 1;
                }
                counts
            })
            .collect();
        let p = self.p.clone();
        let mut client = self.client();
        let mut tx = client.transaction()?;
        Self::delete_chunks(&mut tx, &p, &doc.id)?;
        let added = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        tx.execute(
            &format!(
                "INSERT INTO {p}documents (id, title, text, source, date, tags, metadata, hash, added) VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7::text::jsonb, $8, $9)
                 ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, text = EXCLUDED.text, source = EXCLUDED.source, date = EXCLUDED.date,
                 tags = EXCLUDED.tags, metadata = EXCLUDED.metadata, hash = EXCLUDED.hash, added = EXCLUDED.added"
            ),
            &[&doc.id, &doc.title, &doc.text, &doc.source, &doc.date, &serde_json::to_string(&doc.tags)?, &serde_json::to_string(&doc.metadata)?, &hash, &added],
        )?;
        let insert = if self.dimensions.is_some() {
            format!("INSERT INTO {p}chunks (doc_id, position, start_char, end_char, text, terms, embedding) VALUES ($1, $2, $3, $4, $5, $6, $7::text::vector) RETURNING id")
        } else {
            format!("INSERT INTO {p}chunks (doc_id, position, start_char, end_char, text, terms) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
        };
        let insert = tx.prepare(&insert)?;
        let posting = tx.prepare(&format!("INSERT INTO {p}postings (term, chunk_id, tf) SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::int[])"))?;
        let mut total_terms = 0i64;
        for (i, c) in chunks.iter().enumerate() {
            let n: i32 = terms[i].values().sum();
            total_terms += n as i64;
            let (pos, start, end) = (c.position as i32, c.start as i32, c.end as i32);
            let row = match embeddings {
                Some(e) => tx.query_one(&insert, &[&doc.id, &pos, &start, &end, &c.text, &n, &vector_literal(&e[i])])?,
                None => tx.query_one(&insert, &[&doc.id, &pos, &start, &end, &c.text, &n])?,
            };
            let id: i64 = row.get(0);
            let (names, counts): (Vec<String>, Vec<i32>) = terms[i].iter().map(|(t, n)| (t.clone(), *n)).unzip();
            let ids = vec![id; names.len()];
            tx.execute(&posting, &[&names, &ids, &counts])?;
        }
        tx.execute(&format!("UPDATE {p}stats SET chunks = chunks + $1, terms = terms + $2"), &[&(chunks.len() as i64), &total_terms])?;
        tx.commit()?;
        Ok(())
    }

    fn remove(&mut self, id: &str) -> Result<bool> {
        let p = self.p.clone();
        let mut client = self.client();
        let mut tx = client.transaction()?;
        Self::delete_chunks(&mut tx, &p, id)?;
        let n = tx.execute(&format!("DELETE FROM {p}documents WHERE id = $1"), &[&id])?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Nothing to catch up: every write is whole in one transaction.
    fn sync_indexes(&mut self) -> Result<()> {
        Ok(())
    }

    fn document(&self, id: &str) -> Result<Option<Document>> {
        let row = self.client().query_opt(&format!("SELECT id, title, text, source, date, tags::text, metadata::text FROM {}documents WHERE id = $1", self.p), &[&id])?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(Document {
            id: r.get(0),
            title: r.get(1),
            text: r.get(2),
            source: r.get(3),
            date: r.get(4),
            tags: serde_json::from_str(r.get::<_, &str>(5))?,
            metadata: serde_json::from_str(r.get::<_, &str>(6))?,
        }))
    }

    fn document_head(&self, id: &str) -> Result<Option<DocumentHead>> {
        let row = self.client().query_opt(&format!("SELECT title, source, metadata::text FROM {}documents WHERE id = $1", self.p), &[&id])?;
        Ok(row.map(|r| (r.get(0), r.get(1), serde_json::from_str(r.get::<_, &str>(2)).unwrap_or_default())))
    }

    fn list(&self) -> Result<Vec<DocumentSummary>> {
        let p = &self.p;
        let rows = self.client().query(
            &format!("SELECT d.id, d.title, d.source, d.date, d.tags::text, length(d.text)::BIGINT, (SELECT COUNT(*) FROM {p}chunks c WHERE c.doc_id = d.id) FROM {p}documents d ORDER BY d.added, d.id"),
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| DocumentSummary {
                id: r.get(0),
                title: r.get(1),
                source: r.get(2),
                date: r.get(3),
                tags: serde_json::from_str(r.get::<_, &str>(4)).unwrap_or_default(),
                characters: r.get::<_, i64>(5) as usize,
                chunks: r.get::<_, i64>(6) as usize,
            })
            .collect())
    }

    fn chunks(&self, ids: &[i64]) -> Result<Vec<StoredChunk>> {
        let rows = self.client().query(&format!("SELECT id, doc_id, position, start_char, end_char, text FROM {}chunks WHERE id = ANY($1)", self.p), &[&ids])?;
        let mut by_id: HashMap<i64, StoredChunk> = rows.iter().map(|r| (r.get(0), row_chunk(r))).collect();
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    fn document_chunks(&self, id: &str) -> Result<Vec<StoredChunk>> {
        let rows = self.client().query(&format!("SELECT id, doc_id, position, start_char, end_char, text FROM {}chunks WHERE doc_id = $1 ORDER BY position", self.p), &[&id])?;
        Ok(rows.iter().map(row_chunk).collect())
    }

    fn full_text(&self, terms: &[String], k: usize, allowed: Option<&[i64]>) -> Result<Vec<(i64, f32)>> {
        if terms.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let p = &self.p;
        let only = if allowed.is_some() { "AND p.chunk_id = ANY($3)" } else { "" };
        let sql = format!(
            "WITH q AS (SELECT DISTINCT unnest($1::text[]) AS term),
                  st AS (SELECT chunks::float8 AS n, GREATEST(terms::float8 / GREATEST(chunks, 1), 1e-6) AS avgdl FROM {p}stats),
                  df AS (SELECT p.term, COUNT(*)::float8 AS df FROM {p}postings p JOIN q ON q.term = p.term GROUP BY p.term)
             SELECT p.chunk_id, SUM(ln(1 + (st.n - df.df + 0.5) / (df.df + 0.5)) * p.tf * 2.2 / (p.tf + 1.2 * (0.25 + 0.75 * c.terms / st.avgdl)))::float4 AS score
             FROM {p}postings p JOIN df ON df.term = p.term JOIN {p}chunks c ON c.id = p.chunk_id CROSS JOIN st
             WHERE TRUE {only}
             GROUP BY p.chunk_id ORDER BY score DESC, p.chunk_id LIMIT $2"
        );
        let limit = k as i64;
        let mut c = self.client();
        let rows = match allowed {
            Some(a) => c.query(&sql, &[&terms, &limit, &a])?,
            None => c.query(&sql, &[&terms, &limit])?,
        };
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn nearest(&self, vector: &[f32], k: usize, allowed: Option<&[i64]>) -> Result<Vec<(i64, f32)>> {
        if self.dimensions.is_none() {
            bail!("this library has no encoder, so no vectors: search it with --mode bm25")
        }
        let p = &self.p;
        let v = vector_literal(vector);
        let limit = k as i64;
        let mut c = self.client();
        let rows = match allowed {
            // Ordering by a computed column, not the operator, keeps the planner off the index:
            // a filtered search is exact over the chunks the filter allows.
            Some(a) => c.query(
                &format!("SELECT id, s FROM (SELECT id, (1 - (embedding <=> $1::text::vector))::float4 AS s FROM {p}chunks WHERE id = ANY($3)) t ORDER BY s DESC, id LIMIT $2"),
                &[&v, &limit, &a],
            )?,
            None => {
                let mut tx = c.transaction()?;
                let n: i64 = tx.query_one(&format!("SELECT chunks FROM {p}stats"), &[])?.get(0);
                // pgvector takes at most 1000.
                tx.batch_execute(&format!("SET LOCAL hnsw.ef_search = {}", crate::hnsw::ef_search(k, n.max(0) as usize).min(1000)))?;
                let rows = tx.query(&format!("SELECT id, (1 - (embedding <=> $1::text::vector))::float4 FROM {p}chunks ORDER BY embedding <=> $1::text::vector LIMIT $2"), &[&v, &limit])?;
                tx.commit()?;
                rows
            }
        };
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn filter(&self, filter: &Filter) -> Result<Vec<i64>> {
        let p = &self.p;
        let sources: Vec<String> = filter.sources.clone();
        let tags = serde_json::to_string(&filter.tags)?;
        let rows = self.client().query(
            &format!(
                "SELECT c.id FROM {p}chunks c JOIN {p}documents d ON d.id = c.doc_id
                 WHERE (cardinality($1::text[]) = 0 OR d.source = ANY($1))
                   AND d.tags @> $2::text::jsonb
                   AND ($3::text IS NULL OR d.date >= $3) AND ($4::text IS NULL OR d.date <= $4)
                 ORDER BY c.id"
            ),
            &[&sources, &tags, &filter.date_from, &filter.date_to],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_passwords_stay_out_of_messages() {
        let l = PgLocation::parse("postgres://zhiku@db:5432/kb#news").unwrap().unwrap();
        assert_eq!((l.url.as_str(), l.name.as_str()), ("postgres://zhiku@db:5432/kb", "news"));
        assert_eq!(PgLocation::parse("postgresql://h/db").unwrap().unwrap().name, "default");
        assert!(PgLocation::parse("postgres://h/db#Bad-Name").unwrap().is_err());
        assert!(PgLocation::parse("/tmp/lib").is_none());
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(vector_literal(&[1.0, -0.5]), "[1,-0.5]");
    }
}
