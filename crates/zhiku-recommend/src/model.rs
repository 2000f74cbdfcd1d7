//! A trained recommender: the id maps, the training interactions (to leave out what a user has
//! seen), item popularity (the fallback for users without history) and the algorithm's weights.
//!
//! On disk, a folder: `recommender.json` (algorithm, hyperparameters, training summary),
//! `ids.json` (user and item ids in index order), `weights.safetensors` (every array) and, when
//! trained with user features, `segments.json` (the features and the table's user ids). It is
//! written into a temporary sibling folder and renamed into place, so a reader never sees half.

use crate::algo::hybrid::Hybrid;
use crate::algo::{als, content, ease, itemknn, Algorithm, Factors, Params};
use crate::data::{IdMap, Table};
use crate::matrix::{score_rows, Csr};
use crate::segments::{Feature, Segments};
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const FORMAT: u32 = 1;

/// `recommender.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelConfig {
    pub format: u32,
    pub algorithm: Algorithm,
    pub params: Params,
    pub users: usize,
    pub items: usize,
    pub interactions: usize,
    /// The encoder folder that embedded the item texts (content models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<PathBuf>,
    pub seed: u64,
    /// Anything the trainer wants to keep: validation scores, timings, the tuning trail.
    #[serde(default)]
    pub training: serde_json::Value,
}

/// The fitted weights.
#[derive(Debug, Clone)]
pub enum Weights {
    Popularity,
    ItemKnn(Csr),
    Factors(Factors),
    Ease(Vec<f32>),
    /// Unit item embeddings, n x dim.
    Content { embeddings: Vec<f32>, dim: usize },
    Hybrid(Hybrid),
}

#[derive(Debug, Clone)]
pub struct Recommender {
    pub config: ModelConfig,
    pub users: IdMap,
    pub items: IdMap,
    /// Training interactions, users x items.
    pub seen: Csr,
    /// Training interactions per item.
    pub popularity: Vec<f32>,
    pub weights: Weights,
    /// The item table the model was trained with (for showing items and filtering by their
    /// columns), kept in the folder as `items.tsv`.
    pub item_table: Option<Table>,
    /// User features, when trained with a user table: the fallback for users without history.
    pub segments: Option<Segments>,
    pub(crate) cache: Cache,
}

/// What queries derive from the weights, computed on first use and kept.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cache {
    /// YᵀY of the ALS item factors: every fold-in needs it, and it costs items × factors² (a
    /// served user with new interactions folds in per request).
    item_gram: std::sync::OnceLock<Vec<f64>>,
    /// The norms of the item vectors `similar` compares by cosine.
    item_norms: std::sync::OnceLock<Vec<f32>>,
}

/// Who to recommend for: a trained user (by index) and/or a history of item indices, and the
/// user's feature values (see [`Segments`]) for when there is no history to go on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<'a> {
    pub user: Option<u32>,
    pub history: &'a [u32],
    pub features: Option<&'a [u32]>,
}

impl Recommender {
    pub fn n_items(&self) -> usize {
        self.items.len()
    }

