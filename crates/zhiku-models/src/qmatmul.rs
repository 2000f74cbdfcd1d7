//! Matrix products with weights in ggml's block formats, read where they lie (in the GGUF
//! memory map), never dequantised as a whole.
//!
//! Activations are quantised per row in groups of 32 to 8 bits (one f32 scale per group, and
//! the scaled sums of each half-group), like llama.cpp's Q8_0. A weight group's 32 unsigned
//! codes are then multiplied with the activation bytes in integers, and
//! `Σ w·x = d · (scale₀·Σ₀ code·a + scale₁·Σ₁ code·a + offset₀·Σ₀ a + offset₁·Σ₁ a)`
//! (see `blocks`). On x86 with AVX-VNNI one `vpdpbusd` does a group's 32 products; with AVX2
//! alone the bytes are widened to 16 bits and `vpmaddwd` does them; elsewhere a portable loop.
//! All three compute the same integer sums.
//!
//! A product runs as tiles: up to 64 activation rows stay in cache while a thread walks its
//! share of the weight rows, and each weight group is unpacked once for up to 8 activation
//! rows (16 with AVX-512 VNNI, where one 512-bit `vpdpbusd` takes two groups). Decoding one
//! sequence is bound by reading the weights once; decoding many at once (one row each) is
//! bound by these products, which is why the AVX-512 kernel exists. Every kernel computes a
//! row's product the same way whatever other rows share the call, so a sequence's text does
//! not change when others join its decoding steps (tested).

use crate::blocks::{GgmlType, GroupParams, QuantFormat, Q4K, Q4_0, Q4_1, Q5K, Q5_0, Q5_1, Q6K, Q8_0};
use crate::gguf::GgufTensor;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Evaluates `$body` with the type alias `$f` naming the block format of `$dtype`, a
/// quantised type (float types never reach the block kernels).
macro_rules! with_block_format {
    ($dtype:expr, $f:ident => $body:expr) => {
        match $dtype {
            GgmlType::Q4_0 => {
                type $f = Q4_0;
                $body
            }
            GgmlType::Q4_1 => {
                type $f = Q4_1;
                $body
            }
            GgmlType::Q5_0 => {
                type $f = Q5_0;
                $body
            }
            GgmlType::Q5_1 => {
                type $f = Q5_1;
                $body
            }
            GgmlType::Q8_0 => {
                type $f = Q8_0;
                $body
            }
            GgmlType::Q4K => {
                type $f = Q4K;
                $body
            }
            GgmlType::Q5K => {
                type $f = Q5K;
                $body
            }
            GgmlType::Q6K => {
                type $f = Q6K;
                $body
            }
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => unreachable!("float weights take float_matmul"),
        }
    };
}

/// Activation rows quantised to 8 bits in groups of 32.
pub struct QuantizedRows {
    pub rows: usize,
    pub cols: usize,
    pub q: Vec<i8>,
    /// Per group: the scale (x ≈ d · q).
    pub d: Vec<f32>,
    /// Per group: d · Σ q over each half-group of 16.
    pub dsum: Vec<[f32; 2]>,
    /// Per group: d · Σ q over the group (formats with one offset per group).
    pub dsum_total: Vec<f32>,
    /// Per group: d repeated 8 times, one per lane of the group's products in a 512-bit
    /// vector (the AVX-512 kernel multiplies two groups' sums by their scales in one load).
    pub d8: Vec<f32>,
}

impl QuantizedRows {
    pub fn new(x: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(x.len(), rows * cols);
        assert_eq!(cols % 32, 0, "row length must be a multiple of 32");
        let groups = x.len() / 32;
        let mut q = vec![0i8; x.len()];
        let mut d = vec![0f32; groups];
        let mut dsum = vec![[0f32; 2]; groups];
        q.par_chunks_mut(32 * 64)
            .zip(d.par_chunks_mut(64))
            .zip(dsum.par_chunks_mut(64))
            .zip(x.par_chunks(32 * 64))
            .for_each(|(((q, d), dsum), x)| {
                for (((q, d), dsum), x) in q.chunks_exact_mut(32).zip(d.iter_mut()).zip(dsum.iter_mut()).zip(x.chunks_exact(32)) {
                    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let scale = amax / 127.0;
                    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                    let mut s = [0i32; 2];
                    for (i, (q, &v)) in q.iter_mut().zip(x).enumerate() {
                        let r = (v * inv).round() as i8;
                        *q = r;
                        s[i / 16] += r as i32;
                    }
                    *d = scale;
                    *dsum = [scale * s[0] as f32, scale * s[1] as f32];
                }
            });
        let dsum_total = dsum.iter().map(|s| s[0] + s[1]).collect();
        let mut rows = Self { rows, cols, q, d, dsum, dsum_total, d8: Vec::new() };
        if kernel() == Kernel::Avx512Vnni {
            rows.expand_scales();
        }
        rows
    }

    /// Fills `d8` from `d` (what the AVX-512 kernel reads).
    pub fn expand_scales(&mut self) {
        self.d8 = self.d.iter().flat_map(|&v| [v; 8]).collect();
    }
}

enum Weights {
    /// Quantised blocks in the GGUF map (or owned bytes written by a quantiser).
    Mapped(GgufTensor),
    Owned(Vec<u8>),
    /// Plain floats (F32, F16 and BF16 tensors are widened once at load).
    Float(Vec<f32>),
}

/// A weight matrix `[rows, cols]` (rows = output features) in any supported type.
pub struct QMatrix {
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    weights: Weights,
}

impl QMatrix {
    pub fn from_gguf(t: GgufTensor) -> Result<Self> {
        let (rows, cols) = t.info.matrix_shape();
        let dtype = t.info.dtype;
        let weights = if dtype.is_quantized() { Weights::Mapped(t) } else { Weights::Float(t.to_f32()?) };
        Ok(Self { dtype, rows, cols, weights })
    }

    /// From f32 values, kept as f32 (`GgmlType::F32`) or quantised to `dtype`.
    pub fn from_f32(values: Vec<f32>, rows: usize, cols: usize, dtype: GgmlType) -> Result<Self> {
        if values.len() != rows * cols {
            bail!("matrix of {rows}x{cols} given {} values", values.len())
        }
        if !cols.is_multiple_of(dtype.block_len()) {
            bail!("row length {cols} is not a multiple of {}'s block of {}", dtype.name(), dtype.block_len())
        }
        let weights = if dtype.is_quantized() {
            Weights::Owned(crate::blocks::quantize::quantize(dtype, &values))
        } else {
            let mut v = values;
            if dtype != GgmlType::F32 {
                // Round through the narrow type so the matrix holds exactly what a file would.
                let bytes = crate::blocks::quantize::quantize(dtype, &v);
                dtype.dequantize(&bytes, &mut v)?;
            }
            Weights::Float(v)
        };
        Ok(Self { dtype, rows, cols, weights })
    }

    fn bytes(&self) -> &[u8] {
        match &self.weights {
            Weights::Mapped(t) => t.bytes(),
            Weights::Owned(b) => b,
            Weights::Float(_) => &[],
        }
    }

