use anyhow::{bail, Result};
use clap::Args;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use zhiku_serve::batcher::BatchConfig;
use zhiku_serve::{LongText, ServeConfig};

#[derive(Args, Debug)]
#[command(after_help = "Routes: POST /v1/classify, POST /v1/embed, POST /v1/embeddings (OpenAI-compatible), GET /v1/models,\n\
POST /v1/chat/completions and POST /v1/completions (OpenAI-compatible, stream: true for server-sent events),\n\
POST /v1/admin/models and DELETE /v1/admin/models/NAME (load and unload while serving), GET /health,\n\
GET /metrics (Prometheus), GET /openapi.json, and a page to try the models at /.\n\n\
API keys: --api-keys FILE or ZHIKU_API_KEYS hold `KEY SCOPE[,SCOPE]` entries (one per line; `;` also\n\
separates them in the variable). Scopes: predict (the /v1 model routes), library:NAME and\n\
library:NAME:write (a content library), and admin (everything, including /v1/admin and /metrics). Without keys the server only listens on a loopback address.\n\n\
Example:\n  zhiku serve --model news=runs/news --model minilm=models/all-MiniLM-L6-v2\n  \
curl -s localhost:8080/v1/classify -d '{\"model\": \"news\", \"texts\": [\"Stocks rallied\"], \"top_k\": 3}'")]
pub struct ServeArgs {
    /// A model to serve, as NAME=DIR or NAME=FILE.gguf (repeat for several): a classifier written
    /// by `zhiku train`, an encoder folder (embeddings only), a language model in a GGUF file
    /// (OpenAI-compatible /v1/chat/completions and /v1/completions), or a LoRA adapter folder
    /// from `zhiku train --task sft` (or PEFT) over a GGUF model also served: requests choose it
    /// by NAME, and every adapter shares its base's weights and batches.
    #[arg(long = "model", value_name = "NAME=PATH", required_unless_present_any = ["libraries", "recommenders", "speech", "ocr", "clip"])]
    models: Vec<String>,
    /// A content library to serve, as NAME=DIR (made by `zhiku library add`; repeat for several)
    /// or NAME=postgres://USER@HOST/DB#LIB (several servers may share it):
    /// POST /v1/libraries/NAME/documents, GET and DELETE /v1/libraries/NAME/documents/ID,
    /// POST /v1/search, POST /v1/ask. Keys need the scope library:NAME to read it,
    /// library:NAME:write to change it.
    #[arg(long = "library", value_name = "NAME=DIR")]
    libraries: Vec<String>,
    /// A recommender to serve, as NAME=DIR (made by `zhiku recommend train`; repeat for several):
    /// POST /v1/recommend, POST /v1/similar-items, and POST /v1/interactions, whose new
    /// interactions change that user's next list without retraining. Scope: predict.
    #[arg(long = "recommender", value_name = "NAME=DIR")]
    recommenders: Vec<String>,
    /// A speech model to serve, as NAME=DIR (a CTranslate2 or Hugging Face Whisper folder; repeat for several):
    /// POST /v1/audio/transcriptions, OpenAI's multipart upload (json, verbose_json, text, srt,
    /// vtt). --int8 NAME runs it with 8-bit weights. Scope: predict.
    #[arg(long = "speech", value_name = "NAME=DIR")]
    speech: Vec<String>,
    /// An OCR model to serve, as NAME=DIR (the folder of PP-OCR det, cls and rec .onnx files;
    /// repeat for several): POST /v1/ocr, a multipart upload of a PNG or JPEG, answered with the
    /// lines, their boxes and confidences. Scope: predict.
    #[arg(long = "ocr", value_name = "NAME=DIR")]
    ocr: Vec<String>,
    /// An image-text model to serve, as NAME=DIR (a CLIP or Chinese-CLIP folder; repeat for
    /// several): POST /v1/images/tags (zero-shot tags of an uploaded image from label texts),
    /// POST /v1/images/embeddings, and POST /v1/embeddings with model NAME for texts in the same
    /// space. Scope: predict.
    #[arg(long = "clip", value_name = "NAME=DIR")]
    clip: Vec<String>,
    /// Largest audio or image upload to /v1/audio/transcriptions, /v1/ocr and /v1/images, in MiB (more: 413).
    #[arg(long, default_value_t = 100)]
    max_upload_mib: usize,
    /// Longest recording /v1/audio/transcriptions accepts, in seconds (more: 413).
    #[arg(long, default_value_t = 3.0 * 3600.0)]
    max_audio_seconds: f64,
    /// Run the named model with int8 linear layers (repeat for several): faster on the CPU,
    /// scores change slightly (see the README for measured accuracy).
    #[arg(long = "int8", value_name = "NAME")]
    int8: Vec<String>,
    /// Address to listen on; a non-loopback one needs API keys (or --allow-unauthenticated).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (0 picks a free one; the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// API keys file: `KEY SCOPE[,SCOPE]` per line.
    #[arg(long, value_name = "FILE")]
    api_keys: Option<PathBuf>,
    /// Listen on a non-loopback address without API keys.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Requests per second allowed per API key (bursts up to the same number); over it: 429 with Retry-After.
    #[arg(long, value_name = "N")]
    rate_limit: Option<f64>,
    /// Most padded tokens (texts x longest text) per forward pass when batching requests together
    /// (on the CPU, passes over ~2048 tokens outgrow the caches and run slower per text).
    #[arg(long, default_value_t = 2048)]
    max_batch_tokens: usize,
    /// How long a batch waits for more requests before running, in milliseconds (only while
    /// requests overlap: a lone request runs at once).
    #[arg(long, default_value_t = 1)]
    max_wait_ms: u64,
    /// Requests that may wait per model; beyond that the server answers 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    queue_size: usize,
    /// Most texts in one request (more: 413).
    #[arg(long, default_value_t = 256)]
    max_texts: usize,
    /// Largest request body in bytes (more: 413).
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Texts longer than the model's maximum length: truncate, or reject (413).
    #[arg(long, default_value = "truncate")]
    long_text: String,
    /// Language models: most sequences generating at once (continuous batching); more wait in
    /// the queue (--queue-size), beyond which the server answers 503.
    #[arg(long, default_value_t = 16)]
    max_sequences: usize,
    /// Language models: MiB of KV cache the running sequences may reserve together (each
    /// reserves its prompt plus max_tokens positions).
    #[arg(long, default_value_t = 2048)]
    kv_cache_mib: usize,
    /// Language models: read GGUF files into memory instead of mapping them (more memory, and
    /// on some machines faster decoding; see docs/benchmarks.md).
    #[arg(long)]
    no_mmap: bool,
}

