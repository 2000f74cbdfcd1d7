//! Content libraries over HTTP: add, show and remove documents, search. A key reads a library
//! with the scope `library:NAME` and changes it with `library:NAME:write` (or `admin`); a key
//! is told 403 for any library it lacks, whether or not that library exists, so it cannot
//! learn of other libraries, let alone see their documents. `POST /v1/ask` answers from a
//! library with one of the served language models, whole or as server-sent events.

use crate::api::{parse, refusal, ApiError};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use crate::llm::Msg;
use zhiku_library::ask::{AnswerWriter, AskOptions};
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
    let mode = mode_field(&v)?;
    let top_k = top_k_field(&v, 10)?;
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

fn mode_field(v: &Value) -> AppResult<Option<Mode>> {
    match v.get("mode").and_then(|m| m.as_str()) {
        None => Ok(None),
        Some("bm25") => Ok(Some(Mode::Bm25)),
        Some("dense") => Ok(Some(Mode::Dense)),
        Some("hybrid") => Ok(Some(Mode::Hybrid)),
        Some(other) => Err(ApiError::unprocessable(format!("mode: {other:?} is not bm25, dense or hybrid"))),
    }
}

fn top_k_field(v: &Value, default: usize) -> AppResult<usize> {
    match v.get("top_k") {
        None => Ok(default),
        Some(k) => match k.as_u64() {
            Some(k @ 1..=100) => Ok(k as usize),
            _ => Err(ApiError::unprocessable("top_k: an integer from 1 to 100")),
        },
    }
}

/// `POST /v1/ask` with `{"library", "question", "model", "top_k", "mode", "max_tokens",
/// "temperature", "seed", "stream"}`: the answer with its citations, as `zhiku library ask
/// --json` prints it. With `"stream": true`, server-sent events: `{"delta": TEXT}` per sentence
/// of the answer, then `{"done": true, ...the whole answer...}`, then `[DONE]`. The library's
/// read scope is what a key needs.
pub async fn ask(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> AppResult<Response> {
    let v = parse::<Value>(body)?;
    let Some(name) = v.get("library").and_then(|l| l.as_str()).map(str::to_string) else { return Err(ApiError::unprocessable("library: a library name is required")) };
    let lib = authorize(&state, &headers, &name, false)?;
    let question = match v.get("question").and_then(|q| q.as_str()) {
        Some(q) if !q.trim().is_empty() => q.to_string(),
        _ => return Err(ApiError::unprocessable("question: a non-empty string is required")),
    };
    let picked = crate::llm::pick(&state, v.get("model").and_then(|m| m.as_str()))?;
    let model = picked.name();
    let defaults = AskOptions::default();
    let max_tokens = match v.get("max_tokens") {
        None => defaults.max_tokens,
        Some(m) => m.as_u64().filter(|&m| (1..=8192).contains(&m)).ok_or_else(|| ApiError::unprocessable("max_tokens: an integer from 1 to 8192"))? as usize,
    };
    let temperature = match v.get("temperature") {
        None => defaults.temperature,
        Some(t) => t.as_f64().filter(|t| (0.0..=2.0).contains(t)).ok_or_else(|| ApiError::unprocessable("temperature: a number from 0 to 2"))? as f32,
    };
    let seed = match v.get("seed") {
        None => defaults.seed,
        Some(s) => s.as_u64().ok_or_else(|| ApiError::unprocessable("seed: a non-negative integer"))?,
    };
    let stream = v.get("stream").and_then(|s| s.as_bool()).unwrap_or(false);
    let options = AskOptions { top_k: top_k_field(&v, defaults.top_k)?, mode: mode_field(&v)?, max_tokens, temperature, seed };
    let q = question.clone();
    let mut plan = with_library(lib, move |l| zhiku_library::ask::plan(l, &q, &options)).await?.map_err(|e| ApiError::unprocessable(format!("{e:#}")))?;
    let request = plan.request.take().map(|mut r| {
        r.adapter = picked.adapter.clone();
        r
    });
    let worker = picked.worker;
    let mut writer = AnswerWriter::new(plan);
    let rx = match request {
        Some(r) => {
            let (r, prepared) = crate::llm::check(&worker, r).await?;
            Some(worker.submit(r, prepared)?)
        }
        None => None,
    };
    let head = json!({"library": name, "question": question, "model": model});
    if stream {
        return Ok(Sse::new(ask_events(rx, writer, head)).keep_alive(KeepAlive::default()).into_response());
    }
    let mut ignore = |_: &str| {};
    let answer = match rx {
        None => writer.finish(0, 0, &mut ignore),
        Some(mut rx) => loop {
            match rx.recv().await {
                Some(Msg::Text(t)) => writer.push(&t, &mut ignore),
                Some(Msg::Done(c)) => break writer.finish(c.prompt_tokens, c.completion_tokens, &mut ignore),
                Some(Msg::Failed(status, m)) => return Err(crate::llm::failure(Some((status, m)))),
                None => return Err(crate::llm::failure(None)),
            }
        },
    };
    Ok(Json(answer_json(head, &answer)).into_response())
}

fn answer_json(mut head: Value, answer: &zhiku_library::ask::Answer) -> Value {
    if let (Value::Object(h), Ok(Value::Object(a))) = (&mut head, serde_json::to_value(answer)) {
        h.extend(a);
    }
    head
}

/// The answer as server-sent events, a sentence at a time as the model writes them.
fn ask_events(rx: Option<tokio::sync::mpsc::UnboundedReceiver<Msg>>, writer: AnswerWriter, head: Value) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    let delta = |t: &str| SseEvent::default().data(json!({"delta": t}).to_string());
    let finish = move |writer: AnswerWriter, prompt: usize, completion: usize, out: &mut VecDeque<SseEvent>, head: &Value| {
        let answer = writer.finish(prompt, completion, &mut |t| out.push_back(delta(t)));
        let mut last = answer_json(head.clone(), &answer);
        last["done"] = json!(true);
        out.push_back(SseEvent::default().data(last.to_string()));
        out.push_back(SseEvent::default().data("[DONE]"));
    };
    let mut first = VecDeque::new();
    let mut writer = Some(writer);
    if rx.is_none() {
        finish(writer.take().expect("present"), 0, 0, &mut first, &head);
    }
    futures_util::stream::unfold((rx, first, writer, head), move |(mut rx, mut out, mut writer, head)| async move {
        loop {
            if let Some(e) = out.pop_front() {
                return Some((Ok(e), (rx, out, writer, head)));
            }
            let (Some(r), Some(w)) = (rx.as_mut(), writer.as_mut()) else { return None };
            match r.recv().await {
                Some(Msg::Text(t)) => w.push(&t, &mut |s| out.push_back(delta(s))),
                Some(Msg::Done(c)) => finish(writer.take().expect("present"), c.prompt_tokens, c.completion_tokens, &mut out, &head),
                Some(Msg::Failed(status, m)) => {
                    out.push_back(crate::llm::failure_event(Some((status, m))));
                    writer = None;
                }
                None => {
                    out.push_back(crate::llm::failure_event(None));
                    writer = None;
                }
            }
        }
    })
}
