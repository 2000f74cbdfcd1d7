//! Text generation with zhiku's decoders.
//!
//! [`LanguageModel`] is a loaded model with its tokenizer and chat template;
//! [`LanguageModel::generate`] runs a batch of requests together: all prompts are processed in
//! forward passes of up to [`PREFILL_CHUNK`] tokens, then every unfinished sequence advances by
//! one token per forward pass (one batch of rows through each weight matrix), each with its own
//! sampler, stop conditions and text stream.

pub mod bench;
pub mod sampling;
pub mod stream;
pub mod template;

use anyhow::{anyhow, bail, Context, Result};
use sampling::{Sampler, SamplingParams};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;
use stream::{StopMatcher, TextStream};
use template::{ChatTemplate, Message};
use tokenizers::Tokenizer;
use zhiku_models::decoder::{DecoderModel, KvCache, Logits, Step};
use zhiku_models::gguf::GgufFile;
use zhiku_models::gguf_tokenizer::{self, TokenizerInfo};

/// Most prompt tokens one forward pass takes (bounds the activations' memory).
pub const PREFILL_CHUNK: usize = 512;

pub struct LanguageModel {
    /// Mutable only to switch `exact` products on for checks against the reference.
    pub model: DecoderModel,
    pub tokenizer: Tokenizer,
    pub info: TokenizerInfo,
    template: ChatTemplate,
    /// Whether the template came from the model (else a generic one for its family).
    pub has_own_template: bool,
    pub name: String,
    pub file_size: usize,
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

impl LanguageModel {
    /// Loads a GGUF file. (Hugging Face folders are read by `open` too, once supported.)
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            bail!("{} is a folder; zhiku generates from GGUF files (a Hugging Face folder is not read yet)", path.display())
        }
        if !path.exists() {
            bail!("model file {} does not exist", path.display())
        }
        let file = GgufFile::open(path)?;
        let model = DecoderModel::from_gguf(&file)?;
        let (tokenizer, info) = gguf_tokenizer::from_gguf(&file)?;
        let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or_default();
        let (bos, eos) = (token(info.bos), token(info.eos));
        let (source, has_own_template) = match &info.chat_template {
            Some(t) => (t.clone(), true),
            None if model.config.arch == zhiku_models::decoder::Arch::Gemma3 => (template::GEMMA.to_string(), false),
            None => (template::CHATML.to_string(), false),
        };
        let template = ChatTemplate::new(&source, &bos, &eos).with_context(|| format!("{}", path.display()))?;
        let name = file.get_str("general.name").unwrap_or("model").to_string();
        Ok(Self { model, tokenizer, info, template, has_own_template, name, file_size: file.file_size() })
    }

    /// Token ids of a text; `special`: add the BOS the model expects.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, special).map_err(|e| anyhow!("cannot tokenise: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
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

    /// Generates for every request together; `on_text(i, piece)` receives request i's text
    /// as it is produced (never a partial character, never part of a stop string).
    pub fn generate(&self, requests: &[Request], mut on_text: impl FnMut(usize, &str)) -> Result<Vec<Completion>> {
        let ctx = self.model.config.context_length;
        let mut seqs = Vec::with_capacity(requests.len());
        let mut caches = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let ctx_err = |e: anyhow::Error| if requests.len() > 1 { e.context(format!("request {}", i + 1)) } else { e };
            r.params.validate().map_err(ctx_err)?;
            if r.max_tokens == 0 {
                return Err(ctx_err(anyhow!("max_tokens must be at least 1")));
            }
            let mut ids = self.prompt_ids(&r.prompt).map_err(ctx_err)?;
            let mut truncated = 0;
            if ids.len() + r.max_tokens > ctx {
                if !r.truncate || r.max_tokens >= ctx {
                    return Err(ctx_err(anyhow!(
                        "the prompt has {} tokens; with max_tokens {} that exceeds the context of {ctx} tokens (truncate the prompt to drop its oldest tokens)",
                        ids.len(),
                        r.max_tokens
                    )));
                }
                truncated = ids.len() + r.max_tokens - ctx;
                ids.drain(..truncated);
            }
            caches.push(self.model.new_cache(ids.len() + r.max_tokens));
            seqs.push(Sequence::new(ids, truncated, r));
        }

        let t0 = Instant::now();
        let mut logits = self.prefill(&seqs, &mut caches)?;
        let prefill_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        loop {
            // Sample each live sequence's next token from its logits.
            let mut live = Vec::new();
            for (i, (s, l)) in seqs.iter_mut().zip(logits.iter_mut()).enumerate() {
                if s.finish.is_some() {
                    continue;
                }
                let Some(l) = l.as_mut() else { continue };
                let tok = s.sampler.sample(l, &s.ids, s.generated);
                s.ids.push(tok);
                s.generated += 1;
                let mut stopped_by_string = false;
                if self.info.stop_tokens.contains(&tok) {
                    s.finish = Some(FinishReason::Stop);
                } else {
                    let piece = s.stream.push(&self.tokenizer, tok);
                    let (shown, stopped) = s.stops.push(&piece);
                    if !shown.is_empty() {
                        on_text(i, &shown);
                    }
                    if stopped {
                        stopped_by_string = true;
                        s.finish = Some(FinishReason::Stop);
                    } else if s.generated >= s.max_tokens {
                        s.finish = Some(FinishReason::Length);
                    }
                }
                if s.finish.is_some() && !stopped_by_string {
                    // Release what the stream and the stop matcher still hold.
                    let tail = s.stream.finish(&self.tokenizer);
                    let (mut shown, stopped) = s.stops.push(&tail);
                    if !stopped {
                        shown.push_str(&s.stops.flush());
                    }
                    if !shown.is_empty() {
                        on_text(i, &shown);
                    }
                } else {
                    live.push(i);
                }
            }
            if live.is_empty() {
                break;
            }
            // One token for every live sequence, in one pass.
            let mut steps = Vec::with_capacity(live.len());
            let mut li = live.iter().peekable();
            for (i, cache) in caches.iter_mut().enumerate() {
                if li.peek() == Some(&&i) {
                    li.next();
                    let ids = &seqs[i].ids;
                    steps.push(Step { cache, tokens: &ids[ids.len() - 1..], logits: Logits::Last });
                }
            }
            let out = self.model.forward(&mut steps)?;
            logits.iter_mut().for_each(|l| *l = None);
            for (&i, l) in live.iter().zip(out) {
                logits[i] = Some(l);
            }
        }
        let decode_seconds = t1.elapsed().as_secs_f64();
        Ok(seqs
            .into_iter()
            .map(|s| Completion {
                text: s.stops.text().to_string(),
                token_ids: s.ids[s.prompt_len..].to_vec(),
                prompt_tokens: s.prompt_len,
                completion_tokens: s.generated,
                finish_reason: s.finish.unwrap_or(FinishReason::Length),
                truncated_tokens: s.truncated,
                prefill_seconds,
                decode_seconds,
            })
            .collect())
    }

    /// Runs every prompt through the model in passes of up to PREFILL_CHUNK tokens and returns
    /// the logits of each prompt's last token.
    fn prefill(&self, seqs: &[Sequence], caches: &mut [KvCache]) -> Result<Vec<Option<Vec<f32>>>> {
        let mut logits = vec![None; seqs.len()];
        let mut done = vec![0usize; seqs.len()];
        loop {
            let mut budget = PREFILL_CHUNK;
            let mut plan = Vec::new();
            for (i, s) in seqs.iter().enumerate() {
                let left = s.prompt_len - done[i];
                if left > 0 && budget > 0 {
                    let take = left.min(budget);
                    budget -= take;
                    plan.push((i, done[i], take));
                }
            }
            if plan.is_empty() {
                return Ok(logits);
            }
            let mut steps = Vec::with_capacity(plan.len());
            let mut pi = plan.iter().peekable();
            for (i, cache) in caches.iter_mut().enumerate() {
                if let Some(&&(j, from, take)) = pi.peek() {
                    if j == i {
                        pi.next();
                        let last = from + take == seqs[i].prompt_len;
                        steps.push(Step { cache, tokens: &seqs[i].ids[from..from + take], logits: if last { Logits::Last } else { Logits::None } });
                    }
                }
            }
            let mut out = self.model.forward(&mut steps)?.into_iter();
            for &(i, from, take) in &plan {
                done[i] = from + take;
                if done[i] == seqs[i].prompt_len {
                    logits[i] = out.next();
                }
            }
        }
    }
}

/// One request's state while it generates.
struct Sequence {
    ids: Vec<u32>,
    prompt_len: usize,
    truncated: usize,
    sampler: Sampler,
    stream: TextStream,
    stops: StopMatcher,
    max_tokens: usize,
    finish: Option<FinishReason>,
    generated: usize,
}

impl Sequence {
    fn new(ids: Vec<u32>, truncated: usize, r: &Request) -> Self {
        Self {
            prompt_len: ids.len(),
            ids,
            truncated,
            sampler: Sampler::new(r.params.clone()),
            stream: TextStream::new(),
            stops: StopMatcher::new(&r.stop),
            max_tokens: r.max_tokens,
            finish: None,
            generated: 0,
        }
    }
}
