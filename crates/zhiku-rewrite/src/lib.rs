//! Variants of texts written by a language model, to augment training data.
//!
//! - [`Method::Paraphrase`]: the model rewrites the text in other words, in its own language.
//! - [`Method::BackTranslation`]: the model translates the text to the other language
//!   (Chinese to English, English to Chinese) and the translation back; the round trip keeps
//!   the meaning and changes the wording.
//!
//! The first step samples (temperature, top-p, a seed per text, copy and attempt) so that the
//! copies differ; the way back in back-translation is greedy. Prompts are one instruction in the
//! text's language and a short system turn; a worked example in the prompt was tried on
//! Qwen2.5-0.5B and bought nothing measurable for twice the prompt tokens.
//!
//! Every output is cleaned (lead-ins such as "Translation:", wrapping quotes, a second line of
//! commentary) and checked: a copy that is empty, unchanged, a duplicate of another copy, in
//! the wrong language, of an implausible length or cut off by the token limit is rejected,
//! counted by reason, and tried again with a fresh seed up to `attempts` times. Texts longer
//! than `piece_tokens` are rewritten piece by piece (whole sentences) and the pieces joined.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use zhiku_infer::sampling::SamplingParams;
use zhiku_infer::template::Message;
use zhiku_infer::{FinishReason, LanguageModel, Prompt, Request};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Paraphrase,
    BackTranslation,
}

impl Method {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "paraphrase" => Some(Method::Paraphrase),
            "back-translation" | "backtranslation" | "bt" => Some(Method::BackTranslation),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Paraphrase => "paraphrase",
            Method::BackTranslation => "back-translation",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Chinese,
    English,
}

fn is_cjk(c: char) -> bool {
    ('\u{4e00}'..='\u{9fff}').contains(&c) || ('\u{3400}'..='\u{4dbf}').contains(&c) || ('\u{f900}'..='\u{faff}').contains(&c)
}

/// CJK ideographs over ideographs plus Latin letters (0 when there are neither).
pub fn cjk_fraction(text: &str) -> f64 {
    let (mut cjk, mut latin) = (0usize, 0usize);
    for c in text.chars() {
        if is_cjk(c) {
            cjk += 1
        } else if c.is_ascii_alphabetic() {
            latin += 1
        }
    }
    if cjk + latin == 0 {
        0.0
    } else {
        cjk as f64 / (cjk + latin) as f64
    }
}

impl Language {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "zh" | "chinese" => Some(Language::Chinese),
            "en" | "english" => Some(Language::English),
            _ => None,
        }
    }

    /// Chinese when the text holds any CJK ideograph (EDA's rule, `zhiku_data::augment`).
    pub fn detect(text: &str) -> Self {
        if text.chars().any(is_cjk) {
            Language::Chinese
        } else {
            Language::English
        }
    }

    pub fn other(self) -> Self {
        match self {
            Language::Chinese => Language::English,
            Language::English => Language::Chinese,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Language::Chinese => "zh",
            Language::English => "en",
        }
    }
}

/// A short system turn: templates that add a default one when none is given (Qwen's is 20
/// tokens) would put it before every request.
const SYSTEM: &str = "You are a careful editor and translator.";

/// One step the model is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Paraphrase(Language),
    Translate { from: Language, to: Language },
}

impl Task {
    fn target(self) -> Language {
        match self {
            Task::Paraphrase(l) => l,
            Task::Translate { to, .. } => to,
        }
    }

    fn instruction(self) -> &'static str {
        use Language::*;
        match self {
            Task::Paraphrase(Chinese) => "请换一种说法改写下面这段话，意思不变，只输出改写后的文字。",
            Task::Paraphrase(English) => "Rewrite the following text in other words, keeping its meaning. Output only the rewritten text.",
            Task::Translate { from: Chinese, .. } => "把下面的中文翻译成英文，只输出译文。",
            Task::Translate { from: English, .. } => "Translate the following English text into Chinese. Output only the translation.",
        }
    }

    fn messages(self, text: &str) -> Vec<Message> {
        vec![Message::new("system", SYSTEM), Message::new("user", &format!("{}\n\n{text}", self.instruction()))]
    }
}

