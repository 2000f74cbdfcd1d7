//! Training: the algorithm's hyperparameters tuned on a validation split carved from the
//! training interactions (never the test file), by coordinate search: one hyperparameter at a
//! time over its candidates with the others held, twice round, keeping what raises NDCG@10 on
//! validation; then the model fitted on all training interactions with the best setting.

use crate::algo::{als, bpr, content, ease, hybrid, itemknn, Algorithm, Params};
use crate::data::{Event, Interactions, Table};
use crate::matrix::Csr;
use crate::metrics;
use crate::model::{ModelConfig, Recommender, Weights, FORMAT};
use crate::segments::Segments;
use crate::split::{split, Protocol};
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub algorithm: Algorithm,
    /// Starting hyperparameters (the defaults, with any the user set).
    pub params: Params,
    /// Hyperparameters the user set (as `algorithm.name`), left out of tuning.
    pub fixed: BTreeSet<String>,
    pub tune: bool,
    /// The share of each user's training interactions held out for tuning.
    pub validation_ratio: f64,
    /// How the validation split is carved (default: random, mixed for the hybrid).
    pub validation: Option<Validation>,
    pub seed: u64,
    /// Content models: the encoder folder and every item's text (by item index).
    pub encoder: Option<PathBuf>,
    pub item_texts: Option<Vec<String>>,
    /// User features (id plus feature columns): the fallback for users without history.
    pub user_table: Option<Table>,
}

impl TrainOptions {
    pub fn new(algorithm: Algorithm) -> Self {
        Self { algorithm, params: Params::default(), fixed: BTreeSet::new(), tune: true, validation_ratio: 0.2, validation: None, seed: 42, encoder: None, item_texts: None, user_table: None }
    }
}

/// How the validation split is carved from the training log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Validation {
    /// A share of each user's interactions (what a random test split measures).
    Random,
    /// Whole items, all of their interactions (what a cold-items test split measures).
    ColdItems,
    /// Half of the share each way.
    Mixed,
}

impl Validation {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "random" => Validation::Random,
            "cold-items" => Validation::ColdItems,
            "mixed" => Validation::Mixed,
            _ => bail!("unknown validation protocol {s:?}: expected random, cold-items or mixed"),
        })
    }
}

/// What the trainer tells its caller while it works.
pub trait Progress {
    fn tried(&mut self, _setting: &str, _ndcg: f64) {}
    fn fitting(&mut self, _what: &str, _done: usize, _total: usize) {}
}

impl Progress for () {}

#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub setting: String,
    pub validation_ndcg: f64,
}

