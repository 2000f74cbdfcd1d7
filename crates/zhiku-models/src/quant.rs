//! Int8 inference for linear layers: weights quantised once per output channel (symmetric, 8
//! bits), activations quantised per row on the fly (symmetric, 7 bits), products accumulated in
//! i32 and scaled back to f32 with the bias added.
//!
//! Kernels, chosen at run time: AVX-512 VNNI (`vpdpbusd`: 64 byte products summed into 16 i32
//! lanes per instruction, four times the multiply-adds of an f32 FMA) where the CPU has it
//! (Intel since Ice Lake / Sapphire Rapids, AMD since Zen 4), else AVX2, else portable code. All
//! three compute the same integer sums, so results do not depend on the CPU.
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
    /// `[out_dim, padded]`, row-major, or in the VNNI kernel's packed layout when `vnni`.
    weights: Vec<i8>,
    vnni: bool,
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
        let vnni = vnni::available();
        let weights = if vnni { vnni::pack(&weights, out_dim, padded) } else { weights };
        Ok(Self { out_dim, in_dim, padded, weights, vnni, scales, row_sums, bias })
    }

    /// Bytes the quantised weights take.
    pub fn weight_bytes(&self) -> usize {
        self.weights.len() + 4 * (self.scales.len() + self.row_sums.len() + self.bias.len())
    }

    /// `x Wᵀ + b` over the last dimension of `x` (f32, CPU).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_then(x, false)
    }

    /// `gelu(x Wᵀ + b)` (exact GELU), applied to each block of output rows while it is in cache.
    pub fn forward_gelu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_then(x, true)
    }

    fn forward_then(&self, x: &Tensor, gelu: bool) -> candle_core::Result<Tensor> {
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
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.out_dim;
        let mut y = vec![0f32; rows * self.out_dim];
        // Rows in blocks: each task quantises its rows, runs them against all weights and
        // writes finished outputs.
        let block = if self.vnni { 64 } else { 16 };
        y.par_chunks_mut(block * self.out_dim).enumerate().for_each(|(bi, out)| {
            let n = out.len() / self.out_dim;
            let (qx, act_scale) = self.quantize_rows(xs, bi * block, n);
            if self.vnni {
                let tail = vnni::Tail { weight_scales: &self.scales, row_sums: &self.row_sums, bias: &self.bias, act_scales: &act_scale };
                // SAFETY: `available()` was true when the weights were packed; sizes match `pack`.
                unsafe { vnni::gemm(&qx, n, &self.weights, self.out_dim, self.padded, &tail, out) };
            } else {
                let mut sums = vec![0i32; n * self.out_dim];
                self.rows_times_weights(&qx, n, &mut sums);
                for r in 0..n {
                    let row = &mut out[r * self.out_dim..(r + 1) * self.out_dim];
                    for (o, v) in row.iter_mut().enumerate() {
                        let exact = sums[r * self.out_dim + o] - OFFSET * self.row_sums[o];
                        *v = exact as f32 * act_scale[r] * self.scales[o] + self.bias[o];
                    }
                }
            }
            if gelu {
                crate::kernels::gelu_erf_in_place(out);
            }
        });
        Tensor::from_vec(y, out_dims, &Device::Cpu)
    }

    /// Rows `first..first + n` of `xs` quantised (`n × padded` bytes) with their scales.
    fn quantize_rows(&self, xs: &[f32], first: usize, n: usize) -> (Vec<u8>, Vec<f32>) {
        let mut qx = vec![0u8; n * self.padded];
        let mut scales = vec![0f32; n];
        for r in 0..n {
            let src = &xs[(first + r) * self.in_dim..(first + r + 1) * self.in_dim];
            scales[r] = quantize_row(src, &mut qx[r * self.padded..(r + 1) * self.padded]);
        }
        (qx, scales)
    }

    /// For `n` quantised rows: `out[r, o] = Σ_i qx[r, i] · w[o, i]` (row-major weights).
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