#[derive(Debug, Clone)]
pub struct RewriteOptions<'a> {
    pub method: Method,
    /// Variants wanted per text.
    pub copies: usize,
    /// The texts' language (None: detected per text).
    pub language: Option<Language>,
    /// Sampling of the first step (the way back in back-translation is greedy).
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    /// Tries per wanted copy, each with a fresh seed, before it is given up.
    pub attempts: usize,
    /// Longest piece rewritten in one request, in tokens; longer texts go sentence group by
    /// sentence group.
    pub piece_tokens: usize,
    /// An adapter loaded on the model, by name.
    pub adapter: Option<&'a str>,
    /// Requests handed to the engine together (it batches up to its own limit inside).
    pub batch: usize,
}

impl Default for RewriteOptions<'_> {
    fn default() -> Self {
        Self { method: Method::Paraphrase, copies: 1, language: None, temperature: 0.8, top_p: 0.95, seed: 42, attempts: 2, piece_tokens: 192, adapter: None, batch: 64 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variant {
    pub text: String,
    /// Back-translation: the text in the pivot language.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pivot: Option<String>,
    /// 1 for the first try.
    pub attempt: usize,
}

/// Why outputs were thrown away, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rejections {
    pub empty: usize,
    pub unchanged: usize,
    pub duplicate: usize,
    pub wrong_language: usize,
    pub length: usize,
    pub unfinished: usize,
}

impl Rejections {
    pub fn total(&self) -> usize {
        self.empty + self.unchanged + self.duplicate + self.wrong_language + self.length + self.unfinished
    }

    pub fn add(&mut self, o: &Rejections) {
        self.empty += o.empty;
        self.unchanged += o.unchanged;
        self.duplicate += o.duplicate;
        self.wrong_language += o.wrong_language;
        self.length += o.length;
        self.unfinished += o.unfinished;
    }

    fn count(&mut self, r: Reject) {
        match r {
            Reject::Empty => self.empty += 1,
            Reject::Unchanged => self.unchanged += 1,
            Reject::Duplicate => self.duplicate += 1,
            Reject::WrongLanguage => self.wrong_language += 1,
            Reject::Length => self.length += 1,
            Reject::Unfinished => self.unfinished += 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Empty,
    Unchanged,
    Duplicate,
    WrongLanguage,
    Length,
    Unfinished,
}

/// The variants of one text.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rewrite {
    pub variants: Vec<Variant>,
    pub rejected: Rejections,
    pub generated_tokens: usize,
}

const LEAD_INS: &[&str] = &[
    "改写后的文字", "改写后的句子", "改写后", "改写", "译文", "翻译", "英文翻译", "中文翻译", "rewritten text", "rewritten", "paraphrase", "paraphrased", "translation", "english", "chinese",
];
const QUOTES: &[(char, char)] = &[('"', '"'), ('“', '”'), ('「', '」'), ('『', '』'), ('\'', '\'')];

/// The model's answer without what is not part of it: a lead-in line ending in a colon, a
/// label such as "译文：" or "Translation:", wrapping quotes the source did not have, and, for a
/// one-line source, everything after the first line.
pub fn clean(output: &str, source: &str) -> String {
    let one_line = !source.trim().contains('\n');
    let lines: Vec<&str> = output.trim().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut start = 0;
    // "Here is the translation:" followed by the translation.
    while start + 1 < lines.len() && (lines[start].ends_with(':') || lines[start].ends_with('：')) {
        start += 1;
    }
    let mut text = if one_line { lines.get(start).copied().unwrap_or("").to_string() } else { lines[start.min(lines.len())..].join("\n") };
    for lead in LEAD_INS {
        let labelled = text.get(..lead.len()).is_some_and(|p| p.eq_ignore_ascii_case(lead));
        if labelled {
            let rest = text[lead.len()..].trim_start();
            if let Some(r) = rest.strip_prefix(':').or_else(|| rest.strip_prefix('：')) {
                text = r.trim().to_string();
            }
        }
    }
    let src = source.trim();
    for &(open, close) in QUOTES {
        let inner = |s: &str| s.strip_prefix(open).and_then(|r| r.strip_suffix(close)).map(str::to_string);
        if inner(src).is_none() {
            if let Some(i) = inner(&text) {
                text = i.trim().to_string();
            }
        }
    }
    text
}

/// Letters and digits, lowercased: what "the same text" compares.
fn normalise(s: &str) -> String {
    s.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

/// Runs of two or more Latin letters, lowercased.
fn latin_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphabetic()).filter(|w| w.len() >= 2).map(str::to_ascii_lowercase).collect()
}

/// Whether `text` reads as `language`. English has almost no CJK ideographs. Chinese keeps at
/// least half the source's share of them, and, when the source is Chinese, has no Latin word
/// the source lacks: small models leave English words untranslated ("在线 Admission") on the
/// way back; names the source writes in Latin letters ("WiiWare") are fine.
fn in_language(text: &str, language: Language, source: &str) -> bool {
    let f = cjk_fraction(text);
    match language {
        Language::Chinese => {
            let source_is_chinese = source.chars().any(is_cjk);
            let leaked = source_is_chinese && {
                let known = latin_words(source);
                latin_words(text).iter().any(|w| !known.contains(w))
            };
            f >= 0.5 * cjk_fraction(source).max(0.5) && !leaked
        }
        Language::English => f <= 0.2,
    }
}

/// Checks a finished variant of `source` against the variants already kept.
pub fn check(variant: &str, source: &str, language: Language, kept: &[Variant]) -> Result<(), Reject> {
    let n = normalise(variant);
    if n.is_empty() {
        return Err(Reject::Empty);
    }
    if !in_language(variant, language, source) {
        return Err(Reject::WrongLanguage);
    }
    if n == normalise(source) {
        return Err(Reject::Unchanged);
    }
    if kept.iter().any(|k| normalise(&k.text) == n) {
        return Err(Reject::Duplicate);
    }
    let ratio = variant.chars().count() as f64 / source.chars().count().max(1) as f64;
    if !(0.4..=2.5).contains(&ratio) {
        return Err(Reject::Length);
    }
    Ok(())
}

/// 64-bit FNV-1a: a seed from the text itself, so a text gets the same variants wherever it
/// sits in the file and whichever run (or resumed run) writes them.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Cuts `text` into pieces of whole sentences of at most `budget` tokens (a longer sentence is
/// a piece of its own, and one over twice the budget is cut by tokens).
fn pieces(lm: &LanguageModel, text: &str, budget: usize) -> Result<Vec<String>> {
    let chars: Vec<char> = text.chars().collect();
    let mut out: Vec<String> = Vec::new();
    let (mut current, mut tokens) = (String::new(), 0usize);
    for (s, e) in zhiku_library::chunk::sentences(&chars) {
        let sentence: String = chars[s..e].iter().collect();
        let sentence = sentence.trim().to_string();
        if sentence.is_empty() {
            continue;
        }
        let ids = lm.encode(&sentence, false)?;
        let n = ids.len();
        if n > 2 * budget {
            // A run-on "sentence" (a table, a list without stops) is cut by tokens.
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
                tokens = 0;
            }
            for part in ids.chunks(budget) {
                out.push(lm.tokenizer.decode(part, true).map_err(|e| anyhow::anyhow!("cannot decode: {e}"))?.trim().to_string());
            }
            continue;
        }
        if tokens + n > budget && !current.is_empty() {
            out.push(std::mem::take(&mut current));
            tokens = 0;
        }
        if !current.is_empty() && !current.ends_with(|c: char| !c.is_ascii()) {
            current.push(' ');
        }
        current.push_str(&sentence);
        tokens += n;
    }
    if !current.is_empty() {
        out.push(current);
    }
    if out.is_empty() {
        out.push(text.trim().to_string());
    }
    Ok(out)
}