pub fn train(log: &Interactions, opts: &TrainOptions, progress: &mut dyn Progress) -> Result<Recommender> {
    let (nu, ni) = (log.users.len(), log.items.len());
    let ui = Csr::from_events(nu, ni, &log.events).binary();
    let embeddings = if opts.algorithm.needs_text() {
        let (Some(encoder), Some(texts)) = (&opts.encoder, &opts.item_texts) else {
            bail!("the {} algorithm needs an item table (--items) and an encoder (--encoder)", opts.algorithm.name())
        };
        Some(content::embed_items(encoder, texts, 32, |done, total| progress.fitting("embedding item texts", done, total))?)
    } else {
        None
    };
    let started = Instant::now();
    let mut params = opts.params.clone();
    let mut trail = Vec::new();
    let mut grid = candidates(opts.algorithm);
    if validation_protocol(opts) == Validation::Random {
        // No item is new in such a split: a boost for new items cannot be measured there.
        grid.retain(|(name, _)| *name != "hybrid.cold_boost");
    }
    if opts.tune && grid.iter().any(|(name, _)| !opts.fixed.contains(*name)) {
        let (fit_events, val_events) = validation_split(log, opts)?;
        let fit_ui = Csr::from_events(nu, ni, &fit_events).binary();
        let val = Csr::from_events(nu, ni, &val_events);
        let mut cache: HashMap<String, f64> = HashMap::new();
        let mut score = |p: &Params, progress: &mut dyn Progress| -> Result<f64> {
            let key = setting(opts.algorithm, p);
            if let Some(&s) = cache.get(&key) {
                return Ok(s);
            }
            let model = assemble(opts, p.clone(), &fit_ui, &fit_events, log, embeddings.clone(), &mut ())?;
            let s = metrics::evaluate(&model, &val, &log.users, 10).ndcg;
            progress.tried(&key, s);
            trail.push(Trial { setting: key.clone(), validation_ndcg: s });
            cache.insert(key, s);
            Ok(s)
        };
        let mut best = score(&params, progress)?;
        for _round in 0..2 {
            for (name, values) in &grid {
                if opts.fixed.contains(*name) {
                    continue;
                }
                for &v in values {
                    let mut p = params.clone();
                    set(&mut p, name, v);
                    let s = score(&p, progress)?;
                    if s > best + 1e-9 {
                        best = s;
                        params = p;
                    }
                }
            }
        }
    }
    let tuning_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut model = assemble(opts, params.clone(), &ui, &log.events, log, embeddings, progress)?;
    let segments = match &opts.user_table {
        Some(table) => Some(fit_segments(log, table, opts, progress)?),
        None => None,
    };
    if let Some((s, _)) = &segments {
        model.segments = Some(s.clone());
    }
    model.config.training = serde_json::json!({
        "tuned": opts.tune,
        "tuning_seconds": tuning_seconds,
        "fit_seconds": started.elapsed().as_secs_f64(),
        "validation_ratio": opts.validation_ratio,
        "validation": opts.validation,
        "trials": trail,
        "read": log.report,
        "user_features": segments.map(|(_, report)| report),
    });
    Ok(model)
}

/// The user-feature fallback: smoothing and weight tuned on users held out whole (the cold-users
/// protocol, `validation_ratio` of the interactions) against popularity for them, then counted
/// on the whole log. Weight 0, popularity itself, is a candidate: the features must earn their
/// place.
fn fit_segments(log: &Interactions, table: &Table, opts: &TrainOptions, progress: &mut dyn Progress) -> Result<(Segments, serde_json::Value)> {
    let ni = log.items.len();
    let mut segments = Segments::from_table(table, ni)?;
    let mut trials = Vec::new();
    if opts.tune {
        let (fit_events, val_events, _) = split(&log.events, ni, Protocol::ColdUsers, opts.validation_ratio, opts.seed)?;
        let fit_ui = Csr::from_events(log.users.len(), ni, &fit_events).binary();
        let val = Csr::from_events(log.users.len(), ni, &val_events);
        let mut probe = assemble(&TrainOptions::new(Algorithm::Popularity), Params::default(), &fit_ui, &fit_events, log, None, &mut ())?;
        segments.count(&fit_events, &log.users);
        let mut best = (f64::NEG_INFINITY, 0.0, segments.smoothing);
        let candidates: Vec<(f32, f32)> = std::iter::once((0.0, segments.smoothing)).chain(SEGMENT_WEIGHTS.iter().flat_map(|&w| SEGMENT_SMOOTHING.iter().map(move |&b| (w, b)))).collect();
        // The probe holds the counts once; each trial only changes the two settings.
        probe.segments = Some(segments);
        for (weight, smoothing) in candidates {
            let tried = probe.segments.as_mut().expect("set above");
            (tried.weight, tried.smoothing) = (weight, smoothing);
            let ndcg = metrics::evaluate(&probe, &val, &log.users, 10).ndcg;
            let setting = format!("user features: weight={weight} smoothing={smoothing}");
            progress.tried(&setting, ndcg);
            trials.push(Trial { setting, validation_ndcg: ndcg });
            if ndcg > best.0 + 1e-9 {
                best = (ndcg, weight, smoothing);
            }
        }
        segments = probe.segments.take().expect("set above");
        (segments.weight, segments.smoothing) = (best.1, best.2);
    } else {
        segments.weight = 1.0;
    }
    let without = segments.count(&log.events, &log.users);
    let report = serde_json::json!({
        "table_users": segments.users.len(),
        "interactions_without_features": without,
        "features": segments.features,
        "weight": segments.weight,
        "smoothing": segments.smoothing,
        "trials": trials,
    });
    Ok((segments, report))
}

