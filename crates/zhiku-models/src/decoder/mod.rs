//! Decoder-only language models (Qwen2, Llama, Gemma 3) for generation.
//!
//! One forward pass serves prompt processing, decoding and continuous batching alike: it takes
//! a list of [`Step`]s, each some new tokens of one sequence with that sequence's [`KvCache`],
//! runs all their tokens through every matrix product as one batch of rows, and attends each
//! row to its own sequence's cache. A prompt is one step of many tokens; a decoding round is
//! one step of one token per running sequence.
//!
//! The architectures differ in a handful of switches, gathered in [`DecoderConfig`]; each
//! architecture's file (`qwen2.rs`, `llama.rs`, `gemma3.rs`) reads its hyperparameters and
//! says which switches it sets and why. Weights stay in their file's block formats
//! ([`QMatrix`]); activations are f32.

pub mod adapter;
pub mod export;
pub mod gemma3;
pub mod graph;
pub mod hf;
pub mod llama;
pub mod lora;
pub mod qwen2;

use crate::gguf::GgufFile;
use crate::qmatmul::{QMatrix, QuantizedRows};
use anyhow::{bail, Context, Result};
use crate::slice_ops::{self as ops, RopeStyle, RopeTable};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Qwen2,
    Llama,
    Gemma3,
}

