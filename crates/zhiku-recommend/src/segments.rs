//! User features as segments, and the fallback built on them: a user with no history gets the
//! items that users sharing their features (age band, gender, occupation, region...) interacted
//! with, rather than what everyone did.
//!
//! Each feature column becomes one value per user. A column whose every cell is a number, with
//! more than [`MAX_CATEGORIES`] distinct values, falls into [`BINS`] quantile bins; any other
//! column is categorical, and values held by fewer than [`MIN_USERS`] users pool into one,
//! [`RARE`] (so a zip code, nearly unique per user, adds little). Empty cells are missing.
//!
//! An item's score for a user with values x is naive Bayes over the features:
//!
//! `ln(n_i + 1) + w · Σ_f ln((c_{f,x_f,i} + β·π_{f,x_f}) / (n_{f,i} + β))`
//!
//! where `c` counts the training interactions of users with value `x_f` on item `i`, `n_{f,i}`
//! those of users with any known value of `f`, and `π_{f,v}` is the share of `f`'s interactions
//! made by users with value `v` (the prior the counts shrink toward, by `β`). Missing features
//! drop out of the sum. `β` and `w` are tuned on users held out whole from training; `w = 0` is
//! plain popularity and is kept when the features do not help there.

use crate::data::{Event, IdMap, Table};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A user's value for a feature they have no value for.
pub const MISSING: u32 = u32::MAX;
/// Categorical values need this many users to stand apart from the pooled rare ones.
pub const MIN_USERS: usize = 5;
/// A numeric column with more distinct values than this is binned.
pub const MAX_CATEGORIES: usize = 20;
pub const BINS: usize = 5;
/// The label of the pooled rare categories (and of categories first seen after training).
pub const RARE: &str = "(rare)";

/// One feature column and how its cells map to values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    /// Numeric features: the bin edges (a value `x` falls in the bin of edges ≤ x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edges: Option<Vec<f64>>,
    /// The values' labels, code order. Categorical features end with [`RARE`].
    pub labels: Vec<String>,
}

impl Feature {
    /// Learns the encoding of a column from its cells.
    fn fit(name: &str, cells: &[&str]) -> Self {
        let present: Vec<&str> = cells.iter().map(|c| c.trim()).filter(|c| !c.is_empty()).collect();
        let numbers: Option<Vec<f64>> = present.iter().map(|c| c.parse::<f64>().ok().filter(|x| x.is_finite())).collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for c in &present {
            *counts.entry(c).or_default() += 1;
        }
        if let Some(mut xs) = numbers.filter(|_| counts.len() > MAX_CATEGORIES) {
            xs.sort_by(f64::total_cmp);
            let mut edges: Vec<f64> = (1..BINS).map(|b| xs[b * xs.len() / BINS]).collect();
            edges.dedup();
            let mut labels = Vec::with_capacity(edges.len() + 1);
            labels.push(format!("<{}", edges[0]));
            for w in edges.windows(2) {
                labels.push(format!("{}-{}", w[0], w[1]));
            }
            labels.push(format!(">={}", edges[edges.len() - 1]));
            return Feature { name: name.to_string(), edges: Some(edges), labels };
        }
        let mut kept: Vec<&str> = counts.iter().filter(|(_, &n)| n >= MIN_USERS).map(|(&v, _)| v).collect();
        kept.sort_unstable();
        let mut labels: Vec<String> = kept.iter().map(|v| v.to_string()).collect();
        labels.push(RARE.to_string());
        Feature { name: name.to_string(), edges: None, labels }
    }

    /// The code of a cell: its bin or category ([`RARE`] for an unseen category); [`MISSING`]
    /// when empty. A numeric feature's non-number is an error.
    pub fn encode(&self, cell: &str) -> Result<u32> {
        let cell = cell.trim();
        if cell.is_empty() {
            return Ok(MISSING);
        }
        Ok(match &self.edges {
            Some(edges) => {
                let Some(x) = cell.parse::<f64>().ok().filter(|x| x.is_finite()) else { bail!("feature {:?} takes a number, got {cell:?}", self.name) };
                edges.partition_point(|&e| e <= x) as u32
            }
            None => self.labels[..self.labels.len() - 1].iter().position(|l| l == cell).unwrap_or(self.labels.len() - 1) as u32,
        })
    }
}