/// The user-feature fallback's candidates (weight 0 is tried once, as popularity).
const SEGMENT_WEIGHTS: [f32; 3] = [0.25, 0.5, 1.0];
const SEGMENT_SMOOTHING: [f32; 4] = [2.0, 10.0, 50.0, 250.0];

fn validation_protocol(opts: &TrainOptions) -> Validation {
    opts.validation.unwrap_or(Validation::Random)
}

/// The validation split carved from the training log (see [`Validation`]).
fn validation_split(log: &Interactions, opts: &TrainOptions) -> Result<(Vec<Event>, Vec<Event>)> {
    let ni = log.items.len();
    let r = opts.validation_ratio;
    Ok(match validation_protocol(opts) {
        Validation::Random => {
            let (fit, val, _) = split(&log.events, ni, Protocol::Random, r, opts.seed)?;
            (fit, val)
        }
        Validation::ColdItems => {
            let (fit, val, _) = split(&log.events, ni, Protocol::ColdItems, r, opts.seed)?;
            (fit, val)
        }
        Validation::Mixed => {
            let (rest, mut val, _) = split(&log.events, ni, Protocol::ColdItems, r / 2.0, opts.seed)?;
            let (fit, warm, _) = split(&rest, ni, Protocol::Random, r / 2.0, opts.seed)?;
            val.extend(warm);
            val.sort_by_key(|e| (e.user, e.item));
            (fit, val)
        }
    })
}

/// Fits the algorithm on `ui` and wraps it as a model over all of `log`'s users and items.
fn assemble(
    opts: &TrainOptions,
    params: Params,
    ui: &Csr,
    events: &[Event],
    log: &Interactions,
    embeddings: Option<(Vec<f32>, usize)>,
    progress: &mut dyn Progress,
) -> Result<Recommender> {
    let mut popularity = vec![0f32; ui.cols];
    for e in events {
        popularity[e.item as usize] += 1.0;
    }
    let a = opts.algorithm;
    let weights = match a {
        Algorithm::Popularity => Weights::Popularity,
        Algorithm::ItemKnn => Weights::ItemKnn(itemknn::fit(ui, &params.itemknn)),
        Algorithm::Bpr => {
            let total = params.bpr.iterations;
            Weights::Factors(bpr::fit(ui, &params.bpr, opts.seed, |d| progress.fitting("bpr epochs", d, total)))
        }
        Algorithm::Als => {
            let total = params.als.iterations;
            Weights::Factors(als::fit(ui, &params.als, opts.seed, |d| progress.fitting("als iterations", d, total)))
        }
        Algorithm::Ease => Weights::Ease(ease::fit(ui, &params.ease)?),
        Algorithm::Content => {
            let (embeddings, dim) = embeddings.expect("embedded before");
            Weights::Content { embeddings, dim }
        }
        Algorithm::Hybrid => {
            let (embeddings, dim) = embeddings.as_ref().expect("embedded before");
            progress.fitting("hybrid (als + text map)", 0, 1);
            let h = hybrid::fit(ui, embeddings, *dim, &params.als, &params.hybrid, opts.seed);
            progress.fitting("hybrid (als + text map)", 1, 1);
            Weights::Hybrid(h)
        }
    };
    let config = ModelConfig {
        format: FORMAT,
        algorithm: a,
        params,
        users: ui.rows,
        items: ui.cols,
        interactions: ui.nnz(),
        encoder: opts.encoder.clone(),
        seed: opts.seed,
        training: serde_json::Value::Null,
    };
    Ok(Recommender { config, users: log.users.clone(), items: log.items.clone(), seen: ui.clone(), popularity, weights, item_table: None, segments: None, cache: Default::default() })
}