/// Joins rewritten pieces: no space after a Chinese piece, one after others.
fn join(pieces: &[String]) -> String {
    let mut out = String::new();
    for p in pieces {
        if !out.is_empty() && out.ends_with(|c: char| c.is_ascii()) {
            out.push(' ');
        }
        out.push_str(p);
    }
    out
}

/// One wanted variant of one text in one attempt.
struct Slot {
    text: usize,
    attempt: usize,
    seed: u64,
    /// Outputs per piece so far (None: that piece failed).
    pivot: Vec<String>,
    out: Vec<String>,
    failed: Option<Reject>,
}

/// Runs `task(piece)` for every piece of every slot (skipping failed slots), `batch` requests
/// at a time, and cleans and checks each output for the task's language.
#[allow(clippy::too_many_arguments)]
fn run_step(
    lm: &LanguageModel,
    slots: &mut [Slot],
    inputs: &dyn Fn(&Slot) -> Vec<String>,
    task_of: &dyn Fn(&Slot) -> Task,
    sampled: bool,
    opts: &RewriteOptions,
    tokens: &mut [usize],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<String>>> {
    // (slot, piece index, request)
    let mut work: Vec<(usize, usize, String, Request)> = Vec::new();
    let mut outputs: Vec<Vec<String>> = Vec::with_capacity(slots.len());
    for (si, slot) in slots.iter().enumerate() {
        if slot.failed.is_some() {
            outputs.push(Vec::new());
            continue;
        }
        let task = task_of(slot);
        let pieces = inputs(slot);
        outputs.push(vec![String::new(); pieces.len()]);
        for (pi, piece) in pieces.into_iter().enumerate() {
            let source_tokens = lm.encode(&piece, false)?.len();
            let params = if sampled {
                SamplingParams { temperature: opts.temperature, top_p: opts.top_p, top_k: 0, min_p: 0.0, seed: mix(slot.seed ^ pi as u64), ..SamplingParams::default() }
            } else {
                SamplingParams::greedy()
            };
            // Chinese takes about one token per character, English about one per word: three
            // times the source's tokens covers any faithful rewrite either way.
            // Rendered and tokenised once here; the request carries the ids.
            let prompt_ids = lm.prompt_ids(&Prompt::Chat(task.messages(&piece)))?;
            let room = lm.model.config().context_length.saturating_sub(prompt_ids.len());
            let max_tokens = (3 * source_tokens + 24).min(room);
            if max_tokens < source_tokens {
                bail!("a piece of {source_tokens} tokens leaves room for only {max_tokens} tokens of output in the model's context; lower the piece size")
            }
            let request = Request { prompt: Prompt::Tokens(prompt_ids), params, max_tokens, stop: vec![], truncate: false, adapter: opts.adapter.map(str::to_string) };
            work.push((si, pi, piece, request));
        }
    }
    let total = work.len();
    let mut done = 0;
    for group in work.chunks(opts.batch.max(1)) {
        let requests: Vec<Request> = group.iter().map(|w| w.3.clone()).collect();
        let completions = lm.generate(&requests, |_, _| {})?;
        for ((si, pi, piece, _), c) in group.iter().zip(completions) {
            let slot = &mut slots[*si];
            tokens[slot.text] += c.completion_tokens;
            if slot.failed.is_some() {
                continue;
            }
            let task = task_of(slot);
            let text = clean(&c.text, piece);
            let reject = if c.finish_reason == FinishReason::Length {
                Some(Reject::Unfinished)
            } else if normalise(&text).is_empty() {
                Some(Reject::Empty)
            } else if !in_language(&text, task.target(), piece) {
                Some(Reject::WrongLanguage)
            } else {
                None
            };
            match reject {
                Some(r) => slot.failed = Some(r),
                None => outputs[*si][*pi] = text,
            }
        }
        done += group.len();
        progress(done, total);
    }
    Ok(outputs)
}

/// Writes `opts.copies` checked variants of every text (fewer where every attempt was
/// rejected). `progress(requests done, requests)` after each batch of each step.
pub fn rewrite_many(lm: &LanguageModel, texts: &[&str], opts: &RewriteOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<Rewrite>> {
    if opts.copies == 0 || opts.attempts == 0 {
        bail!("copies and attempts must be at least 1")
    }
    if let Some(i) = texts.iter().position(|t| normalise(t).is_empty()) {
        bail!("text {} has no letters or digits to rewrite", i + 1)
    }
    let languages: Vec<Language> = texts.iter().map(|t| opts.language.unwrap_or_else(|| Language::detect(t))).collect();
    // A piece, its prompt and up to three times its length of output fit in the context.
    let overhead = lm.prompt_ids(&Prompt::Chat(Task::Translate { from: Language::English, to: Language::Chinese }.messages(".")))?.len() + 32;
    let budget = opts.piece_tokens.min(lm.model.config().context_length.saturating_sub(overhead) / 4);
    if budget < 8 {
        bail!("the model's context ({} tokens) leaves no room to rewrite text", lm.model.config().context_length)
    }
    let split: Vec<Vec<String>> = texts.iter().map(|t| pieces(lm, t, budget)).collect::<Result<_>>()?;
    let mut results: Vec<Rewrite> = vec![Rewrite::default(); texts.len()];
    let mut tokens = vec![0usize; texts.len()];
    for attempt in 1..=opts.attempts {
        let mut slots: Vec<Slot> = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            for k in results[i].variants.len()..opts.copies {
                let seed = mix(opts.seed ^ mix(fnv(text.as_bytes()) ^ mix(((attempt as u64) << 32) | k as u64)));
                slots.push(Slot { text: i, attempt, seed, pivot: Vec::new(), out: Vec::new(), failed: None });
            }
        }
        if slots.is_empty() {
            break;
        }
        let first = |s: &Slot| split[s.text].clone();
        match opts.method {
            Method::Paraphrase => {
                let outs = run_step(lm, &mut slots, &first, &|s| Task::Paraphrase(languages[s.text]), true, opts, &mut tokens, progress)?;
                for (slot, out) in slots.iter_mut().zip(outs) {
                    slot.out = out;
                }
            }
            Method::BackTranslation => {
                let there = |s: &Slot| Task::Translate { from: languages[s.text], to: languages[s.text].other() };
                let outs = run_step(lm, &mut slots, &first, &there, true, opts, &mut tokens, progress)?;
                for (slot, out) in slots.iter_mut().zip(outs) {
                    slot.pivot = out;
                }
                let back = |s: &Slot| Task::Translate { from: languages[s.text].other(), to: languages[s.text] };
                let outs = run_step(lm, &mut slots, &|s: &Slot| s.pivot.clone(), &back, false, opts, &mut tokens, progress)?;
                for (slot, out) in slots.iter_mut().zip(outs) {
                    slot.out = out;
                }
            }
        }
        for slot in slots {
            let r = &mut results[slot.text];
            if let Some(reason) = slot.failed {
                r.rejected.count(reason);
                continue;
            }
            let text = join(&slot.out);
            match check(&text, texts[slot.text], languages[slot.text], &r.variants) {
                Ok(()) => r.variants.push(Variant { text, pivot: (!slot.pivot.is_empty()).then(|| join(&slot.pivot)), attempt: slot.attempt }),
                Err(reason) => r.rejected.count(reason),
            }
        }
    }
    for (r, t) in results.iter_mut().zip(tokens) {
        r.generated_tokens = t;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_drops_labels_lead_ins_quotes_and_commentary() {
        assert_eq!(clean("译文：央行加息了。", "央行加息"), "央行加息了。");
        assert_eq!(clean("Translation: The bank raised rates.", "央行加息"), "The bank raised rates.");
        assert_eq!(clean("Here is the rewritten text:\n\"Rates went up.\"", "The bank raised rates."), "Rates went up.");
        assert_eq!(clean("“央行加息”\n这句话的意思是……", "央行宣布加息"), "央行加息");
        // Quotes the source has stay; a multi-line source keeps every line.
        assert_eq!(clean("“加息”", "“升息”"), "“加息”");
        assert_eq!(clean("一行。\n二行。", "第一行。\n第二行。"), "一行。\n二行。");
    }

    #[test]
    fn check_names_each_reason() {
        let zh = "央行周二宣布上调基准利率";
        let kept = vec![Variant { text: "周二央行决定提高基准利率".into(), pivot: None, attempt: 1 }];
        assert_eq!(check("   ", zh, Language::Chinese, &[]), Err(Reject::Empty));
        assert_eq!(check("The central bank raised rates", zh, Language::Chinese, &[]), Err(Reject::WrongLanguage));
        assert_eq!(check("央行周二宣布上调基准利率！", zh, Language::Chinese, &[]), Err(Reject::Unchanged));
        assert_eq!(check("周二，央行决定提高基准利率。", zh, Language::Chinese, &kept), Err(Reject::Duplicate));
        assert_eq!(check("加息", zh, Language::Chinese, &[]), Err(Reject::Length));
        assert_eq!(check("周二央行把基准利率调高了", zh, Language::Chinese, &kept), Ok(()));
        // A Chinese headline with a Latin name stays Chinese.
        assert_eq!(check("任天堂WiiWare新游戏《危险空域》4月7日上市", "WiiWare新作《危险空域》4月7日发售", Language::Chinese, &[]), Ok(()));
        assert_eq!(check("央行加息", "The bank raised rates", Language::English, &[]), Err(Reject::WrongLanguage));
        // English words the source did not have are left-overs of the round trip.
        assert_eq!(check("建议您查阅八个主要要求，以便在线 Admission。", "在职考生不可错过：考研成功八大必备因素", Language::Chinese, &[]), Err(Reject::WrongLanguage));
        assert_eq!(check("任天堂WiiWare新游戏《Danger》4月7日上市", "WiiWare新作《危险空域》4月7日发售", Language::Chinese, &[]), Err(Reject::WrongLanguage));
    }

    #[test]
    fn languages_and_methods_parse() {
        assert_eq!(Language::detect("WiiWare新作"), Language::Chinese);
        assert_eq!(Language::detect("Rates rose."), Language::English);
        assert_eq!(Language::Chinese.other(), Language::English);
        assert_eq!(Method::parse("back-translation"), Some(Method::BackTranslation));
        assert_eq!(Method::parse("paraphrase").map(Method::name), Some("paraphrase"));
        assert_eq!(Method::parse("eda"), None);
        assert_eq!(join(&["Rates rose.".into(), "Stocks fell.".into()]), "Rates rose. Stocks fell.");
        assert_eq!(join(&["加息。".into(), "股市跌。".into()]), "加息。股市跌。");
    }

    #[test]
    fn every_prompt_asks_in_the_source_language() {
        for task in [Task::Paraphrase(Language::Chinese), Task::Paraphrase(Language::English), Task::Translate { from: Language::Chinese, to: Language::English }, Task::Translate { from: Language::English, to: Language::Chinese }] {
            let m = task.messages("TEXT");
            assert_eq!(m.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["system", "user"]);
            assert!(m[1].content.ends_with("\n\nTEXT"));
            let from = match task {
                Task::Paraphrase(l) | Task::Translate { from: l, .. } => l,
            };
            assert_eq!(Language::detect(task.instruction()), from, "{task:?}");
        }
    }

    fn tiny() -> LanguageModel {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llm/qwen2");
        LanguageModel::open_with(&dir, &zhiku_infer::OpenOptions::engine(zhiku_infer::Engine::Cpu)).unwrap()
    }

    #[test]
    fn every_try_is_kept_or_counted_and_the_seed_fixes_the_result() {
        let lm = tiny();
        let texts = ["the cat sat on the mat. the dog ran in the park.", "a short line"];
        for method in [Method::Paraphrase, Method::BackTranslation] {
            let opts = RewriteOptions { method, copies: 2, attempts: 3, piece_tokens: 16, language: Some(Language::English), ..Default::default() };
            let mut calls = 0;
            let a = rewrite_many(&lm, &texts, &opts, &mut |done, total| {
                assert!(done <= total);
                calls += 1
            })
            .unwrap();
            assert!(calls > 0);
            for r in &a {
                // Attempt a tries every copy still missing; each try is kept or counted.
                let tries: usize = (1..=3).map(|a| 2 - r.variants.iter().filter(|v| v.attempt < a).count()).sum();
                assert_eq!(r.variants.len() + r.rejected.total(), tries, "{method:?}: {r:?}");
                assert!(r.generated_tokens > 0);
                assert_eq!(r.variants.iter().any(|v| v.pivot.is_some()), method == Method::BackTranslation && !r.variants.is_empty());
            }
            let b = rewrite_many(&lm, &texts, &opts, &mut |_, _| {}).unwrap();
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
            // Each text's variants depend on the text, not its neighbours.
            let alone = rewrite_many(&lm, &texts[1..], &opts, &mut |_, _| {}).unwrap();
            assert_eq!(format!("{:?}", a[1]), format!("{:?}", alone[0]));
        }
        assert!(rewrite_many(&lm, &["  ...  "], &RewriteOptions::default(), &mut |_, _| {}).is_err());
    }
}
