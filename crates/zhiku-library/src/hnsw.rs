//! An approximate nearest-neighbour index over unit vectors (cosine similarity as a dot
//! product): Malkov and Yashunin's hierarchical navigable small-world graph, with the
//! neighbour-selection heuristic, removals as tombstones, and a file format written whole and
//! renamed into place. Ours rather than `hnsw_rs` because the library needs removals and an
//! atomic replace of the saved index (`hnsw_rs` dumps to new, randomly suffixed files while a
//! mapped dump is in use, and has no removal), and the index records the store's change
//! number it is current to, so a library replays what a crash left out.

use anyhow::{bail, Context, Result};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"ZKHNSW01";

/// The candidate list a search for the `k` nearest keeps in an index of `n` vectors, chosen to
/// keep recall@10 against exact search above 0.95 on news text (`bench/library_scale.sh`,
/// `examples/ef_sweep.rs`): at 100,000 vectors it was 0.865 at 64, 0.934 at 128, 0.958 at 192
/// and 0.972 at 256; at 1,000,000, 0.918 at 256, 0.947 at 384, 0.962 at 512 (3.7 ms a query)
/// and 0.976 at 768. Embedding the query costs more than the search anyway.
pub fn ef_search(k: usize, n: usize) -> usize {
    let floor = if n > 250_000 { 512 } else { 256 };
    (4 * k).max(floor)
}

#[derive(Clone, Copy, Debug)]
pub struct HnswParams {
    /// Links per node above the bottom layer (twice this at the bottom).
    pub m: usize,
    pub ef_construction: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self { m: 16, ef_construction: 128 }
    }
}

#[derive(Debug)]
pub struct Hnsw {
    dim: usize,
    params: HnswParams,
    vectors: Vec<f32>,
    keys: Vec<i64>,
    /// links[node][layer]
    links: Vec<Vec<Vec<u32>>>,
    removed: HashSet<u32>,
    by_key: HashMap<i64, u32>,
    entry: Option<u32>,
    rng: u64,
    /// The store's change number this index reflects.
    pub applied: i64,
}

#[derive(Clone, Copy, PartialEq)]
struct Scored(f32, u32);
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scored {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above; the check is a cached load).
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: the compiler vectorises this.
    let mut s = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            s[i] += x[i] * y[i];
        }
    }
    s.iter().sum::<f32>() + tail
}

/// The similarity every search step computes, 32 floats a round in four FMA chains (the
/// portable loop above compiles to 128-bit SSE without FMA in a generic build: half the
/// speed, measured by `bench/library_scale.sh`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, s) in acc.iter_mut().enumerate() {
            *s = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), _mm256_loadu_ps(pb.add(i + 8 * j)), *s);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    lanes.iter().sum::<f32>() + a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum::<f32>()
}

/// Cosine similarity of two vectors of any length (0 for a zero vector).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt()).max(f32::MIN_POSITIVE)
}

