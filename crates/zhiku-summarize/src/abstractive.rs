//! Abstractive summaries by a language model, with map-reduce for texts longer than it reads
//! at once: the text is cut at sentence boundaries into pieces of at most `chunk_tokens`
//! tokens, every piece is summarised (all pieces in one batch), the summaries are joined, and
//! the joined text is summarised again, until it fits in one piece.

use crate::split_sentences;
use anyhow::{bail, Result};
use serde::Serialize;
use zhiku_infer::sampling::SamplingParams;
use zhiku_infer::template::Message;
use zhiku_infer::{LanguageModel, Prompt, Request};

/// The instruction when none is given: Chinese for a text with Chinese characters.
pub fn default_instruction(text: &str) -> &'static str {
    if text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)) {
        "请用几句话概括下面这段文字的要点。"
    } else {
        "Summarize the following text in a few sentences."
    }
}

pub struct AbstractiveOptions<'a> {
    /// Put before the text in the user turn (default: [`default_instruction`]).
    pub instruction: Option<&'a str>,
    /// An optional system turn.
    pub system: Option<&'a str>,
    /// Most tokens of each summary.
    pub max_tokens: usize,
    /// Most tokens of text in one request [default: what the context leaves after the
    /// instruction and the summary, at most 3072].
    pub chunk_tokens: Option<usize>,
    /// The adapter (by the name it was loaded under) to summarise with.
    pub adapter: Option<&'a str>,
    /// Most rounds of reduction before giving up on shrinking (each round must shrink the text).
    pub max_rounds: usize,
}

impl Default for AbstractiveOptions<'_> {
    fn default() -> Self {
        Self { instruction: None, system: None, max_tokens: 256, chunk_tokens: None, adapter: None, max_rounds: 4 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Abstract {
    pub summary: String,
    /// Pieces summarised in the first round (1: the text fitted).
    pub chunks: usize,
    /// Rounds of summarising (1: no reduction).
    pub rounds: usize,
    pub generated_tokens: usize,
}

/// Cuts `text` at sentence boundaries into pieces of at most `budget` tokens (a sentence
/// longer than that is cut by tokens).
pub fn pieces(lm: &LanguageModel, text: &str, budget: usize) -> Result<Vec<String>> {
    let budget = budget.max(16);
    let mut out = Vec::new();
    let (mut current, mut current_tokens) = (String::new(), 0usize);
    for s in split_sentences(text) {
        let ids = lm.encode(&s.text, false)?;
        if ids.len() > budget {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
                current_tokens = 0;
            }
            for part in ids.chunks(budget) {
                out.push(lm.tokenizer.decode(part, true).map_err(|e| anyhow::anyhow!("cannot decode: {e}"))?);
            }
            continue;
        }
        if current_tokens + ids.len() > budget && !current.is_empty() {
            out.push(std::mem::take(&mut current));
            current_tokens = 0;
        }
        if !current.is_empty() && !current.ends_with(|c: char| !c.is_ascii()) {
            current.push(' ');
        }
        current.push_str(&s.text);
        current_tokens += ids.len();
    }
    if !current.is_empty() {
        out.push(current);
    }
    Ok(out)
}

/// Summarises `text` with `lm` (greedy decoding).
pub fn summarize(lm: &LanguageModel, text: &str, opts: &AbstractiveOptions) -> Result<Abstract> {
    Ok(summarize_many(lm, &[text], opts, 32, &mut |_, _| {})?.remove(0))
}

/// Summarises each text; the pieces of all texts in a round are generated together, `batch`
/// requests at a time. `progress(texts done, texts)` after each batch.
pub fn summarize_many(lm: &LanguageModel, texts: &[&str], opts: &AbstractiveOptions, batch: usize, progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<Abstract>> {
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        bail!("text {} to summarise is empty", i + 1)
    }
    let first = texts.first().copied().unwrap_or_default();
    let instruction = opts.instruction.unwrap_or_else(|| default_instruction(first));
    let messages = |body: &str| -> Vec<Message> {
        let mut m: Vec<Message> = opts.system.map(|s| Message::new("system", s)).into_iter().collect();
        m.push(Message::new("user", &format!("{instruction}\n\n{body}")));
        m
    };
    // What the template and instruction take, measured on an empty body.
    let overhead = lm.prompt_ids(&Prompt::Chat(messages(".")))?.len();
    let context = lm.model.config().context_length;
    let room = context.saturating_sub(overhead + opts.max_tokens + 8);
    if room < 32 {
        bail!("the context ({context} tokens) leaves no room for text after the instruction and {} summary tokens", opts.max_tokens)
    }
    let budget = opts.chunk_tokens.unwrap_or(3072).min(room);
    let request = |body: &str| Request {
        prompt: Prompt::Chat(messages(body)),
        params: SamplingParams::greedy(),
        max_tokens: opts.max_tokens,
        stop: vec![],
        truncate: false,
        adapter: opts.adapter.map(str::to_string),
    };
    let mut current: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    let mut results: Vec<Option<Abstract>> = vec![None; texts.len()];
    let (mut chunks, mut generated) = (vec![0usize; texts.len()], vec![0usize; texts.len()]);
    for round in 1.. {
        // (text, piece) for every text still being summarised.
        let mut work: Vec<(usize, String)> = Vec::new();
        let mut count = vec![0usize; texts.len()];
        for (i, t) in current.iter().enumerate() {
            if results[i].is_none() {
                for p in pieces(lm, t, budget)? {
                    work.push((i, p));
                    count[i] += 1;
                }
                if round == 1 {
                    chunks[i] = count[i];
                }
            }
        }
        if work.is_empty() {
            break;
        }
        let mut summaries: Vec<Vec<String>> = vec![Vec::new(); texts.len()];
        for group in work.chunks(batch.max(1)) {
            let requests: Vec<Request> = group.iter().map(|(_, p)| request(p)).collect();
            for ((i, _), c) in group.iter().zip(lm.generate(&requests, |_, _| {})?) {
                generated[*i] += c.completion_tokens;
                summaries[*i].push(c.text.trim().to_string());
            }
            progress(results.iter().filter(|r| r.is_some()).count(), texts.len());
        }
        for (i, s) in summaries.into_iter().enumerate() {
            if results[i].is_some() || count[i] == 0 {
                continue;
            }
            if count[i] == 1 {
                results[i] = Some(Abstract { summary: s.into_iter().next().unwrap_or_default(), chunks: chunks[i], rounds: round, generated_tokens: generated[i] });
                continue;
            }
            let joined = s.into_iter().filter(|t| !t.is_empty()).collect::<Vec<_>>().join("\n");
            if joined.is_empty() {
                bail!("text {}: the model wrote nothing for any of its {} pieces", i + 1, count[i])
            }
            if round >= opts.max_rounds || joined.len() >= current[i].len() {
                bail!("text {}: the summaries of {} pieces ({} characters) do not shrink below the text they summarise after {round} rounds; lower --max-tokens or raise --chunk-tokens", i + 1, count[i], joined.chars().count())
            }
            current[i] = joined;
        }
        progress(results.iter().filter(|r| r.is_some()).count(), texts.len());
    }
    Ok(results.into_iter().map(|r| r.expect("every text is summarised or an error returned")).collect())
}
