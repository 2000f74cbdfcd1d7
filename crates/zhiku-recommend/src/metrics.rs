//! Ranking metrics at k over every test user, ranking all items the user has not seen in
//! training, with binary relevance (a test interaction is relevant), as Microsoft Recommenders'
//! `python_evaluation` defines them:
//! - NDCG@k: Σ_hits 1/log(1+rank) over the ideal Σ_{r ≤ min(|rel|, k)} 1/log(1+r);
//! - Precision@k: hits / k; Recall@k: hits / |rel|; HR@k: 1 when any hit;
//! - MAP@k: Σ over the n-th hit at rank r of n / r, divided by min(|rel|, k);
//! - MRR@k: 1 / rank of the first hit;
//! - coverage: the share of the catalogue that appears in at least one user's list.
//!
//! Users the model was not trained on get its fallback (popularity, or their segment when the
//! model has user features) and are counted apart;
//! test interactions with items that had no training interaction ("cold" items) get their own
//! recall, the number that says whether new items are ever recommended.

use crate::matrix::Csr;
use crate::data::IdMap;
use crate::model::Recommender;
use rayon::prelude::*;
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    pub k: usize,
    pub users: usize,
    /// Test users the model was not trained on (ranked by its fallback).
    pub users_without_training: usize,
    pub ndcg: f64,
    pub precision: f64,
    pub recall: f64,
    pub map: f64,
    pub hit_rate: f64,
    pub mrr: f64,
    pub coverage: f64,
    /// Test interactions with items that had no training interaction, and the share of them
    /// that reached their user's list.
    pub cold_item_interactions: usize,
    pub cold_item_recall: f64,
}

impl Report {
    /// The report as `{"ndcg@10": …, "precision@10": …, …}`.
    pub fn to_json(&self) -> serde_json::Value {
        let k = self.k;
        serde_json::json!({
            "k": k,
            "users": self.users,
            "users_without_training": self.users_without_training,
            format!("ndcg@{k}"): self.ndcg,
            format!("precision@{k}"): self.precision,
            format!("recall@{k}"): self.recall,
            format!("map@{k}"): self.map,
            format!("hr@{k}"): self.hit_rate,
            format!("mrr@{k}"): self.mrr,
            "coverage": self.coverage,
            "cold_item_interactions": self.cold_item_interactions,
            format!("cold_item_recall@{k}"): self.cold_item_recall,
        })
    }
}

#[derive(Default)]
struct Sums {
    users: usize,
    unknown: usize,
    ndcg: f64,
    precision: f64,
    recall: f64,
    map: f64,
    hit: f64,
    mrr: f64,
    cold: usize,
    cold_hits: usize,
    shown: Vec<bool>,
}

impl Sums {
    fn merge(mut self, o: Sums) -> Sums {
        self.users += o.users;
        self.unknown += o.unknown;
        self.ndcg += o.ndcg;
        self.precision += o.precision;
        self.recall += o.recall;
        self.map += o.map;
        self.hit += o.hit;
        self.mrr += o.mrr;
        self.cold += o.cold;
        self.cold_hits += o.cold_hits;
        if self.shown.is_empty() {
            self.shown = o.shown;
        } else {
            for (a, b) in self.shown.iter_mut().zip(o.shown) {
                *a |= b;
            }
        }
        self
    }
}

/// Scores `model` on `test` (rows: users in the model's index space, where rows past the model's
/// users are users it has not seen, all named by `users`; columns past its items are items it
/// cannot recommend).
pub fn evaluate(model: &Recommender, test: &Csr, users: &IdMap, k: usize) -> Report {
    score_lists(model, test, &candidate_lists(model, test, users, k), k)
}

/// Ranked lists: a test user's row and their items with scores, best first.
pub type RankedLists = Vec<(usize, Vec<(u32, f32)>)>;

/// Every test user's (row of `test` with interactions) `n` best items, best first.
pub fn candidate_lists(model: &Recommender, test: &Csr, users: &IdMap, n: usize) -> RankedLists {
    (0..test.rows)
        .into_par_iter()
        .filter(|&u| test.row_len(u) > 0)
        .map_init(Vec::new, |scores, u| (u, model.recommend(model.query_for(users.id(u as u32)), n, &[], scores)))
        .collect()
}

