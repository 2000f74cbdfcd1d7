//! Text generation with zhiku's decoders.
//!
//! [`LanguageModel`] is a loaded model with its tokenizer and chat template;
//! [`LanguageModel::generate`] runs a batch of requests through the continuous-batching
//! [`scheduler::Scheduler`]: prompts in forward passes of up to [`PREFILL_CHUNK`] tokens, and every
//! unfinished sequence one token per pass (one batch of rows through each weight matrix), each
//! with its own sampler, stop conditions and text stream.

pub mod bench;
pub mod sampling;
pub mod scheduler;
pub mod stream;
pub mod template;

use anyhow::{anyhow, bail, Context, Result};
use sampling::SamplingParams;
use scheduler::{AdmitError, Event, Limits, Scheduler};
use serde::Serialize;
use std::path::Path;
use template::{ChatTemplate, Message};
use tokenizers::Tokenizer;
use zhiku_models::decoder::adapter::DecoderAdapter;
use zhiku_models::decoder::graph::{GraphDecoder, GraphOptions};
use zhiku_models::decoder::{CausalLm, DecoderModel};
use zhiku_models::gguf::GgufFile;
use zhiku_models::gguf_tokenizer::{self, TokenizerInfo};

/// Most prompt tokens one forward pass takes (bounds the activations' memory).
pub const PREFILL_CHUNK: usize = 512;

/// Which engine runs a decoder.
#[derive(Debug, Clone)]
pub enum Engine {
    /// The CPU engine: quantised kernels, KV cache in host memory.
    Cpu,
    /// candle operations on a device over weights dequantised to `dtype` (a GPU in a `cuda`
    /// build; on the CPU it checks that path).
    Graph { device: candle_core::Device, dtype: candle_core::DType },
}

impl Engine {
    /// The first GPU in a `cuda` build that finds one (bf16 weights; `ZHIKU_DEVICE=cpu`
    /// declines it), otherwise the CPU engine.
    pub fn auto() -> Self {
        match zhiku_models::default_device() {
            candle_core::Device::Cpu => Self::Cpu,
            device => Self::Graph { device, dtype: candle_core::DType::BF16 },
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub engine: Engine,
    /// Map a GGUF file (the default) instead of reading it into memory.
    pub mmap: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self { engine: Engine::auto(), mmap: true }
    }
}

impl OpenOptions {
    pub fn engine(engine: Engine) -> Self {
        Self { engine, ..Self::default() }
    }
}

pub struct LanguageModel {
    /// Mutable only to switch `exact` products on for checks against the reference.
    pub model: Box<dyn CausalLm>,
    pub tokenizer: Tokenizer,
    pub info: TokenizerInfo,
    template: ChatTemplate,
    pub name: String,
    pub file_size: usize,
    /// Names of the LoRA adapters loaded over the base, in the model's order.
    pub adapters: Vec<String>,
}

/// What to continue: raw text, or a conversation rendered with the chat template.
#[derive(Debug, Clone)]
pub enum Prompt {
    Text(String),
    Chat(Vec<Message>),
    /// Token ids as they are.
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Prompt,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Drop the oldest prompt tokens if prompt + max_tokens exceed the context, instead of
    /// refusing.
    pub truncate: bool,
    /// A LoRA adapter loaded with [`LanguageModel::load_adapter`], by name (None: the base).
    pub adapter: Option<String>,
}

/// A checked request's prompt ids (the oldest dropped if it asked to truncate).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub ids: Vec<u32>,
    /// Prompt tokens dropped.
    pub truncated: usize,
    /// The adapter's index in the model.
    pub adapter: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub text: String,
    /// The generated token ids (an end-of-turn token that stopped generation included).
    #[serde(skip)]
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    /// Prompt tokens dropped by `truncate`.
    pub truncated_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

impl Completion {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds.max(1e-9)
    }
    /// Tokens after the first (which comes out of the prompt's pass) per second of decoding.
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.completion_tokens.saturating_sub(1) as f64 / self.decode_seconds.max(1e-9)
    }
}

/// A decoder as loaded from disk, before an engine takes it: the weights, the tokenizer, the
/// chat template. Training builds its differentiable model from these; [`LanguageModel`] runs
/// them.
pub struct ModelParts {
    pub model: DecoderModel,
    pub tokenizer: Tokenizer,
    pub info: TokenizerInfo,
    pub template: ChatTemplate,
    pub name: String,
    pub file_size: usize,
}

impl ModelParts {
    /// Loads a GGUF file, or a Hugging Face folder (`config.json`, `model.safetensors`,
    /// `tokenizer.json`, `tokenizer_config.json` with its chat template).
    pub fn open(path: &Path, mmap: bool) -> Result<Self> {
        if !path.exists() {
            bail!("model file {} does not exist", path.display())
        }
        if path.is_dir() {
            return Self::open_folder(path);
        }
        let file = GgufFile::open_with(path, mmap)?;
        let model = DecoderModel::from_gguf(&file)?;
        let (tokenizer, info) = gguf_tokenizer::from_gguf(&file)?;
        let name = file.get_str("general.name").unwrap_or("model").to_string();
        Self::assemble(model, tokenizer, info, name, file.file_size(), path)
    }

