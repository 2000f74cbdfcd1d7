//! Language models behind OpenAI-compatible routes: `POST /v1/chat/completions` and
//! `POST /v1/completions`, whole answers or server-sent events.
//!
//! One worker thread per model runs a `zhiku_infer::scheduler::Scheduler`: requests join the
//! running batch between forward passes (continuous batching) while it has room (sequences and
//! KV-cache bytes); the others wait in a bounded queue, and beyond it the server answers 503. A
//! handler hears its sequence's text through a channel; when the client goes away the channel
//! closes and the worker drops the sequence at its next token.

use crate::api::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use zhiku_infer::sampling::SamplingParams;
use zhiku_infer::scheduler::{AdmitError, Event, Limits, Scheduler};
use zhiku_infer::template::Message;
use zhiku_infer::{Completion, LanguageModel, Prepared, Prompt, Request};

/// What a handler hears from the worker.
pub enum Msg {
    Text(String),
    Done(Completion),
    /// The request could not run (status, message).
    Failed(u16, String),
}

struct Job {
    request: Request,
    prepared: Prepared,
    events: UnboundedSender<Msg>,
}

/// A served language model: its weights and the queue into its worker.
pub struct LlmWorker {
    pub name: String,
    pub lm: Arc<LanguageModel>,
    pub limits: Limits,
    queue: crossbeam_channel::Sender<Job>,
}

impl LlmWorker {
    /// Loads `path` with its LoRA `adapters` (name, folder) and starts the worker thread.
    pub fn start(name: &str, path: &std::path::Path, adapters: &[(String, zhiku_models::decoder::adapter::DecoderAdapter)], mmap: bool, limits: Limits, queue_size: usize, metrics: Arc<crate::metrics::Metrics>) -> anyhow::Result<Self> {
        let lm = Arc::new(LanguageModel::open_with_opened_adapters(Some(path), adapters, mmap)?);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue_size);
        let worker_lm = lm.clone();
        let model_name = name.to_string();
        std::thread::Builder::new().name(format!("llm-{name}")).spawn(move || {
            zhiku_models::float_env::init();
            run_worker(&worker_lm, &rx, limits, &model_name, &metrics)
        })?;
        Ok(Self { name: name.to_string(), lm, limits, queue: tx })
    }

    /// Queues a request; its events arrive on the returned channel. 503 when the queue is full.
    pub(crate) fn submit(&self, request: Request, prepared: Prepared) -> Result<UnboundedReceiver<Msg>, ApiError> {
        let (tx, rx) = unbounded_channel();
        match self.queue.try_send(Job { request, prepared, events: tx }) {
            Ok(()) => Ok(rx),
            Err(crossbeam_channel::TrySendError::Full(_)) => Err(ApiError::overloaded(format!("model {:?} is at capacity: its queue of waiting requests is full", self.name))),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the model's worker stopped")),
        }
    }
}

