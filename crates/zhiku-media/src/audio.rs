//! Audio files to 16 kHz mono samples: WAV, FLAC, MP3 and Ogg/Vorbis decoded by symphonia, Ogg/Opus
//! demuxed by symphonia and decoded by opus-decoder (pure Rust), channels averaged, then resampled (rubato's FFT resampler) when the file's
//! rate is not 16 kHz.
//!
//! Errors say what is wrong and where: a missing or empty file, a format none of the decoders
//! knows, a stream that breaks off (with the byte offset reached). Packets that fail to decode
//! in an otherwise readable stream are skipped and counted, as players do.

use crate::SAMPLE_RATE;
use std::path::Path;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL, CODEC_TYPE_OPUS};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Longest recording decoded in one piece: 4 hours (921.6M samples, 3.7 GB as f32, at 16 kHz).
pub const MAX_SECONDS: f64 = 4.0 * 3600.0;

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("{path}: no such file")]
    NotFound { path: String },
    #[error("{path}: cannot read: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: the file is empty (0 bytes)")]
    Empty { path: String },
    #[error("{path}: not an audio file zhiku can decode (WAV, FLAC, MP3, Ogg/Vorbis, Ogg/Opus): {detail}")]
    Unsupported { path: String, detail: String },
    /// `offset`: how far into the file the decoder had read (the damage lies before it).
    #[error("{path}: corrupt audio (read up to byte {offset}): {detail}")]
    Corrupt { path: String, offset: u64, detail: String },
    #[error("{path}: no audio in the file (no decodable samples)")]
    NoAudio { path: String },
    #[error("{path}: {seconds:.0} s of audio, over the {max:.0} s limit; split the recording first")]
    TooLong { path: String, seconds: f64, max: f64 },
}

/// Decoded audio, mono.
#[derive(Debug, Clone)]
pub struct Audio {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    /// The file's own rate and channel count, before mixing and resampling.
    pub source_rate: u32,
    pub source_channels: usize,
    /// Packets that failed to decode and were skipped.
    pub skipped_packets: usize,
}

impl Audio {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate as f64
    }
}

/// Decodes a file to 16 kHz mono.
pub fn load(path: &Path) -> Result<Audio, AudioError> {
    let audio = decode(path)?;
    Ok(resample(audio, SAMPLE_RATE))
}

/// Decodes a file to mono at its own rate.
pub fn decode(path: &Path) -> Result<Audio, AudioError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => AudioError::NotFound { path: name.clone() },
        _ => AudioError::Io { path: name.clone(), source: e },
    })?;
    let len = file.metadata().map_err(|e| AudioError::Io { path: name.clone(), source: e })?.len();
    if len == 0 {
        return Err(AudioError::Empty { path: name });
    }
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    decode_stream(Counted::stream(file, len), &hint, &name)
}

/// Decodes audio held in memory (an upload); `name` is used in errors.
pub fn decode_bytes(bytes: Vec<u8>, name: &str) -> Result<Audio, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty { path: name.to_string() });
    }
    let len = bytes.len() as u64;
    decode_stream(Counted::stream(std::io::Cursor::new(bytes), len), &Hint::new(), name)
}

/// A source that keeps how far the decoder has read, for errors.
struct Counted<R> {
    inner: R,
    len: u64,
    position: Arc<AtomicU64>,
}

impl<R: Read + Seek + Send + Sync + 'static> Counted<R> {
    fn stream(inner: R, len: u64) -> (MediaSourceStream, Arc<AtomicU64>) {
        let position = Arc::new(AtomicU64::new(0));
        let source = Counted { inner, len, position: position.clone() };
        (MediaSourceStream::new(Box::new(source), Default::default()), position)
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.position.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<R: Seek> Seek for Counted<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let at = self.inner.seek(pos)?;
        self.position.store(at, Ordering::Relaxed);
        Ok(at)
    }
}

impl<R: Read + Seek + Send + Sync> MediaSource for Counted<R> {
    fn is_seekable(&self) -> bool {
        true
    }
    fn byte_len(&self) -> Option<u64> {
        Some(self.len)
    }
}

