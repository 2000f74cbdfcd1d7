//! Scoring a generative model (or saved predictions) on conversations with known replies: the
//! reply to predict is each conversation's last assistant turn, the prompt everything before it,
//! optionally after a few worked examples ("shots"); predictions are greedy; scores are
//! [`GenerationScores`] (ROUGE, BLEU, lengths).

use crate::sft::{read_conversations, Conversation};
use crate::text_metrics::{GenerationScores, Language};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use zhiku_infer::sampling::SamplingParams;
use zhiku_infer::template::Message;
use zhiku_infer::{LanguageModel, Prompt, Request};

/// One scored example.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generated {
    /// Line of the data file.
    #[serde(default)]
    pub line: usize,
    /// The last user turn (for reading the outputs).
    #[serde(default)]
    pub prompt: String,
    pub reference: String,
    pub prediction: String,
}

/// A conversation cut before its last assistant turn: the turns to prompt with and the reply.
pub struct EvalExample {
    pub context: Vec<Message>,
    pub reference: String,
    pub line: usize,
}

/// Splits each conversation at its last assistant turn.
pub fn eval_examples(conversations: &[Conversation]) -> Vec<EvalExample> {
    conversations
        .iter()
        .map(|c| {
            let last = c.messages.iter().rposition(|m| m.role == "assistant").expect("read_conversations requires an assistant turn");
            EvalExample { context: c.messages[..last].to_vec(), reference: c.messages[last].content.clone(), line: c.line }
        })
        .collect()
}

/// Reads `path` (SFT data) as examples to score.
pub fn read_eval_examples(path: &Path) -> Result<Vec<EvalExample>> {
    Ok(eval_examples(&read_conversations(path)?))
}

/// The prompt for `ex`: its system turn (if any), then each shot as a user turn and its
/// assistant reply, then the example's own turns.
pub fn few_shot_prompt(ex: &EvalExample, shots: &[EvalExample]) -> Vec<Message> {
    let (system, rest): (Vec<&Message>, Vec<&Message>) = ex.context.iter().partition(|m| m.role == "system");
    let mut out: Vec<Message> = system.into_iter().cloned().collect();
    for s in shots {
        out.extend(s.context.iter().filter(|m| m.role != "system").cloned());
        out.push(Message::new("assistant", &s.reference));
    }
    out.extend(rest.into_iter().cloned());
    out
}

/// Options for [`generate_all`].
pub struct GenerateOptions<'a> {
    pub max_tokens: usize,
    /// The adapter (by the name it was loaded under) every request runs with.
    pub adapter: Option<&'a str>,
    /// Requests generated together (the scheduler batches them).
    pub batch: usize,
}

/// Greedy replies for every example, in order; `progress(done, all)` after each batch.
pub fn generate_all(lm: &LanguageModel, examples: &[EvalExample], shots: &[EvalExample], opts: &GenerateOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<Generated>> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(opts.batch.max(1)) {
        let requests: Vec<Request> = chunk
            .iter()
            .map(|ex| Request {
                prompt: Prompt::Chat(few_shot_prompt(ex, shots)),
                params: SamplingParams::greedy(),
                max_tokens: opts.max_tokens,
                stop: vec![],
                truncate: false,
                adapter: opts.adapter.map(str::to_string),
            })
            .collect();
        let done = lm.generate(&requests, |_, _| {}).with_context(|| format!("generating for lines {}..{}", chunk[0].line, chunk[chunk.len() - 1].line))?;
        for (ex, c) in chunk.iter().zip(done) {
            let prompt = ex.context.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()).unwrap_or_default();
            out.push(Generated { line: ex.line, prompt, reference: ex.reference.clone(), prediction: c.text.trim().to_string() });
        }
        progress(out.len(), examples.len());
    }
    Ok(out)
}

/// Reads predictions written by [`write_generated`] (or by another tool: JSONL with
/// "prediction" and "reference" strings); errors name the file and line.
pub fn read_generated(path: &Path) -> Result<Vec<Generated>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut g: Generated = serde_json::from_str(line).map_err(|e| anyhow!("{}:{}: expected {{\"prediction\", \"reference\"}} strings: {e}", path.display(), i + 1))?;
        if g.line == 0 {
            g.line = i + 1;
        }
        out.push(g);
    }
    if out.is_empty() {
        bail!("{}: no predictions", path.display())
    }
    Ok(out)
}

/// Writes predictions as JSONL (through a temporary file and a rename).
pub fn write_generated(path: &Path, rows: &[Generated]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    zhiku_models::classifier::write_atomic(path, text.as_bytes())
}

/// Scores predictions against their references.
pub fn score(rows: &[Generated], language: Option<Language>) -> GenerationScores {
    let p: Vec<&str> = rows.iter().map(|r| r.prediction.as_str()).collect();
    let r: Vec<&str> = rows.iter().map(|r| r.reference.as_str()).collect();
    GenerationScores::compute(&p, &r, language)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(system: bool, q: &str, a: &str) -> Conversation {
        let mut messages = Vec::new();
        if system {
            messages.push(Message::new("system", "be brief"));
        }
        messages.push(Message::new("user", q));
        messages.push(Message::new("assistant", a));
        Conversation { messages, line: 1 }
    }

    #[test]
    fn shots_come_after_the_system_turn_and_before_the_question() {
        let ex = eval_examples(&[conv(true, "q", "a")]).remove(0);
        assert_eq!(ex.reference, "a");
        let shots = eval_examples(&[conv(true, "q1", "a1"), conv(false, "q2", "a2")]);
        let p = few_shot_prompt(&ex, &shots);
        let roles: Vec<(&str, &str)> = p.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
        assert_eq!(roles, [("system", "be brief"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"), ("user", "q")]);
    }

    #[test]
    fn predictions_round_trip_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jsonl");
        let rows = vec![Generated { line: 3, prompt: "q".into(), reference: "the cat".into(), prediction: "the cat".into() }];
        write_generated(&p, &rows).unwrap();
        let back = read_generated(&p).unwrap();
        assert_eq!(back[0].line, 3);
        assert!((score(&back, None).rouge1.f1 - 100.0).abs() < 1e-9);
        std::fs::write(&p, "{\"prediction\": \"x\", \"reference\": \"y\"}\n{\"prediction\": 5}\n").unwrap();
        let err = format!("{:#}", read_generated(&p).unwrap_err());
        assert!(err.contains("p.jsonl:2"), "{err}");
    }
}