/// The fallback's state: the features, every table user's values, and the interaction counts
/// per feature value and item.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    pub features: Vec<Feature>,
    /// β: how many interactions' worth of prior each count is shrunk toward.
    pub smoothing: f32,
    /// w: how far the features move the ranking off popularity (0: not at all).
    pub weight: f32,
    /// The user table's users, trained or not.
    pub users: IdMap,
    /// `codes[user * features + f]`.
    pub codes: Vec<u32>,
    pub n_items: usize,
    /// `counts[(offset[f] + code) * n_items + item]`.
    pub counts: Vec<f32>,
    /// Derived from `counts`: per feature, interactions by users with a known value, per item.
    pub(crate) known: Vec<f32>,
    /// Derived: `π` per value row.
    pub(crate) prior: Vec<f32>,
}

impl Segments {
    /// Encodes the table's users. Counts start empty: see [`Self::count`].
    pub fn from_table(table: &Table, n_items: usize) -> Result<Self> {
        if table.columns.is_empty() {
            bail!("the user table has no feature columns besides the id")
        }
        let features: Vec<Feature> =
            table.columns.iter().enumerate().map(|(f, name)| Feature::fit(name, &table.values.iter().map(|row| row[f].as_str()).collect::<Vec<_>>())).collect();
        let mut codes = Vec::with_capacity(table.values.len() * features.len());
        for row in &table.values {
            for (f, feature) in features.iter().enumerate() {
                codes.push(feature.encode(&row[f]).expect("fitted on these cells"));
            }
        }
        Ok(Self { features, smoothing: 10.0, weight: 0.0, users: table.ids.clone(), codes, n_items, counts: Vec::new(), known: Vec::new(), prior: Vec::new() })
    }

    fn offsets(&self) -> Vec<usize> {
        let mut o = vec![0];
        for f in &self.features {
            o.push(o[o.len() - 1] + f.labels.len());
        }
        o
    }

    /// The values of a user of the table.
    pub fn user_codes(&self, id: &str) -> Option<&[u32]> {
        let u = self.users.get(id)? as usize;
        let nf = self.features.len();
        Some(&self.codes[u * nf..(u + 1) * nf])
    }

