//! Whisper, OpenAI's encoder-decoder speech recogniser, on CTranslate2 `model.bin` weights (the
//! files faster-whisper runs) or a Hugging Face folder (`config.json`, `model.safetensors`; read
//! under CTranslate2's names by [`crate::whisper_folder`]).
//!
//! - Encoder: two 1-D convolutions over the log-mel spectrogram (kernel 3; the second with
//!   stride 2, so 3000 frames become 1500 positions), GELU after each, the sinusoidal position
//!   table added, then pre-norm transformer layers (self-attention, GELU MLP) and a final
//!   LayerNorm.
//! - Decoder: token embeddings plus learned positions, pre-norm layers of causal
//!   self-attention (cached), cross-attention to the encoder output (its keys and values
//!   computed once per window) and the MLP; a final LayerNorm; logits against the token
//!   embedding matrix (the output projection is tied to it).
//!
//! CTranslate2 fuses the projections: self-attention's `linear_0` is Q, K and V stacked,
//! cross-attention's `linear_0` is Q and `linear_1` K and V stacked; `linear_2` (or `linear_1`
//! for self-attention) is the output. Matrices are kept as [`QMatrix`], in f32 or quantised to
//! 8 bits (`GgmlType::Q8_0`, the counterpart of CTranslate2's int8).

use crate::attention::{attention_per_cache, attention_rows, QueryMask};
use crate::ctranslate2::Ct2File;
use crate::blocks::GgmlType;
use crate::kernels::gelu_erf_in_place;
use crate::qmatmul::QMatrix;
use crate::slice_ops::layer_norm;
use anyhow::{bail, Context, Result};
use std::path::Path;

const LN_EPS: f32 = 1e-5;

/// Whisper's tensors under CTranslate2's names (`encoder/layer_0/self_attention/linear_0/weight`,
/// Q, K and V fused), whichever file they are read from.
pub(crate) trait Tensors {
    fn path(&self) -> &Path;
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    fn f32(&self, name: &str) -> Result<Vec<f32>>;
}

