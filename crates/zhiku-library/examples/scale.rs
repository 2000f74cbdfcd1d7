//! The library at scale (run by `bench/library_scale.sh`): N synthetic chunks through the real
//! `Library` (SQLite + tantivy + our HNSW), then query latency per mode, HNSW recall@10 against
//! exact search, memory and disk; the same vectors and queries are written out for FAISS.
//!
//! Chunks are three sentences drawn from a pool of real news sentences; a chunk's vector is the
//! normalised sum of its sentences' vectors under the real encoder (embedding a million chunks
//! would take hours on two cores; embedding speed is measured on its own, on a sample). Queries
//! are held-out sentences, embedded by the library's encoder at query time.
//!
//!   cargo run --release -p zhiku-library --example scale -- --encoder DIR --articles FILE \
//!       --chunks 100000 --out DIR

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use zhiku_library::{CreateOptions, Library, Mode, SearchOptions};

struct Args {
    encoder: PathBuf,
    articles: PathBuf,
    chunks: usize,
    out: PathBuf,
    pool: usize,
    queries: usize,
    sample: usize,
}

fn args() -> Result<Args> {
    let mut a = Args { encoder: PathBuf::new(), articles: PathBuf::new(), chunks: 100_000, out: PathBuf::from("scale"), pool: 20_000, queries: 200, sample: 3000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--encoder" => a.encoder = value.into(),
            "--articles" => a.articles = value.into(),
            "--chunks" => a.chunks = value.parse()?,
            "--out" => a.out = value.into(),
            "--pool" => a.pool = value.parse()?,
            "--queries" => a.queries = value.parse()?,
            "--sample" => a.sample = value.parse()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(a)
}

/// Real sentences of 40-300 characters from the articles, shuffled (seeded), deduplicated.
fn sentences(path: &Path, want: usize) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for line in std::fs::read_to_string(path)?.lines() {
        let row: Value = serde_json::from_str(line)?;
        let chars: Vec<char> = row["text"].as_str().unwrap_or_default().chars().collect();
        for (s, e) in zhiku_library::chunk::sentences(&chars) {
            let t: String = chars[s..e].iter().collect::<String>().split_whitespace().collect::<Vec<_>>().join(" ");
            if (40..=300).contains(&t.chars().count()) && seen.insert(t.clone()) {
                out.push(t);
            }
        }
    }
    out.shuffle(&mut ChaCha8Rng::seed_from_u64(7));
    if out.len() < want {
        bail!("{}: only {} sentences, {want} wanted", path.display(), out.len())
    }
    out.truncate(want);
    Ok(out)
}


/// Chunk `i`: three distinct pool sentences (seeded by `i`).
fn parts(i: usize, pool: usize) -> [usize; 3] {
    let mut rng = ChaCha8Rng::seed_from_u64(i as u64 ^ 0x5EED);
    let a = rng.random_range(0..pool);
    let mut b = rng.random_range(0..pool);
    while b == a {
        b = rng.random_range(0..pool);
    }
    let mut c = rng.random_range(0..pool);
    while c == a || c == b {
        c = rng.random_range(0..pool);
    }
    [a, b, c]
}

fn chunk_vector(p: [usize; 3], vecs: &[Vec<f32>]) -> Vec<f32> {
    let mut v: Vec<f32> = (0..vecs[0].len()).map(|j| p.iter().map(|&s| vecs[s][j]).sum()).collect();
    zhiku_models::text_model::normalize_l2(&mut v);
    v
}

fn document(i: usize, p: [usize; 3], pool: &[String]) -> zhiku_library::document::Document {
    zhiku_library::document::Document {
        id: format!("c{i}"),
        title: format!("chunk {i}"),
        text: format!("{} {} {}", pool[p[0]], pool[p[1]], pool[p[2]]),
        source: "synthetic".into(),
        date: None,
        tags: Vec::new(),
        metadata: Default::default(),
    }
}

/// Peak and current resident memory (MiB) from /proc.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0;
    (field("VmHWM:"), field("VmRSS:"))
}

fn disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| if e.path().is_dir() { disk(&e.path()) } else { e.metadata().map(|m| m.len()).unwrap_or(0) }).sum()).unwrap_or(0)
}

fn percentiles(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    json!({"p50_ms": at(0.5), "p99_ms": at(0.99), "mean_ms": ms.iter().sum::<f64>() / ms.len() as f64})
}

fn write_f32(path: &Path, rows: impl Iterator<Item = Vec<f32>>) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in rows {
        for x in r {
            f.write_all(&x.to_le_bytes())?;
        }
    }
    f.flush()?;
    Ok(())
}