fn run_worker(lm: &LanguageModel, rx: &crossbeam_channel::Receiver<Job>, limits: Limits, name: &str, metrics: &crate::metrics::Metrics) {
    let mut scheduler = Scheduler::new(lm, limits);
    // A job taken from the queue that did not fit yet; nothing more is taken until it does, so
    // the queue's bound is the bound on waiting requests.
    let mut held: Option<Job> = None;
    loop {
        if scheduler.is_idle() && held.is_none() {
            match rx.recv() {
                Ok(job) => held = Some(job),
                Err(_) => return,
            }
        }
        loop {
            let job = match held.take() {
                Some(j) => j,
                None => match rx.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                },
            };
            if job.events.is_closed() {
                continue;
            }
            let tx = job.events.clone();
            let sink = Box::new(move |e: Event| {
                tx.send(match e {
                    Event::Text(t) => Msg::Text(t),
                    Event::Done(c) => Msg::Done(c),
                })
                .is_ok()
            });
            match scheduler.admit(&job.request, &job.prepared, sink) {
                Ok(()) => {}
                Err(AdmitError::Full(_)) if !scheduler.is_idle() => {
                    held = Some(job);
                    break;
                }
                Err(e) => {
                    let _ = job.events.send(Msg::Failed(422, e.to_string()));
                }
            }
        }
        metrics.set_queue_depth(name, rx.len() + held.is_some() as usize);
        match scheduler.step() {
            Ok(tokens) => metrics.observe_generation(name, scheduler.len(), tokens),
            Err(e) => {
                // The sequences in the batch end here (their handlers see the channel close
                // and answer 500); the worker goes on with a fresh batch.
                eprintln!("zhiku serve: model {name}: generation failed: {e:#}");
                scheduler = Scheduler::new(lm, limits);
                metrics.observe_generation(name, 0, 0);
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields both routes share (OpenAI's names; top_k, min_p and repetition_penalty are
/// extensions that llama.cpp's and vLLM's servers accept too).
#[derive(Debug, Deserialize)]
struct Common {
    model: Option<String>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<StopField>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct CompletionBody {
    prompt: String,
    #[serde(flatten)]
    common: Common,
}

const DEFAULT_MAX_TOKENS: usize = 512;

impl Common {
    fn request(&self, prompt: Prompt, lm: &LanguageModel) -> Result<Request, ApiError> {
        if self.n.unwrap_or(1) != 1 {
            return Err(ApiError::unprocessable("only n = 1 is supported"));
        }
        let params = SamplingParams {
            // OpenAI's defaults: plain sampling at temperature 1.
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            seed: self.seed.unwrap_or_else(rand_seed),
            ..SamplingParams::default()
        };
        params.validate().map_err(|e| ApiError::unprocessable(e.to_string()))?;
        let ctx = lm.model.config().context_length;
        let max_tokens = self.max_completion_tokens.or(self.max_tokens).unwrap_or(DEFAULT_MAX_TOKENS.min(ctx / 2));
        if max_tokens == 0 {
            return Err(ApiError::unprocessable("max_tokens must be at least 1"));
        }
        let stop = match &self.stop {
            None => vec![],
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(ApiError::unprocessable("stop takes up to 4 non-empty strings of up to 256 bytes"));
        }
        Ok(Request { prompt, params, max_tokens, stop, truncate: false, adapter: None })
    }
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

/// A served model a request names: a language model, or an adapter over one.
pub(crate) struct Picked {
    pub worker: Arc<LlmWorker>,
    pub adapter: Option<String>,
}

impl Picked {
    /// The name the request asked for.
    pub fn name(&self) -> String {
        self.adapter.clone().unwrap_or_else(|| self.worker.name.clone())
    }
}

pub(crate) fn pick(state: &AppState, name: Option<&str>) -> Result<Picked, ApiError> {
    let llms = &state.llms;
    match name {
        Some(n) => {
            if let Some(w) = llms.iter().find(|w| w.name == n) {
                return Ok(Picked { worker: w.clone(), adapter: None });
            }
            llms.iter()
                .find(|w| w.lm.adapters.iter().any(|a| a == n))
                .map(|w| Picked { worker: w.clone(), adapter: Some(n.to_string()) })
                .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown language model {n:?}; GET /v1/models lists them")))
        }
        None if llms.len() == 1 => Ok(Picked { worker: llms[0].clone(), adapter: None }),
        None if llms.is_empty() => Err(ApiError::new(StatusCode::NOT_FOUND, "no language model is served (start with --model NAME=FILE.gguf)")),
        None => Err(ApiError::unprocessable("several language models are served: name one with \"model\"")),
    }
}

/// Checks the prompt against the model and tokenises it (on the blocking pool).
pub(crate) async fn check(worker: &Arc<LlmWorker>, request: Request) -> Result<(Request, Prepared), ApiError> {
    let w = worker.clone();
    tokio::task::spawn_blocking(move || w.lm.prepare(&request).map(|p| (request, p)))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::unprocessable(format!("{e:#}")))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

pub async fn chat_completions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let b: ChatBody = crate::api::parse(body)?;
    let picked = pick(&state, b.common.model.as_deref())?;
    if b.messages.is_empty() {
        return Err(ApiError::unprocessable("messages is empty"));
    }
    let mut request = b.common.request(Prompt::Chat(b.messages), &picked.worker.lm)?;
    request.adapter = picked.adapter.clone();
    respond(picked, request, &b.common, Kind::Chat).await
}

pub async fn completions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let b: CompletionBody = crate::api::parse(body)?;
    let picked = pick(&state, b.common.model.as_deref())?;
    if b.prompt.is_empty() {
        return Err(ApiError::unprocessable("prompt is empty"));
    }
    let mut request = b.common.request(Prompt::Text(b.prompt), &picked.worker.lm)?;
    request.adapter = picked.adapter.clone();
    respond(picked, request, &b.common, Kind::Text).await
}

async fn respond(picked: Picked, request: Request, common: &Common, kind: Kind) -> Result<Response, ApiError> {
    let model = picked.name();
    let worker = picked.worker;
    let (request, prepared) = check(&worker, request).await?;
    let mut rx = worker.submit(request, prepared)?;
    let id = format!("{}-{:016x}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, rand_seed());
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if common.stream {
        let usage = common.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let stream = sse_stream(rx, Chunker { id, created, model, kind, usage });
        return Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response());
    }
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Msg::Text(t)) => text.push_str(&t),
            Some(Msg::Done(c)) => {
                let choice = match kind {
                    Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason, "logprobs": null}),
                    Kind::Text => json!({"index": 0, "text": c.text, "finish_reason": c.finish_reason, "logprobs": null}),
                };
                let object = if kind == Kind::Chat { "chat.completion" } else { "text_completion" };
                return Ok(Json(json!({
                    "id": id, "object": object, "created": created, "model": model,
                    "choices": [choice], "usage": usage_json(&c),
                }))
                .into_response());
            }
            Some(Msg::Failed(status, m)) => return Err(failure(Some((status, m)))),
            None => return Err(failure(None)),
        }
    }
}