    /// Bytes of weight data a product reads.
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            Weights::Float(v) => v.len() * 4,
            _ => self.bytes().len(),
        }
    }

    /// Row `r` as f32 (an embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows {
            bail!("row {r} out of range (matrix has {} rows)", self.rows)
        }
        match &self.weights {
            Weights::Float(v) => out.copy_from_slice(&v[r * self.cols..(r + 1) * self.cols]),
            _ => {
                let rb = self.dtype.bytes_for(self.cols);
                self.dtype.dequantize(&self.bytes()[r * rb..(r + 1) * rb], out)?
            }
        }
        Ok(())
    }

    /// The whole matrix as f32, row-major.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        match &self.weights {
            Weights::Float(v) => Ok(v.clone()),
            _ => {
                let mut out = vec![0f32; self.rows * self.cols];
                self.dtype.dequantize(self.bytes(), &mut out)?;
                Ok(out)
            }
        }
    }

    /// `y[n, rows] = x[n, cols] · Wᵀ`.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        assert_eq!(x.len(), n * self.cols, "matmul input shape");
        assert_eq!(y.len(), n * self.rows, "matmul output shape");
        if n == 0 {
            return;
        }
        if let Weights::Float(w) = &self.weights {
            return float_matmul(w, self.rows, self.cols, x, n, y);
        }
        if n >= GEMM_ROWS {
            return self.matmul_tiled(x, n, y);
        }
        let acts = QuantizedRows::new(x, n, self.cols);
        self.matmul_quantized(&acts, y)
    }

    /// [`Self::matmul`] for a few rows that are independent hypotheses (beam search). With f32
    /// weights each weight row is read once and multiplied with up to eight rows at a time, each
    /// with its own accumulators (one dot product at a time waits on its FMA chain, and the
    /// GEMM would repack the whole matrix every call). Its rounding differs from `matmul`'s,
    /// which is why it is a separate entry point.
    pub fn matmul_rows(&self, x: &[f32], n: usize, y: &mut [f32]) {
        match &self.weights {
            Weights::Float(w) if n > 1 => {
                assert_eq!(x.len(), n * self.cols, "matmul input shape");
                assert_eq!(y.len(), n * self.rows, "matmul output shape");
                float_matmul_rows(w, self.rows, self.cols, x, n, y)
            }
            _ => self.matmul(x, n, y),
        }
    }

    /// Several rows (prompts, and decoding many sequences at once): weight rows are dequantised
    /// 64 at a time into an f32 tile that stays in cache (SIMD unpacking), and an f32 GEMM
    /// (AVX-512 where the CPU has it) multiplies the tile by every activation row. It beats the
    /// integer kernels from about 8 rows (16 sequences of Qwen2.5-0.5B: 94 against 80 tokens/s),
    /// but `GEMM_ROWS` stays at 32: the path decides the rounding, and a sequence's text should
    /// not change when a few others join its decoding steps.
    fn matmul_tiled(&self, x: &[f32], n: usize, y: &mut [f32]) {
        const TILE: usize = 64;
        let (rows, cols) = (self.rows, self.cols);
        let out = SharedOut(y.as_mut_ptr());
        (0..rows.div_ceil(TILE)).into_par_iter().for_each_init(
            || vec![0f32; TILE * cols],
            |wf, t| {
                let first = t * TILE;
                let count = TILE.min(rows - first);
                let wf = &mut wf[..count * cols];
                self.dequantize_rows(first, count, wf);
                let out = &out;
                // yᵀ[first.., :] = W_tile · xᵀ: the weight rows are the GEMM's M dimension, which
                // fills its microkernel (a handful of activation rows would use a quarter of it).
                // SAFETY: this task writes only columns first..first+count of y (n × rows), which
                // no other task writes; x and wf cover the strides given.
                unsafe {
                    gemm::gemm(
                        count, n, cols,
                        out.0.add(first), rows as isize, 1, false,
                        wf.as_ptr(), 1, cols as isize,
                        x.as_ptr(), cols as isize, 1,
                        0.0, 1.0, false, false, false,
                        gemm::Parallelism::None,
                    );
                }
            },
        );
    }

    /// Rows `first..first + count` as f32 into `out`, with the SIMD unpacking of the chosen
    /// kernel.
    fn dequantize_rows(&self, first: usize, count: usize, out: &mut [f32]) {
        let row_bytes = self.dtype.bytes_for(self.cols);
        let bytes = &self.bytes()[first * row_bytes..(first + count) * row_bytes];
        with_block_format!(self.dtype, F => match kernel() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `kernel()` checked the CPU features.
            Kernel::AvxVnniBw | Kernel::Avx512Vnni => unsafe { x86::dequantize_bw::<F>(bytes, out) },
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni | Kernel::Avx2 => unsafe { x86::dequantize_avx2::<F>(bytes, out) },
            _ => self.dtype.dequantize(bytes, out).expect("whole blocks"),
        })
    }

    /// The product in f32 with each weight row dequantised (no rounding of the activations):
    /// the reference the quantised kernels are measured against, and transformers' arithmetic
    /// on a GGUF file.
    pub fn matmul_exact(&self, x: &[f32], n: usize, y: &mut [f32]) -> Result<()> {
        assert_eq!(x.len(), n * self.cols, "matmul input shape");
        assert_eq!(y.len(), n * self.rows, "matmul output shape");
        if let Weights::Float(w) = &self.weights {
            float_matmul(w, self.rows, self.cols, x, n, y);
            return Ok(());
        }
        let row_bytes = self.dtype.bytes_for(self.cols);
        let w = self.bytes();
        let mut yt = vec![0f32; self.rows * n];
        yt.par_chunks_mut(n).enumerate().try_for_each_init(
            || vec![0f32; self.cols],
            |row, (o, col)| -> Result<()> {
                self.dtype.dequantize(&w[o * row_bytes..(o + 1) * row_bytes], row)?;
                for (r, v) in col.iter_mut().enumerate() {
                    *v = crate::slice_ops::dot(row, &x[r * self.cols..(r + 1) * self.cols]);
                }
                Ok(())
            },
        )?;
        transpose_into(&yt, n, self.rows, y);
        Ok(())
    }

    /// `dx[n, cols] = dy[n, rows] · W`: the gradient of [`QMatrix::matmul`] with respect to its
    /// input, which fine-tuning an adapter over frozen quantised weights needs. Weight rows are
    /// dequantised a chunk at a time (in parallel) and each chunk's share is added by an f32
    /// GEMM, so the matrix is never held whole in f32.
    pub fn matmul_transposed(&self, dy: &[f32], n: usize, dx: &mut [f32]) {
        assert_eq!(dy.len(), n * self.rows, "transposed product input shape");
        assert_eq!(dx.len(), n * self.cols, "transposed product output shape");
        if n == 0 {
            return;
        }
        let (rows, cols) = (self.rows, self.cols);
        const CHUNK: usize = 256;
        let mut wf = Vec::new();
        for first in (0..rows).step_by(CHUNK) {
            let count = CHUNK.min(rows - first);
            let w: &[f32] = match &self.weights {
                Weights::Float(v) => &v[first * cols..(first + count) * cols],
                _ => {
                    let row_bytes = self.dtype.bytes_for(cols);
                    let bytes = &self.bytes()[first * row_bytes..(first + count) * row_bytes];
                    wf.resize(count * cols, 0.0);
                    wf.par_chunks_mut(cols).zip(bytes.par_chunks(row_bytes)).for_each(|(out, b)| {
                        self.dtype.dequantize(b, out).expect("whole blocks");
                    });
                    &wf
                }
            };
            let threads = rayon::current_num_threads();
            let par = if threads > 1 && n * count * cols > 1 << 18 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
            // SAFETY: dy is n × rows (row stride `rows`; columns first..first+count read), w is
            // count × cols row-major, dx is n × cols; dx does not alias either input.
            unsafe {
                gemm::gemm(
                    n, cols, count,
                    dx.as_mut_ptr(), 1, cols as isize, first > 0,
                    dy.as_ptr().add(first), 1, rows as isize,
                    w.as_ptr(), 1, cols as isize,
                    1.0, 1.0, false, false, false,
                    par,
                );
            }
        }
    }

    /// The product with activations already quantised (several matrices reading one input).
    pub fn matmul_quantized(&self, acts: &QuantizedRows, y: &mut [f32]) {
        with_block_format!(self.dtype, F => run::<F>(self.bytes(), self.rows, acts, y))
    }

    pub fn is_float(&self) -> bool {
        matches!(self.weights, Weights::Float(_))
    }
}

