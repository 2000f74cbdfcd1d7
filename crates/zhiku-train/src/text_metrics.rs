//! Scores of generated text against references: ROUGE-1/2/L as Google's `rouge-score` package
//! computes them, corpus BLEU as `sacrebleu` does, and length statistics.
//!
//! Tokens for ROUGE: English as `rouge-score` tokenises (lower-cased runs of `[a-z0-9]`, no
//! stemming); Chinese (and any text with CJK characters) one token per character, so that
//! ROUGE is character-level there, with runs of ASCII letters and digits kept as words. The
//! package drops non-ASCII characters itself, so for Chinese its numbers are reproduced by
//! giving it this tokeniser (`scripts/check_text_metrics.py` does).
//!
//! BLEU: sacreBLEU's corpus BLEU (4-grams, brevity penalty over the corpus, `exp` smoothing),
//! tokenised by its `13a` tokeniser, or its `zh` tokeniser (each CJK character a token) where the
//! references are Chinese.

use serde::Serialize;
use std::collections::HashMap;

/// How to cut text into tokens for the scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Words (ROUGE), `13a` tokens (BLEU).
    En,
    /// Characters (ROUGE), sacreBLEU's `zh` tokens (BLEU).
    Zh,
}

impl Language {
    /// Chinese if any reference has a CJK character, else English.
    pub fn detect<S: AsRef<str>>(references: &[S]) -> Self {
        if references.iter().any(|r| r.as_ref().chars().any(is_cjk)) {
            Self::Zh
        } else {
            Self::En
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "en" => Some(Self::En),
            "zh" => Some(Self::Zh),
            _ => None,
        }
    }
}

/// CJK ideographs and the kana and hangul blocks (one token each).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