/// The AVX-512 VNNI kernel. Weights are packed in blocks of 16 output channels: for each group
/// of 4 inputs, one 64-byte vector holds the 4 weights of each of the 16 channels, so
/// `vpdpbusd` with the row's 4 activation bytes broadcast adds 4 products into each channel's
/// i32 lane. Accumulators hold 16 channels of one row, so results need no horizontal sums;
/// the epilogue removes the activation offset, scales, adds the bias and stores f32.
pub(crate) mod vnni {
    /// Output channels per packed block (one zmm of i32).
    const LANES: usize = 16;

    /// Whether this CPU has the kernel's instructions (`ZHIKU_NO_VNNI` set: treated as not).
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::env::var_os("ZHIKU_NO_VNNI").is_none()
                && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Blocks of output channels, rounded up to even: the kernel does two blocks at a time.
    fn blocks(out_dim: usize) -> usize {
        out_dim.div_ceil(LANES).div_ceil(2) * 2
    }

    /// Position of weight `[o, i]` in the packed layout.
    pub fn packed_index(o: usize, i: usize, padded: usize) -> usize {
        let (block, lane) = (o / LANES, o % LANES);
        (block * (padded / 4) + i / 4) * 64 + lane * 4 + i % 4
    }

    /// Packs row-major `[out_dim, padded]` weights; channels past `out_dim` are zero.
    pub fn pack(w: &[i8], out_dim: usize, padded: usize) -> Vec<i8> {
        let mut p = vec![0i8; blocks(out_dim) * LANES * padded];
        for o in 0..out_dim {
            for i in 0..padded {
                p[packed_index(o, i, padded)] = w[o * padded + i];
            }
        }
        p
    }

