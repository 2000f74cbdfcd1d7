//! The multipart uploads of the media routes (`/v1/audio/transcriptions`, `/v1/ocr`, `/v1/images/*`): one file
//! field and named text fields, with the same errors for all: 400 for a malformed form, 413 for
//! a file over the route's body limit, 422 for a missing, empty or unknown field.

use crate::api::ApiError;
use axum::extract::Multipart;
use axum::http::StatusCode;
use std::collections::HashMap;

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