/// ROUGE's tokens of `text` in `lang`.
pub fn rouge_tokens(text: &str, lang: Language) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut out = Vec::new();
    let mut word = String::new();
    for c in lower.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if lang == Language::Zh && !c.is_ascii() && c.is_alphanumeric() {
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Precision, recall and F1 of one score.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Prf {
    fn new(overlap: usize, predicted: usize, reference: usize) -> Self {
        let precision = overlap as f64 / predicted.max(1) as f64;
        let recall = overlap as f64 / reference.max(1) as f64;
        let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        Self { precision, recall, f1 }
    }
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

/// ROUGE-N of one prediction (clipped n-gram overlap).
pub fn rouge_n(prediction: &[String], reference: &[String], n: usize) -> Prf {
    let (p, r) = (ngrams(prediction, n), ngrams(reference, n));
    let overlap = r.iter().map(|(g, &c)| c.min(p.get(g).copied().unwrap_or(0))).sum();
    Prf::new(overlap, p.values().sum(), r.values().sum())
}

/// ROUGE-L of one prediction (longest common subsequence, over the whole text as one sequence:
/// `rouge-score`'s `rougeL`, not `rougeLsum`).
pub fn rouge_l(prediction: &[String], reference: &[String]) -> Prf {
    if prediction.is_empty() || reference.is_empty() {
        return Prf::default();
    }
    let mut prev = vec![0usize; reference.len() + 1];
    let mut cur = vec![0usize; reference.len() + 1];
    for p in prediction {
        for (j, r) in reference.iter().enumerate() {
            cur[j + 1] = if p == r { prev[j] + 1 } else { cur[j].max(prev[j + 1]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    Prf::new(prev[reference.len()], prediction.len(), reference.len())
}

/// sacreBLEU's `13a` tokeniser (mteval-v13a): entities unescaped, punctuation split off, digits'
/// commas and periods kept inside numbers.
pub fn bleu_tokens_13a(text: &str) -> Vec<String> {
    let s = text.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    let s = if s.contains('&') { s.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">") } else { s };
    regexp_tokens(&format!(" {s} "))
}

/// sacreBLEU's `zh` tokeniser: spaces around each Chinese character (its list of ranges), then
/// the `13a` rules.
pub fn bleu_tokens_zh(text: &str) -> Vec<String> {
    let mut s = String::with_capacity(text.len() * 2);
    for c in text.trim().chars() {
        if is_sacrebleu_chinese(c) {
            s.push(' ');
            s.push(c);
            s.push(' ');
        } else {
            s.push(c);
        }
    }
    regexp_tokens(&s)
}

/// sacreBLEU's `_is_chinese_char` ranges (ideographs, CJK symbols and punctuation, full-width
/// forms, ...).
fn is_sacrebleu_chinese(c: char) -> bool {
    const RANGES: [(u32, u32); 24] = [
        (0x3400, 0x4DB5), (0x4E00, 0x9FA5), (0x9FA6, 0x9FBB), (0xF900, 0xFA2D), (0xFA30, 0xFA6A), (0xFA70, 0xFAD9),
        (0x20000, 0x2A6D6), (0x2F800, 0x2FA1D), (0xFF00, 0xFFEF), (0x2E80, 0x2EFF), (0x3000, 0x303F), (0x31C0, 0x31EF),
        (0x2F00, 0x2FDF), (0x2FF0, 0x2FFF), (0x3100, 0x312F), (0x31A0, 0x31BF), (0xFE10, 0xFE1F), (0xFE30, 0xFE4F),
        (0x2600, 0x26FF), (0x2700, 0x27BF), (0x3200, 0x32FF), (0x3300, 0x33FF), (0x4DC0, 0x4DFF), (0x1D300, 0x1D35F),
    ];
    let u = c as u32;
    RANGES.iter().any(|&(a, b)| (a..=b).contains(&u))
}

/// The `13a` regular expressions, applied in order, then a split on whitespace:
/// 1. `([\{-\~\[-\` -\&\(-\+\:-\@\/])` → ` \1 ` (ASCII punctuation except `'`, `,`, `-`, `.`);
/// 2. `([^0-9])([\.,])` → `\1 \2 `;
/// 3. `([\.,])([^0-9])` → ` \1 \2`;
/// 4. `([0-9])(-)` → `\1 \2 `.
fn regexp_tokens(s: &str) -> Vec<String> {
    let punct = |c: char| matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/');
    let mut a = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if punct(c) {
            a.push(' ');
            a.push(c);
            a.push(' ');
        } else {
            a.push(c);
        }
    }
    // Rules 2-4 scan left to right without overlapping matches, as `re.sub` does.
    let rule = |text: &str, first: &dyn Fn(char) -> bool, second: &dyn Fn(char) -> bool, sep_before: bool, sep_after_first: bool| -> String {
        let chars: Vec<char> = text.chars().collect();
        let mut out = String::with_capacity(text.len() + 16);
        let mut i = 0;
        while i < chars.len() {
            if i + 1 < chars.len() && first(chars[i]) && second(chars[i + 1]) {
                if sep_before {
                    out.push(' ');
                }
                out.push(chars[i]);
                if sep_after_first {
                    out.push(' ');
                }
                out.push(chars[i + 1]);
                if !sep_before {
                    out.push(' ');
                }
                i += 2;
            } else {
                out.push(chars[i]);
                i += 1;
            }
        }
        out
    };
    let dot = |c: char| c == '.' || c == ',';
    let digit = |c: char| c.is_ascii_digit();
    let b = rule(&a, &|c| !digit(c), &dot, false, true);
    let c = rule(&b, &dot, &|c| !digit(c), true, true);
    let d = rule(&c, &digit, &|c| c == '-', false, true);
    d.split_whitespace().map(str::to_string).collect()
}

/// Corpus BLEU (0-100) of tokenised predictions against one reference each, as sacreBLEU
/// computes it by default.
pub fn corpus_bleu(predictions: &[Vec<String>], references: &[Vec<String>]) -> f64 {
    let (mut correct, mut total) = ([0usize; 4], [0usize; 4]);
    let (mut sys_len, mut ref_len) = (0usize, 0usize);
    for (p, r) in predictions.iter().zip(references) {
        sys_len += p.len();
        ref_len += r.len();
        for n in 1..=4 {
            let (pn, rn) = (ngrams(p, n), ngrams(r, n));
            total[n - 1] += pn.values().sum::<usize>();
            correct[n - 1] += pn.iter().map(|(g, &c)| c.min(rn.get(g).copied().unwrap_or(0))).sum::<usize>();
        }
    }
    let mut precisions = [0f64; 4];
    let mut smooth = 1f64;
    for n in 0..4 {
        if total[n] == 0 {
            break;
        }
        precisions[n] = if correct[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total[n] as f64)
        } else {
            100.0 * correct[n] as f64 / total[n] as f64
        };
    }
    let bp = if sys_len < ref_len { if sys_len > 0 { (1.0 - ref_len as f64 / sys_len as f64).exp() } else { 0.0 } } else { 1.0 };
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    bp * (precisions.iter().map(|&p| log(p)).sum::<f64>() / 4.0).exp()
}

/// Mean, median and extremes of some lengths.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LengthStats {
    pub mean: f64,
    pub median: f64,
    pub min: usize,
    pub max: usize,
}

impl LengthStats {
    fn of(mut v: Vec<usize>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable();
        let median = if v.len() % 2 == 1 { v[v.len() / 2] as f64 } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) as f64 / 2.0 };
        Self { mean: v.iter().sum::<usize>() as f64 / v.len() as f64, median, min: v[0], max: v[v.len() - 1] }
    }
}

/// Every score of a set of predictions: ROUGE as means over the examples of per-example F1
/// (and precision, recall), times 100; BLEU over the corpus; lengths in ROUGE tokens (words, or
/// characters for Chinese).
#[derive(Debug, Clone, Serialize)]
pub struct GenerationScores {
    pub examples: usize,
    pub language: Language,
    pub rouge1: Prf,
    pub rouge2: Prf,
    #[serde(rename = "rougeL")]
    pub rouge_l: Prf,
    pub bleu: f64,
    pub prediction_length: LengthStats,
    pub reference_length: LengthStats,
    /// Predictions with no tokens at all.
    pub empty_predictions: usize,
}

