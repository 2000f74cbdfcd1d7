//! Answers with citations: the best chunks of the library are numbered and given to a
//! generative model with the instruction to answer only from them; each sentence of the answer
//! is then attributed to the passage it shares most of its character pairs with and marked [n]
//! (small models do not write citation marks reliably; attribution by overlap is checkable).
//! When retrieval finds nothing, or the model says the passages do not hold the answer, the
//! answer is "not found in the library".

use crate::{Library, Mode, SearchOptions, SearchResult};
use anyhow::Result;
use serde::Serialize;
use zhiku_infer::sampling::SamplingParams;
use zhiku_infer::template::Message;
use zhiku_infer::{LanguageModel, Prompt, Request};

#[derive(Debug, Clone)]
pub struct AskOptions {
    /// Chunks given to the model.
    pub top_k: usize,
    pub mode: Option<Mode>,
    pub max_tokens: usize,
    pub temperature: f32,
    pub seed: u64,
}

impl Default for AskOptions {
    fn default() -> Self {
        Self { top_k: 4, mode: None, max_tokens: 384, temperature: 0.0, seed: 42 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Citation {
    /// The number the answer cites it by.
    pub n: usize,
    pub id: String,
    pub title: String,
    pub source: String,
    pub chunk: String,
    pub start: usize,
    pub end: usize,
    /// The page the passage starts on (PDF documents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<usize>,
    /// Where in the recording the passage was said (transcribed audio).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<crate::media::TimeSpan>,
    /// Whether the answer cites it.
    pub cited: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub answer: String,
    /// False when the library holds no answer ("not found in the library").
    pub found: bool,
    pub citations: Vec<Citation>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Sentences of the model's reply that no passage supported, left out of the answer.
    pub unsupported_sentences: usize,
}

/// Whether the text is mostly Chinese (the instructions and the not-found phrase follow it).
fn chinese(text: &str) -> bool {
    let han = text.chars().filter(|c| ('\u{4e00}'..='\u{9fff}').contains(c)).count();
    han * 3 >= text.chars().filter(|c| c.is_alphanumeric()).count().max(1)
}

pub fn not_found_phrase(zh: bool) -> &'static str {
    if zh { "资料库中没有找到答案。" } else { "Not found in the library." }
}

/// The conversation given to the model: instructions, the numbered passages, the question.
pub fn prompt(question: &str, hits: &[SearchResult]) -> Vec<Message> {
    let zh = chinese(question);
    let mut passages = String::new();
    for (i, h) in hits.iter().enumerate() {
        passages.push_str(&format!("[{}] {}\n{}\n\n", i + 1, h.title, h.chunk.trim()));
    }
    let system = if zh {
        format!("你是知识库问答助手。只根据用户给出的资料，用一两句完整的话回答问题。如果资料里没有答案，只回答：{}", not_found_phrase(true))
    } else {
        format!("You are a library assistant. Answer the question in one or two full sentences, using only the passages the user gives. If the passages do not contain the answer, reply only: {}", not_found_phrase(false))
    };
    let user = if zh { format!("资料：\n{passages}问题：{question}") } else { format!("Passages:\n{passages}Question: {question}") };
    vec![Message::new("system", &system), Message::new("user", &user)]
}

fn bigrams(text: &str) -> std::collections::HashSet<(char, char)> {
    let chars: Vec<char> = text.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect();
    chars.windows(2).map(|w| (w[0], w[1])).collect()
}

/// The passage (index) a sentence shares most character pairs with, if at least half of its
/// own pairs.
fn support(sentence: &str, grams: &[std::collections::HashSet<(char, char)>]) -> Option<usize> {
    let own = bigrams(sentence);
    let (i, n) = grams.iter().enumerate().map(|(i, g)| (i, own.intersection(g).count())).max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))?;
    (!own.is_empty() && n * 2 >= own.len()).then_some(i)
}

/// Whether a sentence already carries a citation mark.
fn cites(sentence: &str) -> bool {
    sentence.contains('[') && sentence.contains(']')
}

/// `sentence` with passage `i`'s mark before its closing punctuation: "...西湖区[1]。",
/// "... weekdays [1]."
fn mark(sentence: &str, i: usize) -> String {
    let body = sentence.trim_end_matches(['。', '.', '！', '!', '？', '?', '；', ';']);
    let tail = &sentence[body.len()..];
    let space = if body.chars().last().is_some_and(|c| c.is_ascii()) { " " } else { "" };
    format!("{body}{space}[{}]{tail}", i + 1)
}

/// Marks each sentence of `answer` with the passage it shares most character pairs with
/// (at least half of its own), unless the sentence already cites one.
pub fn attribute(answer: &str, passages: &[&str]) -> String {
    let chars: Vec<char> = answer.chars().collect();
    let grams: Vec<_> = passages.iter().map(|p| bigrams(p)).collect();
    let mut out = String::new();
    let mut at = 0;
    for (s, e) in crate::chunk::sentences(&chars) {
        out.extend(&chars[at..s]);
        let sentence: String = chars[s..e].iter().collect();
        match support(&sentence, &grams) {
            Some(i) if !cites(&sentence) => out.push_str(&mark(&sentence, i)),
            _ => out.push_str(&sentence),
        }
        at = e;
    }
    out.extend(&chars[at..]);
    out
}

/// What to generate for a question: the passages found and the request for the model (None
/// when nothing was found, and the answer is "not found" without generating).
pub struct AskPlan {
    pub hits: Vec<SearchResult>,
    pub request: Option<Request>,
    zh: bool,
}