fn decode_stream((stream, position): (MediaSourceStream, Arc<AtomicU64>), hint: &Hint, name: &str) -> Result<Audio, AudioError> {
    let corrupt = |detail: String| AudioError::Corrupt { path: name.to_string(), offset: position.load(Ordering::Relaxed), detail };
    let unsupported = |detail: String| AudioError::Unsupported { path: name.to_string(), detail };
    let probed = symphonia::default::get_probe()
        .format(hint, stream, &FormatOptions { enable_gapless: true, ..Default::default() }, &MetadataOptions::default())
        .map_err(|e| unsupported(e.to_string()))?;
    let mut format = probed.format;
    let track = format.tracks().iter().find(|t| t.codec_params.codec != CODEC_TYPE_NULL).ok_or_else(|| unsupported("no audio track".into()))?;
    let track_id = track.id;
    let source_rate = track.codec_params.sample_rate.ok_or_else(|| unsupported("the track does not say its sample rate".into()))?;
    if track.codec_params.codec == CODEC_TYPE_OPUS {
        let channels = track.codec_params.channels.map_or(1, |c| c.count());
        let pre_skip = track.codec_params.delay.unwrap_or(0) as usize;
        return decode_opus(format, track_id, channels, pre_skip, name, &corrupt);
    }
    let mut decoder = symphonia::default::get_codecs().make(&track.codec_params, &DecoderOptions::default()).map_err(|e| unsupported(e.to_string()))?;
    let max_samples = (MAX_SECONDS * source_rate as f64) as usize;
    let (mut samples, mut channels, mut skipped) = (Vec::new(), 0usize, 0usize);
    let mut buffer: Option<SampleBuffer<f32>> = None;
    while let Some(packet) = next_packet(format.as_mut(), track_id, &corrupt)? {
        match decoder.decode(&packet) {
            Ok(decoded) => {
                let spec = *decoded.spec();
                channels = spec.channels.count();
                let buf = match &mut buffer {
                    Some(b) if b.capacity() >= decoded.capacity() * channels => b,
                    _ => buffer.insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
                };
                buf.copy_interleaved_ref(decoded);
                let frames = buf.samples();
                // Channels averaged into one.
                samples.extend(frames.chunks_exact(channels.max(1)).map(|f| f.iter().sum::<f32>() / channels.max(1) as f32));
                if samples.len() > max_samples {
                    return Err(AudioError::TooLong { path: name.to_string(), seconds: samples.len() as f64 / source_rate as f64, max: MAX_SECONDS });
                }
            }
            Err(SymphoniaError::DecodeError(_)) => skipped += 1,
            Err(e) => return Err(corrupt(e.to_string())),
        }
    }
    if samples.is_empty() {
        return Err(AudioError::NoAudio { path: name.to_string() });
    }
    Ok(Audio { samples, sample_rate: source_rate, source_rate, source_channels: channels, skipped_packets: skipped })
}

/// Ogg/Opus packets decoded at 48 kHz, channels averaged, the encoder's pre-skip dropped from
/// the start.
fn decode_opus(
    mut format: Box<dyn symphonia::core::formats::FormatReader>,
    track_id: u32,
    channels: usize,
    pre_skip: usize,
    name: &str,
    corrupt: &dyn Fn(String) -> AudioError,
) -> Result<Audio, AudioError> {
    if !(1..=2).contains(&channels) {
        return Err(AudioError::Unsupported { path: name.to_string(), detail: format!("Opus with {channels} channels (mono and stereo are supported)") });
    }
    let mut decoder = opus_decoder::OpusDecoder::new(48_000, channels).map_err(|e| corrupt(e.to_string()))?;
    let mut pcm = vec![0f32; decoder.max_frame_size_per_channel() * channels];
    let max_samples = (MAX_SECONDS * 48_000.0) as usize;
    let (mut samples, mut skipped) = (Vec::new(), 0usize);
    while let Some(packet) = next_packet(format.as_mut(), track_id, &corrupt)? {
        // A damaged packet must not take the process down with it: a panic inside the decoder
        // is treated as a corrupt stream.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decoder.decode_float(&packet.data, &mut pcm, false)))
            .map_err(|_| corrupt("the Opus decoder failed on a damaged packet".into()))?;
        match decoded {
            Ok(n) => {
                samples.extend(pcm[..n * channels].chunks_exact(channels).map(|f| f.iter().sum::<f32>() / channels as f32));
                if samples.len() > max_samples {
                    return Err(AudioError::TooLong { path: name.to_string(), seconds: samples.len() as f64 / 48_000.0, max: MAX_SECONDS });
                }
            }
            Err(_) => skipped += 1,
        }
    }
    samples.drain(..pre_skip.min(samples.len()));
    if samples.is_empty() {
        return Err(AudioError::NoAudio { path: name.to_string() });
    }
    Ok(Audio { samples, sample_rate: 48_000, source_rate: 48_000, source_channels: channels, skipped_packets: skipped })
}

/// The next packet of the track; None at the end of the stream.
fn next_packet(format: &mut dyn symphonia::core::formats::FormatReader, track_id: u32, corrupt: &dyn Fn(String) -> AudioError) -> Result<Option<symphonia::core::formats::Packet>, AudioError> {
    loop {
        match format.next_packet() {
            Ok(p) if p.track_id() == track_id => return Ok(Some(p)),
            Ok(_) => continue,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(SymphoniaError::ResetRequired) => return Ok(None),
            Err(e) => return Err(corrupt(e.to_string())),
        }
    }
}

/// Resamples to `rate` (unchanged when already there), keeping the length in time.
pub fn resample(audio: Audio, rate: u32) -> Audio {
    if audio.sample_rate == rate {
        return audio;
    }
    use rubato::{FftFixedIn, Resampler};
    let (from, to) = (audio.sample_rate as usize, rate as usize);
    let chunk = 1024;
    let mut r = FftFixedIn::<f32>::new(from, to, chunk, 2, 1).expect("valid rates");
    let delay = r.output_delay();
    let want = (audio.samples.len() as f64 * to as f64 / from as f64).round() as usize;
    let mut out = Vec::with_capacity(want + delay + chunk);
    let mut pieces = audio.samples.chunks_exact(chunk);
    for piece in pieces.by_ref() {
        out.extend_from_slice(&r.process(&[piece], None).expect("sized by the plan")[0]);
    }
    let rest = pieces.remainder();
    out.extend_from_slice(&r.process_partial(Some(&[rest]), None).expect("sized by the plan")[0]);
    // Flush what the filter still holds until the delay is covered.
    while out.len() < want + delay {
        out.extend_from_slice(&r.process_partial::<&[f32]>(None, None).expect("sized by the plan")[0]);
    }
    let samples = out[delay..delay + want].to_vec();
    Audio { samples, sample_rate: rate, ..audio }
}