impl Tensors for Ct2File {
    fn path(&self) -> &Path {
        &self.path
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.get(name).map(|v| v.shape.clone())
    }
    fn f32(&self, name: &str) -> Result<Vec<f32>> {
        Ct2File::f32(self, name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhisperDims {
    pub n_mels: usize,
    pub d_model: usize,
    pub encoder_heads: usize,
    pub decoder_heads: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub vocab: usize,
    /// Encoder positions: 1500 for 30 s.
    pub audio_ctx: usize,
    /// Decoder positions: 448.
    pub text_ctx: usize,
}

struct Linear {
    w: QMatrix,
    b: Vec<f32>,
}

impl Linear {
    fn load(f: &dyn Tensors, prefix: &str, dtype: GgmlType) -> Result<Self> {
        let shape = f.shape(&format!("{prefix}/weight")).with_context(|| format!("{}: no {prefix}/weight", f.path().display()))?;
        let (rows, cols) = match shape[..] {
            [r, c] => (r, c),
            _ => bail!("{}: {prefix}/weight has shape {shape:?}, expected a matrix", f.path().display()),
        };
        let w = QMatrix::from_f32(f.f32(&format!("{prefix}/weight"))?, rows, cols, dtype)?;
        let b = match f.shape(&format!("{prefix}/bias")) {
            Some(_) => f.f32(&format!("{prefix}/bias"))?,
            None => vec![0.0; rows],
        };
        if b.len() != rows {
            bail!("{}: {prefix}/bias holds {} values for {rows} outputs", f.path().display(), b.len())
        }
        Ok(Self { w, b })
    }

    fn forward(&self, x: &[f32], n: usize) -> Vec<f32> {
        self.forward_with(x, n, QMatrix::matmul)
    }

    /// For rows that are separate hypotheses (beam search).
    fn forward_rows(&self, x: &[f32], n: usize) -> Vec<f32> {
        self.forward_with(x, n, QMatrix::matmul_rows)
    }

    fn forward_with(&self, x: &[f32], n: usize, matmul: fn(&QMatrix, &[f32], usize, &mut [f32])) -> Vec<f32> {
        let mut y = vec![0f32; n * self.w.rows];
        matmul(&self.w, x, n, &mut y);
        for row in y.chunks_exact_mut(self.w.rows) {
            for (v, b) in row.iter_mut().zip(&self.b) {
                *v += b;
            }
        }
        y
    }
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl Norm {
    fn load(f: &dyn Tensors, prefix: &str) -> Result<Self> {
        Ok(Self { gamma: f.f32(&format!("{prefix}/gamma"))?, beta: f.f32(&format!("{prefix}/beta"))? })
    }

    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        layer_norm(x, &self.gamma, &self.beta, LN_EPS, &mut out);
        out
    }
}

struct Mlp {
    norm: Norm,
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn load(f: &dyn Tensors, prefix: &str, dtype: GgmlType) -> Result<Self> {
        Ok(Self { norm: Norm::load(f, &format!("{prefix}/layer_norm"))?, fc1: Linear::load(f, &format!("{prefix}/linear_0"), dtype)?, fc2: Linear::load(f, &format!("{prefix}/linear_1"), dtype)? })
    }

    /// `x += fc2(gelu(fc1(norm(x))))`.
    fn residual(&self, x: &mut [f32], n: usize) {
        self.residual_with(x, n, QMatrix::matmul)
    }

    /// [`Self::residual`] for rows that are separate hypotheses.
    fn residual_rows(&self, x: &mut [f32], n: usize) {
        self.residual_with(x, n, QMatrix::matmul_rows)
    }

    fn residual_with(&self, x: &mut [f32], n: usize, matmul: fn(&QMatrix, &[f32], usize, &mut [f32])) {
        let mut h = self.fc1.forward_with(&self.norm.forward(x), n, matmul);
        gelu_erf_in_place(&mut h);
        add(x, &self.fc2.forward_with(&h, n, matmul));
    }
}

struct EncoderLayer {
    norm: Norm,
    qkv: Linear,
    out: Linear,
    mlp: Mlp,
}

struct DecoderLayer {
    self_norm: Norm,
    self_qkv: Linear,
    self_out: Linear,
    cross_norm: Norm,
    cross_q: Linear,
    cross_kv: Linear,
    cross_out: Linear,
    mlp: Mlp,
}

/// A 1-D convolution, kernel 3, padding 1, as a matrix over im2col rows (`[out, in · 3]`).
struct Conv {
    w: QMatrix,
    b: Vec<f32>,
    stride: usize,
}

impl Conv {
    fn load(f: &dyn Tensors, prefix: &str, stride: usize) -> Result<Self> {
        let shape = f.shape(&format!("{prefix}/weight")).with_context(|| format!("{}: no {prefix}/weight", f.path().display()))?;
        let [out, inp, 3] = shape[..] else { bail!("{}: {prefix}/weight has shape {shape:?}, expected [out, in, 3]", f.path().display()) };
        // Convolutions stay f32: they are a small share of the work and set the scale of all
        // that follows.
        Ok(Self { w: QMatrix::from_f32(f.f32(&format!("{prefix}/weight"))?, out, inp * 3, GgmlType::F32)?, b: f.f32(&format!("{prefix}/bias"))?, stride })
    }

    /// `x` as `[time, channels]` (`at(t, c)` reads it); returns `[time / stride, out]`.
    fn forward(&self, len: usize, channels: usize, at: impl Fn(usize, usize) -> f32) -> (Vec<f32>, usize) {
        let out_len = len.div_ceil(self.stride);
        let mut cols = vec![0f32; out_len * channels * 3];
        for (t, row) in cols.chunks_exact_mut(channels * 3).enumerate() {
            let centre = t * self.stride;
            for c in 0..channels {
                for k in 0..3 {
                    let src = centre + k;
                    // Input index centre + k − 1, zero outside 0..len.
                    row[c * 3 + k] = if src >= 1 && src - 1 < len { at(src - 1, c) } else { 0.0 };
                }
            }
        }
        let mut y = vec![0f32; out_len * self.w.rows];
        self.w.matmul(&cols, out_len, &mut y);
        for row in y.chunks_exact_mut(self.w.rows) {
            for (v, b) in row.iter_mut().zip(&self.b) {
                *v += b;
            }
        }
        gelu_erf_in_place(&mut y);
        (y, out_len)
    }
}

pub struct Whisper {
    pub dims: WhisperDims,
    conv1: Conv,
    conv2: Conv,
    encoder_positions: Vec<f32>,
    encoder: Vec<EncoderLayer>,
    encoder_norm: Norm,
    embeddings: QMatrix,
    decoder_positions: Vec<f32>,
    decoder: Vec<DecoderLayer>,
    decoder_norm: Norm,
}

/// One window's decoding state: the cross-attention keys and values of its encoder output, and
/// the self-attention cache of the tokens so far.
pub struct DecoderState {
    /// Per layer, `[audio positions, d]` each.
    cross_k: Vec<Vec<f32>>,
    cross_v: Vec<Vec<f32>>,
    audio_len: usize,
    /// Per layer, `[tokens so far, d]`.
    self_k: Vec<Vec<f32>>,
    self_v: Vec<Vec<f32>>,
    len: usize,
}

impl DecoderState {
    /// Tokens decoded so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets tokens past `len` (to decode again from a shorter prefix).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            let d = self.self_k.first().map_or(0, |k| k.len() / self.len.max(1));
            for (k, v) in self.self_k.iter_mut().zip(&mut self.self_v) {
                k.truncate(len * d);
                v.truncate(len * d);
            }
            self.len = len;
        }
    }
}

/// Several hypotheses decoding the same window (beam search): each its own self-attention
/// cache, all of the same length, sharing the window's cross-attention keys and values (held by
/// the [`DecoderState`] they were split from). A step feeds one token per hypothesis through the
/// decoder's matrices together, so the weights are read once for all of them.
pub struct Beams {
    /// Per hypothesis, per layer, `[tokens so far, d]`.
    self_k: Vec<Vec<Vec<f32>>>,
    self_v: Vec<Vec<Vec<f32>>>,
    len: usize,
}

impl Beams {
    pub fn count(&self) -> usize {
        self.self_k.len()
    }

