//! Llama (SmolLM2, TinyLlama, ...): RMSNorm, SwiGLU feed-forward, grouped-query attention,
//! no biases. llama.cpp's converter permutes the rows of the query and key projections so that
//! its RoPE can rotate adjacent pairs (2i, 2i+1); transformers rotates (i, i + d/2). Reading a
//! GGUF we therefore rotate interleaved pairs, which gives transformers' results exactly.

use super::{gguf_config, Arch, DecoderConfig};
use crate::slice_ops::RopeStyle;
use crate::gguf::GgufFile;
use anyhow::Result;

pub fn config(file: &GgufFile) -> Result<DecoderConfig> {
    let mut c = gguf_config(file, Arch::Llama)?;
    c.rope_style = RopeStyle::Interleaved;
    Ok(c)
}
