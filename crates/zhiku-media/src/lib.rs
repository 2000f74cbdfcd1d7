//! Audio and images in, numbers a model reads out: audio files decoded to 16 kHz mono
//! ([`audio`]) and the log-mel front end of speech recognition ([`mel`]). Decoding, voice activity detection and the OCR pipeline join it here; the models
//! themselves (Whisper, ...) live in `zhiku-models` beside the text models.

pub mod audio;
pub mod image;
pub mod mel;
pub mod ocr;
pub mod pdf;
pub mod speech;

/// The sample rate every speech model here reads.
pub const SAMPLE_RATE: u32 = 16_000;
