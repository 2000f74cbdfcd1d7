//! ggml's tensor types: plain floats (F32, F16, BF16) and the quantised block formats (Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K), with their byte layouts as llama.cpp writes them.
//!
//! Every quantised format is described the same way, in groups of 32 weights: 32 unsigned
//! codes and, per half-group of 16, a scale and an offset, so that
//! `weight[i] = scale[i / 16] · code[i] + offset[i / 16]`. Dequantisation and the integer
//! matrix kernels (`qmatmul`) both read blocks through this one description ([`QuantFormat`]),
//! and the kernels turn the offset into a product with the activations' sums.

use anyhow::{bail, Result};
use half::{bf16, f16};

/// A ggml tensor type, by its id in GGUF files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    pub const ALL: [GgmlType; 11] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    pub fn from_id(id: u32) -> Result<Self> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            other => {
                let name = match other {
                    9 => "Q8_1",
                    10 => "Q2_K",
                    11 => "Q3_K",
                    15 => "Q8_K",
                    16..=23 | 29 => "an IQ type",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    34 | 35 => "a ternary type",
                    39 => "MXFP4",
                    _ => "unknown",
                };
                bail!(
                    "tensor type {other} ({name}) is not supported; supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K"
                )
            }
        })
    }

    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::BF16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// Elements per block (1 for plain floats).
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => Q4_0::BYTES,
            Self::Q4_1 => Q4_1::BYTES,
            Self::Q5_0 => Q5_0::BYTES,
            Self::Q5_1 => Q5_1::BYTES,
            Self::Q8_0 => Q8_0::BYTES,
            Self::Q4K => Q4K::BYTES,
            Self::Q5K => Q5K::BYTES,
            Self::Q6K => Q6K::BYTES,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes that `elems` elements take (a whole number of blocks).
    pub fn bytes_for(self, elems: usize) -> usize {
        elems / self.block_len() * self.block_bytes()
    }

    /// Dequantises `bytes` (whole blocks) into `out`.
    pub fn dequantize(self, bytes: &[u8], out: &mut [f32]) -> Result<()> {
        if !out.len().is_multiple_of(self.block_len()) || bytes.len() != self.bytes_for(out.len()) {
            bail!("{} data of {} bytes cannot hold {} values", self.name(), bytes.len(), out.len())
        }
        match self {
            Self::F32 => out.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(o, b)| *o = f32::from_le_bytes(b.try_into().unwrap())),
            Self::F16 => out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, b)| *o = f16::from_le_bytes([b[0], b[1]]).to_f32()),
            Self::BF16 => out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, b)| *o = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            Self::Q4_0 => dequantize_blocks::<Q4_0>(bytes, out),
            Self::Q4_1 => dequantize_blocks::<Q4_1>(bytes, out),
            Self::Q5_0 => dequantize_blocks::<Q5_0>(bytes, out),
            Self::Q5_1 => dequantize_blocks::<Q5_1>(bytes, out),
            Self::Q8_0 => dequantize_blocks::<Q8_0>(bytes, out),
            Self::Q4K => dequantize_blocks::<Q4K>(bytes, out),
            Self::Q5K => dequantize_blocks::<Q5K>(bytes, out),
            Self::Q6K => dequantize_blocks::<Q6K>(bytes, out),
        }
        Ok(())
    }
}

/// Scale and offset of the two half-groups (16 weights each) of a group of 32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupParams {
    pub scale: [f32; 2],
    pub offset: [f32; 2],
}

impl GroupParams {
    fn uniform(scale: f32, offset: f32) -> Self {
        Self { scale: [scale; 2], offset: [offset; 2] }
    }
}

/// A quantised block format seen as groups of 32 unsigned codes.
pub trait QuantFormat: Send + Sync + 'static {
    const TYPE: GgmlType;
    /// Weights per block.
    const LEN: usize;
    const BYTES: usize;
    /// Whether the two halves of a group may have different scales (only Q6_K).
    const SPLIT_SCALES: bool = false;
    /// Scale and offset of group `g` (`0..LEN / 32`) of `block`.
    fn params(block: &[u8], g: usize) -> GroupParams;
    /// The 32 codes of group `g`.
    fn codes(block: &[u8], g: usize, out: &mut [u8; 32]);
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

