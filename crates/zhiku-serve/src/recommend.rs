//! Recommenders over HTTP (scope `predict`, like the model routes):
//! - `POST /v1/recommend` `{"model", "user", "k", "exclude", "filter", "history", "features"}`:
//!   the user's list; a user the model was not trained on, with no history, gets what users
//!   with the same features chose (from the model's user table, or `"features"` such as
//!   `{"age": 31, "occupation": "writer"}`), else the most popular items, and the response says
//!   which (`"fallback"`);
//! - `POST /v1/similar-items` `{"model", "item", "k", "filter"}`;
//! - `POST /v1/interactions` `{"model", "user", "items"}`: new interactions, reflected in that
//!   user's next list without retraining (folded into the user's factors for factor models,
//!   added to the history the others score from), and never recommended back.
//!
//! `model` may be left out when one recommender is served. Scoring runs on the blocking pool.

use crate::api::{parse, ApiError};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use zhiku_recommend::Recommender;

type AppResult<T> = Result<T, ApiError>;

/// Longest list one request may ask for.
pub const MAX_K: usize = 1000;
/// Most items one interactions request may post, and most a user may accumulate here.
pub const MAX_POSTED: usize = 10_000;

pub struct ServedRecommender {
    pub model: Recommender,
    /// Interactions posted since the server started, per user id (item indices, in order).
    pub posted: Mutex<HashMap<String, Vec<u32>>>,
}

impl ServedRecommender {
    pub fn new(model: Recommender) -> Self {
        Self { model, posted: Mutex::new(HashMap::new()) }
    }
}

fn pick(state: &AppState, name: Option<&str>) -> AppResult<(String, Arc<ServedRecommender>)> {
    match name {
        Some(n) => state.recommenders.get(n).map(|r| (n.to_string(), r.clone())).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no recommender {n:?} on this server"))),
        None if state.recommenders.len() == 1 => Ok(state.recommenders.iter().next().map(|(n, r)| (n.clone(), r.clone())).expect("one")),
        None if state.recommenders.is_empty() => Err(ApiError::new(StatusCode::NOT_FOUND, "no recommender is served (start with --recommender NAME=DIR)")),
        None => Err(ApiError::unprocessable("several recommenders are served: name one with \"model\"")),
    }
}

fn check_k(k: Option<usize>) -> AppResult<usize> {
    let k = k.unwrap_or(10);
    if k == 0 || k > MAX_K {
        return Err(ApiError::unprocessable(format!("k: give 1 to {MAX_K}")));
    }
    Ok(k)
}

/// Item ids to indices; unknown ids are an error naming them.
fn item_indices(model: &Recommender, ids: &[String], field: &str) -> AppResult<Vec<u32>> {
    ids.iter().map(|id| model.items.get(id).ok_or_else(|| ApiError::unprocessable(format!("{field}: item {id:?} is not in the model's catalogue")))).collect()
}

/// `{"name": "value" or number}` as pairs; `field` names the object in errors.
fn string_pairs(object: &Option<HashMap<String, Value>>, field: &str) -> AppResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (k, v) in object.iter().flatten() {
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err(ApiError::unprocessable(format!("{field}.{k}: expected a string or number, found {other}"))),
        };
        out.push((k.clone(), v));
    }
    Ok(out)
}

