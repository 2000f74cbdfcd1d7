//! Recordings and images as library documents: audio is transcribed (Whisper, `zhiku_media::speech`)
//! and images read (PP-OCR, `zhiku_media::ocr`), and the document keeps where each piece of
//! text came from, so that a search hit or a citation can point into the recording (`12:31-12:48`)
//! or the page.
//!
//! Metadata written: audio: `duration` (seconds), `language`, and `time_spans`, one
//! `[first character, start s, end s]` per transcript segment; images: `pages` = 1,
//! `page_starts` = [0], `width`, `height`, and `ocr_lines`, one `[first character, box]` per line
//! (box: four x, y corners in the image's pixels).

use crate::document::{derived_id, join_with_offsets, Document};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::Path;
use zhiku_media::ocr::OcrModel;
use zhiku_media::speech::{SpeechModel, TranscribeOptions};

/// The models that turn media files into text; a file whose model is missing is an error that
/// says which option to give.
#[derive(Default)]
pub struct MediaReaders {
    pub speech: Option<SpeechModel>,
    pub ocr: Option<OcrModel>,
    /// Spoken language (ISO code); detected per recording when `None`.
    pub language: Option<String>,
}

impl MediaReaders {
    /// Loads the models given: a Whisper folder (f32 weights) and a PP-OCR folder; `language`
    /// "auto" (or none) detects it per recording.
    pub fn load(speech: Option<&Path>, ocr: Option<&Path>, language: Option<String>) -> Result<Self> {
        Ok(Self {
            speech: speech.map(|d| SpeechModel::load(d, zhiku_models::blocks::GgmlType::F32).with_context(|| format!("cannot load a Whisper model from {}", d.display()))).transpose()?,
            ocr: ocr.map(|d| OcrModel::load(d).with_context(|| format!("cannot load the OCR models from {}", d.display()))).transpose()?,
            language: language.filter(|l| l != "auto"),
        })
    }
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A recording: its transcript, a line per segment, with each segment's time span.
pub fn read_audio(path: &Path, media: &MediaReaders) -> Result<Document> {
    let Some(speech) = &media.speech else {
        bail!("{}: an audio file; give a Whisper model (--speech-model DIR) to transcribe it", path.display())
    };
    let audio = zhiku_media::audio::load(path)?;
    // Only the speech: silences of a lecture give no text (Whisper invents some without VAD).
    let opts = TranscribeOptions { language: media.language.clone(), vad: Some(zhiku_media::vad::VadOptions::default()), ..Default::default() };
    let transcript = speech.transcribe(&audio.samples, &opts, |_, _| {}).with_context(|| format!("{}: transcription failed", path.display()))?;
    let said: Vec<_> = transcript.segments.iter().filter(|s| !s.text.trim().is_empty()).collect();
    let (text, starts) = join_with_offsets(said.iter().map(|s| s.text.trim()), "\n");
    let spans: Vec<Value> = said.iter().zip(starts).map(|(s, first)| serde_json::json!([first, s.start, s.end])).collect();
    if text.is_empty() {
        bail!("{}: no speech found ({:.0} s of audio transcribed to nothing)", path.display(), transcript.duration)
    }
    let source = path.display().to_string();
    let mut metadata = Map::new();
    metadata.insert("duration".into(), Value::from(transcript.duration));
    metadata.insert("language".into(), Value::from(transcript.language.clone()));
    metadata.insert("time_spans".into(), Value::from(spans));
    Ok(Document { id: derived_id(&source), title: stem(path), text, source, date: None, tags: Vec::new(), metadata })
}

/// An image: its lines in reading order, each with its box; one page.
pub fn read_image(path: &Path, media: &MediaReaders) -> Result<Document> {
    let Some(ocr) = &media.ocr else {
        bail!("{}: an image; give an OCR model (--ocr-model DIR) to read it", path.display())
    };
    let image = zhiku_media::image::load_image(path)?;
    let page = ocr.recognize(&image).with_context(|| format!("{}: OCR failed", path.display()))?;
    if page.lines.is_empty() {
        bail!("{}: no text found in the image ({} x {} pixels)", path.display(), page.width, page.height)
    }
    let (text, starts) = join_with_offsets(page.lines.iter().map(|l| l.text.as_str()), "\n");
    let lines: Vec<Value> = page.lines.iter().zip(starts).map(|(l, first)| serde_json::json!([first, l.quad])).collect();
    let source = path.display().to_string();
    let mut metadata = Map::new();
    metadata.insert("pages".into(), Value::from(1));
    metadata.insert("page_starts".into(), Value::from(vec![0]));
    metadata.insert("width".into(), Value::from(page.width));
    metadata.insert("height".into(), Value::from(page.height));
    metadata.insert("ocr_lines".into(), Value::from(lines));
    Ok(Document { id: derived_id(&source), title: stem(path), text, source, date: None, tags: Vec::new(), metadata })
}

/// Where in a recording a span of its transcript was said.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeSpan {
    /// Seconds from the start of the recording.
    pub from: f64,
    pub to: f64,
    /// `m:ss-m:ss`, or `h:mm:ss-h:mm:ss` past an hour.
    pub label: String,
}

/// The time span of characters `start..end` of a transcribed document (None for other documents).
pub fn time_span(metadata: &Map<String, Value>, start: usize, end: usize) -> Option<TimeSpan> {
    let spans: Vec<(usize, f64, f64)> = metadata
        .get("time_spans")?
        .as_array()?
        .iter()
        .filter_map(|s| Some((s.get(0)?.as_u64()? as usize, s.get(1)?.as_f64()?, s.get(2)?.as_f64()?)))
        .collect();
    let mut covered = None::<(f64, f64)>;
    for (i, &(first, from, to)) in spans.iter().enumerate() {
        let next = spans.get(i + 1).map_or(usize::MAX, |s| s.0);
        if first < end.max(start + 1) && next > start {
            covered = Some(covered.map_or((from, to), |(a, b)| (a.min(from), b.max(to))));
        }
    }
    let (from, to) = covered?;
    Some(TimeSpan { from, to, label: format!("{}-{}", clock(from), clock(to)) })
}

/// Seconds as `m:ss`, or `h:mm:ss` from an hour on.
pub fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).floor() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_of_transcript_maps_to_the_segments_it_touches() {
        let mut m = Map::new();
        // Three segments: chars 0..10 at 0-4.5 s, 11..20 at 751-768 s, 21.. at 3700-3712 s.
        m.insert("time_spans".into(), serde_json::json!([[0, 0.0, 4.5], [11, 751.2, 768.9], [21, 3700.0, 3712.0]]));
        assert_eq!(time_span(&m, 12, 18).unwrap().label, "12:31-12:48");
        assert_eq!(time_span(&m, 0, 5).unwrap().label, "0:00-0:04");
        let both = time_span(&m, 5, 25).unwrap();
        assert_eq!((both.from, both.to, both.label.as_str()), (0.0, 3712.0, "0:00-1:01:52"));
        assert!(time_span(&Map::new(), 0, 5).is_none());
        assert_eq!(clock(59.99), "0:59");
    }

    #[test]
    fn media_without_its_model_says_which_option_to_give() {
        let none = MediaReaders::default();
        let e = read_audio(Path::new("talk.mp3"), &none).unwrap_err().to_string();
        assert!(e.contains("--speech-model"), "{e}");
        let e = read_image(Path::new("scan.png"), &none).unwrap_err().to_string();
        assert!(e.contains("--ocr-model"), "{e}");
    }
}
