//! Summaries of Chinese and English text.
//!
//! - [`lead`]: the first sentences (the classic news baseline).
//! - [`extract`]: the most central sentences, kept in their order. Centrality is PageRank over a
//!   graph of sentences: [`textrank_graph`] weighs two sentences by the terms they share (jieba
//!   words for Chinese, stemmed words without stop words for English, as the library's full-text
//!   index analyses them) over the log of their lengths (Mihalcea and Tarau's TextRank);
//!   [`embedding_graph`] by the cosine of their sentence embeddings (LexRank with continuous
//!   weights).
//! - [`abstractive`]: a language model writes the summary; a text longer than its context is
//!   summarised chunk by chunk and the chunk summaries summarised again (map-reduce).

pub mod abstractive;

use anyhow::Result;
use serde::Serialize;
use zhiku_library::analyzer;

/// A sentence of the input: its text and character span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sentence {
    pub index: usize,
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// The sentences of `text` (Chinese 。！？；… and English . ! ? ; followed by a space; a blank
/// line ends one too).
pub fn split_sentences(text: &str) -> Vec<Sentence> {
    let chars: Vec<char> = text.chars().collect();
    zhiku_library::chunk::sentences(&chars).into_iter().enumerate().map(|(index, (start, end))| Sentence { index, start, end, text: chars[start..end].iter().collect() }).collect()
}

/// An extractive summary: the chosen sentences in their order, each with its score.
#[derive(Debug, Clone, Serialize)]
pub struct Extract {
    pub summary: String,
    pub sentences: Vec<(Sentence, f64)>,
    /// Sentences in the input.
    pub total: usize,
}

/// Joins sentences as they would be written: no space between Chinese sentences, one between
/// others.
fn join(sentences: &[&Sentence]) -> String {
    let mut out = String::new();
    for s in sentences {
        let cjk_end = out.chars().last().is_some_and(|c| !c.is_ascii());
        if !out.is_empty() && !cjk_end {
            out.push(' ');
        }
        out.push_str(&s.text);
    }
    out
}

/// The first `n` sentences.
pub fn lead(text: &str, n: usize) -> Extract {
    let all = split_sentences(text);
    let total = all.len();
    let chosen: Vec<Sentence> = all.into_iter().take(n.max(1)).collect();
    Extract { summary: join(&chosen.iter().collect::<Vec<_>>()), sentences: chosen.into_iter().map(|s| (s, 1.0)).collect(), total }
}

/// The `n` sentences with the highest `scores` (ties to the earlier one), in their order.
pub fn extract(sentences: &[Sentence], scores: &[f64], n: usize) -> Extract {
    let mut order: Vec<usize> = (0..sentences.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut chosen: Vec<usize> = order.into_iter().take(n.max(1)).collect();
    chosen.sort_unstable();
    let picked: Vec<&Sentence> = chosen.iter().map(|&i| &sentences[i]).collect();
    Extract { summary: join(&picked), sentences: chosen.iter().map(|&i| (sentences[i].clone(), scores[i])).collect(), total: sentences.len() }
}

/// TextRank's edge weights: shared distinct terms over `ln|a| + ln|b|` (term counts).
pub fn textrank_graph(sentences: &[Sentence]) -> Result<Vec<Vec<f64>>> {
    let mut a = analyzer::analyzer(None)?;
    let terms: Vec<Vec<String>> = sentences.iter().map(|s| analyzer::terms(&mut a, &s.text).into_iter().map(|t| t.0).collect()).collect();
    let sets: Vec<std::collections::HashSet<&str>> = terms.iter().map(|t| t.iter().map(String::as_str).collect()).collect();
    let n = sentences.len();
    let mut w = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let shared = sets[i].intersection(&sets[j]).count();
            if shared == 0 {
                continue;
            }
            // Two one-word sentences would divide by zero; count their overlap whole.
            let norm = ((terms[i].len() as f64).ln() + (terms[j].len() as f64).ln()).max(1.0);
            w[i][j] = shared as f64 / norm;
            w[j][i] = w[i][j];
        }
    }
    Ok(w)
}

