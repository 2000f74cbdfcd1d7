//! Easy data augmentation (Wei & Zou 2019, "EDA") for Chinese and English: synonym replacement,
//! random insertion of a synonym, random swap and random deletion of words.
//!
//! Synonyms come from real thesauri built into the binary (see `scripts/build-synonyms.py`):
//! WordNet 3.1 synsets for English and the "=" (true synonym) groups of HIT's Tongyici Cilin
//! (extended) for Chinese. Chinese text is segmented into words with jieba first; a text counts
//! as Chinese when it holds any CJK character.

use crate::read::Example;
use flate2::read::GzDecoder;
use jieba_rs::Jieba;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AugmentOp {
    /// Replace words by a synonym.
    Synonym,
    /// Insert a synonym of a word at a random position.
    Insert,
    /// Swap two words.
    Swap,
    /// Delete each word with probability `rate`.
    Delete,
}

impl AugmentOp {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "synonym" | "sr" => AugmentOp::Synonym,
            "insert" | "ri" => AugmentOp::Insert,
            "swap" | "rs" => AugmentOp::Swap,
            "delete" | "rd" => AugmentOp::Delete,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct AugmentConfig {
    /// Augmented copies added per training example.
    pub copies: usize,
    /// Each copy applies one of these, chosen at random.
    pub ops: Vec<AugmentOp>,
    /// Share of a text's words that an operation changes (EDA's alpha).
    pub rate: f64,
    pub seed: u64,
}

impl AugmentConfig {
    /// From command-line values: `ops` comma-separated (`synonym,insert,swap,delete`), `rate`
    /// strictly between 0 and 1. The error names the bad value, not the flag (callers differ).
    pub fn from_flags(copies: usize, ops: &str, rate: f64, seed: u64) -> Result<Self, String> {
        let ops = ops
            .split(',')
            .map(|o| AugmentOp::parse(o.trim()).ok_or_else(|| format!("unknown operation {o:?}; expected synonym, insert, swap or delete")))
            .collect::<Result<Vec<_>, _>>()?;
        if !(rate > 0.0 && rate < 1.0) {
            return Err(format!("the rate must be between 0 and 1, got {rate}"));
        }
        Ok(Self { copies, ops, rate, seed })
    }
}

/// Synonym groups and, for each word, the groups it belongs to.
pub struct Thesaurus {
    groups: Vec<Vec<String>>,
    index: HashMap<String, Vec<u32>>,
}

impl Thesaurus {
    fn from_gz(bytes: &[u8], lowercase: bool) -> Self {
        let mut text = String::new();
        GzDecoder::new(bytes).read_to_string(&mut text).expect("the built-in thesaurus is valid gzip");
        let groups: Vec<Vec<String>> = text.lines().map(|l| l.split('\t').map(|w| if lowercase { w.to_lowercase() } else { w.to_string() }).collect()).collect();
        let mut index: HashMap<String, Vec<u32>> = HashMap::new();
        for (g, words) in groups.iter().enumerate() {
            for w in words {
                index.entry(w.clone()).or_default().push(g as u32);
            }
        }
        Self { groups, index }
    }

    /// WordNet 3.1 (lower-cased lookups).
    pub fn english() -> &'static Thesaurus {
        static T: OnceLock<Thesaurus> = OnceLock::new();
        T.get_or_init(|| Self::from_gz(include_bytes!("../data/synonyms-en.txt.gz"), true))
    }

