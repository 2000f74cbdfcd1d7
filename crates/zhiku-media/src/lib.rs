//! Audio and images in, numbers a model reads out: audio files decoded to 16 kHz mono
//! ([`audio`]), voice activity detection ([`vad`]), the log-mel front end of speech recognition
//! ([`mel`]), images and PDF pages ([`image`], [`pdf`]) and the OCR pipeline ([`ocr`]); the models
//! themselves (Whisper, ...) live in `zhiku-models` beside the text models.

pub mod audio;
pub mod clip;
pub mod image;
pub mod mel;
pub mod ocr;
pub mod pdf;
pub mod speech;
pub mod vad;

/// The sample rate every speech model here reads.
pub const SAMPLE_RATE: u32 = 16_000;