    fn open_folder(dir: &Path) -> Result<Self> {
        let model = DecoderModel::from_hf_folder(dir)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| anyhow!("cannot load {}: {e}", tok_path.display()))?;
        let read = |name: &str| -> Result<serde_json::Value> {
            let p = dir.join(name);
            if !p.is_file() {
                return Ok(serde_json::Value::Null);
            }
            serde_json::from_str(&std::fs::read_to_string(&p)?).with_context(|| format!("{} is not JSON", p.display()))
        };
        let (tc, gen, cfg) = (read("tokenizer_config.json")?, read("generation_config.json")?, read("config.json")?);
        // A token is a string or {"content": ...}.
        let token = |v: &serde_json::Value| v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str())).and_then(|t| tokenizer.token_to_id(t));
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            match v {
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
                _ => v.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            }
        };
        let eos = token(&tc["eos_token"]).or_else(|| ids(&gen["eos_token_id"]).first().copied()).or_else(|| ids(&cfg["eos_token_id"]).first().copied());
        let bos = token(&tc["bos_token"]).or_else(|| ids(&cfg["bos_token_id"]).first().copied());
        let mut stop_tokens: Vec<u32> = eos.into_iter().chain(ids(&gen["eos_token_id"])).collect();
        for name in gguf_tokenizer::END_OF_TURN {
            if let Some(i) = tokenizer.token_to_id(name) {
                stop_tokens.push(i);
            }
        }
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
        // The template: tokenizer_config's (a string, or a list of named ones), or chat_template.jinja.
        let chat_template = match &tc["chat_template"] {
            serde_json::Value::String(t) => Some(t.clone()),
            serde_json::Value::Array(list) => list.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str()).map(str::to_string),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        // Whether the tokenizer itself adds BOS is in tokenizer.json's post-processor.
        let info = TokenizerInfo { bos, eos, add_bos: tc["add_bos_token"].as_bool().unwrap_or(false), stop_tokens, chat_template };
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        let size = std::fs::metadata(dir.join("model.safetensors")).map(|m| m.len() as usize).unwrap_or(0);
        Self::assemble(model, tokenizer, info, name, size, dir)
    }

    fn assemble(model: DecoderModel, tokenizer: Tokenizer, info: TokenizerInfo, name: String, file_size: usize, path: &Path) -> Result<Self> {
        let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or_default();
        let (bos, eos) = (token(info.bos), token(info.eos));
        // A model without a template gets its family's generic one.
        let source = match &info.chat_template {
            Some(t) => t.clone(),
            None if model.config.arch == zhiku_models::decoder::Arch::Gemma3 => template::GEMMA.to_string(),
            None => template::CHATML.to_string(),
        };
        let template = ChatTemplate::new(&source, &bos, &eos).with_context(|| format!("{}", path.display()))?;
        Ok(Self { model, tokenizer, info, template, name, file_size })
    }
}

