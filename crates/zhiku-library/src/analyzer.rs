//! Text analysis for full-text search: Chinese segmented with jieba's search mode (a long
//! word also yields the shorter dictionary words inside it, so 农业 finds 中国农业发展银行),
//! other scripts split into words; then lower-cased, English stop words dropped, and stemmed.

use anyhow::{Context, Result};
use jieba_rs::{Jieba, TokenizeMode};
use std::path::Path;
use std::sync::Arc;
use tantivy::tokenizer::{Language, LowerCaser, RemoveLongFilter, Stemmer, StopWordFilter, TextAnalyzer, Token, TokenStream, Tokenizer};

/// The name the full-text index registers the analyzer under.
pub const ANALYZER: &str = "zhiku_text";

#[derive(Clone)]
pub struct JiebaTokenizer {
    jieba: Arc<Jieba>,
}

impl JiebaTokenizer {
    /// jieba's dictionary, plus a user dictionary (one word per line: `word [freq] [tag]`).
    pub fn new(user_dict: Option<&Path>) -> Result<Self> {
        let mut jieba = Jieba::new();
        if let Some(path) = user_dict {
            let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open the user dictionary", path.display()))?;
            jieba.load_dict(&mut std::io::BufReader::new(file)).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        Ok(Self { jieba: Arc::new(jieba) })
    }
}

pub struct VecTokenStream {
    tokens: Vec<Token>,
    next: usize,
}

impl TokenStream for VecTokenStream {
    fn advance(&mut self) -> bool {
        self.next += 1;
        self.next <= self.tokens.len()
    }
    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }
    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

impl Tokenizer for JiebaTokenizer {
    type TokenStream<'a> = VecTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream {
        let base = text.as_ptr() as usize;
        let mut tokens = Vec::new();
        for t in self.jieba.tokenize(text, TokenizeMode::Search, true) {
            // Spaces and punctuation are not terms.
            if !t.word.chars().any(char::is_alphanumeric) {
                continue;
            }
            let from = t.word.as_ptr() as usize - base;
            tokens.push(Token { offset_from: from, offset_to: from + t.word.len(), position: tokens.len(), text: t.word.to_string(), position_length: 1 });
        }
        VecTokenStream { tokens, next: 0 }
    }
}

/// The analyzer used both to index chunks and to parse queries.
pub fn analyzer(user_dict: Option<&Path>) -> Result<TextAnalyzer> {
    Ok(TextAnalyzer::builder(JiebaTokenizer::new(user_dict)?).filter(RemoveLongFilter::limit(40)).filter(LowerCaser).filter(StopWordFilter::new(Language::English).expect("English stop words")).filter(Stemmer::new(Language::English)).build())
}

/// The terms of `text` with their byte spans.
pub fn terms(analyzer: &mut TextAnalyzer, text: &str) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut stream = analyzer.token_stream(text);
    while let Some(t) = stream.next() {
        out.push((t.text.clone(), t.offset_from, t.offset_to));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_mode_finds_words_inside_longer_words() {
        let mut a = analyzer(None).unwrap();
        let got: Vec<String> = terms(&mut a, "中国农业发展银行").into_iter().map(|t| t.0).collect();
        assert!(got.contains(&"农业".to_string()), "{got:?}");
        assert!(got.contains(&"银行".to_string()), "{got:?}");
    }

    #[test]
    fn english_is_lowercased_and_stemmed_and_spans_are_bytes() {
        let mut a = analyzer(None).unwrap();
        let text = "学习 the Running Dogs!";
        let got = terms(&mut a, text);
        let words: Vec<&str> = got.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(words, ["学习", "run", "dog"]);
        assert_eq!(&text[got[1].1..got[1].2], "Running", "spans are byte offsets, stop words dropped");
    }

    #[test]
    fn a_user_dictionary_keeps_a_new_word_whole() {
        let dir = tempfile::tempdir().unwrap();
        let dict = dir.path().join("dict.txt");
        std::fs::write(&dict, "知库平台 100 n\n").unwrap();
        let mut a = analyzer(Some(&dict)).unwrap();
        let got: Vec<String> = terms(&mut a, "欢迎使用知库平台").into_iter().map(|t| t.0).collect();
        assert!(got.contains(&"知库平台".to_string()), "{got:?}");
    }
}
