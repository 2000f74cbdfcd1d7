//! A second stage for search: a cross-encoder (a text-pair classifier trained with `zhiku train
//! --task reranker`, or any BertForSequenceClassification folder with a "1" or "relevant"
//! label) reads the query and each passage together and scores how well the passage answers;
//! the first stage's best candidates are reordered by that probability.

use anyhow::{bail, Result};
use candle_core::Device;
use std::path::Path;
use zhiku_models::{TextModel, TokenizedText};

pub struct CrossEncoder {
    model: TextModel,
    /// The label whose probability is the relevance.
    relevant: usize,
}

impl CrossEncoder {
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        let model = TextModel::open(dir, device)?;
        let Some(labels) = model.labels() else { bail!("{}: not a cross-encoder (no classification head); train one with `zhiku train --task reranker`", dir.display()) };
        let relevant = match labels.iter().position(|l| l == "1" || l == "relevant" || l == "true") {
            Some(i) => i,
            None if labels.len() == 2 => 1,
            None => bail!("{}: a cross-encoder needs a label \"1\" (relevant); this one has {labels:?}", dir.display()),
        };
        Ok(Self { model, relevant })
    }

    /// The relevance of each passage to the query, in [0, 1].
    pub fn score(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(passages.len());
        for chunk in passages.chunks(32) {
            let queries = vec![query; chunk.len()];
            let items = self.model.tokenizer.encode_many(&queries, Some(chunk))?;
            let refs: Vec<&TokenizedText> = items.iter().collect();
            out.extend(self.model.classify(&refs)?.into_iter().map(|p| p[self.relevant]));
        }
        Ok(out)
    }
}

/// Reorders the best `top` results by the cross-encoder's relevance (kept in `rerank`); the
/// rest follow in their first-stage order.
pub fn rerank(results: &mut [crate::SearchResult], query: &str, model: &CrossEncoder, top: usize) -> Result<()> {
    let head = top.min(results.len());
    let texts: Vec<&str> = results[..head].iter().map(|r| r.chunk.as_str()).collect();
    let scores = model.score(query, &texts)?;
    for (r, s) in results[..head].iter_mut().zip(scores) {
        r.rerank = Some(s as f64);
    }
    // Stable: equal scores keep their first-stage order.
    results[..head].sort_by(|a, b| b.rerank.unwrap_or(0.0).total_cmp(&a.rerank.unwrap_or(0.0)));
    Ok(())
}
