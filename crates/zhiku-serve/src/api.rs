//! Routes, request validation, error bodies. Every error is JSON:
//! `{"error": {"message": "...", "type": "...", "code": STATUS}}`.

use crate::auth::{Decision, Scope};
use crate::batcher::{Op, Submit};
use crate::registry::LoadedModel;
use crate::{AppState, LongText};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

type AppResult<T> = Result<T, ApiError>;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after: None }
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    /// 503 with a `Retry-After` of one second.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, message: message.into(), retry_after: Some(1) }
    }
    /// 429 with a `Retry-After`.
    pub fn rate_limited(after: u64) -> Self {
        Self { status: StatusCode::TOO_MANY_REQUESTS, message: "rate limit exceeded for this API key".into(), retry_after: Some(after) }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded",
            s if s.is_server_error() => "internal",
            _ => "invalid_request",
        };
        let body = json!({"error": {"message": self.message, "type": kind, "code": self.status.as_u16()}});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/models", get(list_models))
        .route("/v1/classify", post(classify))
        .route("/v1/embed", post(embed))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/v1/chat/completions", post(crate::llm::chat_completions))
        .route("/v1/completions", post(crate::llm::completions))
        .route("/v1/libraries/{name}/documents", post(crate::library::add_documents))
        .route("/v1/libraries/{name}/documents/{id}", get(crate::library::get_document).delete(crate::library::remove_document))
        .route("/v1/search", post(crate::library::search))
        .route("/v1/ask", post(crate::library::ask))
        .route("/v1/recommend", post(crate::recommend::recommend))
        .route("/v1/similar-items", post(crate::recommend::similar_items))
        .route("/v1/interactions", post(crate::recommend::interactions))
        .route("/v1/audio/transcriptions", post(crate::speech::transcriptions).layer(DefaultBodyLimit::max(state.config.max_upload_bytes)))
        .route("/v1/ocr", post(crate::ocr::ocr).layer(DefaultBodyLimit::max(state.config.max_upload_bytes)))
        .route("/v1/images/tags", post(crate::images::tags).layer(DefaultBodyLimit::max(state.config.max_upload_bytes)))
        .route("/v1/images/embeddings", post(crate::images::embeddings).layer(DefaultBodyLimit::max(state.config.max_upload_bytes)))
        .route("/v1/admin/models", post(admin_load))
        .route("/v1/admin/models/{name}", delete(admin_unload))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// The metric label for a path (a fixed set, so clients cannot blow up the label space).
fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/openapi.json" => "/openapi.json",
        "/v1/models" => "/v1/models",
        "/v1/classify" => "/v1/classify",
        "/v1/embed" => "/v1/embed",
        "/v1/embeddings" => "/v1/embeddings",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        p if p.starts_with("/v1/admin/models") => "/v1/admin/models",
        "/v1/search" => "/v1/search",
        "/v1/ask" => "/v1/ask",
        "/v1/recommend" => "/v1/recommend",
        "/v1/similar-items" => "/v1/similar-items",
        "/v1/interactions" => "/v1/interactions",
        "/v1/audio/transcriptions" => "/v1/audio/transcriptions",
        "/v1/ocr" => "/v1/ocr",
        "/v1/images/tags" => "/v1/images/tags",
        "/v1/images/embeddings" => "/v1/images/embeddings",
        p if p.starts_with("/v1/libraries/") => "/v1/libraries",
        _ => "other",
    }
}

/// The scope a route needs, checked before its handler runs; library routes check their
/// library's scope themselves (the name may be in the body).
fn required_scope(path: &str) -> Option<Scope> {
    if path == "/v1/search" || path == "/v1/ask" || path.starts_with("/v1/libraries/") {
        None
    } else if path.starts_with("/v1/admin/") || path == "/metrics" {
        Some(Scope::Admin)
    } else if path.starts_with("/v1/") {
        Some(Scope::Predict)
    } else {
        None
    }
}

/// Authentication, rate limits and request metrics around every route.
async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = route_label(req.uri().path());
    let resp = match required_scope(req.uri().path()) {
        None => next.run(req).await,
        Some(scope) => {
            let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            match refusal(state.keys.check(header, scope), scope.name()) {
                None => next.run(req).await,
                Some(e) => e.into_response(),
            }
        }
    };
    state.metrics.observe_request(route, resp.status().as_u16(), start.elapsed().as_secs_f64());
    resp
}