/// Cosine similarities of sentence embeddings as edge weights (negative ones dropped).
pub fn embedding_graph(embeddings: &[Vec<f32>]) -> Vec<Vec<f64>> {
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
    let n = embeddings.len();
    let mut w = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let dot: f64 = embeddings[i].iter().zip(&embeddings[j]).map(|(a, b)| *a as f64 * *b as f64).sum();
            let c = (dot / (norm(&embeddings[i]) * norm(&embeddings[j]))).max(0.0);
            w[i][j] = c;
            w[j][i] = c;
        }
    }
    w
}

/// Weighted PageRank (damping 0.85) of a symmetric graph, iterated until no score moves more
/// than 1e-8 (at most 200 rounds). A sentence linked to nothing keeps the floor `1 - d`.
pub fn pagerank(w: &[Vec<f64>]) -> Vec<f64> {
    const D: f64 = 0.85;
    let n = w.len();
    let out_weight: Vec<f64> = w.iter().map(|row| row.iter().sum()).collect();
    let mut score = vec![1.0; n];
    for _ in 0..200 {
        let next: Vec<f64> = (0..n).map(|i| (1.0 - D) + D * (0..n).filter(|&j| out_weight[j] > 0.0).map(|j| w[j][i] / out_weight[j] * score[j]).sum::<f64>()).collect();
        let moved = next.iter().zip(&score).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        score = next;
        if moved < 1e-8 {
            break;
        }
    }
    score
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEWS: &str = "The central bank raised interest rates on Tuesday. Markets fell sharply after the bank's decision on rates. \
        A local zoo welcomed a baby giraffe. Analysts expect the bank to raise interest rates again next year.";

    #[test]
    fn sentences_keep_their_spans() {
        let s = split_sentences("今天发货。明天到！OK? Fine.");
        let texts: Vec<&str> = s.iter().map(|x| x.text.as_str()).collect();
        assert_eq!(texts, ["今天发货。", "明天到！", "OK?", "Fine."]);
        assert_eq!((s[1].start, s[1].end), (5, 9));
    }

    #[test]
    fn lead_takes_the_first_sentences() {
        assert_eq!(lead(NEWS, 1).summary, "The central bank raised interest rates on Tuesday.");
        assert_eq!(lead("一。二。三。", 2).summary, "一。二。");
        assert_eq!(lead(NEWS, 9).sentences.len(), 4);
    }

    #[test]
    fn textrank_prefers_the_sentences_about_the_main_topic() {
        let s = split_sentences(NEWS);
        let scores = pagerank(&textrank_graph(&s).unwrap());
        let e = extract(&s, &scores, 2);
        assert!(!e.summary.contains("giraffe"), "{}", e.summary);
        // The unrelated sentence is linked to nothing and keeps the floor.
        assert!((scores[2] - 0.15).abs() < 1e-9, "{scores:?}");
        // Chosen sentences come back in their order.
        assert!(e.sentences.windows(2).all(|p| p[0].0.index < p[1].0.index));
    }

    #[test]
    fn textrank_reads_chinese_words() {
        let text = "这家店的发货速度很快。快递员态度很好。发货速度快，包装也很好。今天下雨了。";
        let s = split_sentences(text);
        let scores = pagerank(&textrank_graph(&s).unwrap());
        assert!(scores[0] > scores[3] && scores[2] > scores[3], "{scores:?}");
    }

    #[test]
    fn pagerank_of_a_symmetric_star_ranks_the_centre_first() {
        // Sentence 0 linked to each of the others, which are not linked to each other.
        let w: Vec<Vec<f64>> = (0..4).map(|i| (0..4).map(|j| if (i == 0) != (j == 0) { 1.0 } else { 0.0 }).collect()).collect();
        let s = pagerank(&w);
        assert!(s[0] > s[1] && (s[1] - s[2]).abs() < 1e-9);
        // PageRank keeps the total at n.
        assert!((s.iter().sum::<f64>() - 4.0).abs() < 1e-6);
    }

    #[test]
    fn embedding_graph_is_cosine() {
        let w = embedding_graph(&[vec![1.0, 0.0], vec![1.0, 1.0], vec![-1.0, 0.0]]);
        assert!((w[0][1] - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-9);
        assert_eq!(w[0][2], 0.0);
    }
}