/// Rows from which a product dequantises its weights and runs an f32 GEMM.
pub const GEMM_ROWS: usize = 32;

/// The output pointer shared by the tasks of one product (each writes its own columns).
struct SharedOut(*mut f32);
unsafe impl Sync for SharedOut {}
unsafe impl Send for SharedOut {}

/// Which kernel runs: chosen once from the CPU's features (`ZHIKU_QKERNEL=portable|avx2`
/// forces a slower one, to compare them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Portable,
    Avx2,
    AvxVnni,
    /// AVX-VNNI products with AVX-512BW mask registers for unpacking.
    AvxVnniBw,
    /// AVX-512 VNNI: two groups per 512-bit product, up to 16 activation rows per unpacked
    /// pair of weight groups (decoding many sequences at once is bound by these products).
    Avx512Vnni,
}

pub fn kernel() -> Kernel {
    static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let forced = std::env::var("ZHIKU_QKERNEL").ok();
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let vnni = avx2 && is_x86_feature_detected!("avxvnni");
            let bw = vnni && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl");
            let avx512 = bw && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni");
            match forced.as_deref() {
                Some("portable") => Kernel::Portable,
                Some("avx2") if avx2 => Kernel::Avx2,
                Some("avxvnni") if vnni => Kernel::AvxVnni,
                Some("avxvnnibw") if bw => Kernel::AvxVnniBw,
                _ if avx512 => Kernel::Avx512Vnni,
                _ if bw => Kernel::AvxVnniBw,
                _ if vnni => Kernel::AvxVnni,
                _ if avx2 => Kernel::Avx2,
                _ => Kernel::Portable,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = forced;
            Kernel::Portable
        }
    })
}

/// Activation rows kept in cache while a thread walks its weight rows.
const ROW_TILE: usize = 64;

fn run<F: x86::SimdFormat>(w: &[u8], rows: usize, acts: &QuantizedRows, y: &mut [f32]) {
    let n = acts.rows;
    let row_bytes = F::BYTES * acts.cols / F::LEN;
    debug_assert_eq!(w.len(), rows * row_bytes);
    // Output computed as [rows, n] so that each task owns a contiguous slice, then transposed.
    let threads = rayon::current_num_threads().max(1);
    let chunk = rows.div_ceil(threads * 4).clamp(8, 256);
    let kernel = kernel();
    // One activation row: [rows, 1] is y's own layout, so no buffer and no transpose.
    let mut buffer = if n == 1 { Vec::new() } else { vec![0f32; rows * n] };
    let yt: &mut [f32] = if n == 1 { y } else { &mut buffer };
    yt.par_chunks_mut(chunk * n).enumerate().for_each_init(Vec::new, |offsets, (ci, out)| {
        let first = ci * chunk;
        let count = out.len() / n;
        let ahead = prefetch_rows(row_bytes);
        for r0 in (0..n).step_by(ROW_TILE) {
            let rn = ROW_TILE.min(n - r0);
            for o in 0..count {
                let wrow = &w[(first + o) * row_bytes..(first + o + 1) * row_bytes];
                if r0 == 0 && ahead > 0 {
                    let next = first + o + ahead;
                    if next < rows {
                        prefetch(&w[next * row_bytes..(next + 1) * row_bytes]);
                    }
                }
                let dst = &mut out[o * n + r0..o * n + r0 + rn];
                match kernel {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `kernel()` checked the CPU features these functions are built for.
                    Kernel::AvxVnni => unsafe { x86::row_dots_vnni::<F>(wrow, acts, r0, dst) },
                    #[cfg(target_arch = "x86_64")]
                    Kernel::AvxVnniBw => unsafe { x86::row_dots_vnni_bw::<F>(wrow, acts, r0, dst) },
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx512Vnni => unsafe { x86::row_dots_512::<F>(wrow, acts, r0, dst, offsets) },
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2 => unsafe { x86::row_dots_avx2::<F>(wrow, acts, r0, dst) },
                    _ => row_dots_portable::<F>(wrow, acts, r0, dst),
                }
            }
        }
    });
    if n > 1 {
        transpose_into(&buffer, n, rows, y);
    }
}

/// How many weight rows ahead of the one being multiplied to prefetch: far enough that the
/// loads are in flight while about `PREFETCH_BYTES` are consumed.
fn prefetch_rows(row_bytes: usize) -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let bytes = *BYTES.get_or_init(|| std::env::var("ZHIKU_PREFETCH").ok().and_then(|v| v.parse().ok()).unwrap_or(PREFETCH_BYTES));
    if bytes == 0 { 0 } else { bytes.div_ceil(row_bytes).max(1) }
}

const PREFETCH_BYTES: usize = 2048;

/// Asks for every cache line of `bytes` (a weight row read soon).
#[inline(always)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes.len()).step_by(64) {
        // SAFETY: a prefetch is a hint; the address lies inside `bytes`.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(bytes.as_ptr().add(off) as *const i8) }
    }
}

/// `y[r, o] = yt[o, r]`: products are computed per weight row (so each task owns a contiguous
/// slice) and laid out per activation row at the end.
fn transpose_into(yt: &[f32], n: usize, rows: usize, y: &mut [f32]) {
    for (o, col) in yt.chunks_exact(n).enumerate() {
        for (r, v) in col.iter().enumerate() {
            y[r * rows + o] = *v;
        }
    }
}

/// Dot products of one weight row with activation rows `r0..r0 + dst.len()`.
fn row_dots_portable<F: QuantFormat>(wrow: &[u8], acts: &QuantizedRows, r0: usize, dst: &mut [f32]) {
    let groups_per_row = acts.cols / 32;
    let mut codes = [0u8; 32];
    dst.iter_mut().for_each(|v| *v = 0.0);
    for (b, block) in wrow.chunks_exact(F::BYTES).enumerate() {
        for g in 0..F::LEN / 32 {
            let p = F::params(block, g);
            F::codes(block, g, &mut codes);
            let col_group = b * F::LEN / 32 + g;
            for (i, v) in dst.iter_mut().enumerate() {
                let ag = (r0 + i) * groups_per_row + col_group;
                let a = &acts.q[ag * 32..ag * 32 + 32];
                let mut s = [0i32; 2];
                for (j, (&c, &x)) in codes.iter().zip(a).enumerate() {
                    s[j / 16] += c as i32 * x as i32;
                }
                *v += group_value(&p, acts.d[ag], s, acts.dsum[ag]);
            }
        }
    }
}

#[inline(always)]
fn group_value(p: &GroupParams, d: f32, s: [i32; 2], dsum: [f32; 2]) -> f32 {
    d * (p.scale[0] * s[0] as f32 + p.scale[1] * s[1] as f32) + p.offset[0] * dsum[0] + p.offset[1] * dsum[1]
}

/// `y[n, rows] = x[n, cols] · wᵀ` for a few rows, parallel over blocks of weight rows: each
/// block's dot products with every activation row ([`dot_block`]).
fn float_matmul_rows(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize, y: &mut [f32]) {
    let threads = rayon::current_num_threads().max(1);
    let chunk = rows.div_ceil(threads * 4).max(8);
    let mut yt = vec![0f32; rows * n];
    yt.par_chunks_mut(chunk * n).enumerate().for_each(|(ci, out)| {
        let count = out.len() / n;
        dot_block(&w[ci * chunk * cols..(ci * chunk + count) * cols], count, cols, x, n, out);
    });
    transpose_into(&yt, n, rows, y);
}

