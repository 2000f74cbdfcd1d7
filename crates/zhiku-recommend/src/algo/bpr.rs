//! Bayesian personalised ranking (Rendle et al. 2009) by stochastic gradient ascent on
//! ln σ(x_u·(y_i − y_j) + b_i − b_j) for an observed pair (u, i) and an item j the user has not
//! interacted with, with L2 regularisation, item biases, and the conventions of the `implicit`
//! package (one epoch draws as many triples as there are interactions; sampled "negatives" the
//! user did interact with are skipped). One thread, so a seed gives the same model every run;
//! the memory it will touch is prefetched a few triples ahead instead.

use super::Factors;
use crate::matrix::Csr;
#[cfg(test)]
use crate::matrix::dot;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BprParams {
    pub factors: usize,
    pub learning_rate: f32,
    pub regularization: f32,
    pub iterations: usize,
}

impl Default for BprParams {
    fn default() -> Self {
        Self { factors: 64, learning_rate: 0.05, regularization: 0.001, iterations: 100 }
    }
}

pub fn fit(ui: &Csr, p: &BprParams, seed: u64, mut progress: impl FnMut(usize)) -> Factors {
    let d = p.factors;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let init = |rng: &mut ChaCha8Rng, n: usize| -> Vec<f32> { (0..n * d).map(|_| (rng.random::<f32>() - 0.5) / d as f32).collect() };
    let mut x = init(&mut rng, ui.rows);
    let mut y = init(&mut rng, ui.cols);
    let mut bias = vec![0f32; ui.cols];
    // The user of every interaction, so that a triple starts from a uniformly drawn interaction.
    let mut owner = Vec::with_capacity(ui.nnz());
    for u in 0..ui.rows {
        owner.extend(std::iter::repeat_n(u as u32, ui.row_len(u)));
    }
    let (lr, reg) = (p.learning_rate, p.regularization);
    let (nnz, cols) = (ui.nnz(), ui.cols);
    let total = p.iterations * nnz;
    // Each triple touches rows scattered over memory (the interaction, its user's factors and
    // seen list, two item rows): past the caches a triple waits on a chain of misses. The draws
    // are taken AHEAD triples early, in the same order (so the model is the same bit for bit),
    // and their memory is prefetched in two waves: the interaction and the negative item's row
    // when drawn, the user's and the positive item's rows halfway.
    const AHEAD: usize = 16;
    let mut ring = [(0usize, 0usize); AHEAD];
    let draw = |rng: &mut ChaCha8Rng| (rng.random_range(0..nnz), rng.random_range(0..cols));
    for slot in ring.iter_mut().take(total.min(AHEAD)) {
        *slot = draw(&mut rng);
    }
    for t in 0..total {
        let (k, j) = ring[t % AHEAD];
        if t + AHEAD < total {
            let (nk, nj) = draw(&mut rng);
            ring[t % AHEAD] = (nk, nj);
            prefetch(&owner[nk..nk + 1]);
            prefetch(&ui.indices[nk..nk + 1]);
            prefetch(&y[nj * d..(nj + 1) * d]);
        }
        if t + AHEAD / 2 < total {
            let (mk, _) = ring[(t + AHEAD / 2) % AHEAD];
            let (mu, mi) = (owner[mk] as usize, ui.indices[mk] as usize);
            prefetch(&x[mu * d..(mu + 1) * d]);
            prefetch(&y[mi * d..(mi + 1) * d]);
            prefetch(&ui.indptr[mu..mu + 2]);
        }
        if (t + 1) % nnz == 0 {
            progress((t + 1) / nnz);
        }
        let u = owner[k] as usize;
        let i = ui.indices[k] as usize;
        if ui.contains(u, j as u32) {
            continue; // also rules out j == i
        }
        let xu = &mut x[u * d..(u + 1) * d];
        let (yi, yj) = two_rows(&mut y, i, j, d);
        let score = bias[i] - bias[j] + dot_diff(xu, yi, yj);
        let z = 1.0 / (1.0 + score.exp()); // σ(−score): the gradient of ln σ(score)
        // One fused pass: every update reads the old values of the three vectors.
        for ((xk, yik), yjk) in xu.iter_mut().zip(yi.iter_mut()).zip(yj.iter_mut()) {
            let (xv, a, b) = (*xk, *yik, *yjk);
            *xk += lr * (z * (a - b) - reg * xv);
            *yik += lr * (z * xv - reg * a);
            *yjk += lr * (-z * xv - reg * b);
        }
        bias[i] += lr * (z - reg * bias[i]);
        bias[j] += lr * (-z - reg * bias[j]);
    }
    Factors { dim: d, user: x, item: y, item_bias: Some(bias) }
}

/// Asks the CPU to bring the cache lines of `v` in, without waiting for them.
#[inline(always)]
fn prefetch<T>(v: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(v);
        if bytes == 0 {
            return;
        }
        let start = v.as_ptr() as usize;
        let mut line = start & !63;
        while line <= (start + bytes - 1) & !63 {
            // SAFETY: a prefetch never faults and reads nothing into the program; the line
            // overlaps `v`.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line as *const i8) };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// x · (a − b), in sixteen lanes (a plain sum is one chain of dependent adds, which was the
/// bottleneck of the whole update).
fn dot_diff(x: &[f32], a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (mut cx, mut ca, mut cb) = (x.chunks_exact(16), a.chunks_exact(16), b.chunks_exact(16));
    for ((x, a), b) in (&mut cx).zip(&mut ca).zip(&mut cb) {
        for j in 0..16 {
            acc[j] = x[j].mul_add(a[j] - b[j], acc[j]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for ((x, a), b) in cx.remainder().iter().zip(ca.remainder()).zip(cb.remainder()) {
        s += x * (a - b);
    }
    s
}

/// Rows `i` and `j` (distinct) of a row-major matrix with `d` columns, both mutable.
fn two_rows(m: &mut [f32], i: usize, j: usize, d: usize) -> (&mut [f32], &mut [f32]) {
    debug_assert_ne!(i, j);
    if i < j {
        let (a, b) = m.split_at_mut(j * d);
        (&mut a[i * d..(i + 1) * d], &mut b[..d])
    } else {
        let (a, b) = m.split_at_mut(i * d);
        (&mut b[..d], &mut a[j * d..(j + 1) * d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_held_in_items_above_others_and_is_reproducible() {
        let mut t = Vec::new();
        for u in 0..20u32 {
            let base = if u % 2 == 0 { 0 } else { 10 };
            for k in 0..5 {
                t.push((u, base + (u + k) % 10, 1.0));
            }
        }
        let ui = Csr::from_triplets(20, 20, t.into_iter());
        let p = BprParams { factors: 8, learning_rate: 0.05, regularization: 0.001, iterations: 200 };
        let f = fit(&ui, &p, 3, |_| {});
        // AUC over each user's own interactions against the other group's items.
        let (mut right, mut total) = (0, 0);
        for u in 0..20 {
            let s = |i: usize| dot(&f.user[u * 8..u * 8 + 8], &f.item[i * 8..i * 8 + 8]) + f.item_bias.as_ref().unwrap()[i];
            let other = if u % 2 == 0 { 10..20 } else { 0..10 };
            for &i in ui.row(u).0 {
                for j in other.clone() {
                    right += (s(i as usize) > s(j)) as usize;
                    total += 1;
                }
            }
        }
        assert!(right as f64 / total as f64 > 0.95, "AUC {}", right as f64 / total as f64);
        assert_eq!(fit(&ui, &p, 3, |_| {}).user, f.user);
    }
}