pub fn dequantize_blocks<F: QuantFormat>(bytes: &[u8], out: &mut [f32]) {
    let mut codes = [0u8; 32];
    for (block, out) in bytes.chunks_exact(F::BYTES).zip(out.chunks_exact_mut(F::LEN)) {
        for (g, out) in out.chunks_exact_mut(32).enumerate() {
            let p = F::params(block, g);
            F::codes(block, g, &mut codes);
            for (i, (o, &c)) in out.iter_mut().zip(codes.iter()).enumerate() {
                *o = p.scale[i / 16] * c as f32 + p.offset[i / 16];
            }
        }
    }
}

/// `d: f16, qs: [u8; 16]`; weight = d · (nibble − 8). Low nibbles are weights 0..16.
pub struct Q4_0;
impl QuantFormat for Q4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const LEN: usize = 32;
    const BYTES: usize = 18;
    fn params(b: &[u8], _: usize) -> GroupParams {
        let d = f16_at(b, 0);
        GroupParams::uniform(d, -8.0 * d)
    }
    fn codes(b: &[u8], _: usize, out: &mut [u8; 32]) {
        nibbles(&b[2..18], out)
    }
}

/// `d: f16, m: f16, qs: [u8; 16]`; weight = d · nibble + m.
pub struct Q4_1;
impl QuantFormat for Q4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const LEN: usize = 32;
    const BYTES: usize = 20;
    fn params(b: &[u8], _: usize) -> GroupParams {
        GroupParams::uniform(f16_at(b, 0), f16_at(b, 2))
    }
    fn codes(b: &[u8], _: usize, out: &mut [u8; 32]) {
        nibbles(&b[4..20], out)
    }
}

/// `d: f16, qh: u32, qs: [u8; 16]`; weight = d · (nibble | high bit << 4 − 16).
pub struct Q5_0;
impl QuantFormat for Q5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const LEN: usize = 32;
    const BYTES: usize = 22;
    fn params(b: &[u8], _: usize) -> GroupParams {
        let d = f16_at(b, 0);
        GroupParams::uniform(d, -16.0 * d)
    }
    fn codes(b: &[u8], _: usize, out: &mut [u8; 32]) {
        nibbles(&b[6..22], out);
        high_bits(u32::from_le_bytes(b[2..6].try_into().unwrap()), out)
    }
}

/// `d: f16, m: f16, qh: u32, qs: [u8; 16]`; weight = d · (nibble | high bit << 4) + m.
pub struct Q5_1;
impl QuantFormat for Q5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const LEN: usize = 32;
    const BYTES: usize = 24;
    fn params(b: &[u8], _: usize) -> GroupParams {
        GroupParams::uniform(f16_at(b, 0), f16_at(b, 2))
    }
    fn codes(b: &[u8], _: usize, out: &mut [u8; 32]) {
        nibbles(&b[8..24], out);
        high_bits(u32::from_le_bytes(b[4..8].try_into().unwrap()), out)
    }
}

/// `d: f16, qs: [i8; 32]`; weight = d · q. Codes are q + 128.
pub struct Q8_0;
impl QuantFormat for Q8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const LEN: usize = 32;
    const BYTES: usize = 34;
    fn params(b: &[u8], _: usize) -> GroupParams {
        let d = f16_at(b, 0);
        GroupParams::uniform(d, -128.0 * d)
    }
    fn codes(b: &[u8], _: usize, out: &mut [u8; 32]) {
        for (o, &q) in out.iter_mut().zip(&b[2..34]) {
            *o = q ^ 0x80;
        }
    }
}

/// 6-bit scale and min of sub-block `j` (0..8) from K-quants' packed 12 bytes.
pub fn k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        ((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
    }
}

