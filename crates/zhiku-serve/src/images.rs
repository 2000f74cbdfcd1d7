//! Image-text models over HTTP (scope `predict`), CLIP or Chinese-CLIP folders served with
//! `--clip NAME=DIR`:
//! - `POST /v1/images/tags`: a multipart form with `file` (PNG or JPEG), `labels` (separated by
//!   commas or new lines), and optionally `template` (the text each label is matched as, `{}`
//!   standing for the label; default `{}`), `top` (labels returned, best first; default all)
//!   and `model` (may be left out when one is served). Answers `{"model", "labels": [{"label",
//!   "similarity", "probability"}]}`: zero-shot tagging, as `zhiku tag-images`.
//! - `POST /v1/images/embeddings`: `file` and optionally `model`; answers the image's unit-length
//!   embedding in OpenAI's embeddings layout. `POST /v1/embeddings` with the same model name
//!   embeds texts with the text tower, so images and texts land in one space (search covers by
//!   a sentence).
//!
//! Uploads are limited by `--max-upload-mib`, decoded images to the limits of
//! `zhiku_media::image::decode_image`; the models run on the blocking pool, so a large image does
//! not hold up other requests.

use crate::api::ApiError;
use crate::AppState;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;
use zhiku_media::clip::ImageTextModel;

fn failed(what: &str) -> impl FnOnce(tokio::task::JoinError) -> ApiError + '_ {
    move |e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the {what} task failed: {e}"))
}

pub async fn tags(State(state): State<Arc<AppState>>, form: Multipart) -> Result<Json<Value>, ApiError> {
    let upload = crate::upload::read(form, "the image", &["model", "labels", "template", "top"]).await?;
    let (upload, bytes, mut fields) = (upload.name, upload.bytes, upload.fields);
    let (name, model) = crate::upload::pick_model(&state.clip, fields.remove("model").as_deref(), "image-text model", "--clip")?;
    let labels: Vec<String> = fields.remove("labels").unwrap_or_default().split([',', '\n']).map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if labels.is_empty() {
        return Err(ApiError::unprocessable("labels: give the labels to tag with, separated by commas or new lines"));
    }
    if labels.len() > state.config.max_texts {
        return Err(ApiError::unprocessable(format!("labels: {} labels; at most {} per request", labels.len(), state.config.max_texts)));
    }
    let template = fields.remove("template").unwrap_or_else(|| "{}".to_string());
    let top = match fields.remove("top") {
        None => labels.len(),
        Some(t) => match t.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => return Err(ApiError::unprocessable(format!("top: {t:?} is not a positive whole number"))),
        },
    };
    let scores = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let image = crate::upload::decode_image(&bytes, &upload)?;
        let internal = |e: anyhow::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{upload}: {e:#}"));
        let labels = model.labels(&labels.iter().map(String::as_str).collect::<Vec<_>>(), &template).map_err(internal)?;
        let embedding = model.embed_images(&[&image]).map_err(internal)?.remove(0);
        Ok(model.rank(&embedding, &labels))
    })
    .await
    .map_err(failed("tagging"))??;
    Ok(Json(json!({"model": name, "labels": scores[..top.min(scores.len())]})))
}

pub async fn embeddings(State(state): State<Arc<AppState>>, form: Multipart) -> Result<Json<Value>, ApiError> {
    let upload = crate::upload::read(form, "the image", &["model"]).await?;
    let (upload, bytes, mut fields) = (upload.name, upload.bytes, upload.fields);
    let (name, model) = crate::upload::pick_model(&state.clip, fields.remove("model").as_deref(), "image-text model", "--clip")?;
    let embedding = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let image = crate::upload::decode_image(&bytes, &upload)?;
        Ok(model.embed_images(&[&image]).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{upload}: {e:#}")))?.remove(0))
    })
    .await
    .map_err(failed("embedding"))??;
    Ok(Json(json!({"object": "list", "model": name, "data": [{"object": "embedding", "index": 0, "embedding": embedding}]})))
}

/// For `POST /v1/embeddings` naming a served image-text model: the texts through its text
/// tower, and the number of tokens read.
pub async fn embed_texts(model: Arc<ImageTextModel>, texts: Vec<String>) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    tokio::task::spawn_blocking(move || model.embed_texts_counted(&texts.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .map_err(failed("embedding"))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))
}