/// Scores ranked lists (a test user's row and items best first; the first `k` count).
pub fn score_lists(model: &Recommender, test: &Csr, lists: &[(usize, Vec<(u32, f32)>)], k: usize) -> Report {
    let n_known = model.users.len();
    let n_items = model.n_items();
    let discount = |rank: usize| 1.0 / ((1 + rank) as f64).ln();
    let sums = lists
        .par_iter()
        .fold(Sums::default, |mut s, (u, recs)| {
            if s.shown.is_empty() {
                s.shown = vec![false; n_items];
            }
            let relevant = test.row(*u).0;
            let known = *u < n_known;
            let (mut hits, mut dcg, mut ap, mut first) = (0usize, 0.0, 0.0, None);
            for (r, &(item, _)) in recs.iter().take(k).enumerate() {
                s.shown[item as usize] = true;
                if relevant.binary_search(&item).is_ok() {
                    hits += 1;
                    dcg += discount(r + 1);
                    ap += hits as f64 / (r + 1) as f64;
                    first.get_or_insert(r + 1);
                    if model.popularity[item as usize] == 0.0 {
                        s.cold_hits += 1;
                    }
                }
            }
            let ideal: f64 = (1..=relevant.len().min(k)).map(discount).sum();
            s.users += 1;
            s.unknown += (!known) as usize;
            s.ndcg += dcg / ideal;
            s.precision += hits as f64 / k as f64;
            s.recall += hits as f64 / relevant.len() as f64;
            s.map += ap / relevant.len().min(k) as f64;
            s.hit += (hits > 0) as u8 as f64;
            s.mrr += first.map_or(0.0, |r| 1.0 / r as f64);
            s.cold += relevant.iter().filter(|&&i| i as usize >= n_items || model.popularity[i as usize] == 0.0).count();
            s
        })
        .reduce(Sums::default, Sums::merge);
    let n = sums.users.max(1) as f64;
    Report {
        k,
        users: sums.users,
        users_without_training: sums.unknown,
        ndcg: sums.ndcg / n,
        precision: sums.precision / n,
        recall: sums.recall / n,
        map: sums.map / n,
        hit_rate: sums.hit / n,
        mrr: sums.mrr / n,
        coverage: sums.shown.iter().filter(|&&b| b).count() as f64 / n_items.max(1) as f64,
        cold_item_interactions: sums.cold,
        cold_item_recall: if sums.cold == 0 { 0.0 } else { sums.cold_hits as f64 / sums.cold as f64 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::{Algorithm, Params};
    use crate::model::{ModelConfig, Weights, FORMAT};

    /// Popularity 5,4,3,2,1 over items 0..5; user 0 has seen item 0, user 1 nothing.
    fn ids(n: usize, prefix: &str) -> IdMap {
        IdMap::from_ids((0..n).map(|i| format!("{prefix}{i}")).collect())
    }

    fn popular() -> Recommender {
        let config = ModelConfig {
            format: FORMAT,
            algorithm: Algorithm::Popularity,
            params: Params::default(),
            users: 2,
            items: 5,
            interactions: 1,
            encoder: None,
            seed: 0,
            training: serde_json::Value::Null,
        };
        let seen = Csr::from_triplets(2, 5, [(0u32, 0u32, 1.0f32)].into_iter());
        Recommender { config, users: ids(2, "u"), items: ids(5, "i"), seen, popularity: vec![5.0, 4.0, 3.0, 2.0, 1.0], weights: Weights::Popularity, item_table: None, segments: None, cache: Default::default() }
    }

    #[test]
    fn metrics_by_hand() {
        let model = popular();
        // User 0 is shown items 1, 2 (0 is seen) and wants 1 and 4.
        let test = Csr::from_triplets(2, 5, [(0u32, 1u32, 1.0f32), (0, 4, 1.0)].into_iter());
        let r = evaluate(&model, &test, &ids(3, "u"), 2);
        let ln = |x: f64| x.ln();
        assert_eq!(r.users, 1);
        assert!((r.ndcg - (1.0 / ln(2.0)) / (1.0 / ln(2.0) + 1.0 / ln(3.0))).abs() < 1e-12, "{}", r.ndcg);
        assert_eq!((r.precision, r.recall, r.map, r.hit_rate, r.mrr), (0.5, 0.5, 0.5, 1.0, 1.0));
        assert_eq!(r.coverage, 2.0 / 5.0);
        // A second user, unknown to the model and wanting item 3 (rank 4 of the fallback): no hit.
        let test = Csr::from_triplets(3, 5, [(0u32, 1u32, 1.0f32), (0, 4, 1.0), (2, 3, 1.0)].into_iter());
        let r = evaluate(&model, &test, &ids(3, "u"), 2);
        assert_eq!((r.users, r.users_without_training), (2, 1));
        assert_eq!(r.hit_rate, 0.5);
        let json = r.to_json();
        assert!(json["ndcg@2"].is_f64() && json["precision@2"].is_f64(), "{json}");
    }

    #[test]
    fn cold_items_count_apart() {
        let mut model = popular();
        model.popularity[4] = 0.0; // item 4 had no training interaction
        let test = Csr::from_triplets(1, 6, [(0u32, 4u32, 1.0f32), (0, 5, 1.0)].into_iter());
        let r = evaluate(&model, &test, &ids(3, "u"), 3);
        // Item 4 is never recommended by a behaviour model, item 5 is outside the catalogue.
        assert_eq!((r.cold_item_interactions, r.cold_item_recall), (2, 0.0));
    }
}