/// The error for a key's refused request (None when allowed); `scope` names what it lacks.
pub fn refusal(decision: Decision, scope: &str) -> Option<ApiError> {
    match decision {
        Decision::Allow => None,
        Decision::Unauthorized => Some(ApiError::new(StatusCode::UNAUTHORIZED, "missing or unknown API key: send `Authorization: Bearer KEY`")),
        Decision::Forbidden => Some(ApiError::new(StatusCode::FORBIDDEN, format!("this API key lacks the {scope} scope"))),
        Decision::RateLimited(after) => Some(ApiError::rate_limited(after)),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "this route does not take that method; see /openapi.json")
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let names: Vec<String> = state.registry.all().iter().map(|m| m.name.clone()).collect();
    Json(json!({"status": "ok", "models": names}))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    for m in state.registry.all() {
        state.metrics.set_queue_depth(&m.name, m.batcher.depth());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

fn model_info(m: &LoadedModel) -> Value {
    let kind = if m.model.labels().is_some() { "classifier" } else { "encoder" };
    json!({
        "id": m.name, "object": "model", "owned_by": "zhiku", "kind": kind,
        "labels": m.model.labels(), "dimensions": m.model.dimensions(), "max_length": m.model.max_length(),
        "text_pairs": m.model.classifier_config().is_some_and(|c| c.text_pairs),
        "int8": m.int8,
        "adapter": m.model.adapter.as_ref().map(|(method, base)| json!({"method": method, "base": base.display().to_string()})),
    })
}

async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut data: Vec<Value> = state.registry.all().iter().map(|m| model_info(m)).collect();
    data.extend(crate::llm::model_entries(&state));
    Json(json!({"object": "list", "data": data}))
}

/// The JSON body as `T`, with 413 for an oversized body, 400 for malformed JSON and 422 for
/// well-formed JSON of the wrong shape.
pub fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> AppResult<T> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
        } else {
            ApiError::bad(format!("cannot read the request body: {e}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad("empty request body: expected a JSON object"));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let status = if e.is_data() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::BAD_REQUEST };
        ApiError::new(status, format!("invalid JSON body: {e}"))
    })
}

fn pick_model(state: &AppState, name: Option<&str>) -> AppResult<Arc<LoadedModel>> {
    match name {
        Some(n) => state.registry.get(n).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown model {n:?}; GET /v1/models lists them"))),
        None => {
            let all = state.registry.all();
            match all.len() {
                1 => Ok(all[0].clone()),
                0 => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no model is loaded")),
                _ => Err(ApiError::bad("several models are loaded: name one with \"model\"")),
            }
        }
    }
}

fn collect_texts(state: &AppState, text: Option<String>, texts: Option<Vec<String>>) -> AppResult<Vec<String>> {
    let texts = match (text, texts) {
        (Some(t), None) => vec![t],
        (None, Some(t)) => t,
        (Some(_), Some(_)) => return Err(ApiError::bad("give either \"text\" or \"texts\", not both")),
        (None, None) => return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "missing \"texts\" (a list of strings) or \"text\"")),
    };
    if texts.is_empty() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "\"texts\" is empty"));
    }
    if texts.len() > state.config.max_texts {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("{} texts in one request; the limit is {}", texts.len(), state.config.max_texts)));
    }
    Ok(texts)
}

/// Tokenises (off the async threads), applies the long-text policy, queues the job and waits.
async fn run_model(state: &AppState, m: &Arc<LoadedModel>, op: Op, texts: Vec<String>, pairs: Option<Vec<String>>) -> AppResult<(Vec<Vec<f32>>, usize)> {
    if let Some(p) = &pairs {
        if p.len() != texts.len() {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{} texts but {} pairs", texts.len(), p.len())));
        }
    }
    let model = m.clone();
    let items = tokio::task::spawn_blocking(move || {
        let t: Vec<&str> = texts.iter().map(String::as_str).collect();
        let p: Option<Vec<&str>> = pairs.as_ref().map(|p| p.iter().map(String::as_str).collect());
        model.model.tokenizer.encode_many(&t, p.as_deref())
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "tokenisation failed"))?
    .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    if state.config.long_text == LongText::Reject {
        if let Some(i) = items.iter().position(|t| t.truncated) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("text {i} is longer than the model's {} tokens (this server rejects long texts instead of truncating)", m.model.max_length()),
            ));
        }
    }
    let tokens = items.iter().map(|t| t.ids.len()).sum();
    let n = items.len();
    let rx = match m.batcher.submit(op, items) {
        Submit::Queued(rx) => rx,
        Submit::Full => {
            return Err(ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: format!("model {:?} is overloaded (queue full); retry shortly", m.name), retry_after: Some(1) })
        }
    };
    let rows = rx
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model was unloaded before answering"))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    state.metrics.count_texts(&m.name, if op == Op::Classify { "classify" } else { "embed" }, n);
    Ok((rows, tokens))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyRequest {
    model: Option<String>,
    text: Option<String>,
    texts: Option<Vec<String>>,
    /// Second texts, for models trained on pairs.
    pairs: Option<Vec<String>>,
    top_k: Option<usize>,
}