    /// Keeps hypothesis `origins[i]` as the new hypothesis `i` (an origin may repeat or go).
    pub fn reorder(&mut self, origins: &[usize]) {
        let n = self.count();
        assert!(origins.iter().all(|&o| o < n), "beam origin out of range");
        let mut uses = vec![0usize; n];
        for &o in origins {
            uses[o] += 1;
        }
        let mut k: Vec<Option<Vec<Vec<f32>>>> = std::mem::take(&mut self.self_k).into_iter().map(Some).collect();
        let mut v: Vec<Option<Vec<Vec<f32>>>> = std::mem::take(&mut self.self_v).into_iter().map(Some).collect();
        for &o in origins {
            uses[o] -= 1;
            // The last use of a cache moves it; the others copy it.
            let (nk, nv) = if uses[o] == 0 { (k[o].take(), v[o].take()) } else { (k[o].clone(), v[o].clone()) };
            self.self_k.push(nk.expect("a cache is moved only on its last use"));
            self.self_v.push(nv.expect("a cache is moved only on its last use"));
        }
    }
}

impl Whisper {
    /// Loads a CTranslate2 Whisper folder (or its `model.bin`) or a Hugging Face folder, with its
    /// matrices in `dtype` (`F32`, `F16` or `Q8_0`).
    pub fn load(path: &Path, dtype: GgmlType) -> Result<Self> {
        if crate::whisper_folder::is_hugging_face_folder(path) {
            return Self::from_tensors(&crate::whisper_folder::HfWhisper::open(path)?, dtype);
        }
        let f = Ct2File::open(path)?;
        if f.spec != "WhisperSpec" {
            bail!("{}: a {} model, not Whisper", f.path.display(), f.spec)
        }
        Self::from_tensors(&f, dtype)
    }

