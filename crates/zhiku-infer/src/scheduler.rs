//! Continuous batching: sequences join and leave a running batch between forward passes.
//!
//! Each [`Scheduler::step`] is one forward pass over: the next chunk of every prompt still
//! being processed (up to [`PREFILL_CHUNK`] prompt tokens in all) and one token of every
//! sequence that is generating. After it, each sequence whose logits came back samples its
//! next token, sends the text it completes to its sink, and leaves the batch when it ends (an
//! end-of-turn token, a stop string, its token limit) or when its sink reports that nobody is
//! listening any more (a disconnected client). Admission is bounded by a number of sequences
//! and by the bytes of KV cache that their prompts plus token limits can take.

use crate::sampling::Sampler;
use crate::stream::{StopMatcher, TextStream};
use crate::{Completion, FinishReason, LanguageModel, Prepared, Request, PREFILL_CHUNK};
use anyhow::{anyhow, Result};
use std::time::Instant;
use zhiku_models::decoder::{KvCache, Logits, Step};

/// What a sequence's sink receives.
#[derive(Debug, Clone)]
pub enum Event {
    /// Text completed by the latest token (never part of a character or of a stop string).
    Text(String),
    /// The sequence ended.
    Done(Completion),
}

/// A sequence's receiver of events; returning `false` cancels the sequence.
pub type Sink<'a> = Box<dyn FnMut(Event) -> bool + 'a>;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sequences in the batch at once.
    pub max_sequences: usize,
    /// Bytes of KV cache all sequences together may reserve (prompt + max_tokens each).
    pub max_kv_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_sequences: 16, max_kv_bytes: 2 << 30 }
    }
}

/// Why a request was not admitted.
#[derive(Debug)]
pub enum AdmitError {
    /// Invalid request (bad sampling values, empty or too long prompt): a client error.
    Invalid(anyhow::Error),
    /// No room now (sequences or KV memory); the request may be retried later.
    Full(String),
}

impl std::fmt::Display for AdmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdmitError::Invalid(e) => write!(f, "{e:#}"),
            AdmitError::Full(m) => f.write_str(m),
        }
    }
}

struct Active<'a> {
    ids: Vec<u32>,
    prompt_len: usize,
    truncated: usize,
    /// Prompt tokens already through the model.
    prefilled: usize,
    cache: KvCache,
    sampler: Sampler,
    stream: TextStream,
    stops: StopMatcher,
    max_tokens: usize,
    generated: usize,
    sink: Sink<'a>,
    admitted: Instant,
    first_token: Option<Instant>,
}

pub struct Scheduler<'a> {
    lm: &'a LanguageModel,
    limits: Limits,
    active: Vec<Active<'a>>,
    reserved_kv: usize,
}

impl<'a> Scheduler<'a> {
    pub fn new(lm: &'a LanguageModel, limits: Limits) -> Self {
        Self { lm, limits, active: Vec::new(), reserved_kv: 0 }
    }