impl Hnsw {
    pub fn new(dim: usize, params: HnswParams) -> Self {
        Self { dim, params, vectors: Vec::new(), keys: Vec::new(), links: Vec::new(), removed: HashSet::new(), by_key: HashMap::new(), entry: None, rng: 0x2545F4914F6CDD1D, applied: 0 }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        self.keys.len() - self.removed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn vector(&self, n: u32) -> &[f32] {
        &self.vectors[n as usize * self.dim..(n as usize + 1) * self.dim]
    }

    fn similarity(&self, q: &[f32], n: u32) -> f32 {
        dot(q, self.vector(n))
    }

    fn random_level(&mut self) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let u = ((self.rng >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let ml = 1.0 / (self.params.m as f64).ln();
        ((-u.ln() * ml) as usize).min(16)
    }

    /// Adds a vector (scaled to unit length here) under `key`; a key already present is
    /// replaced.
    pub fn insert(&mut self, key: i64, vector: &[f32]) -> Result<()> {
        if vector.len() != self.dim {
            bail!("vector of {} dimensions for an index of {}", vector.len(), self.dim)
        }
        self.remove(key);
        let norm = dot(vector, vector).sqrt();
        let node = self.keys.len() as u32;
        self.vectors.extend(vector.iter().map(|v| if norm > 0.0 { v / norm } else { 0.0 }));
        self.keys.push(key);
        self.by_key.insert(key, node);
        let level = self.random_level();
        self.links.push(vec![Vec::new(); level + 1]);
        let Some(mut ep) = self.entry else {
            self.entry = Some(node);
            return Ok(());
        };
        let q: Vec<f32> = self.vector(node).to_vec();
        let top = self.links[ep as usize].len() - 1;
        for layer in (level + 1..=top).rev() {
            ep = self.greedy(&q, ep, layer);
        }
        let mut eps = vec![ep];
        for layer in (0..=level.min(top)).rev() {
            let found = self.search_layer(&q, &eps, self.params.ef_construction, layer);
            let max = if layer == 0 { 2 * self.params.m } else { self.params.m };
            let chosen = self.select(&found, self.params.m);
            self.links[node as usize][layer] = chosen.clone();
            for &nb in &chosen {
                let mut list = std::mem::take(&mut self.links[nb as usize][layer]);
                list.push(node);
                if list.len() > max {
                    let v: Vec<f32> = self.vector(nb).to_vec();
                    let scored: Vec<Scored> = list.iter().map(|&x| Scored(self.similarity(&v, x), x)).collect();
                    list = self.select(&scored, max);
                }
                self.links[nb as usize][layer] = list;
            }
            eps = found.iter().map(|s| s.1).collect();
        }
        if level > top {
            self.entry = Some(node);
        }
        Ok(())
    }

    /// The heuristic of the paper: keep a candidate only if it is closer to the new node than
    /// to every neighbour kept so far (spreads links in all directions), best first.
    fn select(&self, candidates: &[Scored], m: usize) -> Vec<u32> {
        let mut sorted = candidates.to_vec();
        sorted.sort_by(|a, b| b.cmp(a));
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        let mut skipped = Vec::new();
        for c in sorted {
            if kept.len() >= m {
                break;
            }
            let v = self.vector(c.1);
            if kept.iter().all(|&k| dot(v, self.vector(k)) < c.0) {
                kept.push(c.1);
            } else {
                skipped.push(c.1);
            }
        }
        // Fill up with the closest of the rest (keeps the graph connected in clusters).
        for s in skipped {
            if kept.len() >= m {
                break;
            }
            kept.push(s);
        }
        kept
    }

    fn greedy(&self, q: &[f32], mut ep: u32, layer: usize) -> u32 {
        let mut best = self.similarity(q, ep);
        loop {
            let mut changed = false;
            for &nb in &self.links[ep as usize][layer] {
                let s = self.similarity(q, nb);
                if s > best {
                    best = s;
                    ep = nb;
                    changed = true;
                }
            }
            if !changed {
                return ep;
            }
        }
    }

    /// The `ef` most similar nodes reachable on `layer` from `eps`, best first (removed nodes
    /// are walked through but counted like others; callers drop them).
    fn search_layer(&self, q: &[f32], eps: &[u32], ef: usize, layer: usize) -> Vec<Scored> {
        // One bit per node: cheaper than hashing each neighbour seen.
        let mut visited = vec![0u64; self.keys.len().div_ceil(64)];
        let mut visit = |n: u32| {
            let (w, b) = (n as usize / 64, 1u64 << (n % 64));
            let fresh = visited[w] & b == 0;
            visited[w] |= b;
            fresh
        };
        for &e in eps {
            visit(e);
        }
        let mut candidates: BinaryHeap<Scored> = BinaryHeap::new();
        let mut results: BinaryHeap<std::cmp::Reverse<Scored>> = BinaryHeap::new();
        for &e in eps {
            let s = Scored(self.similarity(q, e), e);
            candidates.push(s);
            results.push(std::cmp::Reverse(s));
        }
        while results.len() > ef {
            results.pop();
        }
        while let Some(c) = candidates.pop() {
            let worst = results.peek().map(|r| r.0 .0).unwrap_or(f32::NEG_INFINITY);
            if c.0 < worst && results.len() >= ef {
                break;
            }
            for &nb in &self.links[c.1 as usize][layer] {
                if !visit(nb) {
                    continue;
                }
                let s = Scored(self.similarity(q, nb), nb);
                let worst = results.peek().map(|r| r.0 .0).unwrap_or(f32::NEG_INFINITY);
                if results.len() < ef || s.0 > worst {
                    candidates.push(s);
                    results.push(std::cmp::Reverse(s));
                    if results.len() > ef {
                        results.pop();
                    }
                }
            }
        }
        let mut out: Vec<Scored> = results.into_iter().map(|r| r.0).collect();
        out.sort_by(|a, b| b.cmp(a));
        out
    }

    /// The `k` live keys most similar to `query` (cosine), best first; `ef` (at least `k`)
    /// trades speed for recall.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Vec<(i64, f32)> {
        let Some(mut ep) = self.entry else { return Vec::new() };
        if query.len() != self.dim || k == 0 {
            return Vec::new();
        }
        let norm = dot(query, query).sqrt().max(f32::MIN_POSITIVE);
        let q: Vec<f32> = query.iter().map(|v| v / norm).collect();
        for layer in (1..self.links[ep as usize].len()).rev() {
            ep = self.greedy(&q, ep, layer);
        }
        let ef = ef.max(k) + self.removed.len().min(ef.max(k));
        self.search_layer(&q, &[ep], ef, 0).into_iter().filter(|s| !self.removed.contains(&s.1)).take(k).map(|s| (self.keys[s.1 as usize], s.0)).collect()
    }

    /// Every live key's similarity, best first: the exact answer `search` approximates.
    pub fn exact(&self, query: &[f32], k: usize) -> Vec<(i64, f32)> {
        let norm = dot(query, query).sqrt().max(f32::MIN_POSITIVE);
        let q: Vec<f32> = query.iter().map(|v| v / norm).collect();
        let mut all: Vec<Scored> = (0..self.keys.len() as u32).filter(|n| !self.removed.contains(n)).map(|n| Scored(self.similarity(&q, n), n)).collect();
        all.sort_by(|a, b| b.cmp(a));
        all.into_iter().take(k).map(|s| (self.keys[s.1 as usize], s.0)).collect()
    }

    /// Marks `key` removed (its node stays in the graph as a waypoint). Returns whether it was
    /// present.
    pub fn remove(&mut self, key: i64) -> bool {
        match self.by_key.remove(&key) {
            Some(n) => self.removed.insert(n),
            None => false,
        }
    }

    pub fn contains(&self, key: i64) -> bool {
        self.by_key.contains_key(&key)
    }

    /// Writes the index to a temporary file beside `path`, then renames it over `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let file = std::fs::File::create(&tmp).with_context(|| format!("{}: cannot write", tmp.display()))?;
            let mut w = BufWriter::new(file);
            w.write_all(MAGIC)?;
            for v in [self.dim as u64, self.params.m as u64, self.params.ef_construction as u64, self.keys.len() as u64, self.applied as u64, self.entry.map_or(u64::MAX, |e| e as u64), self.rng] {
                w.write_all(&v.to_le_bytes())?;
            }
            for v in &self.vectors {
                w.write_all(&v.to_le_bytes())?;
            }
            for (n, key) in self.keys.iter().enumerate() {
                w.write_all(&key.to_le_bytes())?;
                w.write_all(&[self.removed.contains(&(n as u32)) as u8, self.links[n].len() as u8])?;
                for layer in &self.links[n] {
                    w.write_all(&(layer.len() as u32).to_le_bytes())?;
                    for x in layer {
                        w.write_all(&x.to_le_bytes())?;
                    }
                }
            }
            w.flush()?;
            w.get_ref().sync_all()?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot replace", path.display()))?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let size = file.metadata()?.len();
        let mut r = BufReader::new(file);
        let bad = |what: &str| anyhow::anyhow!("{}: not a valid vector index ({what})", path.display());
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(|_| bad("too short"))?;
        if &magic != MAGIC {
            bail!(bad("unknown format; written by another version?"))
        }
        let mut u64s = [0u64; 7];
        for v in &mut u64s {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).map_err(|_| bad("truncated header"))?;
            *v = u64::from_le_bytes(b);
        }
        let [dim, m, efc, count, applied, entry, rng] = u64s;
        if dim == 0 || dim > 65536 || count.saturating_mul(dim).saturating_mul(4) > size {
            bail!(bad("sizes do not fit the file"))
        }
        let (dim, count) = (dim as usize, count as usize);
        let mut bytes = vec![0u8; count * dim * 4];
        r.read_exact(&mut bytes).map_err(|_| bad("truncated vectors"))?;
        let vectors = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let mut h = Hnsw::new(dim, HnswParams { m: m as usize, ef_construction: efc as usize });
        h.vectors = vectors;
        h.applied = applied as i64;
        h.rng = rng;
        h.entry = if entry == u64::MAX { None } else { Some(entry as u32) };
        let mut read = |n: usize| -> Result<Vec<u8>> {
            let mut b = vec![0u8; n];
            r.read_exact(&mut b).map_err(|_| bad("truncated graph"))?;
            Ok(b)
        };
        for n in 0..count {
            let key = i64::from_le_bytes(read(8)?.try_into().unwrap());
            let flags = read(2)?;
            let mut layers = Vec::with_capacity(flags[1] as usize);
            for _ in 0..flags[1] {
                let len = u32::from_le_bytes(read(4)?.try_into().unwrap()) as usize;
                if len > count {
                    bail!(bad("link list longer than the index"))
                }
                let b = read(len * 4)?;
                let list: Vec<u32> = b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                if list.iter().any(|&x| x as usize >= count) {
                    bail!(bad("link to a missing node"))
                }
                layers.push(list);
            }
            if layers.is_empty() {
                bail!(bad("node without layers"))
            }
            h.keys.push(key);
            h.links.push(layers);
            if flags[0] != 0 {
                h.removed.insert(n as u32);
            } else {
                h.by_key.insert(key, n as u32);
            }
        }
        if let Some(e) = h.entry {
            if e as usize >= count {
                bail!(bad("entry point out of range"))
            }
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                (0..dim)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_simd_dot_product_equals_the_portable_one() {
        for n in [0, 1, 7, 8, 31, 32, 33, 384, 385] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0).collect();
            let (x, y) = (dot(&a, &b), dot_portable(&a, &b));
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{n}: {x} against {y}");
        }
    }

    #[test]
    fn recall_at_10_against_exact_search_is_at_least_095() {
        let data = random_vectors(3000, 32, 7);
        let mut h = Hnsw::new(32, HnswParams::default());
        for (i, v) in data.iter().enumerate() {
            h.insert(i as i64, v).unwrap();
        }
        let queries = random_vectors(100, 32, 99);
        let mut hits = 0;
        for q in &queries {
            let exact: HashSet<i64> = h.exact(q, 10).into_iter().map(|x| x.0).collect();
            hits += h.search(q, 10, 64).into_iter().filter(|x| exact.contains(&x.0)).count();
        }
        let recall = hits as f64 / 1000.0;
        assert!(recall >= 0.95, "recall@10 {recall}");
    }

    #[test]
    fn removed_keys_never_come_back_and_saving_keeps_everything() {
        let data = random_vectors(500, 16, 3);
        let mut h = Hnsw::new(16, HnswParams::default());
        for (i, v) in data.iter().enumerate() {
            h.insert(i as i64, v).unwrap();
        }
        for i in (0..500).step_by(2) {
            assert!(h.remove(i));
        }
        h.applied = 42;
        let r = h.search(&data[10], 10, 64);
        assert!(r.iter().all(|x| x.0 % 2 == 1), "{r:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.hnsw");
        h.save(&path).unwrap();
        let back = Hnsw::load(&path).unwrap();
        assert_eq!(back.applied, 42);
        assert_eq!(back.len(), 250);
        assert_eq!(back.search(&data[11], 5, 64), h.search(&data[11], 5, 64));
        assert_eq!(back.search(&data[11], 1, 64)[0].0, 11);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_panic() {
        let data = random_vectors(50, 8, 5);
        let mut h = Hnsw::new(8, HnswParams::default());
        for (i, v) in data.iter().enumerate() {
            h.insert(i as i64, v).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.hnsw");
        h.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for cut in [4, 30, 100, bytes.len() - 3] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(Hnsw::load(&path).is_err());
        }
        let mut wrong = bytes.clone();
        wrong[0] = b'X';
        std::fs::write(&path, &wrong).unwrap();
        assert!(Hnsw::load(&path).unwrap_err().to_string().contains("unknown format"));
    }
}
