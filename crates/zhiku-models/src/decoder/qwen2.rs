//! Qwen2 / Qwen2.5: a Llama-shaped decoder with biases on the query, key and value
//! projections, rotate-half RoPE with a large base (10⁶), grouped-query attention, and (for
//! the small sizes) the output projection tied to the embedding. GGUF stores it unpermuted.

use super::{gguf_config, Arch, DecoderConfig};
use crate::gguf::GgufFile;
use anyhow::Result;

pub fn config(file: &GgufFile) -> Result<DecoderConfig> {
    // Biases are picked up from the file (attn_{q,k,v}.bias) by the loader.
    gguf_config(file, Arch::Qwen2)
}