/// Retrieves the passages for `question` and builds the model's request.
pub fn plan(lib: &Library, question: &str, options: &AskOptions) -> Result<AskPlan> {
    let zh = chinese(question);
    let hits = lib.search(question, &SearchOptions { mode: options.mode, top_k: options.top_k.max(1), ..Default::default() })?;
    let request = (!hits.is_empty()).then(|| {
        let params = SamplingParams { temperature: options.temperature, seed: options.seed, ..SamplingParams::default() };
        Request { prompt: Prompt::Chat(prompt(question, &hits)), params, max_tokens: options.max_tokens, stop: Vec::new(), truncate: true, adapter: None }
    });
    Ok(AskPlan { hits, request, zh })
}

/// Turns the model's streamed text into the answer, a sentence at a time: a sentence the
/// passages support goes out with its citation; one they do not support (the model's own
/// knowledge, or an invention) is dropped; if nothing is left, the library has no answer.
pub struct AnswerWriter {
    plan: AskPlan,
    grams: Vec<std::collections::HashSet<(char, char)>>,
    pending: String,
    kept: String,
    dropped: usize,
}

impl AnswerWriter {
    pub fn new(plan: AskPlan) -> Self {
        let grams = plan.hits.iter().map(|h| bigrams(&h.chunk)).collect();
        Self { plan, grams, pending: String::new(), kept: String::new(), dropped: 0 }
    }

    /// Takes a piece of the model's text; `on_text` hears each accepted sentence.
    pub fn push(&mut self, text: &str, on_text: &mut dyn FnMut(&str)) {
        self.pending.push_str(text);
        loop {
            let chars: Vec<char> = self.pending.chars().collect();
            let spans = crate::chunk::sentences(&chars);
            // Every sentence but the last is complete (the last may still grow).
            if spans.len() < 2 {
                break;
            }
            let (s, e) = spans[0];
            let sentence: String = chars[s..e].iter().collect();
            self.pending = chars[spans[1].0..].iter().collect();
            self.emit(&sentence, on_text);
        }
    }

    fn emit(&mut self, sentence: &str, on_text: &mut dyn FnMut(&str)) {
        let phrase = not_found_phrase(self.plan.zh);
        let trimmed = sentence.trim();
        if trimmed.is_empty() || trimmed.contains(phrase.trim_end_matches(['.', '。'])) {
            return;
        }
        let marked = if cites(trimmed) { Some(trimmed.to_string()) } else { support(trimmed, &self.grams).map(|i| mark(trimmed, i)) };
        match marked {
            Some(marked) => {
                let piece = if self.kept.is_empty() || self.plan.zh { marked } else { format!(" {marked}") };
                on_text(&piece);
                self.kept.push_str(&piece);
            }
            None => self.dropped += 1,
        }
    }

    /// The end of the model's text: the last sentence, then the answer with what it cites.
    pub fn finish(mut self, prompt_tokens: usize, completion_tokens: usize, on_text: &mut dyn FnMut(&str)) -> Answer {
        let rest = std::mem::take(&mut self.pending);
        self.emit(&rest, on_text);
        let found = !self.kept.is_empty();
        if !found {
            let text = not_found_phrase(self.plan.zh).to_string();
            on_text(&text);
            return Answer { answer: text, found, citations: Vec::new(), prompt_tokens, completion_tokens, unsupported_sentences: self.dropped };
        }
        let citations = self
            .plan
            .hits
            .iter()
            .enumerate()
            .map(|(i, h)| Citation {
                n: i + 1,
                id: h.id.clone(),
                title: h.title.clone(),
                source: h.source.clone(),
                chunk: h.chunk.clone(),
                start: h.start,
                end: h.end,
                page: h.page,
                time: h.time.clone(),
                cited: self.kept.contains(&format!("[{}]", i + 1)),
            })
            .collect();
        Answer { answer: self.kept, found, citations, prompt_tokens, completion_tokens, unsupported_sentences: self.dropped }
    }
}

/// Retrieves, generates (streaming the text to `on_text`) and lists what the answer cites.
pub fn ask(lib: &Library, lm: &LanguageModel, question: &str, options: &AskOptions, mut on_text: impl FnMut(&str)) -> Result<Answer> {
    let mut plan = plan(lib, question, options)?;
    let Some(request) = plan.request.take() else { return Ok(AnswerWriter::new(plan).finish(0, 0, &mut on_text)) };
    let mut writer = AnswerWriter::new(plan);
    let done = lm.generate(&[request], |_, t| writer.push(t, &mut on_text))?.remove(0);
    Ok(writer.finish(done.prompt_tokens, done.completion_tokens, &mut on_text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_are_attributed_to_the_passage_they_come_from() {
        let passages = ["知库科技成立于2019年，总部位于杭州市西湖区。", "The support desk is open from 9 am to 6 pm on weekdays."];
        assert_eq!(attribute("公司总部位于杭州市西湖区。", &passages), "公司总部位于杭州市西湖区[1]。");
        assert_eq!(attribute("The desk is open from 9 am to 6 pm on weekdays. Thanks", &passages), "The desk is open from 9 am to 6 pm on weekdays [2]. Thanks");
        assert_eq!(attribute("这与资料无关。", &passages), "这与资料无关。");
        assert_eq!(attribute("总部在杭州 [1]。", &passages), "总部在杭州 [1]。", "a sentence that cites keeps its mark");
    }

    #[test]
    fn the_language_of_the_question_picks_the_instructions() {
        assert!(chinese("知库科技的总部在哪里？"));
        assert!(!chinese("When is the support desk open?"));
    }
}
