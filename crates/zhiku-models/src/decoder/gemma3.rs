//! Gemma 3 (text): compared with Llama it
//! - scales the token embeddings by √hidden;
//! - normalises each query and key head (RMSNorm over the head) before RoPE;
//! - normalises the attention and feed-forward outputs again before each residual add;
//! - uses GELU (tanh approximation) in the gated feed-forward;
//! - alternates five sliding-window layers (window from the file, RoPE base 10 000) with one
//!   global layer (RoPE base from the file, 10⁶);
//! - ties the output projection to the embedding.
//!
//! Gemma's RMSNorm multiplies by (1 + w); llama.cpp's converter stores w + 1, so the GGUF
//! weights are used as they are. llama.cpp's file does not record the layer pattern or the
//! local RoPE base; both are fixed for the family (as llama.cpp fixes them).

use super::{gguf_config, Activation, Arch, DecoderConfig};
use crate::gguf::GgufFile;
use anyhow::Result;

/// One global-attention layer in every this many.
pub const SLIDING_PATTERN: usize = 6;
pub const LOCAL_ROPE_THETA: f64 = 10000.0;

/// The switches every Gemma 3 sets, whatever file it comes from.
pub fn set_family(c: &mut DecoderConfig) {
    c.embed_scale = Some((c.hidden as f32).sqrt());
    c.activation = Activation::GeluTanh;
    c.qk_norm = true;
    c.post_norms = true;
}

pub fn config(file: &GgufFile) -> Result<DecoderConfig> {
    let mut c = gguf_config(file, Arch::Gemma3)?;
    set_family(&mut c);
    c.sliding_window = file.get_u64("gemma3.attention.sliding_window").map(|w| w as usize);
    c.rope_theta_local = LOCAL_ROPE_THETA;
    if c.sliding_window.is_some() {
        c.sliding_layers = (0..c.n_layers).map(|i| (i + 1) % SLIDING_PATTERN != 0).collect();
    }
    Ok(c)
}