    /// Tongyici Cilin (extended), true-synonym groups.
    pub fn chinese() -> &'static Thesaurus {
        static T: OnceLock<Thesaurus> = OnceLock::new();
        T.get_or_init(|| Self::from_gz(include_bytes!("../data/synonyms-zh.txt.gz"), false))
    }

    /// Every synonym of `word` other than itself, in a fixed order.
    pub fn synonyms(&self, word: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for &g in self.index.get(word).map(|v| v.as_slice()).unwrap_or_default() {
            for w in &self.groups[g as usize] {
                if w != word && !out.contains(&w.as_str()) {
                    out.push(w);
                }
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

fn jieba() -> &'static Jieba {
    static J: OnceLock<Jieba> = OnceLock::new();
    J.get_or_init(Jieba::new)
}

fn is_cjk(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}' | '\u{F900}'..='\u{FAFF}')
}

/// English words too common to be worth replacing (EDA's list, abridged).
const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "if", "of", "at", "by", "for", "with", "about", "to", "from", "in", "on", "is", "are", "was",
    "were", "be", "been", "being", "have", "has", "had", "do", "does", "did", "i", "me", "my", "we", "our", "you", "your", "he", "him",
    "his", "she", "her", "it", "its", "they", "them", "their", "this", "that", "these", "those", "what", "which", "who", "as", "not",
    "no", "so", "than", "too", "very", "can", "will", "just", "s", "t",
];

/// One text as tokens, and how to join them back.
struct Tokens {
    words: Vec<String>,
    chinese: bool,
}

impl Tokens {
    fn split(text: &str) -> Self {
        if text.chars().any(is_cjk) {
            let words = jieba().cut(text, true).into_iter().filter(|w| !w.trim().is_empty()).map(str::to_string).collect();
            Tokens { words, chinese: true }
        } else {
            Tokens { words: text.split_whitespace().map(str::to_string).collect(), chinese: false }
        }
    }

    fn join(&self) -> String {
        self.words.join(if self.chinese { "" } else { " " })
    }

    /// The thesaurus key of word `i` and the punctuation around it (English keeps "word," as
    /// prefix "", key "word", suffix ",").
    fn key(&self, i: usize) -> (String, String, String) {
        let w = &self.words[i];
        if self.chinese {
            return (String::new(), w.clone(), String::new());
        }
        let start = w.find(|c: char| c.is_alphanumeric()).unwrap_or(w.len());
        let end = w.rfind(|c: char| c.is_alphanumeric()).map_or(start, |e| e + w[e..].chars().next().map_or(1, char::len_utf8));
        (w[..start].to_string(), w[start..end.max(start)].to_lowercase(), w[end.max(start)..].to_string())
    }

    fn thesaurus(&self) -> &'static Thesaurus {
        if self.chinese { Thesaurus::chinese() } else { Thesaurus::english() }
    }

    /// Positions of words that have synonyms (and are not stop words).
    fn replaceable(&self) -> Vec<(usize, Vec<&'static str>)> {
        let t = self.thesaurus();
        (0..self.words.len())
            .filter_map(|i| {
                let (_, key, _) = self.key(i);
                if key.is_empty() || (!self.chinese && STOP_WORDS.contains(&key.as_str())) {
                    return None;
                }
                let syn = t.synonyms(&key);
                (!syn.is_empty()).then_some((i, syn))
            })
            .collect()
    }
}

/// Applies one operation to `text`; `rate` sets how many words change (at least one).
pub fn augment_text(text: &str, op: AugmentOp, rate: f64, rng: &mut impl Rng) -> String {
    let mut t = Tokens::split(text);
    let n = t.words.len();
    if n == 0 {
        return text.to_string();
    }
    let changes = ((rate * n as f64).round() as usize).max(1);
    match op {
        AugmentOp::Synonym => {
            let mut candidates = t.replaceable();
            for _ in 0..changes.min(candidates.len()) {
                let (i, syn) = candidates.swap_remove(rng.random_range(0..candidates.len()));
                let (pre, _, post) = t.key(i);
                t.words[i] = format!("{pre}{}{post}", syn.choose(rng).expect("non-empty"));
            }
        }
        AugmentOp::Insert => {
            for _ in 0..changes {
                let candidates = t.replaceable();
                let Some((_, syn)) = candidates.choose(rng) else { break };
                let word = syn.choose(rng).expect("non-empty").to_string();
                let at = rng.random_range(0..=t.words.len());
                t.words.insert(at, word);
            }
        }
        AugmentOp::Swap => {
            for _ in 0..changes {
                if t.words.len() < 2 {
                    break;
                }
                let (a, b) = (rng.random_range(0..t.words.len()), rng.random_range(0..t.words.len()));
                t.words.swap(a, b);
            }
        }
        AugmentOp::Delete => {
            if n > 1 {
                let keep: Vec<String> = t.words.iter().filter(|_| rng.random::<f64>() >= rate).cloned().collect();
                t.words = if keep.is_empty() { vec![t.words[rng.random_range(0..n)].clone()] } else { keep };
            }
        }
    }
    t.join()
}

