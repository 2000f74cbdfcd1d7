//! `zhiku serve`: classifiers and encoders over HTTP.
//!
//! Data flows one way: a handler validates and tokenises the request, hands the token ids to the
//! model's [`batcher::Batcher`] (one worker thread per model, dynamic batching under a token
//! budget), and turns the returned rows into JSON. Models sit in a [`registry::Registry`] that
//! admin requests change while traffic continues; a request holds its model by `Arc`, so an
//! unload never cuts one off.

pub mod api;
pub mod auth;
pub mod batcher;
pub mod library;
pub mod llm;
pub mod metrics;
pub mod openapi;
pub mod recommend;
pub mod speech;
pub mod upload;
pub mod images;
pub mod ocr;
pub mod registry;

use anyhow::{bail, Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

/// Model names, from `--model NAME=DIR` or the admin API: letters, digits, '.', '_' and '-'.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// What to do with a text longer than the model's maximum length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongText {
    Truncate,
    /// Answer 413.
    Reject,
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// `(name, folder)` pairs to load at start.
    pub models: Vec<(String, PathBuf)>,
    /// `(name, GGUF file)` language models to load at start.
    pub llms: Vec<(String, PathBuf)>,
    /// `(name, adapter folder)`: LoRA adapters served over a language model of `llms` (the base
    /// the adapter records), each request choosing one by its name; one base in memory.
    pub adapters: Vec<(String, PathBuf)>,
    /// Content libraries (NAME, folder made by `zhiku library add`, or `postgres://...#LIB`).
    pub libraries: Vec<(String, PathBuf)>,
    /// Recommenders (NAME, folder made by `zhiku recommend train`).
    pub recommenders: Vec<(String, PathBuf)>,
    /// Speech models (NAME, CTranslate2 or Hugging Face Whisper folder) for /v1/audio/transcriptions.
    pub speech: Vec<(String, PathBuf)>,
    /// OCR models (NAME, folder of PP-OCR .onnx files) for /v1/ocr.
    pub ocr: Vec<(String, PathBuf)>,
    /// Image-text models (NAME, CLIP or Chinese-CLIP folder) for /v1/images/tags and
    /// /v1/images/embeddings, and their text tower for /v1/embeddings.
    pub clip: Vec<(String, PathBuf)>,
    /// Largest audio or image upload in bytes, and longest recording in seconds.
    pub max_upload_bytes: usize,
    pub max_audio_seconds: f64,
    /// Each language model's batch bounds (sequences, KV-cache bytes).
    pub llm_limits: zhiku_infer::scheduler::Limits,
    /// Map GGUF files (the default) instead of reading them into memory.
    pub llm_mmap: bool,
    /// Names of the models to run with int8 linear layers.
    pub int8: Vec<String>,
    pub host: IpAddr,
    pub port: u16,
    pub api_keys_file: Option<PathBuf>,
    /// Allow a non-loopback address without API keys.
    pub allow_unauthenticated: bool,
    /// Requests per second per key.
    pub rate_limit: Option<f64>,
    pub batch: batcher::BatchConfig,
    pub max_texts: usize,
    pub max_body_bytes: usize,
    pub long_text: LongText,
}

pub struct AppState {
    pub registry: registry::Registry,
    /// Content libraries by name, each opened for writing by this server (one lock each:
    /// requests to a library take turns).
    pub libraries: std::collections::HashMap<String, Arc<std::sync::Mutex<zhiku_library::Library>>>,
    pub llms: Vec<Arc<llm::LlmWorker>>,
    pub recommenders: std::collections::HashMap<String, Arc<recommend::ServedRecommender>>,
    pub speech: std::collections::HashMap<String, Arc<zhiku_media::speech::SpeechModel>>,
    pub ocr: std::collections::HashMap<String, Arc<zhiku_media::ocr::OcrModel>>,
    pub clip: std::collections::HashMap<String, Arc<zhiku_media::clip::ImageTextModel>>,
    pub keys: auth::ApiKeys,
    pub metrics: Arc<metrics::Metrics>,
    pub config: ServeConfig,
}

