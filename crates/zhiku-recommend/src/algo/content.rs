//! Content-based scoring from item texts: every item embedded once by an encoder zhiku loads
//! (unit vectors), a user's profile the mean of their history's vectors, an item's score its
//! cosine-like dot product with the profile. Needs no interaction with an item, so it
//! recommends items no one has touched yet.

use crate::matrix::{axpy, score_rows};
use anyhow::{Context, Result};
use candle_core::Device;
use std::path::Path;

/// Unit embeddings of `texts` (row-major, n x dim) and `dim`; an empty text gets a zero row.
pub fn embed_items(encoder: &Path, texts: &[String], batch_size: usize, mut progress: impl FnMut(usize, usize)) -> Result<(Vec<f32>, usize)> {
    let model = zhiku_models::TextModel::open(encoder, &Device::Cpu).with_context(|| format!("cannot open the encoder {}", encoder.display()))?;
    let mut rows: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
    let todo: Vec<usize> = (0..texts.len()).filter(|&i| !texts[i].trim().is_empty()).collect();
    let mut done = 0;
    for chunk in todo.chunks(batch_size.max(1) * 8) {
        let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
        for (&i, v) in chunk.iter().zip(model.embed_texts(&batch, batch_size)?) {
            rows[i] = Some(v);
        }
        done += chunk.len();
        progress(done, todo.len());
    }
    let dim = rows.iter().flatten().next().map_or(0, |r| r.len());
    let mut out = Vec::with_capacity(texts.len() * dim);
    for r in rows {
        match r {
            Some(v) => out.extend_from_slice(&v),
            None => out.extend(std::iter::repeat_n(0.0, dim)),
        }
    }
    Ok((out, dim))
}

/// The mean of the history's item vectors.
pub fn profile(emb: &[f32], dim: usize, history: &[u32]) -> Vec<f32> {
    let mut p = vec![0f32; dim];
    for &j in history {
        axpy(1.0 / history.len() as f32, &emb[j as usize * dim..(j as usize + 1) * dim], &mut p);
    }
    p
}

pub fn score(emb: &[f32], dim: usize, history: &[u32], out: &mut [f32]) {
    score_rows(emb, dim, &profile(emb, dim, history), None, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_is_the_mean_and_scores_follow_it() {
        let emb = vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        assert_eq!(profile(&emb, 2, &[0, 1]), vec![0.5, 0.5]);
        let mut out = vec![0.0; 3];
        score(&emb, 2, &[0], &mut out);
        assert_eq!(out, vec![1.0, 0.0, 0.6]);
    }
}
