//! Generation speed: prompt processing, decoding at batch 1 and aggregate decoding with
//! several concurrent streams, with the bytes of weights each decoding step reads (decoding is
//! bound by memory bandwidth, measured here too).

use crate::LanguageModel;
use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;
use zhiku_models::decoder::{Logits, Step};

#[derive(Debug, Clone, Serialize)]
pub struct GenerateBench {
    pub prompt_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub prefill_gflops: f64,
    /// (streams, aggregate decoded tokens per second)
    pub decode: Vec<(usize, f64)>,
    pub weight_bytes_per_token: usize,
    /// Weight bytes read per second at batch 1.
    pub decode_gb_per_s: f64,
    pub memory_gb_per_s: f64,
    /// Resident memory after the measurements (before the bandwidth test's buffer), MiB.
    pub rss_mib: Option<f64>,
    pub file_mib: f64,
}

/// Current resident set size in MiB (Linux).
pub fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Token ids for synthetic prompts: the encoding of ordinary text, repeated to length.
fn prompt(lm: &LanguageModel, len: usize) -> Result<Vec<u32>> {
    let base = lm.encode("Knowledge platforms publish courses, articles and audiobooks. 知识平台发布课程、文章和有声书。 ", false)?;
    Ok(base.iter().cycle().take(len).copied().collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Tokens per second of one prompt of `len` tokens (median of `reps`, after a warm-up).
pub fn prefill(lm: &LanguageModel, len: usize, reps: usize) -> Result<f64> {
    let ids = prompt(lm, len)?;
    let mut times = Vec::new();
    for r in 0..=reps {
        let mut cache = lm.model.new_cache(len);
        let mut steps = Vec::new();
        for chunk in ids.chunks(crate::PREFILL_CHUNK) {
            steps.push(chunk);
        }
        let t = Instant::now();
        for (i, chunk) in steps.iter().enumerate() {
            let logits = if i + 1 == steps.len() { Logits::Last } else { Logits::None };
            lm.model.forward(&mut [Step { cache: &mut cache, tokens: chunk, logits }])?;
        }
        if r > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(len as f64 / median(times))
}

/// Aggregate tokens per second of `streams` sequences decoding together for `tokens` steps
/// (after a 16-token prompt each; greedy; the logits' argmax is fed back).
pub fn decode(lm: &LanguageModel, streams: usize, tokens: usize) -> Result<f64> {
    let ids = prompt(lm, 16 + streams)?;
    let mut caches: Vec<_> = (0..streams).map(|_| lm.model.new_cache(16 + tokens + 1)).collect();
    let mut last: Vec<u32> = Vec::with_capacity(streams);
    {
        let mut steps: Vec<Step> = caches.iter_mut().enumerate().map(|(i, c)| Step { cache: c, tokens: &ids[i..i + 16], logits: Logits::Last }).collect();
        for l in lm.model.forward(&mut steps)? {
            last.push(crate::sampling::argmax(&l));
        }
    }
    let t = Instant::now();
    for _ in 0..tokens {
        let toks = last.clone();
        let mut steps: Vec<Step> = caches.iter_mut().zip(&toks).map(|(c, t)| Step { cache: c, tokens: std::slice::from_ref(t), logits: Logits::Last }).collect();
        last = lm.model.forward(&mut steps)?.iter().map(|l| crate::sampling::argmax(l)).collect();
    }
    Ok((streams * tokens) as f64 / t.elapsed().as_secs_f64())
}

/// Read bandwidth of main memory: every thread sums its part of a 1 GiB buffer (best of 3).
pub fn memory_bandwidth_gb_s() -> f64 {
    let n = (1usize << 30) / 8;
    let buf: Vec<u64> = (0..n as u64).collect();
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let s: u64 = buf.par_chunks(1 << 16).map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b))).reduce(|| 0, u64::wrapping_add);
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((n * 8) as f64 / secs / 1e9);
    }
    best
}

pub fn run(lm: &LanguageModel, prompt_len: usize, streams: &[usize], tokens: usize, reps: usize) -> Result<GenerateBench> {
    let prefill_tps = prefill(lm, prompt_len, reps)?;
    let mut dec = Vec::new();
    for &s in streams {
        dec.push((s, decode(lm, s, tokens)?));
    }
    let rss = rss_mib();
    let bytes = lm.model.weight_bytes_per_token();
    let single = dec.iter().find(|(s, _)| *s == 1).map(|d| d.1).unwrap_or(0.0);
    // Prompt processing computes no output projection except for the last token.
    let c = lm.model.config();
    let macs = lm.model.config().macs_per_token() - c.vocab * c.hidden;
    Ok(GenerateBench {
        prompt_tokens: prompt_len,
        prefill_tokens_per_s: prefill_tps,
        prefill_gflops: 2.0 * macs as f64 * prefill_tps / 1e9,
        decode: dec,
        weight_bytes_per_token: bytes,
        decode_gb_per_s: bytes as f64 * single / 1e9,
        memory_gb_per_s: memory_bandwidth_gb_s(),
        rss_mib: rss,
        file_mib: lm.file_size as f64 / (1 << 20) as f64,
    })
}