/// `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`; 8 groups of 32 with 6-bit scales and
/// mins: weight = d · sc · nibble − dmin · m. Groups 2p and 2p+1 are the low and high nibbles
/// of bytes `qs[32p..32p + 32]`.
pub struct Q4K;
impl QuantFormat for Q4K {
    const TYPE: GgmlType = GgmlType::Q4K;
    const LEN: usize = 256;
    const BYTES: usize = 144;
    fn params(b: &[u8], g: usize) -> GroupParams {
        let (sc, m) = k_scale_min(&b[4..16], g);
        GroupParams::uniform(f16_at(b, 0) * sc as f32, -f16_at(b, 2) * m as f32)
    }
    fn codes(b: &[u8], g: usize, out: &mut [u8; 32]) {
        let qs = &b[16 + 32 * (g / 2)..16 + 32 * (g / 2) + 32];
        let shift = 4 * (g % 2);
        for (o, &q) in out.iter_mut().zip(qs) {
            *o = (q >> shift) & 0xF;
        }
    }
}

/// `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`: Q4_K plus a fifth bit,
/// bit `g` of `qh[i]` for weight i of group g.
pub struct Q5K;
impl QuantFormat for Q5K {
    const TYPE: GgmlType = GgmlType::Q5K;
    const LEN: usize = 256;
    const BYTES: usize = 176;
    fn params(b: &[u8], g: usize) -> GroupParams {
        Q4K::params(b, g)
    }
    fn codes(b: &[u8], g: usize, out: &mut [u8; 32]) {
        let qh = &b[16..48];
        let qs = &b[48 + 32 * (g / 2)..48 + 32 * (g / 2) + 32];
        let shift = 4 * (g % 2);
        for ((o, &q), &h) in out.iter_mut().zip(qs).zip(qh) {
            *o = ((q >> shift) & 0xF) | (((h >> g) & 1) << 4);
        }
    }
}

/// `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`; weight = d · sc · (q − 32) with a
/// signed 8-bit scale per 16 weights. Group g = 4n + k (half n, quarter k): low bits from the
/// low (k < 2) or high nibbles of `ql[64n + 32(k & 1)..]`, high bits `(qh[32n + i] >> 2k) & 3`.
pub struct Q6K;
impl QuantFormat for Q6K {
    const TYPE: GgmlType = GgmlType::Q6K;
    const LEN: usize = 256;
    const BYTES: usize = 210;
    const SPLIT_SCALES: bool = true;
    fn params(b: &[u8], g: usize) -> GroupParams {
        let d = f16_at(b, 208);
        let s0 = d * (b[192 + 2 * g] as i8) as f32;
        let s1 = d * (b[192 + 2 * g + 1] as i8) as f32;
        GroupParams { scale: [s0, s1], offset: [-32.0 * s0, -32.0 * s1] }
    }
    fn codes(b: &[u8], g: usize, out: &mut [u8; 32]) {
        let (n, k) = (g / 4, g % 4);
        let ql = &b[64 * n + 32 * (k & 1)..64 * n + 32 * (k & 1) + 32];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let shift = 4 * (k / 2);
        for ((o, &l), &h) in out.iter_mut().zip(ql).zip(qh) {
            *o = ((l >> shift) & 0xF) | (((h >> (2 * k)) & 3) << 4);
        }
    }
}

/// Low nibbles of 16 bytes are codes 0..16, high nibbles codes 16..32 (ggml's Q4/Q5 order).
fn nibbles(qs: &[u8], out: &mut [u8; 32]) {
    for (j, &q) in qs.iter().enumerate() {
        out[j] = q & 0xF;
        out[j + 16] = q >> 4;
    }
}

fn high_bits(qh: u32, out: &mut [u8; 32]) {
    for (j, o) in out.iter_mut().enumerate() {
        *o |= (((qh >> j) & 1) as u8) << 4;
    }
}

/// Quantisers (round to nearest, no search), for tests and for writing small GGUF files. They
/// are not llama.cpp's quantisers: llama.cpp picks scales with a search, so the same weights
/// quantise to other bytes there, but any bytes decode the same way in both.
pub mod quantize {
    use super::*;

    fn put_f16(out: &mut Vec<u8>, v: f32) {
        out.extend_from_slice(&f16::from_f32(v).to_le_bytes())
    }