/// `out[o · n + r] = w[o] · x[r]` for `count` weight rows and `n` activation rows.
fn dot_block(w: &[f32], count: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    assert!(w.len() == count * cols && x.len() == n * cols && out.len() == count * n, "dot block shapes");
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA; the shapes are as asserted above.
        return unsafe { rows_avx2::dot_block(w, count, cols, x, n, out) };
    }
    dot_block_portable(w, cols, x, n, out)
}

/// [`dot_block`] in plain code: per weight row, dot products with up to 8 activation rows at
/// once, 16 lanes each.
fn dot_block_portable(w: &[f32], cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    const LANES: usize = 16;
    const GROUP: usize = 8;
    let body = cols / LANES * LANES;
    for (o, col) in out.chunks_exact_mut(n).enumerate() {
        let wr = &w[o * cols..(o + 1) * cols];
        for first in (0..n).step_by(GROUP) {
            let g = GROUP.min(n - first);
            let mut acc = [[0f32; LANES]; GROUP];
            for k in (0..body).step_by(LANES) {
                let wv = &wr[k..k + LANES];
                for (r, a) in acc.iter_mut().enumerate().take(g) {
                    let xv = &x[(first + r) * cols + k..(first + r) * cols + k + LANES];
                    for l in 0..LANES {
                        a[l] = wv[l].mul_add(xv[l], a[l]);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate().take(g) {
                let xr = &x[(first + r) * cols..(first + r + 1) * cols];
                let mut s: f32 = a.iter().sum();
                for k in body..cols {
                    s += wr[k] * xr[k];
                }
                col[first + r] = s;
            }
        }
    }
}

/// The AVX2 kernel behind [`dot_block`]: one weight row against up to eight activation rows,
/// eight 8-wide accumulators in registers, the group's size a constant so that the loop unrolls
/// with nothing spilled. The activation rows stay in L1 and the weight row streams by once, so
/// five hypotheses cost little more than one (51865 x 512, 2 threads: 2.2 ms for 5 rows, 2.0
/// for 1; the 16-lane plain loop, which spills under AVX2, took 3.2). Two weight rows per step,
/// or AVX-512, measured slower.
#[cfg(target_arch = "x86_64")]
mod rows_avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_block(w: &[f32], count: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
        for o in 0..count {
            let mut first = 0;
            while first < n {
                let g = (n - first).min(8);
                let (wp, xp) = (w.as_ptr().add(o * cols), x.as_ptr().add(first * cols));
                let dst = &mut out[o * n + first..o * n + first + g];
                match g {
                    1 => tile::<1>(wp, xp, cols, dst),
                    2 => tile::<2>(wp, xp, cols, dst),
                    3 => tile::<3>(wp, xp, cols, dst),
                    4 => tile::<4>(wp, xp, cols, dst),
                    5 => tile::<5>(wp, xp, cols, dst),
                    6 => tile::<6>(wp, xp, cols, dst),
                    7 => tile::<7>(wp, xp, cols, dst),
                    _ => tile::<8>(wp, xp, cols, dst),
                }
                first += g;
            }
        }
    }

    /// `dst[r] = w · x[r]` for `G` activation rows, `cols` apart.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const G: usize>(w: *const f32, x: *const f32, cols: usize, dst: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); G];
        let body = cols / 8 * 8;
        let mut k = 0;
        while k < body {
            let wv = _mm256_loadu_ps(w.add(k));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.add(r * cols + k)), *a);
            }
            k += 8;
        }
        for (r, (a, d)) in acc.iter().zip(dst.iter_mut()).enumerate() {
            let s = _mm_add_ps(_mm256_castps256_ps128(*a), _mm256_extractf128_ps(*a, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let mut total = _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
            for c in body..cols {
                total += *w.add(c) * *x.add(r * cols + c);
            }
            *d = total;
        }
    }
}

/// `y[n, rows] = x[n, cols] · wᵀ` by the blocked GEMM.
fn float_gemm(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize, y: &mut [f32]) {
    let threads = rayon::current_num_threads().max(1);
    // SAFETY: y is n × rows, x is n × cols, w is rows × cols, with the strides given.
    unsafe {
        gemm::gemm(
            n, rows, cols,
            y.as_mut_ptr(), 1, rows as isize, false,
            x.as_ptr(), 1, cols as isize,
            w.as_ptr(), cols as isize, 1,
            0.0, 1.0, false, false, false,
            gemm::Parallelism::Rayon(threads),
        );
    }
}

/// `y[n, rows] = x[n, cols] · Wᵀ` for f32 weights, parallel over weight rows.
fn float_matmul(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize, y: &mut [f32]) {
    let threads = rayon::current_num_threads().max(1);
    if n >= GEMM_ROWS {
        // Many rows (a prompt, an audio window): a blocked GEMM reuses each weight tile across
        // rows from cache, where the dot products below stream the whole matrix per row block.
        return float_gemm(w, rows, cols, x, n, y);
    }
    let chunk = rows.div_ceil(threads * 4).max(8);
    let mut yt = vec![0f32; rows * n];
    yt.par_chunks_mut(chunk * n).enumerate().for_each(|(ci, out)| {
        for (o, col) in out.chunks_exact_mut(n).enumerate() {
            let wr = &w[(ci * chunk + o) * cols..(ci * chunk + o + 1) * cols];
            for (r, v) in col.iter_mut().enumerate() {
                *v = crate::slice_ops::dot(wr, &x[r * cols..(r + 1) * cols]);
            }
        }
    });
    transpose_into(&yt, n, rows, y);
}

/// The x86 kernels and each format's unpacking of a group into a vector of 32 codes.
pub(crate) mod x86 {
    use super::*;

    /// A format whose groups unpack into a 256-bit vector of codes.
    pub trait SimdFormat: QuantFormat {
        /// # Safety
        /// AVX2 must be available; `block` is one whole block.
        #[cfg(target_arch = "x86_64")]
        unsafe fn codes_avx2<X: BitExpand>(block: &[u8], g: usize) -> std::arch::x86_64::__m256i;
    }

    /// Bit j of a 32-bit word as byte j of a vector: 0x10 where set, else 0 (Q5 formats' fifth
    /// bits). With AVX-512BW a mask register does it in two instructions instead of seven.
    #[cfg(target_arch = "x86_64")]
    pub trait BitExpand {
        /// # Safety
        /// The CPU features of the implementation must be available.
        unsafe fn fifth_bits(bits: u32) -> std::arch::x86_64::__m256i;
    }

    #[cfg(target_arch = "x86_64")]
    pub struct ShuffleExpand;
    #[cfg(target_arch = "x86_64")]
    pub struct MaskExpand;