pub fn run(a: ServeArgs) -> Result<i32> {
    let mut models = Vec::new();
    let mut llms: Vec<(String, PathBuf)> = Vec::new();
    let mut adapters: Vec<(String, PathBuf)> = Vec::new();
    for m in &a.models {
        let Some((name, dir)) = m.split_once('=') else { bail!("--model {m:?}: expected NAME=DIR") };
        if !zhiku_serve::valid_model_name(name) {
            bail!("--model {m:?}: names are letters, digits, '.', '_' and '-'")
        }
        if models.iter().chain(&llms).chain(&adapters).any(|(n, _)| n == name) {
            bail!("--model: the name {name:?} is given twice")
        }
        let path = PathBuf::from(dir);
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            llms.push((name.to_string(), path));
        } else if zhiku_models::decoder::adapter::is_decoder_adapter(&path) {
            adapters.push((name.to_string(), path));
        } else {
            models.push((name.to_string(), path));
        }
    }
    let libraries = named_dirs("library", &a.libraries)?;
    let recommenders = named_dirs("recommender", &a.recommenders)?;
    let speech = named_dirs("speech", &a.speech)?;
    let ocr = named_dirs("ocr", &a.ocr)?;
    let clip = named_dirs("clip", &a.clip)?;
    let long_text = match a.long_text.as_str() {
        "truncate" => LongText::Truncate,
        "reject" => LongText::Reject,
        other => bail!("--long-text {other:?}: expected truncate or reject"),
    };
    zhiku_serve::run(ServeConfig {
        int8: {
            for n in &a.int8 {
                if !models.iter().chain(&speech).any(|(m, _)| m == n) {
                    bail!("--int8 {n:?}: no --model or --speech of that name")
                }
            }
            a.int8.clone()
        },
        models,
        llms,
        adapters,
        libraries,
        recommenders,
        speech,
        ocr,
        clip,
        max_upload_bytes: a.max_upload_mib << 20,
        max_audio_seconds: a.max_audio_seconds,
        llm_limits: {
            if a.max_sequences == 0 || a.kv_cache_mib == 0 {
                bail!("--max-sequences and --kv-cache-mib must be at least 1")
            }
            zhiku_infer::scheduler::Limits { max_sequences: a.max_sequences, max_kv_bytes: a.kv_cache_mib << 20 }
        },
        llm_mmap: !a.no_mmap,
        host: a.host,
        port: a.port,
        api_keys_file: a.api_keys,
        allow_unauthenticated: a.allow_unauthenticated,
        rate_limit: a.rate_limit,
        batch: BatchConfig { max_batch_tokens: a.max_batch_tokens.max(1), max_wait: Duration::from_millis(a.max_wait_ms), queue_size: a.queue_size.max(1) },
        max_texts: a.max_texts.max(1),
        max_body_bytes: a.max_body_bytes,
        long_text,
    })?;
    Ok(0)
}

/// `--FLAG NAME=DIR` values as (name, folder) pairs: valid, distinct names.
fn named_dirs(flag: &str, values: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for v in values {
        let Some((name, dir)) = v.split_once('=') else { bail!("--{flag} {v:?}: expected NAME=DIR") };
        if !zhiku_serve::valid_model_name(name) {
            bail!("--{flag} {v:?}: names are letters, digits, '.', '_' and '-'")
        }
        if out.iter().any(|(n, _)| n == name) {
            bail!("--{flag}: the name {name:?} is given twice")
        }
        out.push((name.to_string(), PathBuf::from(dir)));
    }
    Ok(out)
}