    pub fn is_idle(&self) -> bool {
        self.active.is_empty()
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Bytes of KV cache the sequences in the batch reserve.
    pub fn reserved_kv_bytes(&self) -> usize {
        self.reserved_kv
    }

    /// Adds a request checked and tokenised by [`LanguageModel::prepare`] to the batch if
    /// there is room.
    pub fn admit(&mut self, r: &Request, prepared: &Prepared, sink: Sink<'a>) -> std::result::Result<(), AdmitError> {
        let (ids, truncated) = (prepared.ids.clone(), prepared.truncated);
        let positions = ids.len() + r.max_tokens;
        let kv = positions * self.lm.model.kv_bytes_per_position();
        if kv > self.limits.max_kv_bytes {
            return Err(AdmitError::Invalid(anyhow!(
                "the request needs {} MiB of KV cache ({positions} positions), more than the server's limit of {} MiB",
                kv >> 20,
                self.limits.max_kv_bytes >> 20
            )));
        }
        if self.active.len() >= self.limits.max_sequences {
            return Err(AdmitError::Full(format!("{} sequences are already running (the limit)", self.active.len())));
        }
        if self.reserved_kv + kv > self.limits.max_kv_bytes {
            return Err(AdmitError::Full(format!("the KV cache budget of {} MiB is taken", self.limits.max_kv_bytes >> 20)));
        }
        self.reserved_kv += kv;
        self.active.push(Active {
            prompt_len: ids.len(),
            cache: self.lm.model.new_cache(positions).with_adapter(prepared.adapter),
            ids,
            truncated,
            prefilled: 0,
            sampler: Sampler::new(r.params.clone()),
            stream: TextStream::new(),
            stops: StopMatcher::new(&r.stop),
            max_tokens: r.max_tokens,
            generated: 0,
            sink,
            admitted: Instant::now(),
            first_token: None,
        });
        Ok(())
    }

    /// One forward pass over the batch, then sampling, events and departures; returns the
    /// number of tokens generated.
    pub fn step(&mut self) -> Result<usize> {
        if self.active.is_empty() {
            return Ok(0);
        }
        // Plan: generating sequences feed their last token; prompts share the chunk budget.
        let mut budget = PREFILL_CHUNK;
        let mut ranges = Vec::with_capacity(self.active.len());
        for s in &self.active {
            if s.prefilled < s.prompt_len {
                let take = (s.prompt_len - s.prefilled).min(budget);
                budget -= take;
                ranges.push((s.prefilled, take, s.prefilled + take == s.prompt_len));
            } else {
                ranges.push((s.ids.len() - 1, 1, true));
            }
        }
        let mut steps = Vec::new();
        let mut got_logits = Vec::new();
        for (i, (s, &(from, take, last))) in self.active.iter_mut().zip(&ranges).enumerate() {
            if take == 0 {
                continue;
            }
            steps.push(Step { cache: &mut s.cache, tokens: &s.ids[from..from + take], logits: if last { Logits::Last } else { Logits::None } });
            if last {
                got_logits.push(i);
            }
        }
        let logits = self.lm.model.forward(&mut steps)?;
        drop(steps);
        for (i, &(_, take, _)) in ranges.iter().enumerate() {
            let s = &mut self.active[i];
            if s.prefilled < s.prompt_len {
                s.prefilled += take;
            }
        }
        let mut finished = vec![false; self.active.len()];
        let generated = got_logits.len();
        for (i, mut l) in got_logits.into_iter().zip(logits) {
            finished[i] = self.advance(i, &mut l);
        }
        let mut k = 0;
        self.active.retain(|_| {
            k += 1;
            !finished[k - 1]
        });
        self.reserved_kv = self.active.iter().map(|s| s.cache.capacity() * self.lm.model.kv_bytes_per_position()).sum();
        Ok(generated)
    }

    /// Samples sequence `i`'s next token from `logits` and sends what it completes; true when
    /// the sequence is over (ended, or its sink went away).
    fn advance(&mut self, i: usize, logits: &mut [f32]) -> bool {
        let lm = self.lm;
        let s = &mut self.active[i];
        let tok = s.sampler.sample(logits, &s.ids, s.generated);
        s.ids.push(tok);
        s.generated += 1;
        s.first_token.get_or_insert_with(Instant::now);
        let mut finish = None;
        let mut stopped_by_string = false;
        let mut out = String::new();
        if lm.info.stop_tokens.contains(&tok) {
            finish = Some(FinishReason::Stop);
        } else {
            let piece = s.stream.push(&lm.tokenizer, tok);
            let (shown, stopped) = s.stops.push(&piece);
            out.push_str(&shown);
            if stopped {
                stopped_by_string = true;
                finish = Some(FinishReason::Stop);
            } else if s.generated >= s.max_tokens {
                finish = Some(FinishReason::Length);
            }
        }
        if finish.is_some() && !stopped_by_string {
            // Release what the stream and the stop matcher still hold.
            let tail = s.stream.finish(&lm.tokenizer);
            let (shown, stopped) = s.stops.push(&tail);
            out.push_str(&shown);
            if !stopped {
                out.push_str(&s.stops.flush());
            }
        }
        if !out.is_empty() && !(s.sink)(Event::Text(out)) {
            return true;
        }
        let Some(reason) = finish else { return false };
        let first = s.first_token.unwrap_or(s.admitted);
        let done = Completion {
            text: s.stops.text().to_string(),
            token_ids: s.ids[s.prompt_len..].to_vec(),
            prompt_tokens: s.prompt_len,
            completion_tokens: s.generated,
            finish_reason: reason,
            truncated_tokens: s.truncated,
            prefill_seconds: (first - s.admitted).as_secs_f64(),
            decode_seconds: first.elapsed().as_secs_f64(),
        };
        (s.sink)(Event::Done(done));
        true
    }
}
