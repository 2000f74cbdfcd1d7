//! Behaviour plus text, so that new items are recommended too: implicit ALS factors for the items
//! people have used, and for items no one has (cold items) factors predicted from their text by
//! a ridge regression from item embeddings to the ALS item factors, learned on the warm items
//! (the "text-initialised factors" of cold-start work such as Gantner et al. 2010's attribute
//! mapping). A user's score for an item is then
//!     x_u · ŷ_i + content_weight · cos(profile_u, e_i) + cold_boost · [i is cold]
//! with ŷ_i the learned factors of a warm item or the mapped ones of a cold item, and profile_u
//! the mean embedding of the user's history. The ALS hyperparameters, the ridge strength and the
//! two blend weights are tuned together on a validation split that holds out both some items
//! entirely and some of every user's interactions, so the blend learns how far to trust text
//! against behaviour from data, not by hand.

use super::als::{self, AlsParams};
use super::{content, Factors};
use crate::matrix::{cholesky_factor, cholesky_substitute, score_rows, Csr};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HybridParams {
    /// Ridge strength of the map from embeddings to factors.
    pub ridge: f32,
    pub content_weight: f32,
    pub cold_boost: f32,
}

impl Default for HybridParams {
    fn default() -> Self {
        Self { ridge: 1.0, content_weight: 0.1, cold_boost: 0.0 }
    }
}

/// The fitted blend: factors for every item (mapped for cold ones), the item embeddings, and
/// which items were cold at training time.
#[derive(Debug, Clone)]
pub struct Hybrid {
    pub factors: Factors,
    pub embeddings: Vec<f32>,
    pub emb_dim: usize,
    pub cold: Vec<bool>,
    pub params: HybridParams,
}

pub fn fit(ui: &Csr, embeddings: &[f32], emb_dim: usize, als_params: &AlsParams, p: &HybridParams, seed: u64) -> Hybrid {
    let mut factors = als::fit(ui, als_params, seed, |_| {});
    let d = factors.dim;
    let counts: Vec<usize> = {
        let mut c = vec![0usize; ui.cols];
        for &i in &ui.indices {
            c[i as usize] += 1;
        }
        c
    };
    let cold: Vec<bool> = counts.iter().map(|&c| c == 0).collect();
    let w = ridge_map(embeddings, emb_dim, &factors.item, d, &cold, p.ridge);
    for i in (0..ui.cols).filter(|&i| cold[i]) {
        let e = &embeddings[i * emb_dim..(i + 1) * emb_dim];
        let y = &mut factors.item[i * d..(i + 1) * d];
        y.fill(0.0);
        for (k, &ek) in e.iter().enumerate() {
            crate::matrix::axpy(ek, &w[k * d..(k + 1) * d], y);
        }
    }
    Hybrid { factors, embeddings: embeddings.to_vec(), emb_dim, cold, params: *p }
}

/// W (emb_dim x d) minimising ‖E_warm W − Y_warm‖² + ridge ‖W‖².
fn ridge_map(e: &[f32], de: usize, y: &[f32], d: usize, cold: &[bool], ridge: f32) -> Vec<f32> {
    let mut a = vec![0f64; de * de];
    let mut b = vec![0f64; de * d];
    for i in (0..cold.len()).filter(|&i| !cold[i]) {
        let ei = &e[i * de..(i + 1) * de];
        let yi = &y[i * d..(i + 1) * d];
        for (k, &ek) in ei.iter().enumerate() {
            if ek == 0.0 {
                continue;
            }
            let row = &mut a[k * de..(k + 1) * de];
            for (v, &el) in row.iter_mut().zip(ei) {
                *v += ek as f64 * el as f64;
            }
            for (v, &yl) in b[k * d..(k + 1) * d].iter_mut().zip(yi) {
                *v += ek as f64 * yl as f64;
            }
        }
    }
    for k in 0..de {
        a[k * de + k] += ridge.max(1e-6) as f64;
    }
    let mut w = vec![0f32; de * d];
    if !cholesky_factor(&mut a, de) {
        return w;
    }
    let mut col = vec![0f64; de];
    for c in 0..d {
        for k in 0..de {
            col[k] = b[k * d + c];
        }
        cholesky_substitute(&a, &mut col, de);
        for k in 0..de {
            w[k * d + c] = col[k] as f32;
        }
    }
    w
}

impl Hybrid {
    /// Scores every item for a user vector (trained or folded in) and history.
    pub fn score(&self, xu: &[f32], history: &[u32], out: &mut [f32]) {
        let f = &self.factors;
        score_rows(&f.item, f.dim, xu, None, out);
        if self.params.content_weight != 0.0 && !history.is_empty() {
            let profile = content::profile(&self.embeddings, self.emb_dim, history);
            let mut text = vec![0f32; out.len()];
            score_rows(&self.embeddings, self.emb_dim, &profile, None, &mut text);
            for (o, t) in out.iter_mut().zip(&text) {
                *o += self.params.content_weight * t;
            }
        }
        if self.params.cold_boost != 0.0 {
            for (o, &c) in out.iter_mut().zip(&self.cold) {
                if c {
                    *o += self.params.cold_boost;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_map_recovers_a_linear_relation() {
        // y = e · M for a known M; the map learned on warm items predicts the cold ones.
        let (n, de, d) = (40, 3, 2);
        let m = [1.0f32, -2.0, 0.5, 0.0, 3.0, 1.0];
        let mut e = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let ei = [(i as f32 * 0.37).sin(), (i as f32 * 0.11).cos(), 1.0];
            for c in 0..d {
                y.push((0..de).map(|k| ei[k] * m[k * d + c]).sum::<f32>());
            }
            e.extend_from_slice(&ei);
        }
        let cold: Vec<bool> = (0..n).map(|i| i % 5 == 0).collect();
        let w = ridge_map(&e, de, &y, d, &cold, 1e-4);
        for (a, b) in w.iter().zip(&m) {
            assert!((a - b).abs() < 1e-2, "{w:?}");
        }
    }
}