    #[cfg(target_arch = "x86_64")]
    impl BitExpand for ShuffleExpand {
        #[inline(always)]
        unsafe fn fifth_bits(bits: u32) -> std::arch::x86_64::__m256i {
            use std::arch::x86_64::*;
            let shuffle = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
            let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuffle);
            let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
            _mm256_and_si256(_mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10))
        }
    }

    #[cfg(target_arch = "x86_64")]
    impl BitExpand for MaskExpand {
        #[inline(always)]
        unsafe fn fifth_bits(bits: u32) -> std::arch::x86_64::__m256i {
            use std::arch::x86_64::*;
            _mm256_maskz_mov_epi8(bits, _mm256_set1_epi8(0x10))
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod imp {
        use super::{BitExpand, SimdFormat};
        use crate::blocks::*;
        use std::arch::x86_64::*;

        #[inline(always)]
        unsafe fn nibbles16(p: *const u8) -> __m256i {
            let v = _mm_loadu_si128(p as *const __m128i);
            let m = _mm_set1_epi8(0x0F);
            _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m))
        }

        #[inline(always)]
        unsafe fn shifted_bits(p: *const u8, shift: i32, mask: i8) -> __m256i {
            let v = _mm256_loadu_si256(p as *const __m256i);
            _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)), _mm256_set1_epi8(mask))
        }

        impl SimdFormat for Q4_0 {
            #[inline(always)]
            unsafe fn codes_avx2<X: BitExpand>(b: &[u8], _: usize) -> __m256i {
                nibbles16(b.as_ptr().add(2))
            }
        }
        impl SimdFormat for Q4_1 {
            #[inline(always)]
            unsafe fn codes_avx2<X: BitExpand>(b: &[u8], _: usize) -> __m256i {
                nibbles16(b.as_ptr().add(4))
            }
        }
        impl SimdFormat for Q5_0 {
            #[inline(always)]
            unsafe fn codes_avx2<X: BitExpand>(b: &[u8], _: usize) -> __m256i {
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                _mm256_or_si256(nibbles16(b.as_ptr().add(6)), X::fifth_bits(qh))
            }
        }
        impl SimdFormat for Q5_1 {
            #[inline(always)]
            unsafe fn codes_avx2<X: BitExpand>(b: &[u8], _: usize) -> __m256i {
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                _mm256_or_si256(nibbles16(b.as_ptr().add(8)), X::fifth_bits(qh))
            }
        }
        impl SimdFormat for Q8_0 {
            #[inline(always)]
            unsafe fn codes_avx2<X: BitExpand>(b: &[u8], _: usize) -> __m256i {
                _mm256_xor_si256(_mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i), _mm256_set1_epi8(-128))
            }
        }
        impl SimdFormat for Q4K {
            #[inline(always)]
            unsafe fn codes_avx2<X: BitExpand>(b: &[u8], g: usize) -> __m256i {
                shifted_bits(b.as_ptr().add(16 + 32 * (g / 2)), 4 * (g % 2) as i32, 0x0F)
            }
        }
        impl SimdFormat for Q5K {
            #[inline(always)]
            unsafe fn codes_avx2<X: BitExpand>(b: &[u8], g: usize) -> __m256i {
                let low = shifted_bits(b.as_ptr().add(48 + 32 * (g / 2)), 4 * (g % 2) as i32, 0x0F);
                let high = _mm256_slli_epi16(shifted_bits(b.as_ptr().add(16), g as i32, 0x01), 4);
                _mm256_or_si256(low, high)
            }
        }
        impl SimdFormat for Q6K {
            #[inline(always)]
            unsafe fn codes_avx2<X: BitExpand>(b: &[u8], g: usize) -> __m256i {
                let (n, k) = (g / 4, g % 4);
                let low = shifted_bits(b.as_ptr().add(64 * n + 32 * (k & 1)), 4 * (k / 2) as i32, 0x0F);
                let high = _mm256_slli_epi16(shifted_bits(b.as_ptr().add(128 + 32 * n), 2 * k as i32, 0x03), 4);
                _mm256_or_si256(low, high)
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    impl<F: QuantFormat> SimdFormat for F {}

    #[cfg(target_arch = "x86_64")]
    pub use kernels::*;

    #[cfg(target_arch = "x86_64")]
    mod kernels {
        use super::{BitExpand, MaskExpand, ShuffleExpand, SimdFormat};
        use crate::qmatmul::QuantizedRows;
        use std::arch::x86_64::*;

        /// Activation rows per unpacked weight group.
        const R: usize = 8;

        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }

        /// Products of 32 unsigned codes with 32 signed bytes, summed in fours: lanes 0-3
        /// hold the first half-group, lanes 4-7 the second.
        trait Dot {
            type Expand: BitExpand;
            unsafe fn dot(codes: __m256i, a: __m256i) -> __m256i;
        }
        struct Vnni;
        struct VnniBw;
        struct Avx2;
        impl Dot for VnniBw {
            type Expand = MaskExpand;
            #[inline(always)]
            unsafe fn dot(codes: __m256i, a: __m256i) -> __m256i {
                Vnni::dot(codes, a)
            }
        }
        impl Dot for Vnni {
            type Expand = ShuffleExpand;
            #[inline(always)]
            unsafe fn dot(codes: __m256i, a: __m256i) -> __m256i {
                _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), codes, a)
            }
        }
        impl Dot for Avx2 {
            type Expand = ShuffleExpand;
            #[inline(always)]
            unsafe fn dot(codes: __m256i, a: __m256i) -> __m256i {
                // Widened to 16 bits (vpmaddubsw would saturate on Q8_0's codes up to 255).
                let c0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(codes));
                let c1 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(codes, 1));
                let a0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(a));
                let a1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(a, 1));
                let p = _mm256_hadd_epi32(_mm256_madd_epi16(c0, a0), _mm256_madd_epi16(c1, a1));
                _mm256_permute4x64_epi64(p, 0b11_01_10_00)
            }
        }

        /// `R` activation rows against one weight row, with every accumulator in a register.
        #[inline(always)]
        unsafe fn tile<F: SimdFormat, D: Dot, const R: usize>(wrow: &[u8], acts: &QuantizedRows, row0: usize, dst: &mut [f32]) {
            let gpr = acts.cols / 32;
            let groups = F::LEN / 32;
            let mut acc = [_mm256_setzero_ps(); R];
            let mut offs = [0f32; R];
            let q = acts.q.as_ptr();
            for (b, block) in wrow.chunks_exact(F::BYTES).enumerate() {
                for g in 0..groups {
                    let p = F::params(block, g);
                    let codes = F::codes_avx2::<D::Expand>(block, g);
                    let col_group = b * groups + g;
                    // The weights' scale once per group; each row's scale is broadcast from memory.
                    let wscale = lane_scales::<F>(&p);
                    for r in 0..R {
                        let ag = (row0 + r) * gpr + col_group;
                        let a = _mm256_loadu_si256(q.add(ag * 32) as *const __m256i);
                        let s = _mm256_mul_ps(_mm256_cvtepi32_ps(D::dot(codes, a)), _mm256_broadcast_ss(acts.d.get_unchecked(ag)));
                        acc[r] = _mm256_fmadd_ps(s, wscale, acc[r]);
                        offs[r] += if F::SPLIT_SCALES {
                            let ds = acts.dsum.get_unchecked(ag);
                            p.offset[0] * ds[0] + p.offset[1] * ds[1]
                        } else {
                            p.offset[0] * *acts.dsum_total.get_unchecked(ag)
                        };
                    }
                }
            }
            for r in 0..R {
                dst[r] = hsum(acc[r]) + offs[r];
            }
        }

        #[inline(always)]
        unsafe fn row_dots<F: SimdFormat, D: Dot>(wrow: &[u8], acts: &QuantizedRows, r0: usize, dst: &mut [f32]) {
            let mut i = 0;
            while i < dst.len() {
                let left = dst.len() - i;
                let out = &mut dst[i..];
                match left {
                    1 => tile::<F, D, 1>(wrow, acts, r0 + i, out),
                    2 => tile::<F, D, 2>(wrow, acts, r0 + i, out),
                    3 => tile::<F, D, 3>(wrow, acts, r0 + i, out),
                    4..=7 => tile::<F, D, 4>(wrow, acts, r0 + i, out),
                    _ => tile::<F, D, R>(wrow, acts, r0 + i, out),
                }
                i += match left {
                    1..=3 => left,
                    4..=7 => 4,
                    _ => R,
                };
            }
        }

        /// Activation rows per unpacked pair of weight groups in the AVX-512 kernel.
        const R512: usize = 16;

        /// A group's weight scales over its 8 lanes of sums (4 per half-group).
        #[inline(always)]
        unsafe fn lane_scales<F: SimdFormat>(p: &crate::blocks::GroupParams) -> __m256 {
            if F::SPLIT_SCALES { _mm256_set_m128(_mm_set1_ps(p.scale[1]), _mm_set1_ps(p.scale[0])) } else { _mm256_set1_ps(p.scale[0]) }
        }

        /// What a kernel does with each pair of unpacked groups (codes and lane scales).
        trait PairVisitor {
            unsafe fn visit(&mut self, gi: usize, first: (__m256i, __m256), second: Option<(__m256i, __m256)>);
        }

        /// Rows of activations against a pair of groups in one 512-bit product each.
        struct Wide<'a, const R: usize> {
            acc: &'a mut [__m512; R],
            q: *const i8,
            d8: *const f32,
            row0: usize,
            gpr: usize,
        }

        impl<const R: usize> PairVisitor for Wide<'_, R> {
            #[inline(always)]
            unsafe fn visit(&mut self, gi: usize, (c0, s0): (__m256i, __m256), second: Option<(__m256i, __m256)>) {
                let (codes, wscale, two) = match second {
                    Some((c1, s1)) => (
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(c0), c1),
                        _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(_mm256_castps_pd(s0)), _mm256_castps_pd(s1))),
                        true,
                    ),
                    // An odd last group: the upper half of every vector is zero.
                    None => (_mm512_zextsi256_si512(c0), _mm512_zextps256_ps512(s0), false),
                };
                for (r, acc) in self.acc.iter_mut().enumerate() {
                    let ag = (self.row0 + r) * self.gpr + gi;
                    let (a, d) = if two {
                        (_mm512_loadu_si512(self.q.add(ag * 32) as *const _), _mm512_loadu_ps(self.d8.add(ag * 8)))
                    } else {
                        (_mm512_zextsi256_si512(_mm256_loadu_si256(self.q.add(ag * 32) as *const __m256i)), _mm512_zextps256_ps512(_mm256_loadu_ps(self.d8.add(ag * 8))))
                    };
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, a);
                    *acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), d), wscale, *acc);
                }
            }
        }

        /// The same sums with 256-bit vectors: even groups' lanes in one accumulator, odd in
        /// the other.
        struct Narrow<'a, const R: usize> {
            even: &'a mut [__m256; R],
            odd: &'a mut [__m256; R],
            q: *const i8,
            d8: *const f32,
            row0: usize,
            gpr: usize,
        }

        impl<const R: usize> Narrow<'_, R> {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn add(accs: &mut [__m256; R], codes: __m256i, wscale: __m256, q: *const i8, d8: *const f32, row0: usize, gpr: usize, gi: usize) {
                for (r, acc) in accs.iter_mut().enumerate() {
                    let ag = (row0 + r) * gpr + gi;
                    let a = _mm256_loadu_si256(q.add(ag * 32) as *const __m256i);
                    let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes, a);
                    let s = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_loadu_ps(d8.add(ag * 8)));
                    *acc = _mm256_fmadd_ps(s, wscale, *acc);
                }
            }
        }

        impl<const R: usize> PairVisitor for Narrow<'_, R> {
            #[inline(always)]
            unsafe fn visit(&mut self, gi: usize, (c0, s0): (__m256i, __m256), second: Option<(__m256i, __m256)>) {
                Self::add(self.even, c0, s0, self.q, self.d8, self.row0, self.gpr, gi);
                if let Some((c1, s1)) = second {
                    Self::add(self.odd, c1, s1, self.q, self.d8, self.row0, self.gpr, gi + 1);
                }
            }
        }

        /// Walks a weight row's groups in pairs (0, 1), (2, 3), ...: unpacks each group's codes
        /// and lane scales, writes its offsets to `ofs`, and hands `f` the first group's index
        /// with the pair (the second is `None` for an odd last group). The loops follow the
        /// blocks so that a block's shared parameters are read once.
        #[inline(always)]
        unsafe fn group_pairs<F: SimdFormat, V: PairVisitor>(wrow: &[u8], ofs: *mut f32, v: &mut V) {
            let per_block = F::LEN / 32;
            let unpack = |block: &[u8], g: usize, gi: usize| {
                let p = F::params(block, g);
                if F::SPLIT_SCALES {
                    *ofs.add(2 * gi) = p.offset[0];
                    *ofs.add(2 * gi + 1) = p.offset[1];
                } else {
                    *ofs.add(gi) = p.offset[0];
                }
                (F::codes_avx2::<MaskExpand>(block, g), lane_scales::<F>(&p))
            };
            if per_block == 1 {
                let mut pairs = wrow.chunks_exact(2 * F::BYTES);
                for (i, pair) in pairs.by_ref().enumerate() {
                    let (b0, b1) = pair.split_at(F::BYTES);
                    let first = unpack(b0, 0, 2 * i);
                    let second = unpack(b1, 0, 2 * i + 1);
                    v.visit(2 * i, first, Some(second));
                }
                let rest = pairs.remainder();
                if !rest.is_empty() {
                    let gi = wrow.len() / F::BYTES - 1;
                    v.visit(gi, unpack(rest, 0, gi), None);
                }
            } else {
                debug_assert_eq!(per_block % 2, 0);
                for (b, block) in wrow.chunks_exact(F::BYTES).enumerate() {
                    for g in (0..per_block).step_by(2) {
                        let gi = b * per_block + g;
                        let first = unpack(block, g, gi);
                        let second = unpack(block, g + 1, gi + 1);
                        v.visit(gi, first, Some(second));
                    }
                }
            }
        }

        /// `R` activation rows against one weight row, two groups per 512-bit product. The
        /// offset terms (Σ offset·d·Σa) are a separate dot product per row over the weight row's
        /// offsets, gathered into `offsets` while unpacking. Each row's arithmetic is the same
        /// whatever `R` is, so a sequence's result does not depend on its batch.
        #[inline(always)]
        unsafe fn tile512<F: SimdFormat, const R: usize>(wrow: &[u8], acts: &QuantizedRows, row0: usize, dst: &mut [f32], offsets: &mut [f32]) {
            let gpr = acts.cols / 32;
            let mut acc = [_mm512_setzero_ps(); R];
            let q = acts.q.as_ptr();
            let d8 = acts.d8.as_ptr();
            let ofs = offsets.as_mut_ptr();
            group_pairs::<F, _>(wrow, ofs, &mut Wide { acc: &mut acc, q, d8, row0, gpr });
            let count = if F::SPLIT_SCALES { 2 * gpr } else { gpr };
            for (r, acc) in acc.iter().enumerate() {
                let sums = offset_sums::<F>(acts, row0 + r);
                let mut o = _mm512_setzero_ps();
                let mut i = 0;
                while i + 16 <= count {
                    o = _mm512_fmadd_ps(_mm512_loadu_ps(ofs.add(i)), _mm512_loadu_ps(sums.add(i)), o);
                    i += 16;
                }
                if i < count {
                    let m: __mmask16 = ((1u32 << (count - i)) - 1) as __mmask16;
                    o = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, ofs.add(i)), _mm512_maskz_loadu_ps(m, sums.add(i)), o);
                }
                *dst.get_unchecked_mut(r) = hsum512(_mm512_add_ps(*acc, o));
            }
        }

        /// A row's activation sums that the weight offsets multiply: d·Σa per half-group for
        /// formats with two offsets per group, per group otherwise (`count` of them in
        /// `tile512`'s order).
        #[inline(always)]
        unsafe fn offset_sums<F: SimdFormat>(acts: &QuantizedRows, row: usize) -> *const f32 {
            let gpr = acts.cols / 32;
            if F::SPLIT_SCALES { acts.dsum.as_ptr().add(row * gpr) as *const f32 } else { acts.dsum_total.as_ptr().add(row * gpr) }
        }

        /// The sum of 16 lanes in a fixed order: the upper 8 onto the lower 8, then `hsum`.
        #[inline(always)]
        unsafe fn hsum512(v: __m512) -> f32 {
            let lo = _mm512_castps512_ps256(v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            hsum(_mm256_add_ps(lo, hi))
        }

        /// [`tile512`] with 256-bit vectors, bit for bit: one accumulator for the even groups'
        /// lanes (the lower half of the 512-bit one) and one for the odd. A few rows do not
        /// fill the wide unit, and its 512-bit instructions would take a port from the unpacking.
        #[inline(always)]
        unsafe fn tile512_narrow<F: SimdFormat, const R: usize>(wrow: &[u8], acts: &QuantizedRows, row0: usize, dst: &mut [f32], offsets: &mut [f32]) {
            let gpr = acts.cols / 32;
            let mut even = [_mm256_setzero_ps(); R];
            let mut odd = [_mm256_setzero_ps(); R];
            let q = acts.q.as_ptr();
            let d8 = acts.d8.as_ptr();
            let ofs = offsets.as_mut_ptr();
            group_pairs::<F, _>(wrow, ofs, &mut Narrow { even: &mut even, odd: &mut odd, q, d8, row0, gpr });
            let count = if F::SPLIT_SCALES { 2 * gpr } else { gpr };
            for r in 0..R {
                let sums = offset_sums::<F>(acts, row0 + r);
                let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let mut i = 0;
                while i + 16 <= count {
                    lo = _mm256_fmadd_ps(_mm256_loadu_ps(ofs.add(i)), _mm256_loadu_ps(sums.add(i)), lo);
                    hi = _mm256_fmadd_ps(_mm256_loadu_ps(ofs.add(i + 8)), _mm256_loadu_ps(sums.add(i + 8)), hi);
                    i += 16;
                }
                if i < count {
                    let m = ((1u32 << (count - i)) - 1) as u16;
                    let (ml, mh) = ((m & 0xFF) as __mmask8, (m >> 8) as __mmask8);
                    lo = _mm256_fmadd_ps(_mm256_maskz_loadu_ps(ml, ofs.add(i)), _mm256_maskz_loadu_ps(ml, sums.add(i)), lo);
                    hi = _mm256_fmadd_ps(_mm256_maskz_loadu_ps(mh, ofs.add(i + 8)), _mm256_maskz_loadu_ps(mh, sums.add(i + 8)), hi);
                }
                *dst.get_unchecked_mut(r) = hsum(_mm256_add_ps(_mm256_add_ps(even[r], lo), _mm256_add_ps(odd[r], hi)));
            }
        }

        /// # Safety
        /// The CPU must have AVX2, FMA, AVX-512F/BW/VL and AVX-512 VNNI; `acts.d8` must be
        /// filled (it is when this kernel is the chosen one).
        #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
        pub unsafe fn row_dots_512<F: SimdFormat>(wrow: &[u8], acts: &QuantizedRows, r0: usize, dst: &mut [f32], offsets: &mut Vec<f32>) {
            debug_assert_eq!(acts.d8.len(), acts.d.len() * 8);
            offsets.resize(2 * acts.cols / 32, 0.0);
            let mut i = 0;
            while i < dst.len() {
                let left = dst.len() - i;
                let out = &mut dst[i..];
                let step = match left {
                    1..=3 => left,
                    4..=7 => 4,
                    8..=15 => 8,
                    _ => R512,
                };
                match step {
                    1 => tile512_narrow::<F, 1>(wrow, acts, r0 + i, out, offsets),
                    2 => tile512_narrow::<F, 2>(wrow, acts, r0 + i, out, offsets),
                    3 => tile512_narrow::<F, 3>(wrow, acts, r0 + i, out, offsets),
                    4 => tile512::<F, 4>(wrow, acts, r0 + i, out, offsets),
                    8 => tile512::<F, 8>(wrow, acts, r0 + i, out, offsets),
                    _ => tile512::<F, R512>(wrow, acts, r0 + i, out, offsets),
                }
                i += step;
            }
        }

        /// Whole blocks of `bytes` as f32 into `out`.
        #[inline(always)]
        unsafe fn dequantize<F: SimdFormat, X: BitExpand>(bytes: &[u8], out: &mut [f32]) {
            debug_assert_eq!(bytes.len() / F::BYTES * F::LEN, out.len());
            let mut dst = out.as_mut_ptr();
            for block in bytes.chunks_exact(F::BYTES) {
                for g in 0..F::LEN / 32 {
                    let p = F::params(block, g);
                    let codes = F::codes_avx2::<X>(block, g);
                    let (lo, hi) = (_mm256_castsi256_si128(codes), _mm256_extracti128_si256(codes, 1));
                    for (k, part) in [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)].into_iter().enumerate() {
                        let h = k / 2;
                        let f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part));
                        _mm256_storeu_ps(dst, _mm256_fmadd_ps(f, _mm256_set1_ps(p.scale[h]), _mm256_set1_ps(p.offset[h])));
                        dst = dst.add(8);
                    }
                }
            }
        }

        /// # Safety
        /// The CPU must have AVX2, FMA, AVX-512BW and AVX-512VL.
        #[target_feature(enable = "avx2,fma,avx512bw,avx512vl")]
        pub unsafe fn dequantize_bw<F: SimdFormat>(bytes: &[u8], out: &mut [f32]) {
            dequantize::<F, MaskExpand>(bytes, out)
        }

        /// # Safety
        /// The CPU must have AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn dequantize_avx2<F: SimdFormat>(bytes: &[u8], out: &mut [f32]) {
            dequantize::<F, ShuffleExpand>(bytes, out)
        }

        /// # Safety
        /// The CPU must have AVX2, FMA, AVX-VNNI, AVX-512BW and AVX-512VL.
        #[target_feature(enable = "avx2,fma,avxvnni,avx512bw,avx512vl")]
        pub unsafe fn row_dots_vnni_bw<F: SimdFormat>(wrow: &[u8], acts: &QuantizedRows, r0: usize, dst: &mut [f32]) {
            row_dots::<F, VnniBw>(wrow, acts, r0, dst)
        }

        /// # Safety
        /// The CPU must have AVX2, FMA and AVX-VNNI.
        #[target_feature(enable = "avx2,fma,avxvnni")]
        pub unsafe fn row_dots_vnni<F: SimdFormat>(wrow: &[u8], acts: &QuantizedRows, r0: usize, dst: &mut [f32]) {
            row_dots::<F, Vnni>(wrow, acts, r0, dst)
        }

        /// # Safety
        /// The CPU must have AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn row_dots_avx2<F: SimdFormat>(wrow: &[u8], acts: &QuantizedRows, r0: usize, dst: &mut [f32]) {
            row_dots::<F, Avx2>(wrow, acts, r0, dst)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_rows_equals_matmul_for_hypotheses() {
        // 37 rows x 83 columns (a remainder after the 16-lane body), 1 to 11 hypotheses.
        let (rows, cols) = (37, 83);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        let m = QMatrix::from_f32(w, rows, cols, GgmlType::F32).unwrap();
        for n in [1, 2, 5, 8, 11, 17] {
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 104729 % 997) as f32 / 498.0) - 1.0).collect();
            let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            m.matmul(&x, n, &mut a);
            m.matmul_rows(&x, n, &mut b);
            let gap = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            assert!(gap < 1e-4, "{n} rows: {gap}");
            // The plain kernel, which the SIMD one stands in for on x86.
            let Weights::Float(wf) = &m.weights else { unreachable!() };
            let mut plain = vec![0f32; rows * n];
            dot_block_portable(wf, cols, &x, n, &mut plain);
            let gap = (0..rows * n).map(|i| (plain[i] - a[(i % n) * rows + i / n]).abs()).fold(0f32, f32::max);
            assert!(gap < 1e-4, "{n} rows, plain kernel: {gap}");
        }
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    /// Every kernel against dequantise-then-f32-matmul, on odd row counts and row tiles.
    #[test]
    fn every_kernel_matches_dequantised_matmul_for_every_type() {
        let (rows, cols) = (37, 512);
        for (ty, cols) in GgmlType::ALL.into_iter().map(|t| (t, cols)).chain([(GgmlType::Q5_0, 96), (GgmlType::Q4_1, 160)]) {
            let m = QMatrix::from_f32(values(rows * cols, 1), rows, cols, ty).unwrap();
            let w = m.to_f32().unwrap();
            for n in [1, 3, 5, 17, 70] {
                let x = values(n * cols, 2 + n as u64);
                let mut expect = vec![0f32; n * rows];
                for r in 0..n {
                    for o in 0..rows {
                        expect[r * rows + o] = (0..cols).map(|i| x[r * cols + i] as f64 * w[o * cols + i] as f64).sum::<f64>() as f32;
                    }
                }
                let scale = expect.iter().fold(0f32, |m, v| m.max(v.abs()));
                let mut kernels = vec![Kernel::Portable];
                #[cfg(target_arch = "x86_64")]
                {
                    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                        kernels.push(Kernel::Avx2);
                    }
                    if is_x86_feature_detected!("avxvnni") {
                        kernels.push(Kernel::AvxVnni);
                    }
                    if is_x86_feature_detected!("avxvnni") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl") {
                        kernels.push(Kernel::AvxVnniBw);
                    }
                    if avx512() {
                        kernels.push(Kernel::Avx512Vnni);
                    }
                }
                for k in kernels {
                    let got = matmul_with(&m, &x, n, k);
                    let err = got.iter().zip(&expect).fold(0f32, |e, (a, b)| e.max((a - b).abs()));
                    // Activations are rounded to 8 bits: about 0.4% of the row's magnitude.
                    let tol = if m.is_float() { 1e-4 * scale } else { 0.02 * scale };
                    assert!(err <= tol, "{} {k:?} n={n}: max error {err} (scale {scale})", ty.name());
                }
            }
        }
    }

    /// The input gradient `dy · W` against the dequantised matrix, for every type, with more
    /// weight rows than one chunk of the product.
    #[test]
    fn transposed_product_matches_dequantised_matrix_for_every_type() {
        let (rows, cols) = (300, 256);
        for ty in GgmlType::ALL {
            let m = QMatrix::from_f32(values(rows * cols, 3), rows, cols, ty).unwrap();
            let w = m.to_f32().unwrap();
            for n in [1, 7, 40] {
                let dy = values(n * rows, 9 + n as u64);
                let mut dx = vec![f32::NAN; n * cols];
                m.matmul_transposed(&dy, n, &mut dx);
                for r in 0..n {
                    for c in 0..cols {
                        let expect = (0..rows).map(|o| dy[r * rows + o] as f64 * w[o * cols + c] as f64).sum::<f64>() as f32;
                        let got = dx[r * cols + c];
                        assert!((got - expect).abs() <= 1e-4 * expect.abs().max(1.0), "{} n={n} [{r},{c}]: {got} vs {expect}", ty.name());
                    }
                }
            }
        }
    }

    /// The SIMD unpacking used by the GEMM path gives the scalar dequantisation's values.
    #[test]
    fn simd_dequantisation_equals_scalar_for_every_type() {
        let (rows, cols) = (3, 512);
        for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
            let m = QMatrix::from_f32(values(rows * cols, 5), rows, cols, ty).unwrap();
            let expect = m.to_f32().unwrap();
            let mut got = vec![f32::NAN; rows * cols];
            m.dequantize_rows(0, rows, &mut got);
            for (i, (a, b)) in got.iter().zip(&expect).enumerate() {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{} [{i}]: {a} vs {b}", ty.name());
            }
        }
    }

    /// A row's product is bit for bit the same alone or among others (below `GEMM_ROWS`), so
    /// a sequence decodes the same text whatever else shares its steps; odd group counts too.
    #[test]
    fn a_rows_product_does_not_depend_on_its_batch() {
        for (ty, cols) in [(GgmlType::Q4_0, 96), (GgmlType::Q5_0, 544), (GgmlType::Q8_0, 512), (GgmlType::Q4K, 768), (GgmlType::Q6K, 512), (GgmlType::Q5_1, 288)] {
            let rows = 23;
            let m = QMatrix::from_f32(values(rows * cols, 11), rows, cols, ty).unwrap();
            let n = GEMM_ROWS - 1;
            let x = values(n * cols, 12);
            let mut all = vec![0f32; n * rows];
            m.matmul(&x, n, &mut all);
            for r in [0, 5, 16, n - 1] {
                let mut one = vec![0f32; rows];
                m.matmul(&x[r * cols..(r + 1) * cols], 1, &mut one);
                assert_eq!(one, all[r * rows..(r + 1) * rows], "{} row {r}", ty.name());
            }
        }
    }

    /// The integer kernels compute identical sums: their outputs agree to rounding.
    #[test]
    fn kernels_agree_with_each_other() {
        let (rows, cols) = (19, 768);
        for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
            let m = QMatrix::from_f32(values(rows * cols, 7), rows, cols, ty).unwrap();
            let x = values(6 * cols, 8);
            let base = matmul_with(&m, &x, 6, Kernel::Portable);
            #[cfg(target_arch = "x86_64")]
            for k in [Kernel::Avx2, Kernel::AvxVnni, Kernel::AvxVnniBw, Kernel::Avx512Vnni] {
                let ok = match k {
                    Kernel::Avx512Vnni => avx512(),
                    Kernel::AvxVnni => is_x86_feature_detected!("avxvnni"),
                    Kernel::AvxVnniBw => is_x86_feature_detected!("avxvnni") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl"),
                    _ => is_x86_feature_detected!("avx2"),
                };
                if !ok {
                    continue;
                }
                let got = matmul_with(&m, &x, 6, k);
                for (a, b) in got.iter().zip(&base) {
                    assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{} {k:?}: {a} vs {b}", ty.name());
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn avx512() -> bool {
        is_x86_feature_detected!("avxvnni") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
    }

    fn matmul_with(m: &QMatrix, x: &[f32], n: usize, k: Kernel) -> Vec<f32> {
        let mut y = vec![0f32; n * m.rows];
        if m.is_float() {
            m.matmul(x, n, &mut y);
            return y;
        }
        let mut acts = QuantizedRows::new(x, n, m.cols);
        if acts.d8.is_empty() {
            acts.expand_scales();
        }
        let mut offsets = Vec::new();
        let row_bytes = m.dtype.bytes_for(m.cols);
        let w = m.bytes();
        for o in 0..m.rows {
            let mut col = vec![0f32; n];
            let wr = &w[o * row_bytes..(o + 1) * row_bytes];
            with_block_format!(m.dtype, F => match k {
                Kernel::Portable => row_dots_portable::<F>(wr, &acts, 0, &mut col),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { x86::row_dots_avx2::<F>(wr, &acts, 0, &mut col) },
                #[cfg(target_arch = "x86_64")]
                Kernel::AvxVnni => unsafe { x86::row_dots_vnni::<F>(wr, &acts, 0, &mut col) },
                #[cfg(target_arch = "x86_64")]
                Kernel::AvxVnniBw => unsafe { x86::row_dots_vnni_bw::<F>(wr, &acts, 0, &mut col) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Vnni => unsafe { x86::row_dots_512::<F>(wr, &acts, 0, &mut col, &mut offsets) },
                #[allow(unreachable_patterns)]
                _ => unreachable!(),
            });
            for r in 0..n {
                y[r * m.rows + o] = col[r];
            }
        }
        y
    }
}
