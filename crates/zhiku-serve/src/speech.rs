//! Speech to text over HTTP, OpenAI's shape (scope `predict`):
//! `POST /v1/audio/transcriptions`, a multipart form with `file` (the audio: WAV, FLAC, MP3,
//! Ogg/Vorbis, Ogg/Opus), and optionally `model` (which `--speech` model; may be left out when one is
//! served), `language` (ISO code; detected when absent), `response_format` (`json`, the default:
//! `{"text"}`; `verbose_json`: language, duration and segments; `text`; `srt`; `vtt`) and
//! `prompt`/`temperature` (accepted, not used), and zhiku's `vad` (`true`, the default: only
//! the speech voice activity detection finds is transcribed, and silence gives no text;
//! `false`: every window). Uploads are limited by `--max-upload-mib`, the
//! audio by `--max-audio-seconds`; decoding and transcription run on the blocking pool, so a long
//! recording does not hold up other requests.

use crate::api::ApiError;
use crate::AppState;
use axum::extract::{Multipart, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use zhiku_media::speech::{Format, TranscribeOptions};
use zhiku_media::vad::VadOptions;

pub async fn transcriptions(State(state): State<Arc<AppState>>, form: Multipart) -> Result<Response, ApiError> {
    let upload = crate::upload::read(form, "the audio", &["model", "language", "response_format", "prompt", "temperature", "vad"]).await?;
    let (upload, bytes, mut fields) = (upload.name, upload.bytes, upload.fields);
    let model = fields.remove("model");
    let language = fields.remove("language").filter(|l| !l.is_empty() && l != "auto");
    let format = fields.remove("response_format").unwrap_or_else(|| "json".to_string());
    let verbose = format == "verbose_json";
    let vad = match fields.remove("vad").as_deref() {
        None | Some("true") | Some("on") => Some(VadOptions::default()),
        Some("false") | Some("off") => None,
        Some(other) => return Err(ApiError::unprocessable(format!("vad {other:?}: expected true or false"))),
    };
    let render = match format.as_str() {
        "json" | "verbose_json" => Format::Json,
        "text" => Format::Txt,
        "srt" => Format::Srt,
        "vtt" => Format::Vtt,
        other => return Err(ApiError::unprocessable(format!("response_format {other:?}: expected json, verbose_json, text, srt or vtt"))),
    };
    let (_, speech) = crate::upload::pick_model(&state.speech, model.as_deref(), "speech model", "--speech")?;
    if language.is_some() && !speech.is_multilingual() && language.as_deref() != Some("en") {
        return Err(ApiError::unprocessable("language: this is an English-only model"));
    }
    let max_seconds = state.config.max_audio_seconds;
    let transcript = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let audio = zhiku_media::audio::decode_bytes(bytes, &upload).map_err(|e| ApiError::unprocessable(e.to_string()))?;
        if audio.seconds() > max_seconds {
            return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("{upload}: {:.0} s of audio, over this server's {max_seconds:.0} s", audio.seconds())));
        }
        let audio = zhiku_media::audio::resample(audio, zhiku_media::SAMPLE_RATE);
        let opts = TranscribeOptions { language, vad, ..Default::default() };
        speech.transcribe(&audio.samples, &opts, |_, _| {}).map_err(|e| ApiError::unprocessable(format!("{e:#}")))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the transcription task failed: {e}")))??;
    Ok(match render {
        Format::Json if !verbose => axum::Json(serde_json::json!({"text": transcript.text})).into_response(),
        Format::Json => ([(header::CONTENT_TYPE, "application/json")], transcript.render(Format::Json)).into_response(),
        Format::Vtt => ([(header::CONTENT_TYPE, "text/vtt; charset=utf-8")], transcript.render(Format::Vtt)).into_response(),
        other => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], transcript.render(other)).into_response(),
    })
}