    /// The query for a user by id: their trained row and history when the model knows them,
    /// and their features when the model has them in its user table.
    pub fn query_for(&self, id: &str) -> Query<'_> {
        let user = self.users.get(id);
        Query {
            user,
            history: user.map_or(&[][..], |u| self.seen.row(u as usize).0),
            features: self.segments.as_ref().and_then(|s| s.user_codes(id)),
        }
    }

    /// Why a query is not personalised, as a sentence for the user; None when it is.
    pub fn fallback(&self, q: Query) -> Option<String> {
        if self.personalises(q) {
            return None;
        }
        Some(match (&self.segments, q.features) {
            (Some(s), Some(codes)) if s.applies(codes) => format!("no history to personalise from: what users with the same features ({}) interacted with most", s.describe(codes)),
            _ if matches!(self.weights, Weights::Popularity) => "this model does not personalise: most popular items".to_string(),
            _ => "no history to personalise from: most popular items".to_string(),
        })
    }

    /// Whether the model can score this query with its own algorithm; otherwise [`Self::score`]
    /// falls back to the user's segment (with user features) or popularity.
    pub fn personalises(&self, q: Query) -> bool {
        match &self.weights {
            Weights::Popularity => false,
            Weights::Factors(_) | Weights::Hybrid(_) => q.user.is_some() || !q.history.is_empty(),
            _ => !q.history.is_empty(),
        }
    }

    /// Scores every item. Items no training interaction touched get −∞ from the behaviour models
    /// (they know nothing of them); the content model scores them like any other.
    pub fn score(&self, q: Query, out: &mut [f32]) {
        let n = self.n_items();
        if !self.personalises(q) {
            match (&self.segments, q.features) {
                (Some(s), Some(codes)) if s.applies(codes) => s.score(codes, &self.popularity, out),
                _ => out.copy_from_slice(&self.popularity),
            }
        } else {
            match &self.weights {
                Weights::Popularity => unreachable!("popularity never personalises"),
                Weights::ItemKnn(sim) => itemknn::score(sim, q.history, out),
                Weights::Ease(b) => ease::score(b, n, q.history, out),
                Weights::Content { embeddings, dim } => content::score(embeddings, *dim, q.history, out),
                Weights::Factors(f) => score_rows(&f.item, f.dim, &self.user_vector(f, q), f.item_bias.as_deref(), out),
                Weights::Hybrid(h) => h.score(&self.user_vector(&h.factors, q), q.history, out),
            }
        }
        if !matches!(self.weights, Weights::Content { .. } | Weights::Hybrid(_)) {
            for (s, &p) in out.iter_mut().zip(&self.popularity) {
                if p == 0.0 {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// The user's trained factors, or for a bare history its fold-in.
    fn user_vector<'a>(&self, f: &'a Factors, q: Query) -> std::borrow::Cow<'a, [f32]> {
        match q.user {
            Some(u) => std::borrow::Cow::Borrowed(&f.user[u as usize * f.dim..(u as usize + 1) * f.dim]),
            None => std::borrow::Cow::Owned(self.fold_in(f, q.history)),
        }
    }

    /// A factor vector for a user the model was not trained on, from their history: the exact
    /// ALS user step (for ALS), or for BPR the least-squares fit of x.y_i = 1 on the history.
    pub fn fold_in(&self, f: &Factors, history: &[u32]) -> Vec<f32> {
        let d = f.dim;
        let p = match self.config.algorithm {
            Algorithm::Als | Algorithm::Hybrid => self.config.params.als,
            _ => als::AlsParams { factors: d, regularization: self.config.params.bpr.regularization.max(0.01), alpha: 2.0, iterations: 1, cg_steps: 0 },
        };
        let mut yty = if matches!(self.config.algorithm, Algorithm::Als | Algorithm::Hybrid) {
            self.cache.item_gram.get_or_init(|| crate::matrix::gram(&f.item, d)).clone()
        } else {
            vec![0f64; d * d]
        };
        for k in 0..d {
            yty[k * d + k] += p.regularization as f64;
        }
        let mut x = vec![0f32; d];
        let ones = vec![1f32; history.len()];
        als::solve_exact(&mut x, history, &ones, &f.item, &yty, &p);
        x
    }

    /// The `k` items most like `item`, best first: cosine of the factor or text vectors,
    /// the item-kNN row, or EASE's weights. None for popularity, which has no notion of it.
    pub fn similar(&self, item: u32, k: usize, exclude: &[u32]) -> Option<Vec<(u32, f32)>> {
        let n = self.n_items();
        let i = item as usize;
        let mut scores = vec![f32::NEG_INFINITY; n];
        let cosine = |m: &[f32], d: usize, scores: &mut [f32]| {
            let norms = self.cache.item_norms.get_or_init(|| m.chunks_exact(d).map(|r| crate::matrix::dot(r, r).sqrt().max(1e-12)).collect());
            let a = &m[i * d..(i + 1) * d];
            for ((s, b), nb) in scores.iter_mut().zip(m.chunks_exact(d)).zip(norms) {
                *s = crate::matrix::dot(a, b) / (norms[i] * nb);
            }
        };
        match &self.weights {
            Weights::Popularity => return None,
            Weights::ItemKnn(sim) => {
                let (idx, val) = sim.row(i);
                for (&j, &v) in idx.iter().zip(val) {
                    scores[j as usize] = v;
                }
            }
            Weights::Ease(b) => scores.copy_from_slice(&b[i * n..(i + 1) * n]),
            Weights::Factors(f) => cosine(&f.item, f.dim, &mut scores),
            Weights::Hybrid(h) => cosine(&h.factors.item, h.factors.dim, &mut scores),
            Weights::Content { embeddings, dim } => cosine(embeddings, *dim, &mut scores),
        }
        if !matches!(self.weights, Weights::Content { .. } | Weights::Hybrid(_)) {
            for (s, &p) in scores.iter_mut().zip(&self.popularity) {
                if p == 0.0 {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
        scores[i] = f32::NEG_INFINITY;
        for &j in exclude {
            if let Some(s) = scores.get_mut(j as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
        Some(top_k(&scores, k))
    }

    /// The `k` best items for a query, best first, leaving out the user's training items, the
    /// history and `exclude`, and items scored −∞. Ties go to the lower item index.
    pub fn recommend(&self, q: Query, k: usize, exclude: &[u32], scores: &mut Vec<f32>) -> Vec<(u32, f32)> {
        scores.resize(self.n_items(), 0.0);
        self.score(q, scores);
        if let Some(u) = q.user {
            for &i in self.seen.row(u as usize).0 {
                scores[i as usize] = f32::NEG_INFINITY;
            }
        }
        for &i in q.history.iter().chain(exclude) {
            if let Some(s) = scores.get_mut(i as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
        top_k(scores, k)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let tmp = tempfile::Builder::new().prefix(".zhiku-recommender-").tempdir_in(parent)?;
        std::fs::write(tmp.path().join("recommender.json"), serde_json::to_string_pretty(&self.config)?)?;
        let ids = serde_json::json!({"users": self.users.ids(), "items": self.items.ids()});
        std::fs::write(tmp.path().join("ids.json"), serde_json::to_string(&ids)?)?;
        let mut arrays: Vec<(String, Array)> = vec![
            ("seen.indptr".into(), Array::U64(Cow::Owned(self.seen.indptr.iter().map(|&v| v as u64).collect()))),
            ("seen.items".into(), Array::U32(Cow::Borrowed(&self.seen.indices))),
            ("seen.values".into(), Array::F32(Cow::Borrowed(&self.seen.values))),
            ("popularity".into(), Array::F32(Cow::Borrowed(&self.popularity))),
        ];
        match &self.weights {
            Weights::Popularity => {}
            Weights::ItemKnn(sim) => {
                arrays.push(("knn.indptr".into(), Array::U64(Cow::Owned(sim.indptr.iter().map(|&v| v as u64).collect()))));
                arrays.push(("knn.items".into(), Array::U32(Cow::Borrowed(&sim.indices))));
                arrays.push(("knn.values".into(), Array::F32(Cow::Borrowed(&sim.values))));
            }
            Weights::Factors(f) => {
                arrays.push(("factors.user".into(), Array::F32(Cow::Borrowed(&f.user))));
                arrays.push(("factors.item".into(), Array::F32(Cow::Borrowed(&f.item))));
                if let Some(b) = &f.item_bias {
                    arrays.push(("factors.item_bias".into(), Array::F32(Cow::Borrowed(b))));
                }
            }
            Weights::Ease(b) => arrays.push(("ease.b".into(), Array::F32(Cow::Borrowed(b)))),
            Weights::Content { embeddings, .. } => arrays.push(("content.embeddings".into(), Array::F32(Cow::Borrowed(embeddings)))),
            Weights::Hybrid(h) => {
                arrays.push(("factors.user".into(), Array::F32(Cow::Borrowed(&h.factors.user))));
                arrays.push(("factors.item".into(), Array::F32(Cow::Borrowed(&h.factors.item))));
                arrays.push(("content.embeddings".into(), Array::F32(Cow::Borrowed(&h.embeddings))));
                arrays.push(("hybrid.cold".into(), Array::U32(Cow::Owned(h.cold.iter().map(|&c| c as u32).collect()))));
            }
        }
        if let Some(seg) = &self.segments {
            arrays.push(("segments.codes".into(), Array::U32(Cow::Borrowed(&seg.codes))));
            arrays.push(("segments.counts".into(), Array::F32(Cow::Borrowed(&seg.counts))));
            let meta = SegmentsFile { features: seg.features.clone(), smoothing: seg.smoothing, weight: seg.weight, users: seg.users.ids().to_vec() };
            std::fs::write(tmp.path().join("segments.json"), serde_json::to_string(&meta)?)?;
        }
        let bytes: Vec<(String, Dtype, usize, Cow<[u8]>)> = arrays.iter().map(|(n, a)| (n.clone(), a.dtype(), a.len(), a.bytes())).collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(n, dt, len, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(*dt, vec![*len], b)?)))
            .collect::<Result<_>>()?;
        safetensors::serialize_to_file(views, None, &tmp.path().join("weights.safetensors"))?;
        if let Some(t) = &self.item_table {
            let mut text = String::from("item_id");
            for c in &t.columns {
                text.push('\t');
                text.push_str(&c.replace(['\t', '\n'], " "));
            }
            text.push('\n');
            for (k, id) in t.ids.ids().iter().enumerate() {
                text.push_str(&id.replace(['\t', '\n'], " "));
                for v in &t.values[k] {
                    text.push('\t');
                    text.push_str(&v.replace(['\t', '\n', '"'], " "));
                }
                text.push('\n');
            }
            std::fs::write(tmp.path().join("items.tsv"), text)?;
        }
        let tmp = tmp.keep();
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("cannot replace {}", dir.display()))?;
        }
        std::fs::rename(&tmp, dir).with_context(|| format!("cannot move the model into {}", dir.display()))?;
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let config_path = dir.join("recommender.json");
        let text = std::fs::read_to_string(&config_path).with_context(|| format!("{} is not a recommender folder (no recommender.json)", dir.display()))?;
        let config: ModelConfig = serde_json::from_str(&text).with_context(|| format!("{}: not a recommender config", config_path.display()))?;
        if config.format != FORMAT {
            bail!("{}: format {} (this build reads {FORMAT})", config_path.display(), config.format);
        }
        #[derive(Deserialize)]
        struct Ids {
            users: Vec<String>,
            items: Vec<String>,
        }
        let ids: Ids = serde_json::from_str(&std::fs::read_to_string(dir.join("ids.json"))?).with_context(|| format!("{}/ids.json", dir.display()))?;
        let (users, items) = (IdMap::from_ids(ids.users), IdMap::from_ids(ids.items));
        let bytes = std::fs::read(dir.join("weights.safetensors")).with_context(|| format!("{}/weights.safetensors", dir.display()))?;
        let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{}/weights.safetensors", dir.display()))?;
        let arrays: HashMap<String, Array<'static>> = st.tensors().into_iter().map(|(n, v)| Ok((n, Array::from_view(&v)?))).collect::<Result<_>>()?;
        let get = |name: &str| arrays.get(name).with_context(|| format!("{}/weights.safetensors has no {name}", dir.display()));
        let csr = |prefix: &str, rows: usize, cols: usize| -> Result<Csr> {
            let indptr: Vec<usize> = get(&format!("{prefix}.indptr"))?.u64()?.iter().map(|&v| v as usize).collect();
            let m = Csr { rows, cols, indptr, indices: get(&format!("{prefix}.items"))?.u32()?.to_vec(), values: get(&format!("{prefix}.values"))?.f32()?.to_vec() };
            if m.indptr.len() != rows + 1 || *m.indptr.last().unwrap_or(&0) != m.indices.len() || m.indices.iter().any(|&c| c as usize >= cols) {
                bail!("{}/weights.safetensors: {prefix} does not fit {rows} x {cols}", dir.display());
            }
            Ok(m)
        };
        let (nu, ni) = (users.len(), items.len());
        let seen = csr("seen", nu, ni)?;
        let popularity = get("popularity")?.f32()?.to_vec();
        let sized = |name: &str, len: usize| -> Result<Vec<f32>> {
            let v = get(name)?.f32()?.to_vec();
            if v.len() != len {
                bail!("{}/weights.safetensors: {name} holds {} values, expected {len}", dir.display(), v.len());
            }
            Ok(v)
        };
        let weights = match config.algorithm {
            Algorithm::Popularity => Weights::Popularity,
            Algorithm::ItemKnn => Weights::ItemKnn(csr("knn", ni, ni)?),
            Algorithm::Bpr | Algorithm::Als => {
                let dim = if config.algorithm == Algorithm::Bpr { config.params.bpr.factors } else { config.params.als.factors };
                let item_bias = if arrays.contains_key("factors.item_bias") { Some(sized("factors.item_bias", ni)?) } else { None };
                Weights::Factors(Factors { dim, user: sized("factors.user", nu * dim)?, item: sized("factors.item", ni * dim)?, item_bias })
            }
            Algorithm::Ease => Weights::Ease(sized("ease.b", ni * ni)?),
            Algorithm::Content | Algorithm::Hybrid => {
                let embeddings = get("content.embeddings")?.f32()?.to_vec();
                let dim = embeddings.len().checked_div(ni).unwrap_or(0);
                if dim * ni != embeddings.len() {
                    bail!("{}/weights.safetensors: content.embeddings does not divide into {ni} items", dir.display());
                }
                if config.algorithm == Algorithm::Content {
                    Weights::Content { embeddings, dim }
                } else {
                    let d = config.params.als.factors;
                    let factors = Factors { dim: d, user: sized("factors.user", nu * d)?, item: sized("factors.item", ni * d)?, item_bias: None };
                    let cold: Vec<bool> = get("hybrid.cold")?.u32()?.iter().map(|&c| c != 0).collect();
                    if cold.len() != ni {
                        bail!("{}/weights.safetensors: hybrid.cold holds {} values for {ni} items", dir.display(), cold.len());
                    }
                    Weights::Hybrid(Hybrid { factors, embeddings, emb_dim: dim, cold, params: config.params.hybrid })
                }
            }
        };
        if popularity.len() != ni {
            bail!("{}/weights.safetensors: popularity holds {} values for {ni} items", dir.display(), popularity.len());
        }
        let table_path = dir.join("items.tsv");
        let item_table = if table_path.exists() { Some(crate::data::read_items(&table_path, "item_id", &[], None)?) } else { None };
        let segments_path = dir.join("segments.json");
        let segments = if segments_path.exists() {
            let meta: SegmentsFile = serde_json::from_str(&std::fs::read_to_string(&segments_path)?).with_context(|| format!("{}: not a segments file", segments_path.display()))?;
            let values: usize = meta.features.iter().map(|f| f.labels.len()).sum();
            let n_features = meta.features.len();
            let users = IdMap::from_ids(meta.users);
            let codes = get("segments.codes")?.u32()?.to_vec();
            let in_range = codes.chunks(n_features.max(1)).all(|row| row.iter().zip(&meta.features).all(|(&c, f)| c == crate::segments::MISSING || (c as usize) < f.labels.len()));
            if codes.len() != users.len() * n_features || !in_range {
                bail!("{}/weights.safetensors: segments.codes does not fit {} users x {n_features} features", dir.display(), users.len());
            }
            let mut s = Segments { features: meta.features, smoothing: meta.smoothing, weight: meta.weight, users, codes, n_items: ni, counts: sized("segments.counts", values * ni)?, ..Segments::default() };
            s.derive();
            Some(s)
        } else {
            None
        };
        Ok(Self { config, users, items, seen, popularity, weights, item_table, segments, cache: Default::default() })
    }

    /// An item's columns from the item table, as a JSON object (empty without a table).
    pub fn item_fields(&self, item: u32) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if let Some(t) = &self.item_table {
            if let Some(k) = t.ids.get(self.items.id(item)) {
                for (c, v) in t.columns.iter().zip(&t.values[k as usize]) {
                    m.insert(c.clone(), serde_json::Value::String(v.clone()));
                }
            }
        }
        m
    }

    /// Items whose table columns fail `filter` (column → wanted value; a cell matches when it
    /// equals the value or one of its space, comma or '|' separated tags does). Errors name an
    /// unknown column; without a table every filter is an error.
    pub fn filtered_out(&self, filter: &[(String, String)]) -> Result<Vec<u32>> {
        if filter.is_empty() {
            return Ok(Vec::new());
        }
        let Some(t) = &self.item_table else { bail!("this model was trained without an item table (--items), so it cannot filter by item columns") };
        let mut cols = Vec::new();
        for (c, v) in filter {
            let k = t.columns.iter().position(|x| x == c).with_context(|| format!("no item column {c:?} (columns: {})", t.columns.join(", ")))?;
            cols.push((k, v.as_str()));
        }
        let matches = |cell: &str, want: &str| cell == want || cell.split(|ch: char| ch.is_whitespace() || ch == ',' || ch == '|').any(|tag| tag == want);
        Ok((0..self.n_items() as u32)
            .filter(|&i| match t.ids.get(self.items.id(i)) {
                None => true,
                Some(k) => !cols.iter().all(|&(c, want)| matches(&t.values[k as usize][c], want)),
            })
            .collect())
    }
}

/// `segments.json`: what of [`Segments`] is not an array.
#[derive(Serialize, Deserialize)]
struct SegmentsFile {
    features: Vec<Feature>,
    smoothing: f32,
    weight: f32,
    users: Vec<String>,
}

/// The `k` highest finite scores, best first (ties to the lower index). One pass that keeps a
/// small buffer above a rising floor, rather than collecting every candidate: a million items
/// cost one read of the scores.
pub fn top_k(scores: &[f32], k: usize) -> Vec<(u32, f32)> {
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k == 0 {
        return Vec::new();
    }
    let cap = (4 * k).max(64);
    let mut buf: Vec<(u32, f32)> = Vec::with_capacity(cap);
    // Items are visited in index order, so one that only ties the k-th best loses the tie.
    let mut floor = f32::NEG_INFINITY;
    for (i, &s) in scores.iter().enumerate() {
        if s > floor && s.is_finite() {
            if buf.len() == cap {
                buf.select_nth_unstable_by(k - 1, order);
                buf.truncate(k);
                floor = buf[k - 1].1;
                if s <= floor {
                    continue;
                }
            }
            buf.push((i as u32, s));
        }
    }
    if buf.len() > k {
        buf.select_nth_unstable_by(k - 1, order);
        buf.truncate(k);
    }
    buf.sort_by(order);
    buf
}

/// A weight array: borrowed from the model when saving (a large model is not copied to be
/// written), owned when loading.
enum Array<'a> {
    F32(Cow<'a, [f32]>),
    U32(Cow<'a, [u32]>),
    U64(Cow<'a, [u64]>),
}

/// The little-endian bytes of plain numbers: the memory itself on little-endian machines.
fn le_bytes<T: Copy, const N: usize>(v: &[T], to_le: fn(T) -> [u8; N]) -> Cow<'_, [u8]> {
    debug_assert_eq!(std::mem::size_of::<T>(), N);
    if cfg!(target_endian = "little") {
        // SAFETY: T is f32, u32 or u64 (no padding; every byte initialised), and the slice
        // covers exactly the memory of `v`, borrowed for as long as `v`.
        Cow::Borrowed(unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) })
    } else {
        Cow::Owned(v.iter().flat_map(|&x| to_le(x)).collect())
    }
}

impl Array<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Array::F32(_) => Dtype::F32,
            Array::U32(_) => Dtype::U32,
            Array::U64(_) => Dtype::U64,
        }
    }
    fn len(&self) -> usize {
        match self {
            Array::F32(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::U64(v) => v.len(),
        }
    }
    fn bytes(&self) -> Cow<'_, [u8]> {
        match self {
            Array::F32(v) => le_bytes(v, f32::to_le_bytes),
            Array::U32(v) => le_bytes(v, u32::to_le_bytes),
            Array::U64(v) => le_bytes(v, u64::to_le_bytes),
        }
    }
    fn from_view(v: &safetensors::tensor::TensorView) -> Result<Array<'static>> {
        let d = v.data();
        Ok(match v.dtype() {
            Dtype::F32 => Array::F32(Cow::Owned(d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())),
            Dtype::U32 => Array::U32(Cow::Owned(d.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect())),
            Dtype::U64 => Array::U64(Cow::Owned(d.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect())),
            other => bail!("unexpected array type {other:?}"),
        })
    }
    fn f32(&self) -> Result<&[f32]> {
        match self {
            Array::F32(v) => Ok(v.as_ref()),
            _ => bail!("expected an f32 array"),
        }
    }
    fn u32(&self) -> Result<&[u32]> {
        match self {
            Array::U32(v) => Ok(v.as_ref()),
            _ => bail!("expected a u32 array"),
        }
    }
    fn u64(&self) -> Result<&[u64]> {
        match self {
            Array::U64(v) => Ok(v.as_ref()),
            _ => bail!("expected a u64 array"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{read_interactions, InteractionColumns};
    use crate::train::{train, TrainOptions};

    fn log(dir: &Path) -> crate::data::Interactions {
        let mut body = String::from("user_id\titem_id\trating\n");
        for u in 0..30 {
            for k in 0..6 {
                let item = if u % 2 == 0 { (u + k) % 10 } else { 10 + (u + k) % 10 };
                body.push_str(&format!("u{u}\ti{item}\t{}\n", 1 + k % 5));
            }
        }
        let p = dir.join("log.tsv");
        std::fs::write(&p, body).unwrap();
        read_interactions(&p, &InteractionColumns::default(), IdMap::default(), IdMap::default(), false).unwrap()
    }

    #[test]
    fn top_k_equals_a_full_sort() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for n in [0usize, 1, 7, 100, 5000] {
            // Few distinct values (many ties), and some NaN and -inf that never appear.
            let scores: Vec<f32> = (0..n)
                .map(|_| match rng.random_range(0..20) {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    _ => rng.random_range(0..30) as f32,
                })
                .collect();
            let mut all: Vec<(u32, f32)> = scores.iter().enumerate().filter(|(_, s)| s.is_finite()).map(|(i, &s)| (i as u32, s)).collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            for k in [0usize, 1, 3, 10, 64, 200, 10_000] {
                assert_eq!(top_k(&scores, k), all.iter().take(k).copied().collect::<Vec<_>>(), "n {n} k {k}");
            }
        }
    }

    #[test]
    fn every_algorithm_saves_loads_and_recommends_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        for a in [Algorithm::Popularity, Algorithm::ItemKnn, Algorithm::Bpr, Algorithm::Als, Algorithm::Ease] {
            let mut opts = TrainOptions::new(a);
            opts.tune = false;
            opts.params.bpr.factors = 8;
            opts.params.als.factors = 8;
            let model = train(&log, &opts, &mut ()).unwrap();
            let out = dir.path().join(a.name());
            model.save(&out).unwrap();
            model.save(&out).unwrap(); // replacing a model folder works too
            let back = Recommender::load(&out).unwrap();
            for u in [0u32, 1, 7] {
                let q = Query { user: Some(u), history: model.seen.row(u as usize).0, features: None };
                let (a1, a2) = (model.recommend(q, 5, &[], &mut Vec::new()), back.recommend(q, 5, &[], &mut Vec::new()));
                assert_eq!(a1, a2, "{a:?} user {u}");
                assert_eq!(a1.len(), 5);
                assert!(a1.iter().all(|(i, _)| !model.seen.contains(u as usize, *i)), "{a:?} recommends a seen item");
            }
            // A bare history (a user the model has not seen) is personalised by all but popularity.
            let history = [log.items.get("i1").unwrap(), log.items.get("i2").unwrap()];
            let q = Query { user: None, history: &history, features: None };
            assert_eq!(model.personalises(q), a != Algorithm::Popularity, "{a:?}");
            let recs = model.recommend(q, 3, &[], &mut Vec::new());
            if a != Algorithm::Popularity {
                // The history's own group (items i0..i9) comes first.
                let first = model.items.id(recs[0].0);
                assert!(first.len() == 2, "{a:?}: {first}");
            }
        }
        assert!(Recommender::load(dir.path()).unwrap_err().to_string().contains("recommender.json"));
    }

    #[test]
    fn tuning_is_reproducible_and_respects_fixed_values() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        let mut opts = TrainOptions::new(Algorithm::Als);
        opts.params.als.factors = 4;
        opts.fixed.insert("als.factors".into());
        let a = train(&log, &opts, &mut ()).unwrap();
        let b = train(&log, &opts, &mut ()).unwrap();
        assert_eq!(a.config.params, b.config.params);
        assert_eq!(a.config.params.als.factors, 4);
        let trials = a.config.training["trials"].as_array().unwrap();
        assert!(trials.len() > 5 && trials.iter().all(|t| t["setting"].as_str().unwrap().contains("factors=4")));
    }

    #[test]
    fn user_features_recommend_for_users_without_history() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        // The log's even users take items i0..i9, odd users i10..i19; the table says which is
        // which, for them and for two users the log has never seen.
        let mut ids: Vec<String> = (0..30).map(|u| format!("u{u}")).collect();
        ids.extend(["new_even".to_string(), "new_odd".to_string()]);
        let values = (0..32).map(|u| vec![if u % 2 == 0 { "even".to_string() } else { "odd".to_string() }, (20 + u).to_string()]).collect();
        let table = Table { ids: IdMap::from_ids(ids), columns: vec!["group".into(), "age".into()], values };
        let mut opts = TrainOptions::new(Algorithm::Als);
        opts.params.als.factors = 4;
        opts.fixed.extend(["als.factors", "als.regularization", "als.alpha", "als.iterations"].map(String::from));
        opts.user_table = Some(table);
        let model = train(&log, &opts, &mut ()).unwrap();
        let report = &model.config.training["user_features"];
        assert!(report["weight"].as_f64().unwrap() > 0.0, "validation should keep the features: {report}");
        assert_eq!(report["trials"].as_array().unwrap().len(), 13);
        let out = dir.path().join("with-users");
        model.save(&out).unwrap();
        let back = Recommender::load(&out).unwrap();
        for (who, group) in [("new_even", 0..10), ("new_odd", 10..20)] {
            let q = back.query_for(who);
            assert!(q.user.is_none() && q.features.is_some());
            let recs = back.recommend(q, 5, &[], &mut Vec::new());
            assert_eq!(recs, model.recommend(model.query_for(who), 5, &[], &mut Vec::new()));
            for (i, _) in &recs {
                let n: u32 = back.items.id(*i)[1..].parse().unwrap();
                assert!(group.contains(&n), "{who} got {}", back.items.id(*i));
            }
            assert!(back.fallback(q).unwrap().contains("group"), "{:?}", back.fallback(q));
        }
        // A stranger to the table gets popularity, and a known user their own list.
        let q = back.query_for("nobody");
        assert!(q.features.is_none() && back.fallback(q).unwrap().contains("most popular"));
        assert!(back.fallback(back.query_for("u3")).is_none());
        let given = back.segments.as_ref().unwrap().encode(&[("group".into(), "odd".into())]).unwrap();
        let recs = back.recommend(Query { features: Some(&given), ..Query::default() }, 3, &[], &mut Vec::new());
        assert!(back.items.id(recs[0].0).len() == 3, "{recs:?}");
    }
}