impl GenerationScores {
    pub fn compute<S: AsRef<str>>(predictions: &[S], references: &[S], language: Option<Language>) -> Self {
        assert_eq!(predictions.len(), references.len(), "one prediction per reference");
        let lang = language.unwrap_or_else(|| Language::detect(references));
        let (mut r1, mut r2, mut rl) = (Prf::default(), Prf::default(), Prf::default());
        let add = |acc: &mut Prf, s: Prf| {
            acc.precision += s.precision;
            acc.recall += s.recall;
            acc.f1 += s.f1;
        };
        let (mut plen, mut rlen, mut empty) = (Vec::new(), Vec::new(), 0);
        for (p, r) in predictions.iter().zip(references) {
            let (pt, rt) = (rouge_tokens(p.as_ref(), lang), rouge_tokens(r.as_ref(), lang));
            add(&mut r1, rouge_n(&pt, &rt, 1));
            add(&mut r2, rouge_n(&pt, &rt, 2));
            add(&mut rl, rouge_l(&pt, &rt));
            empty += pt.is_empty() as usize;
            plen.push(pt.len());
            rlen.push(rt.len());
        }
        let n = predictions.len().max(1) as f64;
        let mean = |s: Prf| Prf { precision: 100.0 * s.precision / n, recall: 100.0 * s.recall / n, f1: 100.0 * s.f1 / n };
        let tok = |t: &str| if lang == Language::Zh { bleu_tokens_zh(t) } else { bleu_tokens_13a(t) };
        let bp: Vec<Vec<String>> = predictions.iter().map(|p| tok(p.as_ref())).collect();
        let br: Vec<Vec<String>> = references.iter().map(|r| tok(r.as_ref())).collect();
        Self {
            examples: predictions.len(),
            language: lang,
            rouge1: mean(r1),
            rouge2: mean(r2),
            rouge_l: mean(rl),
            bleu: corpus_bleu(&bp, &br),
            prediction_length: LengthStats::of(plen),
            reference_length: LengthStats::of(rlen),
            empty_predictions: empty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Vec<String> {
        rouge_tokens(s, Language::En)
    }

    #[test]
    fn rouge_tokens_follow_rouge_score() {
        assert_eq!(t("The U.S. economy's GDP grew 3.5%!"), ["the", "u", "s", "economy", "s", "gdp", "grew", "3", "5"]);
        assert_eq!(rouge_tokens("亲，明天发货 OK吗？", Language::Zh), ["亲", "明", "天", "发", "货", "ok", "吗"]);
        // English ROUGE drops what is not ASCII, as rouge-score does.
        assert_eq!(rouge_tokens("café 发货", Language::En), ["caf"]);
    }

    #[test]
    fn rouge_scores_by_hand() {
        // rouge-score: "the cat sat on the mat" vs "the cat was on the mat".
        let (p, r) = (t("the cat was on the mat"), t("the cat sat on the mat"));
        let r1 = rouge_n(&p, &r, 1);
        assert!((r1.f1 - 5.0 / 6.0).abs() < 1e-12);
        let r2 = rouge_n(&p, &r, 2);
        assert!((r2.f1 - 3.0 / 5.0).abs() < 1e-12);
        assert!((rouge_l(&p, &r).f1 - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(rouge_l(&[], &r), Prf::default());
        assert_eq!(rouge_n(&p, &[], 1).f1, 0.0);
    }

    #[test]
    fn bleu_tokenisers_follow_sacrebleu() {
        assert_eq!(bleu_tokens_13a("Hello, world. It's 3.5-4,000 (ok)!"), ["Hello", ",", "world", ".", "It's", "3.5", "-", "4,000", "(", "ok", ")", "!"]);
        assert_eq!(bleu_tokens_zh("亲，明天发货OK吗？"), ["亲", "，", "明", "天", "发", "货", "OK", "吗", "？"]);
    }

    #[test]
    fn bleu_is_100_for_identical_text_and_smooths_missing_orders() {
        let a = vec![bleu_tokens_13a("the quick brown fox jumps over the lazy dog")];
        assert!((corpus_bleu(&a, &a) - 100.0).abs() < 1e-9);
        let p = vec![bleu_tokens_13a("the fox")];
        let r = vec![bleu_tokens_13a("the quick fox")];
        // 1-grams 2/2, 2-grams 0/1 (smoothed 100/2), no 3- or 4-grams: zero counts end the loop.
        let b = corpus_bleu(&p, &r);
        let expect = (1.0f64 - 1.5).exp() * ((100f64.ln() + 50f64.ln() - 2.0 * 9_999_999_999.0) / 4.0).exp();
        assert!((b - expect).abs() < 1e-9, "{b} vs {expect}");
    }

    #[test]
    fn scores_detect_chinese_and_count_lengths() {
        let s = GenerationScores::compute(&["明天发货", ""], &["明天就发货哦", "好的"], None);
        assert_eq!(s.language, Language::Zh);
        assert_eq!(s.empty_predictions, 1);
        assert_eq!(s.prediction_length.max, 4);
        // 4 of 4 predicted characters in the 6 of the reference: F1 0.8, then a zero.
        assert!((s.rouge1.f1 - 40.0).abs() < 1e-9, "{}", s.rouge1.f1);
    }
}
