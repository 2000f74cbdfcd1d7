//! Int8 inference for linear layers: weights quantised once per output channel (symmetric, 8
//! bits), activations quantised per row on the fly (symmetric, 7 bits), products accumulated in
//! i32 and scaled back to f32 with the bias added.
//!
//! Why 7-bit activations: the AVX2 kernel multiplies unsigned activation bytes by signed weight
//! bytes with `vpmaddubsw`, which adds adjacent products into a saturating i16. With activations
//! offset into 1..=127 and weights in -127..=127, a pair sums to at most 2·127·127 = 32258 <
//! 32767, so nothing saturates (fbgemm's "reduce_range" makes the same trade). The offset (+64)
//! is removed exactly with the precomputed weight row sums.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

/// Activation offset: `x_q ∈ -63..=63` is stored as `x_q + 64 ∈ 1..=127`.
const OFFSET: i32 = 64;
const ACT_MAX: f32 = 63.0;

/// A linear layer `y = x Wᵀ + b` with int8 weights.
pub struct QuantLinear {
    out_dim: usize,
    in_dim: usize,
    /// `in_dim` rounded up to a multiple of 32 (the kernel's step); padding is zero.
    padded: usize,
    /// `[out_dim, padded]`, row-major.
    weights: Vec<i8>,
    /// Per output channel: weight = q · scale.
    scales: Vec<f32>,
    /// Per output channel: Σ_i q[o, i] (removes the activation offset).
    row_sums: Vec<i32>,
    bias: Vec<f32>,
}

impl QuantLinear {
    /// Quantises `weight [out, in]` and `bias [out]` (f32).
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        let w: Vec<Vec<f32>> = weight.to_dtype(candle_core::DType::F32)?.to_vec2()?;
        let padded = in_dim.div_ceil(32) * 32;
        let mut weights = vec![0i8; out_dim * padded];
        let mut scales = vec![0f32; out_dim];
        let mut row_sums = vec![0i32; out_dim];
        for (o, row) in w.iter().enumerate() {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            scales[o] = scale;
            for (i, v) in row.iter().enumerate() {
                let q = (v / scale).round().clamp(-127.0, 127.0) as i8;
                weights[o * padded + i] = q;
                row_sums[o] += q as i32;
            }
        }
        let bias = match bias {
            Some(b) => b.to_dtype(candle_core::DType::F32)?.to_vec1()?,
            None => vec![0f32; out_dim],
        };
        Ok(Self { out_dim, in_dim, padded, weights, scales, row_sums, bias })
    }

    /// Bytes the quantised weights take.
    pub fn weight_bytes(&self) -> usize {
        self.weights.len() + 4 * (self.scales.len() + self.row_sums.len() + self.bias.len())
    }

    /// `x Wᵀ + b` over the last dimension of `x` (f32, CPU).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("linear input has a last dim");
        if in_dim != self.in_dim {
            candle_core::bail!("int8 linear expects {} inputs, got {in_dim}", self.in_dim)
        }
        let rows = x.elem_count() / in_dim;
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(all)) = &*storage else { candle_core::bail!("int8 linear expects f32 CPU input") };
        let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("int8 linear expects contiguous input") };
        let xs = &all[start..end];
        let mut y = vec![0f32; rows * self.out_dim];
        // Rows in blocks: each task quantises its rows, then runs them against all weights.
        let block = 16;
        y.par_chunks_mut(block * self.out_dim).enumerate().for_each(|(bi, out)| {
            let r0 = bi * block;
            let n = out.len() / self.out_dim;
            let mut qx = vec![0u8; n * self.padded];
            let mut act_scale = vec![0f32; n];
            for r in 0..n {
                let src = &xs[(r0 + r) * in_dim..(r0 + r + 1) * in_dim];
                act_scale[r] = quantize_row(src, &mut qx[r * self.padded..(r + 1) * self.padded]);
            }
            let mut sums = vec![0i32; n * self.out_dim];
            self.rows_times_weights(&qx, n, &mut sums);
            for r in 0..n {
                let row = &mut out[r * self.out_dim..(r + 1) * self.out_dim];
                for (o, v) in row.iter_mut().enumerate() {
                    let exact = sums[r * self.out_dim + o] - OFFSET * self.row_sums[o];
                    *v = exact as f32 * act_scale[r] * self.scales[o] + self.bias[o];
                }
            }
        });
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.out_dim;
        Tensor::from_vec(y, out_dims, &Device::Cpu)
    }

    /// For `n` quantised rows: `out[r, o] = Σ_i qx[r, i] · w[o, i]`.
    fn rows_times_weights(&self, qx: &[u8], n: usize, out: &mut [i32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present; slices are sized `n × padded` and `out_dim × padded`.
                unsafe { avx2::dots(qx, &self.weights, n, self.out_dim, self.padded, out) };
                return;
            }
        }
        for r in 0..n {
            let a = &qx[r * self.padded..(r + 1) * self.padded];
            for o in 0..self.out_dim {
                let w = &self.weights[o * self.padded..(o + 1) * self.padded];
                out[r * self.out_dim + o] = a.iter().zip(w).map(|(&x, &w)| x as i32 * w as i32).sum();
            }
        }
    }
}

