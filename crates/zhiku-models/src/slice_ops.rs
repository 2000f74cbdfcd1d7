//! Plain f32 slice arithmetic for the decoders and the matrix kernels: dot products, RMSNorm,
//! rotary embeddings, softmax, activations. A leaf module: it imports nothing from the crate.

/// Dot product with 8 independent accumulators (vectorises to FMAs).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ca, ra) = a.split_at(a.len() / 8 * 8);
    let (cb, rb) = b.split_at(ca.len());
    for (x, y) in ca.chunks_exact(8).zip(cb.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `y += a · x`.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = a.mul_add(*x, *y);
    }
}

/// RMSNorm of each row of `x` (length `w.len()`) into `out`: `x / rms(x) · w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ms = dot(xr, xr) / n as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// LayerNorm of each row of `x` (length `w.len()`) into `out`: `(x − mean) / sqrt(var + eps) · w + b`.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let mean = xr.iter().sum::<f32>() / n as f32;
        let var = xr.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, &v), &g), &bb) in or.iter_mut().zip(xr).zip(w).zip(b) {
            *o = (v - mean) * inv * g + bb;
        }
    }
}

/// RMSNorm in place.
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    for xr in x.chunks_exact_mut(n) {
        let ms = dot(xr, xr) / n as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for (v, &g) in xr.iter_mut().zip(w) {
            *v *= inv * g;
        }
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (Gemma's `gelu_pytorch_tanh`).
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension i with i + d/2 (transformers' `rotate_half`; GGUF qwen2, gemma3).
    Halves,
    /// Dimension 2i with 2i + 1 (GGUF llama, whose Q/K rows were permuted for it).
    Interleaved,
}

/// Cosines and sines of every position up to `len`, for one base frequency.
pub struct RopeTable {
    pub half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(rot_dim: usize, theta: f64, len: usize) -> Self {
        let half = rot_dim / 2;
        let mut cos = vec![0f32; len * half];
        let mut sin = vec![0f32; len * half];
        for i in 0..half {
            // Computed as transformers does: inv_freq in f32, angle = pos · inv_freq in f32.
            let inv = (1.0 / theta.powf((2 * i) as f64 / rot_dim as f64)) as f32;
            for p in 0..len {
                let a = p as f32 * inv;
                cos[p * half + i] = a.cos();
                sin[p * half + i] = a.sin();
            }
        }
        Self { half, cos, sin }
    }

    pub fn len(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.cos.is_empty()
    }

    /// Cosines and sines of positions `0..len`, `half` values per position.
    pub fn first(&self, len: usize) -> (&[f32], &[f32]) {
        let n = (len * self.half).min(self.cos.len());
        (&self.cos[..n], &self.sin[..n])
    }

    /// Rotates one head vector at position `pos`.
    pub fn apply(&self, v: &mut [f32], pos: usize, style: RopeStyle) {
        let h = self.half;
        let (c, s) = (&self.cos[pos * h..(pos + 1) * h], &self.sin[pos * h..(pos + 1) * h]);
        match style {
            RopeStyle::Halves => {
                let (a, b) = v.split_at_mut(h);
                for i in 0..h {
                    let (x, y) = (a[i], b[i]);
                    a[i] = x * c[i] - y * s[i];
                    b[i] = y * c[i] + x * s[i];
                }
            }
            RopeStyle::Interleaved => {
                for i in 0..h {
                    let (x, y) = (v[2 * i], v[2 * i + 1]);
                    v[2 * i] = x * c[i] - y * s[i];
                    v[2 * i + 1] = y * c[i] + x * s[i];
                }
            }
        }
    }
}

/// Softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_on_odd_lengths() {
        for n in [0, 1, 7, 8, 9, 33, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.3).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-5);
        }
    }

    #[test]
    fn rope_styles_agree_after_the_llama_permutation() {
        // GGUF llama stores rows so that interleaved pairs hold what halves pairs held.
        let d = 8;
        let t = RopeTable::new(d, 10000.0, 5);
        let v: Vec<f32> = (0..d).map(|i| i as f32 + 1.0).collect();
        let mut halves = v.clone();
        t.apply(&mut halves, 3, RopeStyle::Halves);
        let mut inter: Vec<f32> = (0..d).map(|i| if i % 2 == 0 { v[i / 2] } else { v[d / 2 + i / 2] }).collect();
        t.apply(&mut inter, 3, RopeStyle::Interleaved);
        for i in 0..d / 2 {
            assert!((inter[2 * i] - halves[i]).abs() < 1e-6 && (inter[2 * i + 1] - halves[d / 2 + i]).abs() < 1e-6);
        }
    }
}
