//! The store interface: documents and their chunks, a full-text index and a vector index.
//! `embedded` keeps them in a folder (SQLite, tantivy, our HNSW); `postgres` keeps them in
//! PostgreSQL with pgvector, for several servers sharing one library.

pub mod embedded;
pub mod postgres;

use crate::chunk::Chunk;
use crate::document::Document;
use anyhow::Result;
use serde::Serialize;

/// A document's title, source and metadata.
pub type DocumentHead = (String, String, serde_json::Map<String, serde_json::Value>);

/// Which documents a search may return: all conditions must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// The document's source is one of these.
    pub sources: Vec<String>,
    /// The document has every one of these tags.
    pub tags: Vec<String>,
    /// Dates (YYYY-MM-DD) from and to, inclusive; documents without a date are left out.
    pub date_from: Option<String>,
    pub date_to: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

/// A chunk as stored: its id (stable until its document changes), document and place.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredChunk {
    pub id: i64,
    pub doc_id: String,
    pub position: usize,
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// What `list` shows of a document.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DocumentSummary {
    pub id: String,
    pub title: String,
    pub source: String,
    pub date: Option<String>,
    pub tags: Vec<String>,
    pub chunks: usize,
    pub characters: usize,
}

/// What each part of a store holds: after a write (or a replay) they agree.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoreCheck {
    pub documents: usize,
    pub chunks: usize,
    /// Chunks in the full-text index.
    pub fulltext: usize,
    /// Chunks in the vector index (None without an encoder).
    pub vectors: Option<usize>,
    /// Logged changes an index has not applied yet.
    pub pending: i64,
    /// Stored chunks missing from an index, or indexed chunks no longer stored.
    pub mismatched: usize,
}

impl StoreCheck {
    pub fn consistent(&self) -> bool {
        self.pending == 0 && self.mismatched == 0 && self.fulltext == self.chunks && self.vectors.is_none_or(|v| v == self.chunks)
    }
}

pub trait Store: Send {
    /// Compares the parts of the store, chunk by chunk.
    fn check(&self) -> Result<StoreCheck>;
    /// The content hash stored with a document, if the library has it.
    fn document_hash(&self, id: &str) -> Result<Option<String>>;
    /// Stores a document with its chunks (and one embedding per chunk when the library has an
    /// encoder), replacing any earlier version and its chunks, in one transaction.
    fn put(&mut self, doc: &Document, hash: &str, chunks: &[Chunk], embeddings: Option<&[Vec<f32>]>) -> Result<()>;
    /// Removes a document and its chunks. Returns whether it was there.
    fn remove(&mut self, id: &str) -> Result<bool>;
    /// Brings the full-text and vector indexes up to date with the stored chunks.
    fn sync_indexes(&mut self) -> Result<()>;
    /// Brings the indexes up to date and writes whatever they keep in memory to disk (the end
    /// of an add or a removal; `sync_indexes` may defer writing a large index).
    fn persist(&mut self) -> Result<()> {
        self.sync_indexes()
    }
    fn document(&self, id: &str) -> Result<Option<Document>>;
    /// A document's title and source (what a search hit shows), without its text.
    /// A document's title, source and metadata (what a search hit shows beside its chunk).
    fn document_head(&self, id: &str) -> Result<Option<DocumentHead>>;
    fn list(&self) -> Result<Vec<DocumentSummary>>;
    /// Chunks by id, in the order asked; ids no longer stored are left out.
    fn chunks(&self, ids: &[i64]) -> Result<Vec<StoredChunk>>;
    /// The chunks of a document, in order.
    fn document_chunks(&self, id: &str) -> Result<Vec<StoredChunk>>;
    /// The best chunks for the query's terms by BM25, best first; only chunks in `allowed`
    /// when given.
    fn full_text(&self, terms: &[String], k: usize, allowed: Option<&[i64]>) -> Result<Vec<(i64, f32)>>;
    /// The chunks whose embeddings are nearest the vector (cosine), best first; only chunks
    /// in `allowed` when given (an exact scan of their embeddings).
    fn nearest(&self, vector: &[f32], k: usize, allowed: Option<&[i64]>) -> Result<Vec<(i64, f32)>>;
    /// The chunks of the documents that pass the filter.
    fn filter(&self, filter: &Filter) -> Result<Vec<i64>>;
}