/// `copies` augmented versions of every example (texts and pair texts; labels and source lines
/// kept), reproducible from the seed. Copies identical to their source are dropped.
pub fn augment_examples(examples: &[Example], cfg: &AugmentConfig) -> Vec<Example> {
    let mut out = Vec::with_capacity(examples.len() * cfg.copies);
    if cfg.ops.is_empty() {
        return out;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xA11C_E5ED);
    for e in examples {
        for _ in 0..cfg.copies {
            let op = *cfg.ops.choose(&mut rng).expect("non-empty");
            let text = augment_text(&e.text, op, cfg.rate, &mut rng);
            let pair = e.pair.as_ref().map(|p| augment_text(p, op, cfg.rate, &mut rng));
            if text != e.text || pair != e.pair {
                out.push(Example { text, pair, labels: e.labels.clone(), line: e.line });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thesauri_hold_real_synonyms() {
        let en = Thesaurus::english();
        assert!(en.len() > 40_000);
        let car = en.synonyms("car");
        assert!(car.contains(&"automobile") && car.contains(&"auto"), "{car:?}");
        let zh = Thesaurus::chinese();
        assert!(zh.len() > 9_000);
        let s = zh.synonyms("人类");
        assert!(s.contains(&"全人类"), "{s:?}");
    }

    #[test]
    fn each_operation_does_what_it_says() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let en = "The car drove quickly down the road.";
        let sr = augment_text(en, AugmentOp::Synonym, 0.3, &mut rng);
        assert_ne!(sr, en);
        assert_eq!(sr.split_whitespace().count(), 7, "{sr}");
        assert!(sr.ends_with('.'), "punctuation kept: {sr}");
        let ri = augment_text(en, AugmentOp::Insert, 0.3, &mut rng);
        assert!(ri.split_whitespace().count() > 7, "{ri}");
        let sorted = |s: &str| {
            let mut v: Vec<String> = s.split_whitespace().map(str::to_string).collect();
            v.sort();
            v
        };
        let rs = augment_text(en, AugmentOp::Swap, 0.3, &mut rng);
        assert_eq!(sorted(&rs), sorted(en));
        let rd = augment_text(en, AugmentOp::Delete, 0.5, &mut rng);
        assert!(rd.split_whitespace().count() < 7, "{rd}");

        // Chinese goes through word segmentation and Cilin.
        let zh = "人类的工作者在城市里工作";
        let sr = augment_text(zh, AugmentOp::Synonym, 0.5, &mut rng);
        assert_ne!(sr, zh);
        assert!(!sr.contains(' '), "{sr}");
        let rs = augment_text(zh, AugmentOp::Swap, 0.5, &mut rng);
        let mut a: Vec<char> = rs.chars().collect();
        let mut b: Vec<char> = zh.chars().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "swap keeps the characters: {rs}");
    }

    #[test]
    fn copies_are_reproducible_and_keep_labels() {
        let ex = vec![Example { text: "The film was a great success".into(), pair: None, labels: vec!["arts".into()], line: 3 }];
        let cfg = AugmentConfig { copies: 4, ops: vec![AugmentOp::Synonym, AugmentOp::Swap], rate: 0.2, seed: 7 };
        let a = augment_examples(&ex, &cfg);
        let b = augment_examples(&ex, &cfg);
        assert!(!a.is_empty() && a.len() <= 4);
        assert!(a.iter().zip(&b).all(|(x, y)| x.text == y.text));
        assert!(a.iter().all(|e| e.labels == ex[0].labels && e.line == 3 && e.text != ex[0].text));
    }
}