fn main() -> Result<()> {
    zhiku_models::float_env::init();
    let a = args()?;
    std::fs::create_dir_all(&a.out)?;
    let model = zhiku_models::TextModel::open(&a.encoder, &candle_core::Device::Cpu)?;
    let all = sentences(&a.articles, a.pool + a.queries)?;
    let (pool, queries) = all.split_at(a.pool);
    let t = Instant::now();
    let pool_refs: Vec<&str> = pool.iter().map(String::as_str).collect();
    let vecs = model.embed_texts(&pool_refs, 64)?;
    let pool_embed_s = t.elapsed().as_secs_f64();
    eprintln!("embedded {} pool sentences in {pool_embed_s:.0} s", pool.len());

    // 1. Ingestion with the vectors given (embedding excluded).
    let lib_dir = a.out.join("library");
    let _ = std::fs::remove_dir_all(&lib_dir);
    let create = CreateOptions { encoder: Some(a.encoder.clone()), chunk: zhiku_library::chunk::ChunkOptions { size: 4000, overlap: 0 }, ..Default::default() };
    let mut lib = Library::open_for_writing(&lib_dir, &create)?;
    let t = Instant::now();
    let batch = 10_000;
    for start in (0..a.chunks).step_by(batch) {
        let end = (start + batch).min(a.chunks);
        let docs: Vec<_> = (start..end).map(|i| document(i, parts(i, pool.len()), pool)).collect();
        let mut next = start;
        let mut given = |texts: &[&str]| -> Result<Vec<Vec<f32>>> {
            let v = texts.iter().map(|_| chunk_vector(parts(next, pool.len()), &vecs)).collect();
            next += 1;
            Ok(v)
        };
        lib.add_embedded_by(&docs, Some(&mut given), |_| {})?;
        eprintln!("{end} chunks, {:.0} s", t.elapsed().as_secs_f64());
    }
    let ingest_s = t.elapsed().as_secs_f64();
    let (peak_ingest, _) = memory();
    let check = lib.check()?;
    if !check.consistent() {
        bail!("the store's parts disagree after ingestion: {check:?}")
    }
    drop(lib);
    let disk_bytes = disk(&lib_dir);

    // 2. Queries, on the library opened afresh.
    let t = Instant::now();
    let lib = Library::open(&lib_dir)?;
    let open_s = t.elapsed().as_secs_f64();
    let (_, rss_open) = memory();
    let mut latency = serde_json::Map::new();
    for (name, mode) in [("bm25", Mode::Bm25), ("dense", Mode::Dense), ("hybrid", Mode::Hybrid)] {
        let mut ms = Vec::new();
        for q in queries {
            let t = Instant::now();
            let hits = lib.search(q, &SearchOptions { mode: Some(mode), top_k: 10, ..Default::default() })?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            if hits.is_empty() && mode != Mode::Bm25 {
                bail!("no {name} results for {q:?}")
            }
        }
        latency.insert(name.into(), percentiles(ms));
    }
    // 3. The vector index alone: latency and recall@10 against exact search.
    let qrefs: Vec<&str> = queries.iter().map(String::as_str).collect();
    let t = Instant::now();
    let qvecs = model.embed_texts(&qrefs, 64)?;
    let query_embed_ms = t.elapsed().as_secs_f64() * 1e3 / queries.len() as f64;
    let mut ms = Vec::new();
    let mut approx = Vec::new();
    for v in &qvecs {
        let t = Instant::now();
        approx.push(lib.nearest(v, 10)?);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    latency.insert("hnsw_only".into(), percentiles(ms));
    // Exact top 10 by brute force (chunk ids are 1..=N in insertion order; checked below).
    let mut exact: Vec<Vec<(f32, i64)>> = vec![Vec::new(); qvecs.len()];
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f32>();
    for i in 0..a.chunks {
        let cv = chunk_vector(parts(i, pool.len()), &vecs);
        for (q, best) in qvecs.iter().zip(exact.iter_mut()) {
            let s = dot(q, &cv);
            if best.len() < 10 || s > best[best.len() - 1].0 {
                best.push((s, i as i64 + 1));
                best.sort_by(|x, y| y.0.total_cmp(&x.0));
                best.truncate(10);
            }
        }
    }
    let found: usize = approx.iter().zip(&exact).map(|(ap, ex)| ap.iter().filter(|(id, _)| ex.iter().any(|e| e.1 == *id)).count()).sum();
    let recall = found as f64 / (10 * qvecs.len()) as f64;
    let probe = lib.chunks_by_id(&[1, a.chunks as i64])?;
    if probe.len() != 2 || probe[0].doc_id != "c0" || probe[1].doc_id != format!("c{}", a.chunks - 1) {
        bail!("chunk ids are not 1..=N in insertion order; recall would be wrong")
    }

    // 4. Ingestion with embedding, on a sample, through the encoder.
    let sample_dir = a.out.join("sample");
    let _ = std::fs::remove_dir_all(&sample_dir);
    let mut sample = Library::open_for_writing(&sample_dir, &create)?;
    let docs: Vec<_> = (0..a.sample).map(|i| document(i, parts(i, pool.len()), pool)).collect();
    let t = Instant::now();
    sample.add(&docs, |_| {})?;
    let with_embedding = a.sample as f64 / t.elapsed().as_secs_f64();
    drop(sample);
    let _ = std::fs::remove_dir_all(&sample_dir);

    write_f32(&a.out.join("vectors.f32"), (0..a.chunks).map(|i| chunk_vector(parts(i, pool.len()), &vecs)))?;
    write_f32(&a.out.join("queries.f32"), qvecs.into_iter())?;
    let result = json!({
        "chunks": a.chunks, "dimensions": vecs[0].len(), "queries": queries.len(),
        "ingest_s": ingest_s, "ingest_chunks_per_s_vectors_given": a.chunks as f64 / ingest_s,
        "ingest_chunks_per_s_with_embedding": with_embedding, "embedding_sample": a.sample,
        "pool_embedding_sentences_per_s": pool.len() as f64 / pool_embed_s,
        "open_s": open_s, "peak_rss_ingest_mib": peak_ingest, "rss_after_open_mib": rss_open,
        "disk_mib": disk_bytes as f64 / (1 << 20) as f64,
        "latency": latency, "query_embedding_ms": query_embed_ms, "hnsw_recall_at_10": recall, "ef_search": zhiku_library::hnsw::ef_search(10, a.chunks),
    });
    std::fs::write(a.out.join("zhiku.json"), serde_json::to_string_pretty(&result)?)?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