/// Loads the models, binds, prints `listening on http://ADDR` on stderr and serves until Ctrl-C
/// or SIGTERM, then stops accepting and finishes the requests in flight.
pub fn run(config: ServeConfig) -> Result<()> {
    let keys = auth::ApiKeys::load(config.api_keys_file.as_deref(), std::env::var("ZHIKU_API_KEYS").ok().as_deref(), config.rate_limit)?;
    if !keys.enabled() && !config.host.is_loopback() && !config.allow_unauthenticated {
        bail!(
            "refusing to listen on {} without API keys: give --api-keys FILE (or ZHIKU_API_KEYS), use --host 127.0.0.1, \
             or pass --allow-unauthenticated",
            config.host
        )
    }
    if config.models.is_empty() && config.llms.is_empty() && config.adapters.is_empty() && config.libraries.is_empty() && config.recommenders.is_empty() && config.speech.is_empty() && config.ocr.is_empty() && config.clip.is_empty() {
        bail!("nothing to serve: give at least one --model NAME=DIR (or NAME=FILE.gguf), --library NAME=DIR, --recommender NAME=DIR, --speech NAME=DIR, --ocr NAME=DIR or --clip NAME=DIR")
    }
    let metrics = Arc::new(metrics::Metrics::new());
    let registry = registry::Registry::new(config.batch, metrics.clone());
    for (name, dir) in &config.models {
        registry.load(name, dir, config.int8.contains(name)).with_context(|| format!("cannot load model {name:?} from {}", dir.display()))?;
        eprintln!("zhiku serve: loaded {name} from {}", dir.display());
    }
    // Each adapter goes with the served model it was trained on (same file).
    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut adapters_of: Vec<Vec<(String, zhiku_models::decoder::adapter::DecoderAdapter)>> = (0..config.llms.len()).map(|_| Vec::new()).collect();
    for (name, dir) in &config.adapters {
        let adapter = zhiku_models::decoder::adapter::DecoderAdapter::open(dir).with_context(|| format!("adapter {name:?}"))?;
        let base = adapter.base.as_deref().map(canonical);
        match config.llms.iter().position(|(_, file)| Some(canonical(file)) == base) {
            Some(i) => adapters_of[i].push((name.clone(), adapter)),
            None => anyhow::bail!(
                "adapter {name:?} ({}) was trained on {}; serve that model too (--model NAME={0})",
                dir.display(),
                adapter.base.as_deref().map_or("an unrecorded base".into(), |b| b.display().to_string())
            ),
        }
    }
    let mut llms = Vec::new();
    for ((name, file), adapters) in config.llms.iter().zip(&adapters_of) {
        let w = llm::LlmWorker::start(name, file, adapters, config.llm_mmap, config.llm_limits, config.batch.queue_size, metrics.clone())
            .with_context(|| format!("cannot load language model {name:?} from {}", file.display()))?;
        eprintln!("zhiku serve: loaded language model {name} from {}", file.display());
        for (a, adapter) in adapters {
            eprintln!("zhiku serve: adapter {a} from {} over {name}", adapter.dir.display());
        }
        llms.push(Arc::new(w));
    }
    let mut libraries = std::collections::HashMap::new();
    for (name, dir) in &config.libraries {
        let postgres = dir.to_str().is_some_and(|d| d.starts_with("postgres://") || d.starts_with("postgresql://"));
        if !postgres && !dir.join("library.json").exists() {
            bail!("--library {name}={}: not a library; create it with `zhiku library add --library {} FILES`", dir.display(), dir.display())
        }
        let lib = zhiku_library::Library::open_for_writing(dir, &zhiku_library::CreateOptions::default()).with_context(|| format!("cannot open library {name:?} at {}", dir.display()))?;
        eprintln!("zhiku serve: opened library {name} at {}", dir.display());
        libraries.insert(name.clone(), Arc::new(std::sync::Mutex::new(lib)));
    }
    let mut recommenders = std::collections::HashMap::new();
    for (name, dir) in &config.recommenders {
        let model = zhiku_recommend::Recommender::load(dir).with_context(|| format!("cannot load recommender {name:?} from {}", dir.display()))?;
        eprintln!("zhiku serve: loaded recommender {name} ({}, {} users, {} items) from {}", model.config.algorithm.name(), model.users.len(), model.n_items(), dir.display());
        recommenders.insert(name.clone(), Arc::new(recommend::ServedRecommender::new(model)));
    }
    let mut speech = std::collections::HashMap::new();
    for (name, dir) in &config.speech {
        let dtype = if config.int8.contains(name) { zhiku_models::blocks::GgmlType::Q8_0 } else { zhiku_models::blocks::GgmlType::F32 };
        let model = zhiku_media::speech::SpeechModel::load(dir, dtype).with_context(|| format!("cannot load speech model {name:?} from {}", dir.display()))?;
        eprintln!("zhiku serve: loaded speech model {name} from {}", dir.display());
        speech.insert(name.clone(), Arc::new(model));
    }
    let mut ocr = std::collections::HashMap::new();
    for (name, dir) in &config.ocr {
        let model = zhiku_media::ocr::OcrModel::load(dir).with_context(|| format!("cannot load OCR model {name:?} from {}", dir.display()))?;
        eprintln!("zhiku serve: loaded OCR model {name} from {}", dir.display());
        ocr.insert(name.clone(), Arc::new(model));
    }
    let mut clip = std::collections::HashMap::new();
    for (name, dir) in &config.clip {
        let model = zhiku_media::clip::ImageTextModel::load(dir).with_context(|| format!("cannot load image-text model {name:?} from {}", dir.display()))?;
        eprintln!("zhiku serve: loaded image-text model {name} from {}", dir.display());
        clip.insert(name.clone(), Arc::new(model));
    }
    let state = Arc::new(AppState { registry, libraries, llms, recommenders, speech, ocr, clip, keys, metrics, config: config.clone() });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(config.host, config.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "zhiku serve: listening on http://{addr} ({})",
            if state.keys.enabled() { format!("{} API keys", state.keys.len()) } else { "no API keys: loopback only".into() }
        );
        axum::serve(listener, api::router(state)).with_graceful_shutdown(shutdown_signal()).await?;
        eprintln!("zhiku serve: stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("zhiku serve: shutting down, finishing requests in flight");
}
