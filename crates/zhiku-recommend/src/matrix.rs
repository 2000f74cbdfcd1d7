//! Compressed sparse rows: the user-item matrix (one row per user) and its transpose, plus the
//! small dense helpers the factor models share.

use crate::data::Event;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Csr {
    pub rows: usize,
    pub cols: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl Csr {
    /// The user-item matrix of `events` (any order; one entry per pair is assumed), columns
    /// sorted within each row.
    pub fn from_events(rows: usize, cols: usize, events: &[Event]) -> Self {
        Self::from_triplets(rows, cols, events.iter().map(|e| (e.user, e.item, e.value)))
    }

    pub fn from_triplets(rows: usize, cols: usize, triplets: impl Iterator<Item = (u32, u32, f32)> + Clone) -> Self {
        let mut counts = vec![0usize; rows + 1];
        for (r, _, _) in triplets.clone() {
            counts[r as usize + 1] += 1;
        }
        for i in 0..rows {
            counts[i + 1] += counts[i];
        }
        let nnz = counts[rows];
        let mut next = counts.clone();
        let mut indices = vec![0u32; nnz];
        let mut values = vec![0f32; nnz];
        for (r, c, v) in triplets {
            let at = next[r as usize];
            indices[at] = c;
            values[at] = v;
            next[r as usize] += 1;
        }
        let mut m = Self { rows, cols, indptr: counts, indices, values };
        m.sort_rows();
        m
    }

    fn sort_rows(&mut self) {
        for r in 0..self.rows {
            let (a, b) = (self.indptr[r], self.indptr[r + 1]);
            if self.indices[a..b].windows(2).all(|w| w[0] < w[1]) {
                continue;
            }
            let mut pairs: Vec<(u32, f32)> = self.indices[a..b].iter().copied().zip(self.values[a..b].iter().copied()).collect();
            pairs.sort_by_key(|p| p.0);
            for (k, (c, v)) in pairs.into_iter().enumerate() {
                self.indices[a + k] = c;
                self.values[a + k] = v;
            }
        }
    }

    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[r], self.indptr[r + 1]);
        (&self.indices[a..b], &self.values[a..b])
    }

    pub fn row_len(&self, r: usize) -> usize {
        self.indptr[r + 1] - self.indptr[r]
    }

    pub fn contains(&self, r: usize, c: u32) -> bool {
        self.row(r).0.binary_search(&c).is_ok()
    }

    pub fn transpose(&self) -> Csr {
        let triplets = (0..self.rows).flat_map(move |r| {
            let (idx, val) = self.row(r);
            idx.iter().zip(val).map(move |(&c, &v)| (c, r as u32, v))
        });
        Csr::from_triplets(self.cols, self.rows, triplets)
    }

    /// The same pattern with every value 1.
    pub fn binary(&self) -> Csr {
        Csr { values: vec![1.0; self.nnz()], ..self.clone() }
    }

    /// Grows the matrix to `rows` x `cols` (new rows empty), for ids that only a later file names.
    pub fn resized(mut self, rows: usize, cols: usize) -> Csr {
        assert!(rows >= self.rows && cols >= self.cols);
        let last = *self.indptr.last().unwrap_or(&0);
        self.indptr.resize(rows + 1, last);
        self.rows = rows;
        self.cols = cols;
        self
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Sixteen lanes over fixed-size chunks: no bounds checks, so the loop becomes two 8-wide
    // FMA chains (the scalar form with indices ran 2.5x slower in the ALS solves).
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let (mut ca, mut cb) = (a.chunks_exact(16), b.chunks_exact(16));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..16 {
            acc[j] = x[j].mul_add(y[j], acc[j]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

/// y += alpha * x
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// `scores[i] = items[i] . user (+ bias[i])` for every row of the row-major `items` matrix.
pub fn score_rows(items: &[f32], dim: usize, user: &[f32], bias: Option<&[f32]>, scores: &mut [f32]) {
    for (i, s) in scores.iter_mut().enumerate() {
        *s = dot(&items[i * dim..(i + 1) * dim], user) + bias.map_or(0.0, |b| b[i]);
    }
}

/// The Gram matrix `X^T X` of the row-major `x` (n x d), as d x d (accumulated in f32 row
/// by row, each a vectorised multiply-add into the upper triangle, then widened).
pub fn gram(x: &[f32], d: usize) -> Vec<f64> {
    let mut g = vec![0f32; d * d];
    for row in x.chunks_exact(d) {
        for a in 0..d {
            let ra = row[a];
            if ra != 0.0 {
                axpy(ra, &row[a..], &mut g[a * d + a..(a + 1) * d]);
            }
        }
    }
    let mut out = vec![0f64; d * d];
    for a in 0..d {
        for b in a..d {
            let v = g[a * d + b] as f64;
            out[a * d + b] = v;
            out[b * d + a] = v;
        }
    }
    out
}

/// Solves `A x = b` for symmetric positive definite `A` (d x d, row-major) by Cholesky, in place
/// of `b` (`A` is overwritten by its factor). False when `A` is not positive definite.
pub fn cholesky_solve(a: &mut [f64], b: &mut [f64], d: usize) -> bool {
    if !cholesky_factor(a, d) {
        return false;
    }
    cholesky_substitute(a, b, d);
    true
}

/// Overwrites the lower triangle of `a` with L, A = L Lᵀ. False when `A` is not positive definite.
pub fn cholesky_factor(a: &mut [f64], d: usize) -> bool {
    for j in 0..d {
        let mut s = a[j * d + j];
        for k in 0..j {
            s -= a[j * d + k] * a[j * d + k];
        }
        if s <= 0.0 {
            return false;
        }
        let l = s.sqrt();
        a[j * d + j] = l;
        for i in j + 1..d {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = s / l;
        }
    }
    true
}

/// Solves L Lᵀ x = b in place of `b`, `l` from [`cholesky_factor`].
pub fn cholesky_substitute(l: &[f64], b: &mut [f64], d: usize) {
    for i in 0..d {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * d + k] * b[k];
        }
        b[i] = s / l[i * d + i];
    }
    for i in (0..d).rev() {
        let mut s = b[i];
        for k in i + 1..d {
            s -= l[k * d + i] * b[k];
        }
        b[i] = s / l[i * d + i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_round_trips_through_transpose() {
        let t = [(0u32, 2u32, 1.0f32), (1, 0, 2.0), (0, 1, 3.0), (2, 2, 4.0)];
        let m = Csr::from_triplets(3, 3, t.iter().copied());
        assert_eq!(m.row(0), (&[1u32, 2][..], &[3.0f32, 1.0][..]));
        assert!(m.contains(2, 2) && !m.contains(2, 1));
        let tt = m.transpose();
        assert_eq!(tt.row(2), (&[0u32, 2][..], &[1.0f32, 4.0][..]));
        assert_eq!(tt.transpose(), m);
        let grown = m.clone().resized(5, 4);
        assert_eq!(grown.row_len(4), 0);
    }

    #[test]
    fn cholesky_solves_a_small_system() {
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let mut b = vec![2.0, 1.0];
        assert!(cholesky_solve(&mut a, &mut b, 2));
        // 4x + 2y = 2, 2x + 3y = 1  =>  x = 0.5, y = 0
        assert!((b[0] - 0.5).abs() < 1e-12 && b[1].abs() < 1e-12, "{b:?}");
        let mut not_pd = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!cholesky_solve(&mut not_pd, &mut [1.0, 1.0], 2));
    }
}