async fn classify(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> AppResult<Json<Value>> {
    let req: ClassifyRequest = parse(body)?;
    let m = pick_model(&state, req.model.as_deref())?;
    let Some(cfg) = m.model.classifier_config().cloned() else {
        return Err(ApiError::bad(format!("model {:?} is an encoder without a classification head; use /v1/embed", m.name)));
    };
    if cfg.text_pairs && req.pairs.is_none() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "this model was trained on text pairs: give \"pairs\" too"));
    }
    let texts = collect_texts(&state, req.text, req.texts)?;
    let top_k = req.top_k.unwrap_or(1).clamp(1, cfg.labels.len());
    let (rows, _) = run_model(&state, &m, Op::Classify, texts, req.pairs).await?;
    let results: Vec<Value> = rows
        .iter()
        .map(|p| {
            let (labels, top) = cfg.decide(p, top_k);
            json!({"labels": labels, "scores": top.into_iter().map(|(l, s)| json!({"label": l, "score": s})).collect::<Vec<_>>()})
        })
        .collect();
    Ok(Json(json!({"model": m.name, "results": results})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedRequest {
    model: Option<String>,
    text: Option<String>,
    texts: Option<Vec<String>>,
    /// Scale vectors to unit length (default true: dot product = cosine similarity).
    normalize: Option<bool>,
}

async fn embed(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> AppResult<Json<Value>> {
    let req: EmbedRequest = parse(body)?;
    let m = pick_model(&state, req.model.as_deref())?;
    let texts = collect_texts(&state, req.text, req.texts)?;
    let (rows, _) = run_model(&state, &m, Op::Embed { normalize: req.normalize.unwrap_or(true) }, texts, None).await?;
    Ok(Json(json!({"model": m.name, "dimensions": m.model.dimensions(), "embeddings": rows})))
}

/// OpenAI's embeddings request; fields we do not use (`user`) are accepted and ignored.
#[derive(Deserialize)]
struct OpenAiRequest {
    model: Option<String>,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

async fn openai_embeddings(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> AppResult<Json<Value>> {
    let req: OpenAiRequest = parse(body)?;
    /// What embeds the texts: an encoder, or an image-text model's text tower (texts in the
    /// space of its image embeddings).
    enum Embedder {
        Encoder(Arc<LoadedModel>),
        ImageText(String, Arc<zhiku_media::clip::ImageTextModel>),
    }
    let embedder = match req.model.as_deref().and_then(|n| state.clip.get(n).map(|c| (n, c.clone()))) {
        Some((name, c)) => Embedder::ImageText(name.to_string(), c),
        None => Embedder::Encoder(pick_model(&state, req.model.as_deref())?),
    };
    if let Some(f) = req.encoding_format.as_deref() {
        if f != "float" {
            return Err(ApiError::bad(format!("encoding_format {f:?} is not supported; use \"float\"")));
        }
    }
    if let Some(d) = req.dimensions {
        let dims = match &embedder {
            Embedder::Encoder(m) => m.model.dimensions(),
            Embedder::ImageText(_, c) => c.model.config.projection_dim,
        };
        if d != dims {
            return Err(ApiError::bad(format!("this model's vectors have {dims} dimensions; it cannot give {d}")));
        }
    }
    let texts = match req.input {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "\"input\" must be a string or a list of strings (token arrays are not supported)")),
            })
            .collect::<AppResult<Vec<_>>>()?,
        _ => return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "\"input\" must be a string or a list of strings")),
    };
    let texts = collect_texts(&state, None, Some(texts))?;
    let (name, (rows, tokens)) = match embedder {
        Embedder::Encoder(m) => (m.name.clone(), run_model(&state, &m, Op::Embed { normalize: true }, texts, None).await?),
        Embedder::ImageText(name, c) => (name, crate::images::embed_texts(c, texts).await?),
    };
    let data: Vec<Value> = rows.into_iter().enumerate().map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e})).collect();
    Ok(Json(json!({"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    name: String,
    path: String,
    #[serde(default)]
    int8: bool,
}

async fn admin_load(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> AppResult<Response> {
    let req: LoadRequest = parse(body)?;
    if req.name.len() > 64 || !crate::valid_model_name(&req.name) {
        return Err(ApiError::bad("model names are 1-64 characters of letters, digits, '.', '_' and '-'"));
    }
    let st = state.clone();
    let loaded = tokio::task::spawn_blocking(move || st.registry.load(&req.name, std::path::Path::new(&req.path), req.int8))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "loading failed"))?
        .map_err(|e| ApiError::bad(format!("cannot load the model: {e:#}")))?;
    eprintln!("zhiku serve: loaded {} from {}", loaded.name, loaded.path.display());
    Ok((StatusCode::CREATED, Json(model_info(&loaded))).into_response())
}

async fn admin_unload(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> AppResult<Json<Value>> {
    if state.registry.unload(&name) {
        eprintln!("zhiku serve: unloaded {name}");
        Ok(Json(json!({"unloaded": name})))
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, format!("unknown model {name:?}")))
    }
}