    fn from_tensors(f: &dyn Tensors, dtype: GgmlType) -> Result<Self> {
        let scalar = |name: &str| -> Result<usize> { Ok(f.f32(name)?.first().copied().with_context(|| format!("{name} is empty"))? as usize) };
        let count = |prefix: &str| (0..).take_while(|i| f.shape(&format!("{prefix}/layer_{i}/ffn/linear_0/weight")).is_some()).count();
        let conv1 = f.shape("encoder/conv1/weight").context("no encoder/conv1/weight: not a Whisper model")?;
        let emb = f.shape("decoder/embeddings/weight").context("no decoder/embeddings/weight")?;
        let enc_pos = f.shape("encoder/position_encodings/encodings").context("no encoder position table")?;
        let dec_pos = f.shape("decoder/position_encodings/encodings").context("no decoder position table")?;
        let dims = WhisperDims {
            n_mels: conv1[1],
            d_model: conv1[0],
            encoder_heads: scalar("encoder/num_heads")?,
            decoder_heads: scalar("decoder/num_heads")?,
            encoder_layers: count("encoder"),
            decoder_layers: count("decoder"),
            vocab: emb[0],
            audio_ctx: enc_pos[0],
            text_ctx: dec_pos[0],
        };
        let d = dims.d_model;
        if !d.is_multiple_of(dims.encoder_heads) || !d.is_multiple_of(dims.decoder_heads) || emb[1] != d {
            bail!("{}: inconsistent dimensions {dims:?}", f.path().display())
        }
        let encoder = (0..dims.encoder_layers)
            .map(|i| {
                let p = format!("encoder/layer_{i}");
                Ok(EncoderLayer {
                    norm: Norm::load(f, &format!("{p}/self_attention/layer_norm"))?,
                    qkv: Linear::load(f, &format!("{p}/self_attention/linear_0"), dtype)?,
                    out: Linear::load(f, &format!("{p}/self_attention/linear_1"), dtype)?,
                    mlp: Mlp::load(f, &format!("{p}/ffn"), dtype)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let decoder = (0..dims.decoder_layers)
            .map(|i| {
                let p = format!("decoder/layer_{i}");
                Ok(DecoderLayer {
                    self_norm: Norm::load(f, &format!("{p}/self_attention/layer_norm"))?,
                    self_qkv: Linear::load(f, &format!("{p}/self_attention/linear_0"), dtype)?,
                    self_out: Linear::load(f, &format!("{p}/self_attention/linear_1"), dtype)?,
                    cross_norm: Norm::load(f, &format!("{p}/attention/layer_norm"))?,
                    cross_q: Linear::load(f, &format!("{p}/attention/linear_0"), dtype)?,
                    cross_kv: Linear::load(f, &format!("{p}/attention/linear_1"), dtype)?,
                    cross_out: Linear::load(f, &format!("{p}/attention/linear_2"), dtype)?,
                    mlp: Mlp::load(f, &format!("{p}/ffn"), dtype)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            dims,
            conv1: Conv::load(f, "encoder/conv1", 1)?,
            conv2: Conv::load(f, "encoder/conv2", 2)?,
            encoder_positions: f.f32("encoder/position_encodings/encodings")?,
            encoder,
            encoder_norm: Norm::load(f, "encoder/layer_norm")?,
            embeddings: QMatrix::from_f32(f.f32("decoder/embeddings/weight")?, dims.vocab, d, dtype)?,
            decoder_positions: f.f32("decoder/position_encodings/encodings")?,
            decoder,
            decoder_norm: Norm::load(f, "decoder/layer_norm")?,
        })
    }

    /// The encoder output `[frames / 2, d_model]` for a log-mel window `[n_mels, frames]`
    /// (mel-major, as `zhiku_media::mel` writes it; 3000 frames for the models' 30 s).
    pub fn encode(&self, mel: &[f32], frames: usize) -> Result<Vec<f32>> {
        let WhisperDims { n_mels, d_model: d, .. } = self.dims;
        if mel.len() != n_mels * frames {
            bail!("the spectrogram holds {} values, not {n_mels} bands x {frames} frames", mel.len())
        }
        if frames.div_ceil(2) > self.dims.audio_ctx {
            bail!("{frames} frames exceed the encoder's {} positions", self.dims.audio_ctx)
        }
        let (h1, len1) = self.conv1.forward(frames, n_mels, |t, c| mel[c * frames + t]);
        let (mut x, n) = self.conv2.forward(len1, d, |t, c| h1[t * d + c]);
        add(&mut x, &self.encoder_positions[..n * d]);
        let heads = self.dims.encoder_heads;
        let scale = 1.0 / ((d / heads) as f32).sqrt();
        let mut ctx = vec![0f32; n * d];
        for layer in &self.encoder {
            let qkv = layer.qkv.forward(&layer.norm.forward(&x), n);
            attention_rows(&qkv, 3 * d, &qkv[d..], &qkv[2 * d..], 3 * d, n, n, heads, d / heads, scale, QueryMask::None, &mut ctx);
            add(&mut x, &layer.out.forward(&ctx, n));
            layer.mlp.residual(&mut x, n);
        }
        Ok(self.encoder_norm.forward(&x))
    }

    /// A decoding state for one window's encoder output (`[positions, d_model]`).
    pub fn start(&self, encoded: &[f32]) -> Result<DecoderState> {
        let d = self.dims.d_model;
        if encoded.is_empty() || !encoded.len().is_multiple_of(d) {
            bail!("the encoder output holds {} values, not a whole number of {d}-wide rows", encoded.len())
        }
        let n = encoded.len() / d;
        let (mut cross_k, mut cross_v) = (Vec::new(), Vec::new());
        for layer in &self.decoder {
            let kv = layer.cross_kv.forward(encoded, n);
            let (mut k, mut v) = (Vec::with_capacity(n * d), Vec::with_capacity(n * d));
            for row in kv.chunks_exact(2 * d) {
                k.extend_from_slice(&row[..d]);
                v.extend_from_slice(&row[d..]);
            }
            cross_k.push(k);
            cross_v.push(v);
        }
        let layers = self.decoder.len();
        Ok(DecoderState { cross_k, cross_v, audio_len: n, self_k: vec![Vec::new(); layers], self_v: vec![Vec::new(); layers], len: 0 })
    }

    /// Runs `tokens` (following those already in `state`) through the decoder and returns the
    /// logits of the last one (`vocab` values), or of every one with `all_logits`.
    pub fn decode(&self, state: &mut DecoderState, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let d = self.dims.d_model;
        let n = tokens.len();
        if n == 0 {
            bail!("nothing to decode")
        }
        if state.len + n > self.dims.text_ctx {
            bail!("{} tokens exceed the decoder's {} positions", state.len + n, self.dims.text_ctx)
        }
        let mut x = vec![0f32; n * d];
        for (r, (&t, row)) in tokens.iter().zip(x.chunks_exact_mut(d)).enumerate() {
            if t as usize >= self.dims.vocab {
                bail!("token {t} is outside the vocabulary of {}", self.dims.vocab)
            }
            self.embeddings.row(t as usize, row)?;
            add(row, &self.decoder_positions[(state.len + r) * d..(state.len + r + 1) * d]);
        }
        let heads = self.dims.decoder_heads;
        let scale = 1.0 / ((d / heads) as f32).sqrt();
        let mut ctx = vec![0f32; n * d];
        let first = state.len;
        for (l, layer) in self.decoder.iter().enumerate() {
            let qkv = layer.self_qkv.forward(&layer.self_norm.forward(&x), n);
            for row in qkv.chunks_exact(3 * d) {
                state.self_k[l].extend_from_slice(&row[d..2 * d]);
                state.self_v[l].extend_from_slice(&row[2 * d..]);
            }
            let total = first + n;
            attention_rows(&qkv, 3 * d, &state.self_k[l], &state.self_v[l], d, n, total, heads, d / heads, scale, QueryMask::Causal { first }, &mut ctx);
            add(&mut x, &layer.self_out.forward(&ctx, n));
            let q = layer.cross_q.forward(&layer.cross_norm.forward(&x), n);
            attention_rows(&q, d, &state.cross_k[l], &state.cross_v[l], d, n, state.audio_len, heads, d / heads, scale, QueryMask::None, &mut ctx);
            add(&mut x, &layer.cross_out.forward(&ctx, n));
            layer.mlp.residual(&mut x, n);
        }
        state.len += n;
        let rows = if all_logits { n } else { 1 };
        let last = self.decoder_norm.forward(&x[(n - rows) * d..]);
        let mut logits = vec![0f32; rows * self.dims.vocab];
        self.embeddings.matmul(&last, rows, &mut logits);
        Ok(logits)
    }
}

impl Whisper {
    /// `n` hypotheses continuing from `state` (whose prompt has been decoded).
    pub fn beams(&self, state: &DecoderState, n: usize) -> Beams {
        Beams { self_k: vec![state.self_k.clone(); n], self_v: vec![state.self_v.clone(); n], len: state.len }
    }

    /// Feeds `tokens[i]` to hypothesis `i` and returns every hypothesis's logits (`[n, vocab]`).
    /// `state` supplies the window's cross-attention; its own cache is not touched.
    pub fn decode_beams(&self, state: &DecoderState, beams: &mut Beams, tokens: &[u32]) -> Result<Vec<f32>> {
        let d = self.dims.d_model;
        let n = tokens.len();
        if n == 0 || n != beams.count() {
            bail!("{n} tokens for {} hypotheses", beams.count())
        }
        if beams.len + 1 > self.dims.text_ctx {
            bail!("{} tokens exceed the decoder's {} positions", beams.len + 1, self.dims.text_ctx)
        }
        let pos = &self.decoder_positions[beams.len * d..(beams.len + 1) * d];
        let mut x = vec![0f32; n * d];
        for (&t, row) in tokens.iter().zip(x.chunks_exact_mut(d)) {
            if t as usize >= self.dims.vocab {
                bail!("token {t} is outside the vocabulary of {}", self.dims.vocab)
            }
            self.embeddings.row(t as usize, row)?;
            add(row, pos);
        }
        let heads = self.dims.decoder_heads;
        let scale = 1.0 / ((d / heads) as f32).sqrt();
        let mut ctx = vec![0f32; n * d];
        let total = beams.len + 1;
        for (l, layer) in self.decoder.iter().enumerate() {
            let qkv = layer.self_qkv.forward_rows(&layer.self_norm.forward(&x), n);
            for (b, row) in qkv.chunks_exact(3 * d).enumerate() {
                beams.self_k[b][l].extend_from_slice(&row[d..2 * d]);
                beams.self_v[b][l].extend_from_slice(&row[2 * d..]);
            }
            // Each hypothesis attends to its own cache (its new token sees all of it).
            let caches: Vec<(&[f32], &[f32])> = (0..n).map(|b| (beams.self_k[b][l].as_slice(), beams.self_v[b][l].as_slice())).collect();
            attention_per_cache(&qkv, 3 * d, &caches, d, total, heads, d / heads, scale, &mut ctx);
            add(&mut x, &layer.self_out.forward_rows(&ctx, n));
            let q = layer.cross_q.forward_rows(&layer.cross_norm.forward(&x), n);
            attention_rows(&q, d, &state.cross_k[l], &state.cross_v[l], d, n, state.audio_len, heads, d / heads, scale, QueryMask::None, &mut ctx);
            add(&mut x, &layer.cross_out.forward_rows(&ctx, n));
            layer.mlp.residual_rows(&mut x, n);
        }
        beams.len += 1;
        let last = self.decoder_norm.forward(&x);
        let mut logits = vec![0f32; n * self.dims.vocab];
        self.embeddings.matmul_rows(&last, n, &mut logits);
        Ok(logits)
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
