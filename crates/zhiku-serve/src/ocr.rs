//! Text in images over HTTP (scope `predict`): `POST /v1/ocr`, a multipart form with `file` (a
//! PNG or JPEG image), and optionally `model` (which `--ocr` model; may be left out when one is
//! served), `min_confidence` (drop lines below it; default 0.5) and `response_format` (`json`,
//! the default: `{"model", "text", "width", "height", "lines": [{"text", "box", "confidence"}]}`;
//! `text`: the lines, one per line). Uploads are limited by `--max-upload-mib`; decoding and OCR
//! run on the blocking pool, so a large page does not hold up other requests.

use crate::api::ApiError;
use crate::AppState;
use axum::extract::{Multipart, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub async fn ocr(State(state): State<Arc<AppState>>, form: Multipart) -> Result<Response, ApiError> {
    let upload = crate::upload::read(form, "the image", &["model", "response_format", "min_confidence"]).await?;
    let (upload, bytes, mut fields) = (upload.name, upload.bytes, upload.fields);
    let model = fields.remove("model");
    let format = fields.remove("response_format").unwrap_or_else(|| "json".to_string());
    let min_confidence = match fields.remove("min_confidence") {
        None => None,
        Some(text) => {
            let v: f32 = text.trim().parse().map_err(|_| ApiError::unprocessable(format!("min_confidence: {text:?} is not a number")))?;
            if !(0.0..=1.0).contains(&v) {
                return Err(ApiError::unprocessable(format!("min_confidence: {v} is not between 0 and 1")));
            }
            Some(v)
        }
    };
    let as_text = match format.as_str() {
        "json" => false,
        "text" => true,
        other => return Err(ApiError::unprocessable(format!("response_format {other:?}: expected json or text"))),
    };
    let (name, ocr) = crate::upload::pick_model(&state.ocr, model.as_deref(), "OCR model", "--ocr")?;
    let page = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let image = crate::upload::decode_image(&bytes, &upload)?;
        let mut page = ocr.recognize(&image).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{upload}: OCR failed: {e:#}")))?;
        if let Some(min) = min_confidence {
            // The model drops lines under its default (0.5); a request may only ask for stricter.
            page.lines.retain(|l| l.confidence >= min);
            page.text = page.lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>().join("\n");
        }
        Ok(page)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the OCR task failed: {e}")))??;
    Ok(if as_text {
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], page.text).into_response()
    } else {
        let mut v = serde_json::to_value(&page).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        v["model"] = serde_json::json!(name);
        axum::Json(v).into_response()
    })
}