fn listed(model: &Recommender, recs: &[(u32, f32)]) -> Vec<Value> {
    recs.iter()
        .map(|&(i, s)| {
            let mut o = model.item_fields(i);
            o.insert("item".into(), json!(model.items.id(i)));
            o.insert("score".into(), json!(s));
            Value::Object(o)
        })
        .collect()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> AppResult<T> + Send + 'static) -> AppResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the recommender task failed: {e}")))?
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecommendRequest {
    model: Option<String>,
    user: String,
    k: Option<usize>,
    #[serde(default)]
    exclude: Vec<String>,
    filter: Option<HashMap<String, Value>>,
    /// Items the user interacted with that the model does not know of (not stored).
    #[serde(default)]
    history: Vec<String>,
    /// The user's features (for a user without history), overriding the model's user table.
    features: Option<HashMap<String, Value>>,
}

pub async fn recommend(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> AppResult<Json<Value>> {
    let req: RecommendRequest = parse(body)?;
    let (name, served) = pick(&state, req.model.as_deref())?;
    let k = check_k(req.k)?;
    let filter = string_pairs(&req.filter, "filter")?;
    let features = string_pairs(&req.features, "features")?;
    blocking(move || {
        let model = &served.model;
        let codes = match (&model.segments, req.features.is_some()) {
            (_, false) => None,
            (Some(s), true) => Some(s.encode(&features).map_err(|e| ApiError::unprocessable(format!("features: {e:#}")))?),
            (None, true) => return Err(ApiError::unprocessable("features: this model was trained without user features (zhiku recommend train --users FILE)")),
        };
        let mut exclude = item_indices(model, &req.exclude, "exclude")?;
        exclude.extend(model.filtered_out(&filter).map_err(|e| ApiError::unprocessable(format!("filter: {e:#}")))?);
        let mut history = item_indices(model, &req.history, "history")?;
        history.extend(served.posted.lock().unwrap_or_else(|e| e.into_inner()).get(&req.user).into_iter().flatten().copied());
        let mut query = model.query_for(&req.user);
        if let Some(c) = &codes {
            query.features = Some(c);
        }
        if !history.is_empty() {
            // New interactions: the whole history scored afresh (folded in for factor models).
            history.extend_from_slice(query.history);
            query.user = None;
            query.history = &history;
        }
        let recs = model.recommend(query, k, &exclude, &mut Vec::new());
        let fallback = model.fallback(query);
        let personalised = fallback.is_none();
        Ok(Json(json!({"model": name, "user": req.user, "items": listed(model, &recs), "personalised": personalised, "fallback": fallback})))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimilarRequest {
    model: Option<String>,
    item: String,
    k: Option<usize>,
    filter: Option<HashMap<String, Value>>,
}

pub async fn similar_items(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> AppResult<Json<Value>> {
    let req: SimilarRequest = parse(body)?;
    let (name, served) = pick(&state, req.model.as_deref())?;
    let k = check_k(req.k)?;
    let filter = string_pairs(&req.filter, "filter")?;
    blocking(move || {
        let model = &served.model;
        let item = item_indices(model, std::slice::from_ref(&req.item), "item")?[0];
        let exclude = model.filtered_out(&filter).map_err(|e| ApiError::unprocessable(format!("filter: {e:#}")))?;
        let Some(recs) = model.similar(item, k, &exclude) else {
            return Err(ApiError::unprocessable(format!("the {} model has no notion of similar items", model.config.algorithm.name())));
        };
        Ok(Json(json!({"model": name, "item": req.item, "items": listed(model, &recs)})))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InteractionsRequest {
    model: Option<String>,
    user: String,
    items: Vec<String>,
}

pub async fn interactions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> AppResult<Json<Value>> {
    let req: InteractionsRequest = parse(body)?;
    let (name, served) = pick(&state, req.model.as_deref())?;
    if req.items.is_empty() || req.items.len() > MAX_POSTED {
        return Err(ApiError::unprocessable(format!("items: give 1 to {MAX_POSTED} item ids")));
    }
    if req.user.is_empty() {
        return Err(ApiError::unprocessable("user: an id is required"));
    }
    let items = item_indices(&served.model, &req.items, "items")?;
    let mut posted = served.posted.lock().unwrap_or_else(|e| e.into_inner());
    let list = posted.entry(req.user.clone()).or_default();
    let seen = served.model.users.get(&req.user).map_or(&[][..], |u| served.model.seen.row(u as usize).0);
    let mut added = 0;
    for i in items {
        if !list.contains(&i) && seen.binary_search(&i).is_err() {
            if list.len() >= MAX_POSTED {
                return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("user {:?} already has {MAX_POSTED} interactions posted here; retrain the model", req.user)));
            }
            list.push(i);
            added += 1;
        }
    }
    Ok(Json(json!({"model": name, "user": req.user, "added": added, "posted": list.len()})))
}