    /// What the epilogue needs to turn integer sums into outputs.
    pub struct Tail<'a> {
        pub weight_scales: &'a [f32],
        pub row_sums: &'a [i32],
        pub bias: &'a [f32],
        pub act_scales: &'a [f32],
    }

    /// `out[r, o] = (Σ_i qx[r, i]·w[o, i] − 64·Σ_i w[o, i]) · act_scale[r] · w_scale[o] + bias[o]`
    /// for `n` rows.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI; `qx` holds `n × k` bytes, `packed` comes from
    /// [`pack`] with the same `out_dim` and `k`, and `out` holds `n × out_dim` floats.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn gemm(qx: &[u8], n: usize, packed: &[i8], out_dim: usize, k: usize, tail: &Tail, out: &mut [f32]) {
        debug_assert!(qx.len() >= n * k && out.len() >= n * out_dim && packed.len() >= blocks(out_dim) * LANES * k);
        for pair in 0..blocks(out_dim) / 2 {
            let mut r = 0;
            while r < n {
                let rows = (n - r).min(8);
                match rows {
                    8 => kernel::<8>(qx, r, packed, pair, out_dim, k, tail, out),
                    7 => kernel::<7>(qx, r, packed, pair, out_dim, k, tail, out),
                    6 => kernel::<6>(qx, r, packed, pair, out_dim, k, tail, out),
                    5 => kernel::<5>(qx, r, packed, pair, out_dim, k, tail, out),
                    4 => kernel::<4>(qx, r, packed, pair, out_dim, k, tail, out),
                    3 => kernel::<3>(qx, r, packed, pair, out_dim, k, tail, out),
                    2 => kernel::<2>(qx, r, packed, pair, out_dim, k, tail, out),
                    _ => kernel::<1>(qx, r, packed, pair, out_dim, k, tail, out),
                }
                r += rows;
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub unsafe fn gemm(_: &[u8], _: usize, _: &[i8], _: usize, _: usize, _: &Tail, _: &mut [f32]) {
        unreachable!("VNNI is x86-64 only")
    }

    /// `R` rows (from `r0`) × the 32 channels of block pair `pair`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel<const R: usize>(qx: &[u8], r0: usize, packed: &[i8], pair: usize, out_dim: usize, k: usize, tail: &Tail, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let groups = k / 4;
        let w0 = packed.as_ptr().add(2 * pair * groups * 64);
        let w1 = w0.add(groups * 64);
        let a = qx.as_ptr().add(r0 * k);
        let mut acc = [[_mm512_setzero_si512(); 2]; R];
        for g in 0..groups {
            let b0 = _mm512_loadu_si512(w0.add(g * 64) as *const _);
            let b1 = _mm512_loadu_si512(w1.add(g * 64) as *const _);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32((a.add(r * k + g * 4) as *const i32).read_unaligned());
                acc[0] = _mm512_dpbusd_epi32(acc[0], x, b0);
                acc[1] = _mm512_dpbusd_epi32(acc[1], x, b1);
            }
        }
        let offset = _mm512_set1_epi32(super::OFFSET);
        for half in 0..2 {
            let o = (2 * pair + half) * LANES;
            if o >= out_dim {
                break;
            }
            let live = (out_dim - o).min(LANES);
            let mask: __mmask16 = if live == LANES { !0 } else { (1u16 << live) - 1 };
            let sums = _mm512_maskz_loadu_epi32(mask, tail.row_sums.as_ptr().add(o));
            let scales = _mm512_maskz_loadu_ps(mask, tail.weight_scales.as_ptr().add(o));
            let bias = _mm512_maskz_loadu_ps(mask, tail.bias.as_ptr().add(o));
            let correction = _mm512_mullo_epi32(sums, offset);
            for (r, acc) in acc.iter().enumerate() {
                let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[half], correction));
                let scale = _mm512_mul_ps(scales, _mm512_set1_ps(tail.act_scales[r0 + r]));
                let y = _mm512_fmadd_ps(exact, scale, bias);
                _mm512_mask_storeu_ps(out.as_mut_ptr().add((r0 + r) * out_dim + o), mask, y);
            }
        }
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
        let q = row_major(q);
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

    #[test]
    fn vnni_kernel_matches_the_portable_sums() {
        if !vnni::available() {
            eprintln!("no AVX-512 VNNI on this CPU: kernel not tested");
            return;
        }
        let dev = Device::Cpu;
        // Rows and outputs with remainders against the kernel's 8 rows × 32 outputs.
        for (rows, k, n) in [(1, 40, 7), (13, 70, 33), (70, 96, 64), (9, 384, 50)] {
            let gen = |len: usize, seed: u64| -> Vec<f32> { (0..len).map(|i| (((seed + i as u64) * 2654435761) % 1000) as f32 / 500.0 - 1.0).collect() };
            let x = Tensor::from_vec(gen(rows * k, 1), (rows, k), &dev).unwrap();
            let w = Tensor::from_vec(gen(n * k, 7), (n, k), &dev).unwrap();
            let b = Tensor::from_vec(gen(n, 3), n, &dev).unwrap();
            let fast = QuantLinear::new(&w, Some(&b)).unwrap();
            assert!(fast.vnni);
            let plain = row_major(QuantLinear::new(&w, Some(&b)).unwrap());
            let want = plain.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            let got = fast.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            for (gr, wr) in got.iter().zip(&want) {
                for (g, w) in gr.iter().zip(wr) {
                    // Same integer sums; only the order of the f32 scaling may differ.
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{rows}x{k}x{n}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn gelu_epilogue_equals_gelu_after() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (70, 64), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.2, (48, 64), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.5, 48, &dev).unwrap();
        for q in [QuantLinear::new(&w, Some(&b)).unwrap(), row_major(QuantLinear::new(&w, Some(&b)).unwrap())] {
            let fused = q.forward_gelu(&x).unwrap();
            let after = crate::kernels::gelu_erf(&q.forward(&x).unwrap()).unwrap();
            let diff = (&fused - &after).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-6, "{diff}");
            let plain = q.forward(&x).unwrap();
            let moved = (&fused - &plain).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(moved > 0.1, "the GELU must change the output");
        }
    }

    /// The layer on the row-major kernels (AVX2 or portable), whatever this CPU has.
    fn row_major(mut q: QuantLinear) -> QuantLinear {
        if q.vnni {
            let packed = std::mem::take(&mut q.weights);
            q.weights = vec![0i8; q.out_dim * q.padded];
            for o in 0..q.out_dim {
                for i in 0..q.padded {
                    q.weights[o * q.padded + i] = packed[vnni::packed_index(o, i, q.padded)];
                }
            }
            q.vnni = false;
        }
        q
    }
}
