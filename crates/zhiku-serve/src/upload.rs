//! What the media routes (`/v1/audio/transcriptions`, `/v1/ocr`, `/v1/images/*`) share: the
//! multipart upload (one file field and named text fields, with the same errors for all: 400 for
//! a malformed form, 413 for a file over the route's body limit, 422 for a missing, empty or
//! unknown field), the choice of the served model, and the decoding of uploaded images.

use crate::api::ApiError;
use axum::extract::Multipart;
use axum::http::StatusCode;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Upload {
    /// The file's name as the client sent it (or "upload") and its bytes, never empty.
    pub name: String,
    pub bytes: Vec<u8>,
    /// The other fields by name.
    pub fields: HashMap<String, String>,
}

/// Reads a form with a `file` field (`what` names its content in errors: "the audio", "the
/// image") and the text fields in `allowed`.
pub async fn read(mut form: Multipart, what: &str, allowed: &[&str]) -> Result<Upload, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let (mut file, mut fields) = (None, HashMap::new());
    while let Some(field) = form.next_field().await.map_err(|e| bad(format!("malformed multipart form: {e}")))? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            let upload = field.file_name().unwrap_or("upload").to_string();
            let bytes = field.bytes().await.map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("file: {e}")))?;
            file = Some((upload, bytes.to_vec()));
        } else if allowed.contains(&name.as_str()) {
            let text = field.text().await.map_err(|e| bad(format!("{name}: {e}")))?;
            fields.insert(name, text);
        } else {
            return Err(ApiError::unprocessable(format!("unknown form field {name:?} (expected file, {})", allowed.join(", "))));
        }
    }
    let Some((name, bytes)) = file else { return Err(ApiError::unprocessable(format!("file: {what} is required (a multipart field named file)"))) };
    if bytes.is_empty() {
        return Err(ApiError::unprocessable(format!("file: {name} is empty (0 bytes)")));
    }
    Ok(Upload { name, bytes, fields })
}

/// The served model a request names, or the only one of its kind (`what`: "speech model"; `flag`:
/// the option that serves one): 404 for an unknown name or when none is served, 422 when several
/// are served and the request names none.
pub fn pick_model<T>(models: &HashMap<String, Arc<T>>, name: Option<&str>, what: &str, flag: &str) -> Result<(String, Arc<T>), ApiError> {
    match name {
        Some(n) => models.get(n).map(|m| (n.to_string(), m.clone())).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no {what} {n:?} on this server"))),
        None if models.len() == 1 => Ok(models.iter().next().map(|(n, m)| (n.clone(), m.clone())).expect("one")),
        None if models.is_empty() => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no {what} is served (start with {flag} NAME=DIR)"))),
        None => Err(ApiError::unprocessable(format!("several {what}s are served: name one with the model field"))),
    }
}

/// An uploaded PNG or JPEG: 413 past the decoder's pixel limit, 422 for anything it cannot read.
pub fn decode_image(bytes: &[u8], upload: &str) -> Result<zhiku_media::image::RgbImage, ApiError> {
    zhiku_media::image::decode_image(bytes, upload).map_err(|e| match e {
        zhiku_media::image::ImageError::TooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        e => ApiError::unprocessable(e.to_string()),
    })
}
