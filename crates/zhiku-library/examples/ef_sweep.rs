//! Recall@10 and latency of a library's HNSW index at several search widths (efSearch), on the
//! vectors and queries `bench/library_scale.sh` leaves in its output folder: what
//! `hnsw::ef_search` is chosen from.
//!
//!   cargo run --release -p zhiku-library --example ef_sweep -- .cache/bench/scale-1000000 [256,384,512,768]

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Instant;
use zhiku_library::hnsw::Hnsw;

fn read_f32(path: &Path, dims: usize) -> Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() % (4 * dims) != 0 {
        bail!("{} is not rows of {dims} floats", path.display())
    }
    Ok(bytes.chunks_exact(4 * dims).map(|r| r.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()).collect())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().context("usage: ef_sweep OUT_DIR [EF,EF,...]")?);
    let efs: Vec<usize> = args.next().unwrap_or_else(|| "256,384,512,768".into()).split(',').map(|e| e.parse()).collect::<Result<_, _>>()?;
    let index = Hnsw::load(&dir.join("library/vectors.hnsw"))?;
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("zhiku.json"))?)?;
    let dims = summary["dimensions"].as_u64().context("zhiku.json has no dimensions")? as usize;
    let vectors = read_f32(&dir.join("vectors.f32"), dims)?;
    let queries = read_f32(&dir.join("queries.f32"), dims)?;
    // Exact top 10 by brute force; chunk ids are 1..=N in insertion order.
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f32>();
    let exact: Vec<Vec<i64>> = queries
        .iter()
        .map(|q| {
            let mut best: Vec<(f32, i64)> = Vec::with_capacity(11);
            for (i, v) in vectors.iter().enumerate() {
                let s = dot(q, v);
                if best.len() < 10 || s > best[9].0 {
                    best.push((s, i as i64 + 1));
                    best.sort_by(|x, y| y.0.total_cmp(&x.0));
                    best.truncate(10);
                }
            }
            best.into_iter().map(|b| b.1).collect()
        })
        .collect();
    println!("{} vectors, {} queries", index.len(), queries.len());
    println!("| efSearch | recall@10 | p50 ms | p99 ms |\n|---|---|---|---|");
    for ef in efs {
        let mut ms = Vec::new();
        let mut found = 0;
        for (q, ex) in queries.iter().zip(&exact) {
            let t = Instant::now();
            let hits = index.search(q, 10, ef);
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            found += hits.iter().filter(|(id, _)| ex.contains(id)).count();
        }
        ms.sort_by(f64::total_cmp);
        let at = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
        println!("| {ef} | {:.3} | {:.2} | {:.2} |", found as f64 / (10 * queries.len()) as f64, at(0.5), at(0.99));
    }
    Ok(())
}