/// Quantises one activation row into `dst` (padding set to the offset; padded weights are 0, so
/// it adds nothing) and returns its scale.
fn quantize_row(src: &[f32], dst: &mut [u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present; `dst` is at least as long as `src`.
            return unsafe { avx2::quantize_row(src, dst) };
        }
    }
    let max = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 { max / ACT_MAX } else { 1.0 };
    let inv = 1.0 / scale;
    for (d, v) in dst.iter_mut().zip(src) {
        *d = ((v * inv).round_ties_even() as i32 + OFFSET) as u8;
    }
    for d in &mut dst[src.len()..] {
        *d = OFFSET as u8;
    }
    scale
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// Dot products of `n` activation rows with `m` weight rows, 2 rows × 4 weights at a time
    /// (8 accumulators), 32 bytes per step: `vpmaddubsw` (u8·i8 pairs → i16), `vpmaddwd` with
    /// ones (→ i32), add.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dots(qx: &[u8], w: &[i8], n: usize, m: usize, k: usize, out: &mut [i32]) {
        let ones = _mm256_set1_epi16(1);
        let step = |acc: __m256i, a: __m256i, b: __m256i| _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
        let write = |out: &mut [i32], r: usize, o: usize, v: i32| out[r * m + o] = v;
        // Weight quads outside, row pairs inside: a block's activations (16 rows) stay in L1
        // while each group of 4 weight rows is read from L2 once per block.
        let mut o = 0;
        while o < m {
            let cols = (m - o).min(4);
            let wp = |j: usize| w.as_ptr().add((o + j.min(cols - 1)) * k);
            let (w0, w1, w2, w3) = (wp(0), wp(1), wp(2), wp(3));
            let mut r = 0;
            while r < n {
                let two = r + 1 < n;
                let a0p = qx.as_ptr().add(r * k);
                let a1p = if two { qx.as_ptr().add((r + 1) * k) } else { a0p };
                let mut acc = [_mm256_setzero_si256(); 8];
                let mut i = 0;
                while i < k {
                    let a0 = _mm256_loadu_si256(a0p.add(i) as *const __m256i);
                    let a1 = _mm256_loadu_si256(a1p.add(i) as *const __m256i);
                    let b0 = _mm256_loadu_si256(w0.add(i) as *const __m256i);
                    let b1 = _mm256_loadu_si256(w1.add(i) as *const __m256i);
                    let b2 = _mm256_loadu_si256(w2.add(i) as *const __m256i);
                    let b3 = _mm256_loadu_si256(w3.add(i) as *const __m256i);
                    acc[0] = step(acc[0], a0, b0);
                    acc[1] = step(acc[1], a0, b1);
                    acc[2] = step(acc[2], a0, b2);
                    acc[3] = step(acc[3], a0, b3);
                    acc[4] = step(acc[4], a1, b0);
                    acc[5] = step(acc[5], a1, b1);
                    acc[6] = step(acc[6], a1, b2);
                    acc[7] = step(acc[7], a1, b3);
                    i += 32;
                }
                for j in 0..cols {
                    write(out, r, o + j, hsum(acc[j]));
                    if two {
                        write(out, r + 1, o + j, hsum(acc[4 + j]));
                    }
                }
                r += 2;
            }
            o += 4;
        }
    }

    /// Quantises one row: `dst[i] = round(src[i] / scale) + 64`, returning the scale
    /// (`max |src| / 63`). `dst` may be longer than `src`; the rest is set to the offset.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_row(src: &[f32], dst: &mut [u8]) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        let mut vmax = _mm256_setzero_ps();
        let chunks = src.len() / 8;
        for c in 0..chunks {
            vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(src.as_ptr().add(c * 8))));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), vmax);
        let mut max = lanes.iter().fold(0f32, |m, &v| m.max(v));
        for v in &src[chunks * 8..] {
            max = max.max(v.abs());
        }
        let scale = if max > 0.0 { max / super::ACT_MAX } else { 1.0 };
        let inv = _mm256_set1_ps(1.0 / scale);
        let offset = _mm256_set1_epi32(super::OFFSET);
        for c in 0..chunks {
            // Round to nearest (even), add the offset, pack i32 → i16 → u8 (values are 1..=127).
            let q = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src.as_ptr().add(c * 8)), inv)), offset);
            let q16 = _mm256_packs_epi32(q, q);
            let q8 = _mm256_packus_epi16(q16, q16);
            let lo = _mm256_castsi256_si128(q8);
            let hi = _mm256_extracti128_si256(q8, 1);
            let bytes = (_mm_cvtsi128_si32(lo) as u32 as u64) | ((_mm_cvtsi128_si32(hi) as u32 as u64) << 32);
            std::ptr::copy_nonoverlapping(bytes.to_le_bytes().as_ptr(), dst.as_mut_ptr().add(c * 8), 8);
        }
        let inv = 1.0 / scale;
        for i in chunks * 8..src.len() {
            dst[i] = ((src[i] * inv).round_ties_even() as i32 + super::OFFSET) as u8;
        }
        for d in &mut dst[src.len()..] {
            *d = super::OFFSET as u8;
        }
        scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_linear_is_close_to_f32() {
        let dev = Device::Cpu;
        let (rows, k, n) = (37, 70, 11); // odd sizes: row pairs, weight quads and k padding all have remainders
        let gen = |len: usize, seed: u64| -> Vec<f32> { (0..len).map(|i| (((seed + i as u64) * 2654435761) % 1000) as f32 / 500.0 - 1.0).collect() };
        let x = Tensor::from_vec(gen(rows * k, 1), (rows, k), &dev).unwrap();
        let w = Tensor::from_vec(gen(n * k, 7), (n, k), &dev).unwrap();
        let b = Tensor::from_vec(gen(n, 3), n, &dev).unwrap();
        let q = QuantLinear::new(&w, Some(&b)).unwrap();
        let got = q.forward(&x).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        let err = (&got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let size = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        // 7-bit activations and 8-bit weights: about 1% of the output range.
        assert!(err < 0.02 * size, "max error {err} of {size}");
        assert!(err > 0.0, "quantisation must show some error (else the test checks nothing)");
        // The AVX2 path and the portable path agree exactly.
        let qx: Vec<u8> = (0..3 * q.padded).map(|i| (1 + i % 127) as u8).collect();
        let mut fast = vec![0i32; 3 * n];
        q.rows_times_weights(&qx, 3, &mut fast);
        for r in 0..3 {
            for o in 0..n {
                let a = &qx[r * q.padded..(r + 1) * q.padded];
                let wr = &q.weights[o * q.padded..(o + 1) * q.padded];
                let exact: i32 = a.iter().zip(wr).map(|(&x, &w)| x as i32 * w as i32).sum();
                assert_eq!(fast[r * n + o], exact);
            }
        }
    }
}