impl LanguageModel {
    /// Loads a GGUF file, or a Hugging Face folder (`config.json`, `model.safetensors`,
    /// `tokenizer.json`, `tokenizer_config.json` with its chat template).
    /// With the default [`OpenOptions`] (engine from [`Engine::auto`], file mapped).
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, &OpenOptions::default())
    }

    pub fn open_with(path: &Path, options: &OpenOptions) -> Result<Self> {
        Self::from_parts(ModelParts::open(path, options.mmap)?, options.engine.clone())
    }

    /// Opens `model` (or, when it is None, the base the first adapter records) with LoRA
    /// `adapters` (name, folder) loaded. Adapters run on the CPU engine: the graph engine
    /// (a GPU) holds one set of weights and cannot choose an adapter per request, so any
    /// adapter picks [`Engine::Cpu`]; without adapters the engine is [`Engine::auto`].
    pub fn open_with_adapters(model: Option<&Path>, adapters: &[(String, std::path::PathBuf)], mmap: bool) -> Result<Self> {
        let opened = adapters.iter().map(|(name, dir)| Ok((name.clone(), DecoderAdapter::open(dir)?))).collect::<Result<Vec<_>>>()?;
        Self::open_with_opened_adapters(model, &opened, mmap)
    }

    /// [`Self::open_with_adapters`] for adapter folders already read (each read once).
    pub fn open_with_opened_adapters(model: Option<&Path>, adapters: &[(String, DecoderAdapter)], mmap: bool) -> Result<Self> {
        let path = match (model, adapters.first()) {
            (Some(m), _) => m.to_path_buf(),
            (None, Some((_, adapter))) => adapter.base_model(None)?,
            (None, None) => bail!("give the model (a GGUF file or folder), or an adapter that records its base"),
        };
        let engine = if adapters.is_empty() { Engine::auto() } else { Engine::Cpu };
        let mut lm = Self::open_with(&path, &OpenOptions { mmap, engine })?;
        for (name, adapter) in adapters {
            lm.add_adapter(name, adapter)?;
        }
        Ok(lm)
    }

    /// Puts loaded parts on an engine.
    pub fn from_parts(parts: ModelParts, engine: Engine) -> Result<Self> {
        let ModelParts { model, tokenizer, info, template, name, file_size } = parts;
        let model: Box<dyn CausalLm> = match engine {
            Engine::Cpu => Box::new(model),
            Engine::Graph { device, dtype } => Box::new(GraphDecoder::new(model, &GraphOptions { device, dtype, dense: true, lora: None, full: false })?),
        };
        Ok(Self { model, tokenizer, info, template, name, file_size, adapters: Vec::new() })
    }

    /// Loads a LoRA adapter folder (PEFT's layout, trained by zhiku or by PEFT) over this
    /// model's base weights, to be chosen per request by `name`.
    pub fn load_adapter(&mut self, name: &str, dir: &Path) -> Result<()> {
        self.add_adapter(name, &DecoderAdapter::open(dir)?)
    }

    /// Puts an adapter folder already read over this model's base weights, as `name`.
    pub fn add_adapter(&mut self, name: &str, adapter: &DecoderAdapter) -> Result<()> {
        if self.adapters.iter().any(|a| a == name) {
            bail!("an adapter named {name:?} is already loaded")
        }
        let weights = zhiku_models::decoder::lora::LoraWeights::new(name, self.model.config(), adapter.spec.alpha, adapter.spec.rank, &adapter.tensors)
            .with_context(|| format!("adapter {}", adapter.dir.display()))?;
        self.model.add_adapter(weights)?;
        self.adapters.push(name.to_string());
        Ok(())
    }

    /// Token ids of a text; `special`: add the BOS the model expects.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, special).map_err(|e| anyhow!("cannot tokenise: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        self.template.render(messages, true)
    }

    /// A prompt's token ids: chat prompts carry their special tokens in the template's text.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Text(t) => {
                if t.is_empty() {
                    bail!("the prompt is empty")
                }
                self.encode(t, true)
            }
            Prompt::Chat(m) => {
                if m.iter().all(|m| m.content.trim().is_empty()) {
                    bail!("the conversation is empty")
                }
                self.encode(&self.render_chat(m)?, false)
            }
            Prompt::Tokens(ids) => {
                if ids.is_empty() {
                    bail!("the prompt is empty")
                }
                Ok(ids.clone())
            }
        }
    }

    /// Checks a request and tokenises its prompt (once: the scheduler admits the result).
    pub fn prepare(&self, r: &Request) -> Result<Prepared> {
        r.params.validate()?;
        if r.max_tokens == 0 {
            bail!("max_tokens must be at least 1")
        }
        let ctx = self.model.config().context_length;
        let mut ids = self.prompt_ids(&r.prompt)?;
        let mut truncated = 0;
        if ids.len() + r.max_tokens > ctx {
            if !r.truncate || r.max_tokens >= ctx {
                bail!(
                    "the prompt has {} tokens; with max_tokens {} that exceeds the context of {ctx} tokens (truncate the prompt to drop its oldest tokens)",
                    ids.len(),
                    r.max_tokens
                )
            }
            truncated = ids.len() + r.max_tokens - ctx;
            ids.drain(..truncated);
        }
        let adapter = match &r.adapter {
            None => None,
            Some(name) => match self.adapters.iter().position(|a| a == name) {
                Some(i) => Some(i),
                None if self.adapters.is_empty() => bail!("adapter {name:?} is not loaded (this model has none)"),
                None => bail!("adapter {name:?} is not loaded (loaded: {})", self.adapters.join(", ")),
            },
        };
        Ok(Prepared { ids, truncated, adapter })
    }

    /// Generates for every request, batched continuously (as many at once as the default
    /// [`Limits`] admit); `on_text(i, piece)` receives request i's text as it is produced
    /// (never a partial character, never part of a stop string). Every request is checked
    /// before any is run.
    pub fn generate(&self, requests: &[Request], mut on_text: impl FnMut(usize, &str)) -> Result<Vec<Completion>> {
        let prepared = requests
            .iter()
            .enumerate()
            .map(|(i, r)| self.prepare(r).map_err(|e| if requests.len() > 1 { e.context(format!("request {}", i + 1)) } else { e }))
            .collect::<Result<Vec<_>>>()?;
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Event)>();
        let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
        let mut scheduler = Scheduler::new(self, Limits::default());
        let mut next = 0;
        while next < requests.len() || !scheduler.is_idle() {
            while next < requests.len() {
                let tx = tx.clone();
                let i = next;
                match scheduler.admit(&requests[i], &prepared[i], Box::new(move |e| tx.send((i, e)).is_ok())) {
                    Ok(()) => next += 1,
                    Err(AdmitError::Full(_)) if !scheduler.is_idle() => break,
                    Err(e) => bail!("request {}: {e}", i + 1),
                }
            }
            scheduler.step()?;
            for (i, e) in rx.try_iter() {
                match e {
                    Event::Text(t) => on_text(i, &t),
                    Event::Done(c) => done[i] = Some(c),
                }
            }
        }
        done.into_iter().enumerate().map(|(i, c)| c.ok_or_else(|| anyhow!("request {} did not finish", i + 1))).collect()
    }
}