/// A request that could not run (`Some((status, message))` from `Msg::Failed`) or whose
/// worker dropped it (`None`, the channel closed), as the error of a whole answer.
pub(crate) fn failure(failed: Option<(u16, String)>) -> ApiError {
    match failed {
        Some((status, m)) => ApiError::new(StatusCode::from_u16(status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY), m),
        None => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "generation stopped (see the server's log)"),
    }
}

/// The same, as the last server-sent event of a stream.
pub(crate) fn failure_event(failed: Option<(u16, String)>) -> SseEvent {
    let (status, message) = failed.unwrap_or((500, "generation stopped".into()));
    SseEvent::default().data(json!({"error": {"message": message, "code": status}}).to_string())
}

pub(crate) fn usage_json(c: &Completion) -> Value {
    json!({"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "total_tokens": c.prompt_tokens + c.completion_tokens})
}

struct Chunker {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    usage: bool,
}

impl Chunker {
    fn chunk(&self, delta: Value, finish: Value) -> Value {
        let (object, choice) = match self.kind {
            Kind::Chat => ("chat.completion.chunk", json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null})),
            Kind::Text => ("text_completion", json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "finish_reason": finish, "logprobs": null})),
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice]})
    }
}

/// Server-sent events: a first chunk with the role, one chunk per piece of text, a last chunk
/// with the finish reason, optionally a usage chunk, then `[DONE]`.
fn sse_stream(rx: UnboundedReceiver<Msg>, c: Chunker) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    let mut first = VecDeque::new();
    if c.kind == Kind::Chat {
        first.push_back(SseEvent::default().data(c.chunk(json!({"role": "assistant", "content": ""}), Value::Null).to_string()));
    }
    futures_util::stream::unfold((rx, first, c, false), |(mut rx, mut out, c, mut ended)| async move {
        loop {
            if let Some(e) = out.pop_front() {
                return Some((Ok(e), (rx, out, c, ended)));
            }
            if ended {
                return None;
            }
            match rx.recv().await {
                Some(Msg::Text(t)) => out.push_back(SseEvent::default().data(c.chunk(json!({"content": t}), Value::Null).to_string())),
                Some(Msg::Done(done)) => {
                    out.push_back(SseEvent::default().data(c.chunk(json!({}), json!(done.finish_reason)).to_string()));
                    if c.usage {
                        let mut u = c.chunk(json!({}), Value::Null);
                        u["choices"] = json!([]);
                        u["usage"] = usage_json(&done);
                        out.push_back(SseEvent::default().data(u.to_string()));
                    }
                    out.push_back(SseEvent::default().data("[DONE]"));
                    ended = true;
                }
                Some(Msg::Failed(status, m)) => {
                    out.push_back(failure_event(Some((status, m))));
                    ended = true;
                }
                None => {
                    out.push_back(failure_event(None));
                    ended = true;
                }
            }
        }
    })
}

/// `/v1/models` entries of the served language models and the adapters over them.
pub fn model_entries(state: &AppState) -> Vec<Value> {
    let mut out = Vec::new();
    for w in &state.llms {
        let c = w.lm.model.config();
        let entry = |id: &str, base: Option<&str>| {
            let mut e = json!({
                "id": id, "object": "model", "owned_by": "zhiku", "kind": "generator",
                "architecture": c.arch.name(), "context_length": c.context_length,
                "max_sequences": w.limits.max_sequences, "kv_cache_mib": w.limits.max_kv_bytes >> 20,
            });
            if let Some(b) = base {
                e["adapter_of"] = json!(b);
            }
            e
        };
        out.push(entry(&w.name, None));
        out.extend(w.lm.adapters.iter().map(|a| entry(a, Some(&w.name))));
    }
    out
}