    /// Quantises `values` (a multiple of the block length) to `ty`.
    pub fn quantize(ty: GgmlType, values: &[f32]) -> Vec<u8> {
        assert_eq!(values.len() % ty.block_len(), 0, "whole blocks only");
        let mut out = Vec::with_capacity(ty.bytes_for(values.len()));
        match ty {
            GgmlType::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            GgmlType::F16 => values.iter().for_each(|&v| put_f16(&mut out, v)),
            GgmlType::BF16 => values.iter().for_each(|&v| out.extend_from_slice(&bf16::from_f32(v).to_le_bytes())),
            GgmlType::Q8_0 => {
                for x in values.chunks_exact(32) {
                    let d = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                    put_f16(&mut out, d);
                    let d = f16::from_f32(d).to_f32();
                    x.iter().for_each(|v| out.push(if d > 0.0 { (v / d).round().clamp(-127.0, 127.0) as i8 as u8 } else { 0 }));
                }
            }
            GgmlType::Q4_0 | GgmlType::Q5_0 => {
                let (levels, mid) = if ty == GgmlType::Q4_0 { (15.0, 8.0) } else { (31.0, 16.0) };
                for x in values.chunks_exact(32) {
                    let d = x.iter().fold(0f32, |m, v| m.max(v.abs())) / (levels / 2.0);
                    put_f16(&mut out, d);
                    let d = f16::from_f32(d).to_f32();
                    let q: Vec<u8> = x.iter().map(|v| if d > 0.0 { (v / d + mid).round().clamp(0.0, levels) as u8 } else { mid as u8 }).collect();
                    pack_low(&mut out, &q, ty == GgmlType::Q5_0);
                }
            }
            GgmlType::Q4_1 | GgmlType::Q5_1 => {
                let levels = if ty == GgmlType::Q4_1 { 15.0 } else { 31.0 };
                for x in values.chunks_exact(32) {
                    let min = x.iter().cloned().fold(f32::INFINITY, f32::min);
                    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let d = (max - min) / levels;
                    put_f16(&mut out, d);
                    put_f16(&mut out, min);
                    let (d, min) = (f16::from_f32(d).to_f32(), f16::from_f32(min).to_f32());
                    let q: Vec<u8> = x.iter().map(|v| if d > 0.0 { ((v - min) / d).round().clamp(0.0, levels) as u8 } else { 0 }).collect();
                    pack_low(&mut out, &q, ty == GgmlType::Q5_1);
                }
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                let levels = if ty == GgmlType::Q4K { 15.0 } else { 31.0 };
                for x in values.chunks_exact(256) {
                    // Per group: min ≤ 0 and a scale; then 6-bit codes of both relative to the
                    // block's d and dmin.
                    let mut sc = [0f32; 8];
                    let mut mn = [0f32; 8];
                    for (g, xs) in x.chunks_exact(32).enumerate() {
                        let lo = xs.iter().cloned().fold(0f32, f32::min);
                        let hi = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                        sc[g] = (hi - lo) / levels;
                        mn[g] = -lo;
                    }
                    let d = sc.iter().cloned().fold(0f32, f32::max) / 63.0;
                    let dmin = mn.iter().cloned().fold(0f32, f32::max) / 63.0;
                    let (dh, dminh) = (f16::from_f32(d).to_f32(), f16::from_f32(dmin).to_f32());
                    let qsc: Vec<u8> = sc.iter().map(|s| if dh > 0.0 { (s / dh).round().clamp(0.0, 63.0) as u8 } else { 0 }).collect();
                    let qmn: Vec<u8> = mn.iter().map(|m| if dminh > 0.0 { (m / dminh).round().clamp(0.0, 63.0) as u8 } else { 0 }).collect();
                    let mut scales = [0u8; 12];
                    for j in 0..8 {
                        if j < 4 {
                            scales[j] = qsc[j];
                            scales[j + 4] = qmn[j];
                        } else {
                            scales[j + 4] = (qsc[j] & 0xF) | ((qmn[j] & 0xF) << 4);
                            scales[j - 4] |= (qsc[j] >> 4) << 6;
                            scales[j] |= (qmn[j] >> 4) << 6;
                        }
                    }
                    let mut q = [0u8; 256];
                    for (g, xs) in x.chunks_exact(32).enumerate() {
                        let s = dh * qsc[g] as f32;
                        let m = dminh * qmn[g] as f32;
                        for (i, v) in xs.iter().enumerate() {
                            q[32 * g + i] = if s > 0.0 { ((v + m) / s).round().clamp(0.0, levels) as u8 } else { 0 };
                        }
                    }
                    put_f16(&mut out, d);
                    put_f16(&mut out, dmin);
                    out.extend_from_slice(&scales);
                    if ty == GgmlType::Q5K {
                        let mut qh = [0u8; 32];
                        for g in 0..8 {
                            for i in 0..32 {
                                qh[i] |= ((q[32 * g + i] >> 4) & 1) << g;
                            }
                        }
                        out.extend_from_slice(&qh);
                    }
                    for p in 0..4 {
                        for i in 0..32 {
                            out.push((q[64 * p + i] & 0xF) | ((q[64 * p + 32 + i] & 0xF) << 4));
                        }
                    }
                }
            }
            GgmlType::Q6K => {
                for x in values.chunks_exact(256) {
                    let mut sc = [0f32; 16];
                    for (s, xs) in sc.iter_mut().zip(x.chunks_exact(16)) {
                        *s = xs.iter().fold(0f32, |m, v| m.max(v.abs())) / 31.0;
                    }
                    let d = sc.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                    let dh = f16::from_f32(d).to_f32();
                    let qsc: Vec<i8> = sc.iter().map(|s| if dh > 0.0 { (s / dh).round().clamp(-127.0, 127.0) as i8 } else { 0 }).collect();
                    let mut q = [0u8; 256];
                    for (i, v) in x.iter().enumerate() {
                        let s = dh * qsc[i / 16] as f32;
                        q[i] = if s != 0.0 { (v / s + 32.0).round().clamp(0.0, 63.0) as u8 } else { 32 };
                    }
                    let mut ql = [0u8; 128];
                    let mut qh = [0u8; 64];
                    for n in 0..2 {
                        for l in 0..32 {
                            let q1 = q[128 * n + l];
                            let q2 = q[128 * n + 32 + l];
                            let q3 = q[128 * n + 64 + l];
                            let q4 = q[128 * n + 96 + l];
                            ql[64 * n + l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
                            ql[64 * n + 32 + l] = (q2 & 0xF) | ((q4 & 0xF) << 4);
                            qh[32 * n + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
                        }
                    }
                    out.extend_from_slice(&ql);
                    out.extend_from_slice(&qh);
                    qsc.iter().for_each(|&s| out.push(s as u8));
                    put_f16(&mut out, d);
                }
            }
        }
        out
    }

    /// Nibbles (codes 0..16 low, 16..32 high), preceded by the fifth bits for Q5 formats.
    fn pack_low(out: &mut Vec<u8>, q: &[u8], fifth_bit: bool) {
        if fifth_bit {
            let qh = q.iter().enumerate().fold(0u32, |h, (j, &c)| h | (((c >> 4) as u32 & 1) << j));
            out.extend_from_slice(&qh.to_le_bytes());
        }
        for j in 0..16 {
            out.push((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37 + seed as f32).sin() * 1.7 + ((i * 7 % 13) as f32 - 6.0) * 0.05).collect()
    }

    #[test]
    fn quantize_then_dequantize_is_close_for_every_type() {
        let x = wave(512, 3);
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        for ty in GgmlType::ALL {
            let bytes = quantize::quantize(ty, &x);
            assert_eq!(bytes.len(), ty.bytes_for(x.len()), "{}", ty.name());
            let mut y = vec![0f32; x.len()];
            ty.dequantize(&bytes, &mut y).unwrap();
            let err = x.iter().zip(&y).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let bound = match ty {
                GgmlType::F32 => 0.0,
                GgmlType::F16 | GgmlType::BF16 => amax / 100.0,
                GgmlType::Q8_0 => amax / 100.0,
                GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5K | GgmlType::Q6K => amax / 10.0,
                _ => amax / 5.0,
            };
            assert!(err <= bound, "{}: max error {err} > {bound}", ty.name());
        }
    }

    #[test]
    fn type_ids_round_trip_and_unsupported_ones_are_named() {
        for ty in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(ty.id()).unwrap(), ty);
        }
        let err = GgmlType::from_id(11).unwrap_err().to_string();
        assert!(err.contains("Q3_K") && err.contains("not supported"), "{err}");
        assert!(GgmlType::Q4K.dequantize(&[0u8; 10], &mut [0f32; 256]).is_err());
    }
}