impl Arch {
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "qwen2" => Self::Qwen2,
            "llama" => Self::Llama,
            "gemma3" => Self::Gemma3,
            other => bail!("architecture '{other}' is not supported (supported: qwen2, llama, gemma3)"),
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Qwen2 => "qwen2",
            Self::Llama => "llama",
            Self::Gemma3 => "gemma3",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) · up` (Qwen2, Llama).
    Silu,
    /// `gelu_tanh(gate) · up` (Gemma).
    GeluTanh,
}

/// Everything the shared forward pass needs to know about an architecture.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    pub arch: Arch,
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_theta: f64,
    pub rope_style: RopeStyle,
    /// Sliding-window layers: the window and the base frequency of their rotary embedding.
    pub sliding_window: Option<usize>,
    pub rope_theta_local: f64,
    /// Which layers use the sliding window (Gemma 3: five of every six).
    pub sliding_layers: Vec<bool>,
    pub attn_scale: f32,
    /// Multiplies the token embeddings (Gemma: √hidden).
    pub embed_scale: Option<f32>,
    pub activation: Activation,
    /// RMSNorm of each query and key head before the rotary embedding (Gemma 3).
    pub qk_norm: bool,
    /// RMSNorm of the attention and feed-forward outputs before the residual add (Gemma 3).
    pub post_norms: bool,
}

/// The sizes of a decoder.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
}

impl DecoderConfig {
    /// A GGUF file's configuration (its architecture from `general.architecture`).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = Arch::from_name(file.architecture()?)?;
        let config = match arch {
            Arch::Qwen2 => qwen2::config(file)?,
            Arch::Llama => llama::config(file)?,
            Arch::Gemma3 => gemma3::config(file)?,
        };
        if file.has_tensor("rope_freqs.weight") {
            bail!("{}: per-dimension rotary frequencies (rope_freqs, Llama 3 scaling) are not supported", file.path().display())
        }
        Ok(config)
    }

    /// A plain decoder of these sizes (no sliding window, SiLU, rotate-half RoPE, no extra
    /// norms); each architecture adjusts what differs.
    pub fn new(arch: Arch, d: Dims, rms_eps: f32, rope_theta: f64) -> Self {
        Self {
            arch,
            n_layers: d.n_layers,
            hidden: d.hidden,
            ffn: d.ffn,
            n_heads: d.n_heads,
            n_kv_heads: d.n_kv_heads,
            head_dim: d.head_dim,
            vocab: d.vocab,
            context_length: d.context_length,
            rms_eps,
            rope_theta,
            rope_style: RopeStyle::Halves,
            sliding_window: None,
            rope_theta_local: 10000.0,
            sliding_layers: vec![false; d.n_layers],
            attn_scale: 1.0 / (d.head_dim as f32).sqrt(),
            embed_scale: None,
            activation: Activation::Silu,
            qk_norm: false,
            post_norms: false,
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    wo: QMatrix,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    w_gate: QMatrix,
    w_up: QMatrix,
    w_down: QMatrix,
    post_ffn_norm: Option<Vec<f32>>,
}

/// A decoder model with its weights.
pub struct DecoderModel {
    pub config: DecoderConfig,
    embed: QMatrix,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    /// `None`: the output projection is the token embedding (tied weights).
    lm_head: Option<QMatrix>,
    rope: RopeTable,
    rope_local: Option<RopeTable>,
    /// Products in f32 over dequantised weights instead of the 8-bit activation kernels:
    /// slower, and equal to transformers' arithmetic (for checking against it).
    pub exact: bool,
    /// LoRA adapters a sequence may run with (its cache says which).
    adapters: Vec<lora::LoraWeights>,
}

/// Keys and values of one sequence, preallocated for `capacity` positions: in host memory
/// `[layer][position][kv_heads · head_dim]` for [`DecoderModel`], or as tensors on the
/// device for [`graph::GraphDecoder`].
pub struct KvCache {
    kv_dim: usize,
    capacity: usize,
    len: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    device: Option<DeviceKv>,
    /// The LoRA adapter this sequence runs with (an index into the model's), if any.
    adapter: Option<usize>,
}

/// A device cache: per layer, keys and values `[kv_heads, capacity, head_dim]`.
pub struct DeviceKv {
    pub k: Vec<candle_core::Tensor>,
    pub v: Vec<candle_core::Tensor>,
}

/// What generation needs from a decoder, whichever engine runs it: [`DecoderModel`] (CPU
/// slice code, quantised kernels) or [`graph::GraphDecoder`] (candle operations on a device).
pub trait CausalLm: Send + Sync {
    fn config(&self) -> &DecoderConfig;
    /// An empty cache for up to `capacity` positions (at most the context length).
    fn new_cache(&self, capacity: usize) -> KvCache;
    /// Runs each step's new tokens, appends them to the step's cache and returns the logits
    /// each step asked for (`vocab` values per row, rows in order).
    fn forward(&self, steps: &mut [Step]) -> Result<Vec<Vec<f32>>>;
    fn kv_bytes_per_position(&self) -> usize;
    /// Bytes of weights one decoding step reads.
    fn weight_bytes_per_token(&self) -> usize;
    /// Products in f32 over dequantised weights (equal to transformers' arithmetic) instead of
    /// faster approximations, where the engine has any.
    fn set_exact(&mut self, exact: bool);
    /// Where it runs, in words.
    fn engine(&self) -> String;
    /// Adds a LoRA adapter over the same base weights; returns its index for
    /// [`KvCache::with_adapter`].
    fn add_adapter(&mut self, _adapter: lora::LoraWeights) -> Result<usize> {
        bail!("this engine ({}) does not run LoRA adapters; use the CPU engine", self.engine())
    }
}

impl DecoderConfig {
    /// Multiply-adds per token in the matrix products (attention excluded).
    pub fn macs_per_token(&self) -> usize {
        let per_layer = self.hidden * (self.n_heads + 2 * self.n_kv_heads) * self.head_dim + self.n_heads * self.head_dim * self.hidden + 3 * self.hidden * self.ffn;
        self.n_layers * per_layer + self.vocab * self.hidden
    }
}

impl KvCache {
    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Forgets positions from `len` on (to reuse a prefix, or to retry).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
    pub fn bytes(&self) -> usize {
        let device: usize = self.device.as_ref().map_or(0, |d| d.k.iter().chain(&d.v).map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum());
        (self.k.len() + self.v.len()) * 4 + device
    }
    /// This cache's sequence runs with adapter `adapter` (from [`CausalLm::add_adapter`]).
    pub fn with_adapter(mut self, adapter: Option<usize>) -> Self {
        self.adapter = adapter;
        self
    }
    pub fn adapter(&self) -> Option<usize> {
        self.adapter
    }
    fn offset(&self, layer: usize, pos: usize) -> usize {
        (layer * self.capacity + pos) * self.kv_dim
    }
}

/// Which logits a step wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

/// New tokens of one sequence.
pub struct Step<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    pub logits: Logits,
}

impl DecoderModel {
    /// Loads a GGUF file's model (its architecture from `general.architecture`).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let config = DecoderConfig::from_gguf(file)?;
        Self::load(config, file).with_context(|| format!("loading {}", file.path().display()))
    }

    /// Loads a Hugging Face folder (`config.json`, `model.safetensors` in f32, bf16 or f16).
    pub fn from_hf_folder(dir: &std::path::Path) -> Result<Self> {
        let (config, source) = hf::open(dir)?;
        Self::load(config, &source).with_context(|| format!("loading {}", dir.display()))
    }

    /// Builds the model from tensors named as in GGUF files (`blk.N.attn_q.weight`, ...).
    fn load(config: DecoderConfig, src: &dyn WeightSource) -> Result<Self> {
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<QMatrix> {
            let m = src.matrix(name)?;
            if (m.rows, m.cols) != (rows, cols) {
                bail!("tensor '{name}' is {}x{}, expected {rows}x{cols} for this configuration", m.rows, m.cols)
            }
            Ok(m)
        };
        let vector = |name: &str, len: usize| -> Result<Vec<f32>> {
            let v = src.vector(name)?;
            if v.len() != len {
                bail!("tensor '{name}' has {} values, expected {len}", v.len())
            }
            Ok(v)
        };
        let optional = |name: &str, len: usize| -> Result<Option<Vec<f32>>> { if src.has(name) { vector(name, len).map(Some) } else { Ok(None) } };
        let c = &config;
        let (q_dim, kv_dim) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let embed = matrix("token_embd.weight", c.vocab, c.hidden)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let layer = Layer {
                attn_norm: vector(&p("attn_norm.weight"), c.hidden)?,
                wq: matrix(&p("attn_q.weight"), q_dim, c.hidden)?,
                wk: matrix(&p("attn_k.weight"), kv_dim, c.hidden)?,
                wv: matrix(&p("attn_v.weight"), kv_dim, c.hidden)?,
                wo: matrix(&p("attn_output.weight"), c.hidden, q_dim)?,
                bq: optional(&p("attn_q.bias"), q_dim)?,
                bk: optional(&p("attn_k.bias"), kv_dim)?,
                bv: optional(&p("attn_v.bias"), kv_dim)?,
                q_norm: if c.qk_norm { Some(vector(&p("attn_q_norm.weight"), c.head_dim)?) } else { None },
                k_norm: if c.qk_norm { Some(vector(&p("attn_k_norm.weight"), c.head_dim)?) } else { None },
                post_attn_norm: if c.post_norms { Some(vector(&p("post_attention_norm.weight"), c.hidden)?) } else { None },
                ffn_norm: vector(&p("ffn_norm.weight"), c.hidden)?,
                w_gate: matrix(&p("ffn_gate.weight"), c.ffn, c.hidden)?,
                w_up: matrix(&p("ffn_up.weight"), c.ffn, c.hidden)?,
                w_down: matrix(&p("ffn_down.weight"), c.hidden, c.ffn)?,
                post_ffn_norm: if c.post_norms { Some(vector(&p("post_ffw_norm.weight"), c.hidden)?) } else { None },
            };
            layers.push(layer);
        }
        let final_norm = vector("output_norm.weight", c.hidden)?;
        let lm_head = if src.has("output.weight") { Some(matrix("output.weight", c.vocab, c.hidden)?) } else { None };
        Ok(Self::assemble(config, embed, layers, final_norm, lm_head))
    }

    fn assemble(config: DecoderConfig, embed: QMatrix, layers: Vec<Layer>, final_norm: Vec<f32>, lm_head: Option<QMatrix>) -> Self {
        let rope = RopeTable::new(config.head_dim, config.rope_theta, config.context_length);
        let rope_local = config.sliding_window.map(|_| RopeTable::new(config.head_dim, config.rope_theta_local, config.context_length));
        Self { config, embed, layers, final_norm, lm_head, rope, rope_local, exact: false, adapters: Vec::new() }
    }

    /// Weights in the model (a tied output projection counted once).
    pub fn parameter_count(&self) -> usize {
        let m = |q: &QMatrix| q.rows * q.cols;
        let v = |x: &Option<Vec<f32>>| x.as_ref().map_or(0, Vec::len);
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].into_iter().map(m).sum::<usize>()
                    + l.attn_norm.len()
                    + l.ffn_norm.len()
                    + [&l.bq, &l.bk, &l.bv, &l.q_norm, &l.k_norm, &l.post_attn_norm, &l.post_ffn_norm].into_iter().map(v).sum::<usize>()
            })
            .sum();
        m(&self.embed) + self.lm_head.as_ref().map_or(0, m) + self.final_norm.len() + layers
    }

    /// An empty cache for up to `capacity` positions (at most the model's context length).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let c = &self.config;
        let capacity = capacity.min(c.context_length);
        let kv_dim = c.n_kv_heads * c.head_dim;
        let n = c.n_layers * capacity * kv_dim;
        KvCache { kv_dim, capacity, len: 0, k: vec![0f32; n], v: vec![0f32; n], device: None, adapter: None }
    }

    /// Bytes of KV cache one position takes.
    pub fn kv_bytes_per_position(&self) -> usize {
        2 * 4 * self.config.n_layers * self.config.n_kv_heads * self.config.head_dim
    }

    /// Bytes of weights one decoding step reads (every matrix once; the embedding only if it
    /// is also the output projection).
    pub fn weight_bytes_per_token(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].iter().map(|m| m.weight_bytes()).sum::<usize>())
            .sum();
        layers + self.lm_head.as_ref().unwrap_or(&self.embed).weight_bytes()
    }

    /// Quantises a shared input once when all the matrices reading it take the integer
    /// kernels (quantised weights, fewer rows than the GEMM path takes).
    fn quantize_if_needed(&self, h: &[f32], n: usize, cols: usize, ms: &[&QMatrix]) -> Option<QuantizedRows> {
        if !self.exact && n < crate::qmatmul::GEMM_ROWS && ms.iter().all(|m| !m.is_float()) {
            Some(QuantizedRows::new(h, n, cols))
        } else {
            None
        }
    }

    fn project(&self, m: &QMatrix, h: &[f32], n: usize, acts: Option<&QuantizedRows>, out: &mut [f32]) -> Result<()> {
        match acts {
            _ if self.exact => m.matmul_exact(h, n, out)?,
            Some(a) => m.matmul_quantized(a, out),
            None => m.matmul(h, n, out),
        }
        Ok(())
    }

    /// Runs new tokens of each step's sequence, appends their keys and values to the step's
    /// cache and returns the logits each step asked for (`vocab` values per row, rows in
    /// order).
    pub fn forward(&self, steps: &mut [Step]) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let (hidden, hd) = (c.hidden, c.head_dim);
        let (q_dim, kv_dim) = (c.n_heads * hd, c.n_kv_heads * hd);
        // Rows: every step's tokens in order; each row knows its step and position.
        let mut rows = Vec::new();
        for (si, s) in steps.iter().enumerate() {
            if s.tokens.is_empty() {
                bail!("a step has no tokens")
            }
            if s.cache.device.is_some() {
                bail!("this cache was made by another engine")
            }
            if s.cache.len + s.tokens.len() > s.cache.capacity {
                bail!(
                    "sequence of {} tokens does not fit its cache of {} positions (context length {})",
                    s.cache.len + s.tokens.len(),
                    s.cache.capacity,
                    c.context_length
                )
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                bail!("token id {t} is outside the vocabulary of {}", c.vocab)
            }
            if let Some(a) = s.cache.adapter {
                if a >= self.adapters.len() {
                    bail!("a sequence asks for adapter {a}; {} are loaded", self.adapters.len())
                }
            }
            for (i, _) in s.tokens.iter().enumerate() {
                rows.push((si, s.cache.len + i));
            }
        }
        let n = rows.len();
        // For each adapter in use, which rows run with it.
        let mut active: Vec<(usize, Vec<bool>)> = Vec::new();
        for (r, &(si, _)) in rows.iter().enumerate() {
            if let Some(a) = steps[si].cache.adapter {
                let at = match active.iter().position(|(x, _)| *x == a) {
                    Some(i) => i,
                    None => {
                        active.push((a, vec![false; n]));
                        active.len() - 1
                    }
                };
                active[at].1[r] = true;
            }
        }
        let lora = |li: usize, p: usize, input: &[f32], out: &mut [f32]| {
            for (a, flags) in &active {
                self.adapters[*a].add(li, p, input, out, flags);
            }
        };
        let mut x = vec![0f32; n * hidden];
        for (r, (si, pos)) in rows.iter().enumerate() {
            let tok = steps[*si].tokens[pos - steps[*si].cache.len];
            self.embed.row(tok as usize, &mut x[r * hidden..(r + 1) * hidden])?;
        }
        if let Some(s) = c.embed_scale {
            x.iter_mut().for_each(|v| *v *= s);
        }

        let mut h = vec![0f32; n * hidden];
        let mut q = vec![0f32; n * q_dim];
        let mut k = vec![0f32; n * kv_dim];
        let mut v = vec![0f32; n * kv_dim];
        let mut attn = vec![0f32; n * q_dim];
        let mut o = vec![0f32; n * hidden];
        let mut gate = vec![0f32; n * c.ffn];
        let mut up = vec![0f32; n * c.ffn];
        for (li, l) in self.layers.iter().enumerate() {
            ops::rms_norm(&x, &l.attn_norm, c.rms_eps, &mut h);
            let acts = self.quantize_if_needed(&h, n, hidden, &[&l.wq, &l.wk, &l.wv]);
            self.project(&l.wq, &h, n, acts.as_ref(), &mut q)?;
            self.project(&l.wk, &h, n, acts.as_ref(), &mut k)?;
            self.project(&l.wv, &h, n, acts.as_ref(), &mut v)?;
            lora(li, 0, &h, &mut q);
            lora(li, 1, &h, &mut k);
            lora(li, 2, &h, &mut v);
            add_bias(&mut q, l.bq.as_deref());
            add_bias(&mut k, l.bk.as_deref());
            add_bias(&mut v, l.bv.as_deref());
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                ops::rms_norm_in_place(&mut q, qn, c.rms_eps);
                ops::rms_norm_in_place(&mut k, kn, c.rms_eps);
            }
            let sliding = c.sliding_layers.get(li).copied().unwrap_or(false);
            let rope = if sliding { self.rope_local.as_ref().unwrap_or(&self.rope) } else { &self.rope };
            q.par_chunks_mut(q_dim).zip(k.par_chunks_mut(kv_dim)).zip(rows.par_iter()).for_each(|((qr, kr), &(_, pos))| {
                qr.chunks_exact_mut(hd).for_each(|hv| rope.apply(hv, pos, c.rope_style));
                kr.chunks_exact_mut(hd).for_each(|hv| rope.apply(hv, pos, c.rope_style));
            });
            for (r, &(si, pos)) in rows.iter().enumerate() {
                let cache = &mut *steps[si].cache;
                let off = cache.offset(li, pos);
                cache.k[off..off + kv_dim].copy_from_slice(&k[r * kv_dim..(r + 1) * kv_dim]);
                cache.v[off..off + kv_dim].copy_from_slice(&v[r * kv_dim..(r + 1) * kv_dim]);
            }
            let window = if sliding { c.sliding_window } else { None };
            {
                let caches: Vec<&KvCache> = steps.iter().map(|s| &*s.cache).collect();
                attn.par_chunks_mut(q_dim).zip(q.par_chunks(q_dim)).zip(rows.par_iter()).for_each_init(Vec::new, |scores, ((out, qr), &(si, pos))| {
                    attend(c, caches[si], li, pos, window, qr, out, scores)
                });
            }
            self.project(&l.wo, &attn, n, None, &mut o)?;
            lora(li, 3, &attn, &mut o);
            if let Some(w) = &l.post_attn_norm {
                ops::rms_norm_in_place(&mut o, w, c.rms_eps);
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            ops::rms_norm(&x, &l.ffn_norm, c.rms_eps, &mut h);
            let acts = self.quantize_if_needed(&h, n, hidden, &[&l.w_gate, &l.w_up]);
            self.project(&l.w_gate, &h, n, acts.as_ref(), &mut gate)?;
            self.project(&l.w_up, &h, n, acts.as_ref(), &mut up)?;
            lora(li, 4, &h, &mut gate);
            lora(li, 5, &h, &mut up);
            let act = match c.activation {
                Activation::Silu => ops::silu,
                Activation::GeluTanh => ops::gelu_tanh,
            };
            gate.par_chunks_mut(4096).zip(up.par_chunks(4096)).for_each(|(g, u)| g.iter_mut().zip(u).for_each(|(g, u)| *g = act(*g) * u));
            self.project(&l.w_down, &gate, n, None, &mut o)?;
            lora(li, 6, &gate, &mut o);
            if let Some(w) = &l.post_ffn_norm {
                ops::rms_norm_in_place(&mut o, w, c.rms_eps);
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        for s in steps.iter_mut() {
            s.cache.len += s.tokens.len();
        }

        // Logits for the rows asked for.
        let mut wanted = Vec::new();
        let mut first = 0;
        for s in steps.iter() {
            let len = s.tokens.len();
            match s.logits {
                Logits::None => {}
                Logits::Last => wanted.push(first + len - 1),
                Logits::All => wanted.extend(first..first + len),
            }
            first += len;
        }
        let m = wanted.len();
        let mut sel = vec![0f32; m * hidden];
        for (i, &r) in wanted.iter().enumerate() {
            sel[i * hidden..(i + 1) * hidden].copy_from_slice(&x[r * hidden..(r + 1) * hidden]);
        }
        ops::rms_norm_in_place(&mut sel, &self.final_norm, c.rms_eps);
        let mut logits = vec![0f32; m * c.vocab];
        self.project(self.lm_head.as_ref().unwrap_or(&self.embed), &sel, m, None, &mut logits)?;
        Ok(logits.chunks_exact(c.vocab.max(1)).map(<[f32]>::to_vec).collect())
    }
}

impl CausalLm for DecoderModel {
    fn config(&self) -> &DecoderConfig {
        &self.config
    }
    fn new_cache(&self, capacity: usize) -> KvCache {
        DecoderModel::new_cache(self, capacity)
    }
    fn forward(&self, steps: &mut [Step]) -> Result<Vec<Vec<f32>>> {
        DecoderModel::forward(self, steps)
    }
    fn kv_bytes_per_position(&self) -> usize {
        DecoderModel::kv_bytes_per_position(self)
    }
    fn weight_bytes_per_token(&self) -> usize {
        DecoderModel::weight_bytes_per_token(self)
    }
    fn set_exact(&mut self, exact: bool) {
        self.exact = exact;
    }
    fn engine(&self) -> String {
        format!("cpu ({:?} kernels)", crate::qmatmul::kernel())
    }
    fn add_adapter(&mut self, adapter: lora::LoraWeights) -> Result<usize> {
        if let Some(i) = self.adapters.iter().position(|a| a.name == adapter.name) {
            bail!("an adapter named {} is already loaded (index {i})", adapter.name)
        }
        self.adapters.push(adapter);
        Ok(self.adapters.len() - 1)
    }
}

fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        x.chunks_exact_mut(b.len()).for_each(|r| r.iter_mut().zip(b).for_each(|(v, b)| *v += b));
    }
}

/// One row's attention over its sequence's cache (causal; within the window if sliding).
#[allow(clippy::too_many_arguments)]
fn attend(c: &DecoderConfig, cache: &KvCache, layer: usize, pos: usize, window: Option<usize>, q: &[f32], out: &mut [f32], scores: &mut Vec<f32>) {
    let hd = c.head_dim;
    let group = c.n_heads / c.n_kv_heads;
    let start = window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let len = pos + 1 - start;
    scores.resize(len, 0.0);
    let base = cache.offset(layer, 0);
    for h in 0..c.n_heads {
        let kvh = h / group;
        let qh = &q[h * hd..(h + 1) * hd];
        for (j, s) in scores.iter_mut().enumerate() {
            let off = base + (start + j) * cache.kv_dim + kvh * hd;
            *s = ops::dot(qh, &cache.k[off..off + hd]) * c.attn_scale;
        }
        ops::softmax(scores);
        let oh = &mut out[h * hd..(h + 1) * hd];
        oh.iter_mut().for_each(|v| *v = 0.0);
        for (j, &w) in scores.iter().enumerate() {
            let off = base + (start + j) * cache.kv_dim + kvh * hd;
            ops::axpy(w, &cache.v[off..off + hd], oh);
        }
    }
}

/// Where a model's tensors come from, by their GGUF names.
pub trait WeightSource {
    fn has(&self, name: &str) -> bool;
    fn matrix(&self, name: &str) -> Result<QMatrix>;
    fn vector(&self, name: &str) -> Result<Vec<f32>>;
}

impl WeightSource for GgufFile {
    fn has(&self, name: &str) -> bool {
        self.has_tensor(name)
    }
    fn matrix(&self, name: &str) -> Result<QMatrix> {
        QMatrix::from_gguf(self.tensor(name)?)
    }
    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        self.tensor(name)?.to_f32()
    }
}

/// Hyperparameters every architecture stores under `{arch}.*` in GGUF metadata, with the
/// plain choices (no sliding window, SiLU, rotate-half RoPE); each architecture's `config`
/// adjusts what differs.
fn gguf_config(file: &GgufFile, arch: Arch) -> Result<DecoderConfig> {
    let a = arch.name();
    let key = |k: &str| format!("{a}.{k}");
    let hidden = file.require_u64(&key("embedding_length"))? as usize;
    let n_heads = file.require_u64(&key("attention.head_count"))? as usize;
    let n_kv_heads = file.get_u64(&key("attention.head_count_kv")).unwrap_or(n_heads as u64) as usize;
    if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        bail!("{} query heads cannot share {} key/value heads", n_heads, n_kv_heads)
    }
    let head_dim = file.get_u64(&key("attention.key_length")).map(|v| v as usize).unwrap_or(hidden / n_heads);
    let vocab = match file.get_u64(&key("vocab_size")) {
        Some(v) => v as usize,
        None => file.tensor("token_embd.weight")?.info.matrix_shape().0,
    };
    let n_layers = file.require_u64(&key("block_count"))? as usize;
    let rot = file.get_u64(&key("rope.dimension_count")).map(|v| v as usize).unwrap_or(head_dim);
    if rot != head_dim {
        bail!("partial rotary embeddings ({rot} of {head_dim} dimensions) are not supported")
    }
    if let Some(t) = file.get_str(&key("rope.scaling.type")) {
        if t != "none" {
            bail!("rotary scaling '{t}' is not supported")
        }
    }
    let dims = Dims {
        n_layers,
        hidden,
        ffn: file.require_u64(&key("feed_forward_length"))? as usize,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab,
        context_length: file.require_u64(&key("context_length"))? as usize,
    };
    let rms_eps = file.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6) as f32;
    Ok(DecoderConfig::new(arch, dims, rms_eps, file.get_f64(&key("rope.freq_base")).unwrap_or(10000.0)))
}