    /// Values from `name = cell` pairs (a request's features); features left out are missing,
    /// unknown names are an error.
    pub fn encode(&self, given: &[(String, String)]) -> Result<Vec<u32>> {
        let mut codes = vec![MISSING; self.features.len()];
        for (name, cell) in given {
            let Some(f) = self.features.iter().position(|f| &f.name == name) else {
                bail!("no user feature {name:?} (features: {})", self.features.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", "))
            };
            codes[f] = self.features[f].encode(cell)?;
        }
        Ok(codes)
    }

    /// "age 25-31, gender F": the values named, missing ones left out.
    pub fn describe(&self, codes: &[u32]) -> String {
        let parts: Vec<String> = self.features.iter().zip(codes).filter(|(_, &c)| c != MISSING).map(|(f, &c)| format!("{} {}", f.name, f.labels[c as usize])).collect();
        parts.join(", ")
    }

    /// Counts `events` (users indexed by `log_users`) per feature value and item. Returns the
    /// number of interactions whose user is not in the table.
    pub fn count(&mut self, events: &[Event], log_users: &IdMap) -> usize {
        let offsets = self.offsets();
        let (ni, nf) = (self.n_items, self.features.len());
        self.counts = vec![0f32; offsets[nf] * ni];
        let table_row: Vec<Option<u32>> = log_users.ids().iter().map(|id| self.users.get(id)).collect();
        let mut without = 0;
        for e in events {
            let Some(u) = table_row[e.user as usize] else {
                without += 1;
                continue;
            };
            for (&c, &offset) in self.codes[u as usize * nf..(u as usize + 1) * nf].iter().zip(&offsets) {
                if c != MISSING {
                    self.counts[(offset + c as usize) * ni + e.item as usize] += 1.0;
                }
            }
        }
        self.derive();
        without
    }

    /// Rebuilds `known` and `prior` from `counts`.
    pub(crate) fn derive(&mut self) {
        let offsets = self.offsets();
        let ni = self.n_items;
        self.known = vec![0f32; self.features.len() * ni];
        self.prior = vec![0f32; offsets[self.features.len()]];
        for f in 0..self.features.len() {
            let known = &mut self.known[f * ni..(f + 1) * ni];
            let mut row_sums = Vec::new();
            for v in offsets[f]..offsets[f + 1] {
                let row = &self.counts[v * ni..(v + 1) * ni];
                for (k, &c) in known.iter_mut().zip(row) {
                    *k += c;
                }
                row_sums.push(row.iter().map(|&c| c as f64).sum::<f64>());
            }
            let total: f64 = row_sums.iter().sum();
            for (v, s) in (offsets[f]..offsets[f + 1]).zip(row_sums) {
                self.prior[v] = if total > 0.0 { (s / total) as f32 } else { 0.0 };
            }
        }
    }

    /// Whether scoring a user with these values departs from popularity at all.
    pub fn applies(&self, codes: &[u32]) -> bool {
        self.weight > 0.0 && codes.iter().any(|&c| c != MISSING)
    }

    /// Scores every item for a user with values `codes` (see the module's formula).
    pub fn score(&self, codes: &[u32], popularity: &[f32], out: &mut [f32]) {
        let ni = self.n_items;
        for (o, &p) in out.iter_mut().zip(popularity) {
            *o = p.ln_1p();
        }
        if self.weight <= 0.0 {
            return;
        }
        let offsets = self.offsets();
        let beta = self.smoothing;
        for (f, &c) in codes.iter().enumerate() {
            if c == MISSING {
                continue;
            }
            let v = offsets[f] + c as usize;
            let row = &self.counts[v * ni..(v + 1) * ni];
            let known = &self.known[f * ni..(f + 1) * ni];
            let prior = beta * self.prior[v];
            for ((o, &cv), &n) in out.iter_mut().zip(row).zip(known) {
                *o += self.weight * ((cv + prior) / (n + beta)).max(f32::MIN_POSITIVE).ln();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: &[(&str, &str, &str)]) -> Table {
        Table {
            ids: IdMap::from_ids(rows.iter().map(|r| r.0.to_string()).collect()),
            columns: vec!["age".into(), "group".into()],
            values: rows.iter().map(|r| vec![r.1.to_string(), r.2.to_string()]).collect(),
        }
    }

    #[test]
    fn numbers_are_binned_and_rare_categories_pooled() {
        let ages: Vec<String> = (0..50).map(|i| (18 + i).to_string()).collect();
        let f = Feature::fit("age", &ages.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(f.edges.as_deref(), Some(&[28.0, 38.0, 48.0, 58.0][..]));
        assert_eq!(f.labels, ["<28", "28-38", "38-48", "48-58", ">=58"]);
        assert_eq!([f.encode("18").unwrap(), f.encode("28").unwrap(), f.encode("99.5").unwrap(), f.encode(" ").unwrap()], [0, 1, 4, MISSING]);
        assert!(f.encode("old").is_err());
        // Few distinct numbers stay categories; "x" has too few users to stand alone.
        let cells: Vec<&str> = std::iter::repeat_n("1", 6).chain(std::iter::repeat_n("2", 5)).chain(["x"]).collect();
        let g = Feature::fit("g", &cells);
        assert_eq!((g.edges.is_none(), g.labels.clone()), (true, vec!["1".to_string(), "2".into(), RARE.into()]));
        assert_eq!([g.encode("2").unwrap(), g.encode("x").unwrap(), g.encode("never seen").unwrap()], [1, 2, 2]);
    }

    #[test]
    fn a_segment_ranks_what_its_users_chose() {
        // Users a* (group a) all take item 0; users b* take item 1, and more of them, so item 1
        // is the most popular overall.
        let mut rows = Vec::new();
        let mut log_ids = Vec::new();
        let mut events = Vec::new();
        for k in 0..12 {
            let (id, group, item) = if k < 5 { (format!("a{k}"), "a", 0) } else { (format!("b{k}"), "b", 1) };
            rows.push((id.clone(), group));
            events.push(Event { user: log_ids.len() as u32, item, value: 1.0, time: 0 });
            log_ids.push(id);
        }
        rows.push(("new_a".to_string(), "a"));
        let owned: Vec<(String, String, String)> = rows.iter().map(|(id, g)| (id.clone(), String::new(), g.to_string())).collect();
        let t = table(&owned.iter().map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str())).collect::<Vec<_>>());
        let mut s = Segments::from_table(&t, 3).unwrap();
        assert_eq!(s.count(&events, &IdMap::from_ids(log_ids)), 0);
        let popularity = [5.0, 7.0, 0.0];
        let codes = s.user_codes("new_a").unwrap().to_vec();
        assert_eq!(codes, [MISSING, 0]);
        assert_eq!(s.describe(&codes), "group a");
        let mut out = [0f32; 3];
        s.score(&codes, &popularity, &mut out);
        assert!(out[1] > out[0], "weight 0 is popularity: {out:?}");
        s.weight = 1.0;
        assert!(s.applies(&codes) && !s.applies(&[MISSING, MISSING]));
        s.score(&codes, &popularity, &mut out);
        assert!(out[0] > out[1], "the segment's item first: {out:?}");
        let b = s.encode(&[("group".into(), "b".into())]).unwrap();
        s.score(&b, &popularity, &mut out);
        assert!(out[1] > out[0], "{out:?}");
        assert!(s.encode(&[("height".into(), "2".into())]).is_err());
    }
}
