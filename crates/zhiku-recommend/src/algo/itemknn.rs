//! Item-based nearest neighbours (Sarwar et al. 2001; Deshpande and Karypis 2004): cosine
//! similarity between the items' user columns of the binary interaction matrix, each item keeping
//! its `neighbors` most similar items; a user's score for an item is the sum of its similarities
//! to the items in the user's history (the user row times the pruned similarity matrix, as the
//! `implicit` package's ItemItemRecommender).

use crate::matrix::Csr;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ItemKnnParams {
    pub neighbors: usize,
    /// Added to the denominator (Bell and Koren's shrinkage): pairs with little overlap count less.
    pub shrink: f32,
}

impl Default for ItemKnnParams {
    fn default() -> Self {
        Self { neighbors: 100, shrink: 0.0 }
    }
}

/// The pruned similarity matrix: row j holds j's nearest items and their similarity.
pub fn fit(ui: &Csr, p: &ItemKnnParams) -> Csr {
    let iu = ui.transpose();
    let n = ui.cols;
    let norms: Vec<f32> = (0..n).map(|i| (iu.row_len(i) as f32).sqrt()).collect();
    let rows: Vec<Vec<(u32, f32)>> = (0..n)
        .into_par_iter()
        .map_init(
            || (vec![0f32; n], Vec::<u32>::new()),
            |(co, touched), i| {
                for &u in iu.row(i).0 {
                    for &j in ui.row(u as usize).0 {
                        if co[j as usize] == 0.0 {
                            touched.push(j);
                        }
                        co[j as usize] += 1.0;
                    }
                }
                let mut sims: Vec<(u32, f32)> = touched
                    .iter()
                    .filter(|&&j| j as usize != i)
                    .map(|&j| (j, co[j as usize] / (norms[i] * norms[j as usize] + p.shrink)))
                    .collect();
                for &j in touched.iter() {
                    co[j as usize] = 0.0;
                }
                touched.clear();
                if sims.len() > p.neighbors {
                    sims.select_nth_unstable_by(p.neighbors, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                    sims.truncate(p.neighbors);
                }
                sims
            },
        )
        .collect();
    Csr::from_triplets(n, n, rows.iter().enumerate().flat_map(|(i, r)| r.iter().map(move |&(j, s)| (i as u32, j, s))))
}

/// Scores every item for a history: Σ_{j ∈ history} sim(j, ·).
pub fn score(sim: &Csr, history: &[u32], out: &mut [f32]) {
    out.fill(0.0);
    for &j in history {
        let (idx, val) = sim.row(j as usize);
        for (&i, &s) in idx.iter().zip(val) {
            out[i as usize] += s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_item_columns_pruned_to_k() {
        // Items 0 and 1 share both users; item 2 shares one user with 0.
        let ui = Csr::from_triplets(3, 3, [(0u32, 0u32, 1.0f32), (0, 1, 1.0), (1, 0, 1.0), (1, 1, 1.0), (2, 0, 1.0), (2, 2, 1.0)].into_iter());
        let sim = fit(&ui, &ItemKnnParams { neighbors: 1, shrink: 0.0 });
        // sim(0,1) = 2 / sqrt(3 * 2); row 0 keeps only item 1.
        assert_eq!(sim.row(0).0, &[1]);
        assert!((sim.row(0).1[0] - 2.0 / 6f32.sqrt()).abs() < 1e-6);
        assert_eq!(sim.row(2).0, &[0]);
        let mut out = vec![0.0; 3];
        score(&sim, &[2], &mut out);
        assert!((out[0] - 1.0 / 3f32.sqrt()).abs() < 1e-6 && out[1] == 0.0);
    }
}
