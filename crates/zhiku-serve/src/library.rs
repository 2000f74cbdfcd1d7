//! Content libraries over HTTP: add, show and remove documents, search. A key reads a library
//! with the scope `library:NAME` and changes it with `library:NAME:write` (or `admin`); a key
//! is told 403 for any library it lacks, whether or not that library exists, so it cannot
//! learn of other libraries, let alone see their documents.

use crate::api::{parse, refusal, ApiError};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};
use zhiku_library::store::Filter;
use zhiku_library::{Library, Mode, SearchOptions};

type AppResult<T> = Result<T, ApiError>;

/// Most documents in one add request.
const MAX_DOCUMENTS: usize = 1000;

fn authorize(state: &AppState, headers: &HeaderMap, name: &str, write: bool) -> AppResult<Arc<Mutex<Library>>> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let scope = if write { format!("library:{name}:write") } else { format!("library:{name}") };
    if let Some(e) = refusal(state.keys.check_library(auth, name, write), &scope) {
        return Err(e);
    }
    state.libraries.get(name).cloned().ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no library {name:?} on this server")))
}

/// Runs `f` with the library locked, on the blocking pool.
async fn with_library<T: Send + 'static>(lib: Arc<Mutex<Library>>, f: impl FnOnce(&mut Library) -> anyhow::Result<T> + Send + 'static) -> AppResult<anyhow::Result<T>> {
    tokio::task::spawn_blocking(move || {
        let mut guard = lib.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the library task failed: {e}")))
}

/// `POST /v1/libraries/{name}/documents` with `{"documents": [{"id", "title", "text", "source",
/// "date", "tags", ...}]}`: adds them (unchanged ones skipped, changed ones replaced).
pub async fn add_documents(State(state): State<Arc<AppState>>, Path(name): Path<String>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> AppResult<Json<Value>> {
    let lib = authorize(&state, &headers, &name, true)?;
    let v = parse::<Value>(body)?;
    let Some(items) = v.get("documents").and_then(|d| d.as_array()) else { return Err(ApiError::unprocessable("expected {\"documents\": [{\"text\": ...}, ...]}")) };
    if items.is_empty() || items.len() > MAX_DOCUMENTS {
        return Err(ApiError::unprocessable(format!("documents: give 1 to {MAX_DOCUMENTS} documents (got {})", items.len())));
    }
    let mut docs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("documents[{i}]");
        let Value::Object(fields) = item else { return Err(ApiError::unprocessable(format!("{at}: expected an object"))) };
        let fields: Map<String, Value> = fields.clone();
        let doc = zhiku_library::document::row_document(fields, format!("api:{name}"), &at).map_err(|e| ApiError::unprocessable(e.to_string()))?;
        docs.push(doc);
    }
    let report = with_library(lib, move |l| l.add(&docs, |_| {})).await?.map_err(|e| ApiError::unprocessable(format!("{e:#}")))?;
    Ok(Json(json!({"library": name, "added": report.added, "replaced": report.replaced, "unchanged": report.unchanged, "chunks": report.chunks})))
}

/// `GET /v1/libraries/{name}/documents/{id}`: the document and its chunks.
pub async fn get_document(State(state): State<Arc<AppState>>, Path((name, id)): Path<(String, String)>, headers: HeaderMap) -> AppResult<Json<Value>> {
    let lib = authorize(&state, &headers, &name, false)?;
    let found = with_library(lib, move |l| l.document(&id)).await?.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    match found {
        Some((doc, chunks)) => Ok(Json(json!({"document": doc, "chunks": chunks}))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no such document")),
    }
}

/// `DELETE /v1/libraries/{name}/documents/{id}`.
pub async fn remove_document(State(state): State<Arc<AppState>>, Path((name, id)): Path<(String, String)>, headers: HeaderMap) -> AppResult<Json<Value>> {
    let lib = authorize(&state, &headers, &name, true)?;
    let key = id.clone();
    let removed = with_library(lib, move |l| l.remove(&key)).await?.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    if !removed {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such document"));
    }
    Ok(Json(json!({"id": id, "removed": true})))
}

/// `POST /v1/search` with `{"library", "query", "mode", "top_k", "dense_weight", "filter":
/// {"sources", "tags", "from", "to"}}`: `{"mode", "results": [...]}` as `zhiku library search --json`.
pub async fn search(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> AppResult<Json<Value>> {
    let v = parse::<Value>(body)?;
    let Some(name) = v.get("library").and_then(|l| l.as_str()) else { return Err(ApiError::unprocessable("library: a library name is required")) };
    let lib = authorize(&state, &headers, name, false)?;
    let Some(query) = v.get("query").and_then(|q| q.as_str()).map(str::to_string) else { return Err(ApiError::unprocessable("query: a string is required")) };
    let mode = match v.get("mode").and_then(|m| m.as_str()) {
        None => None,
        Some("bm25") => Some(Mode::Bm25),
        Some("dense") => Some(Mode::Dense),
        Some("hybrid") => Some(Mode::Hybrid),
        Some(other) => return Err(ApiError::unprocessable(format!("mode: {other:?} is not bm25, dense or hybrid"))),
    };
    let top_k = match v.get("top_k") {
        None => 10,
        Some(k) => match k.as_u64() {
            Some(k @ 1..=100) => k as usize,
            _ => return Err(ApiError::unprocessable("top_k: an integer from 1 to 100")),
        },
    };
    let dense_weight = match v.get("dense_weight") {
        None => 0.5,
        Some(w) => w.as_f64().filter(|w| (0.0..=1.0).contains(w)).ok_or_else(|| ApiError::unprocessable("dense_weight: a number from 0 to 1"))?,
    };
    let strings = |f: &Value, key: &str| -> AppResult<Vec<String>> {
        match f.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) => a.iter().map(|x| x.as_str().map(str::to_string).ok_or_else(|| ApiError::unprocessable(format!("filter.{key}: strings")))).collect(),
            Some(_) => Err(ApiError::unprocessable(format!("filter.{key}: a string or a list of strings"))),
        }
    };
    let filter = match v.get("filter") {
        None | Some(Value::Null) => Filter::default(),
        Some(f @ Value::Object(_)) => Filter {
            sources: strings(f, "sources")?,
            tags: strings(f, "tags")?,
            date_from: f.get("from").and_then(|d| d.as_str()).map(str::to_string),
            date_to: f.get("to").and_then(|d| d.as_str()).map(str::to_string),
        },
        Some(_) => return Err(ApiError::unprocessable("filter: an object")),
    };
    let options = SearchOptions { mode, top_k, dense_weight, filter };
    let (mode, results) = with_library(lib, move |l| {
        let mode = options.mode.unwrap_or_else(|| l.default_mode());
        l.search(&query, &options).map(|r| (mode, r))
    })
    .await?
    .map_err(|e| ApiError::unprocessable(format!("{e:#}")))?;
    Ok(Json(json!({"library": name, "mode": mode, "results": results})))
}