/// The hyperparameters each algorithm tunes, in search order, with their candidates.
pub fn candidates(a: Algorithm) -> Vec<(&'static str, Vec<f64>)> {
    match a {
        Algorithm::ItemKnn => vec![("itemknn.neighbors", vec![10.0, 20.0, 50.0, 100.0, 200.0, 400.0]), ("itemknn.shrink", vec![0.0, 10.0, 50.0])],
        Algorithm::Bpr => vec![
            ("bpr.factors", vec![32.0, 64.0, 128.0, 200.0]),
            ("bpr.learning_rate", vec![0.01, 0.025, 0.05, 0.1]),
            ("bpr.regularization", vec![0.0001, 0.001, 0.01]),
            ("bpr.iterations", vec![50.0, 100.0, 200.0, 400.0]),
        ],
        Algorithm::Als => vec![
            ("als.factors", vec![16.0, 32.0, 64.0, 128.0, 200.0]),
            ("als.regularization", vec![0.01, 0.1, 1.0, 10.0, 50.0]),
            ("als.alpha", vec![1.0, 2.0, 5.0, 10.0, 20.0, 40.0]),
            ("als.iterations", vec![10.0, 15.0, 30.0]),
        ],
        Algorithm::Ease => vec![("ease.regularization", vec![10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0])],
        Algorithm::Hybrid => vec![
            ("als.factors", vec![16.0, 32.0, 64.0, 128.0]),
            ("als.regularization", vec![0.1, 1.0, 10.0, 50.0]),
            ("als.alpha", vec![1.0, 2.0, 5.0, 10.0]),
            ("hybrid.ridge", vec![0.1, 1.0, 10.0, 100.0]),
            ("hybrid.content_weight", vec![0.0, 0.05, 0.1, 0.2, 0.5, 1.0]),
            ("hybrid.cold_boost", vec![0.0, 0.05, 0.1, 0.2, 0.5, 1.0]),
        ],
        Algorithm::Popularity | Algorithm::Content => vec![],
    }
}

/// Sets one hyperparameter by its `algorithm.name`; false for an unknown name.
pub fn set(p: &mut Params, name: &str, v: f64) -> bool {
    match name {
        "itemknn.neighbors" => p.itemknn.neighbors = v as usize,
        "itemknn.shrink" => p.itemknn.shrink = v as f32,
        "bpr.factors" => p.bpr.factors = v as usize,
        "bpr.learning_rate" => p.bpr.learning_rate = v as f32,
        "bpr.regularization" => p.bpr.regularization = v as f32,
        "bpr.iterations" => p.bpr.iterations = v as usize,
        "als.factors" => p.als.factors = v as usize,
        "als.regularization" => p.als.regularization = v as f32,
        "als.alpha" => p.als.alpha = v as f32,
        "als.iterations" => p.als.iterations = v as usize,
        "als.cg_steps" => p.als.cg_steps = v as usize,
        "ease.regularization" => p.ease.regularization = v as f32,
        "hybrid.ridge" => p.hybrid.ridge = v as f32,
        "hybrid.content_weight" => p.hybrid.content_weight = v as f32,
        "hybrid.cold_boost" => p.hybrid.cold_boost = v as f32,
        _ => return false,
    }
    true
}

/// The algorithm's hyperparameters as `name=value ...`.
pub fn setting(a: Algorithm, p: &Params) -> String {
    let parts: Vec<(&str, serde_json::Value)> = match a {
        Algorithm::ItemKnn => vec![("", serde_json::json!(p.itemknn))],
        Algorithm::Bpr => vec![("", serde_json::json!(p.bpr))],
        Algorithm::Als => vec![("", serde_json::json!(p.als))],
        Algorithm::Ease => vec![("", serde_json::json!(p.ease))],
        Algorithm::Hybrid => vec![("als.", serde_json::json!(p.als)), ("", serde_json::json!(p.hybrid))],
        Algorithm::Popularity | Algorithm::Content => return a.name().to_string(),
    };
    // The values are f32: printed as such (0.01, not 0.009999999776482582).
    let show = |v: &serde_json::Value| match v.as_f64() {
        Some(x) if v.is_f64() => format!("{}", x as f32),
        _ => v.to_string(),
    };
    let mut fields = Vec::new();
    for (prefix, v) in parts {
        for (k, v) in v.as_object().into_iter().flatten() {
            fields.push(format!("{prefix}{k}={}", show(v)));
        }
    }
    format!("{} {}", a.name(), fields.join(" "))
}
