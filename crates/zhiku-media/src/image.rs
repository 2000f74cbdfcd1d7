//! Images in: PNG and JPEG decoded to 8-bit RGB (the `image` crate), with the pixel operations
//! the OCR pipeline needs written to OpenCV's conventions, because the PP-OCR models were trained
//! on images OpenCV prepared: bilinear resize on pixel centres, bicubic perspective warp
//! (a = -0.75) with replicated borders, 90° and 180° turns.
//!
//! Size is bounded before any pixel is allocated: a file whose header claims more than
//! [`MAX_PIXELS`] is refused with its size, never decoded.

use std::path::Path;

/// Largest image decoded: 120 megapixels (e.g. 12,000 × 10,000; 360 MB as RGB). A 20,000 ×
/// 20,000 scan (400 MP) is refused with this number in the message; OCR downscales every page to
/// 2,000 pixels on its longer side anyway, so a scan that large should be exported smaller.
pub const MAX_PIXELS: u64 = 120_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: no such file")]
    NotFound { path: String },
    #[error("{path}: cannot read: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: the file is empty (0 bytes)")]
    Empty { path: String },
    #[error("{path}: not an image zhiku can decode (PNG, JPEG): {detail}")]
    Unsupported { path: String, detail: String },
    #[error("{path}: corrupt image: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("{path}: {width} x {height} pixels ({mp:.0} megapixels) is over the {max} megapixel limit; export the page smaller")]
    TooLarge { path: String, width: u64, height: u64, mp: f64, max: u64 },
}

/// An 8-bit RGB image, rows top to bottom, pixels interleaved.
#[derive(Clone, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({} x {})", self.width, self.height)
    }
}

impl RgbImage {
    pub fn new(width: usize, height: usize) -> RgbImage {
        RgbImage { width, height, data: vec![0; width * height * 3] }
    }

    #[inline]
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Bilinear resize as OpenCV's `INTER_LINEAR` computes it for 8-bit images, to the bit:
    /// source = (dest + 0.5) · scale − 0.5 in f32, clamped at the edges; weights in 11-bit fixed
    /// point; the vertical pass in the reduced precision of its SIMD path
    /// (((S0 >> 4) · b0 >> 16) + ((S1 >> 4) · b1 >> 16) + 2) >> 2.
    pub fn resize(&self, width: usize, height: usize) -> RgbImage {
        let mut out = RgbImage::new(width, height);
        if self.width == 0 || self.height == 0 || width == 0 || height == 0 {
            return out;
        }
        const ONE: f32 = 2048.0;
        // (first source index, weight of it, weight of the next), clamped as OpenCV clamps.
        let taps = |dest: usize, src: usize, clamp_fraction: bool| -> Vec<(usize, usize, i32, i32)> {
            let scale = 1.0 / (dest as f64 / src as f64);
            (0..dest)
                .map(|d| {
                    let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
                    let mut i = f.floor() as isize;
                    let mut frac = f - i as f32;
                    if clamp_fraction && i < 0 {
                        i = 0;
                        frac = 0.0;
                    }
                    if clamp_fraction && i >= src as isize - 1 {
                        i = src as isize - 1;
                        frac = 0.0;
                    }
                    let i0 = i.clamp(0, src as isize - 1) as usize;
                    let i1 = (i + 1).clamp(0, src as isize - 1) as usize;
                    let w0 = ((1.0 - frac) * ONE).round_ties_even() as i32;
                    let w1 = (frac * ONE).round_ties_even() as i32;
                    (i0, i1, w0, w1)
                })
                .collect()
        };
        // Horizontally OpenCV moves the position to the edge pixel; vertically it clamps the
        // rows but keeps the fraction (both rows are then the same one).
        let xs = taps(width, self.width, true);
        let ys = taps(height, self.height, false);
        let hpass = |row: usize| -> Vec<i32> {
            let src = &self.data[row * self.width * 3..(row + 1) * self.width * 3];
            let mut out = Vec::with_capacity(width * 3);
            for &(x0, x1, a0, a1) in &xs {
                for c in 0..3 {
                    out.push(src[x0 * 3 + c] as i32 * a0 + src[x1 * 3 + c] as i32 * a1);
                }
            }
            out
        };
        let mut cache: Option<(usize, Vec<i32>)> = None;
        for (y, &(y0, y1, b0, b1)) in ys.iter().enumerate() {
            let s0 = match cache.take() {
                Some((r, v)) if r == y0 => v,
                _ => hpass(y0),
            };
            let s1 = if y1 == y0 { s0.clone() } else { hpass(y1) };
            let out_row = &mut out.data[y * width * 3..(y + 1) * width * 3];
            for (o, (a, b)) in out_row.iter_mut().zip(s0.iter().zip(&s1)) {
                let v = (((a >> 4) * b0) >> 16) + (((b >> 4) * b1) >> 16);
                *o = ((v + 2) >> 2).clamp(0, 255) as u8;
            }
            cache = Some((y1, s1));
        }
        out
    }

    /// Bicubic resize as Pillow's `Image.resize(..., BICUBIC)` computes it for 8-bit images (the
    /// resize of transformers' image processors): a separable convolution with the a = -0.5
    /// cubic, its support widened by the scale when shrinking (antialiasing), weights in 22-bit
    /// fixed point, the horizontal pass first, each pass rounded and clipped to 8 bits.
    pub fn resize_bicubic(&self, width: usize, height: usize) -> RgbImage {
        // Each pass reads the previous one's output; the input is copied only when no pass runs.
        let mut img = std::borrow::Cow::Borrowed(self);
        if width != img.width {
            let (starts, weights, taps) = pil_coefficients(img.width, width);
            let mut out = RgbImage::new(width, img.height);
            for y in 0..img.height {
                let row = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
                for x in 0..width {
                    for c in 0..3 {
                        let mut acc: i64 = 1 << (PIL_PRECISION - 1);
                        for (t, &w) in weights[x * taps..(x + 1) * taps].iter().enumerate() {
                            if w != 0 {
                                acc += row[(starts[x] + t) * 3 + c] as i64 * w as i64;
                            }
                        }
                        out.data[(y * width + x) * 3 + c] = (acc >> PIL_PRECISION).clamp(0, 255) as u8;
                    }
                }
            }
            img = std::borrow::Cow::Owned(out);
        }
        if height != img.height {
            let (starts, weights, taps) = pil_coefficients(img.height, height);
            let w3 = img.width * 3;
            let mut out = RgbImage::new(img.width, height);
            for y in 0..height {
                for i in 0..w3 {
                    let mut acc: i64 = 1 << (PIL_PRECISION - 1);
                    for (t, &w) in weights[y * taps..(y + 1) * taps].iter().enumerate() {
                        if w != 0 {
                            acc += img.data[(starts[y] + t) * w3 + i] as i64 * w as i64;
                        }
                    }
                    out.data[y * w3 + i] = (acc >> PIL_PRECISION).clamp(0, 255) as u8;
                }
            }
            img = std::borrow::Cow::Owned(out);
        }
        img.into_owned()
    }

    /// The `width` x `height` window at (`left`, `top`); parts outside the image are black.
    pub fn crop(&self, left: i64, top: i64, width: usize, height: usize) -> RgbImage {
        let mut out = RgbImage::new(width, height);
        for y in 0..height {
            let sy = top + y as i64;
            if sy < 0 || sy >= self.height as i64 {
                continue;
            }
            for x in 0..width {
                let sx = left + x as i64;
                if sx >= 0 && sx < self.width as i64 {
                    let (o, i) = ((y * width + x) * 3, (sy as usize * self.width + sx as usize) * 3);
                    out.data[o..o + 3].copy_from_slice(&self.data[i..i + 3]);
                }
            }
        }
        out
    }

    /// Black bands `top` and `bottom` pixels high above and below the image.
    pub fn pad_vertical(&self, top: usize, bottom: usize) -> RgbImage {
        let mut out = RgbImage::new(self.width, self.height + top + bottom);
        let row = self.width * 3;
        out.data[top * row..(top + self.height) * row].copy_from_slice(&self.data);
        out
    }

    /// Turned 180°.
    pub fn rotate180(&self) -> RgbImage {
        let mut out = RgbImage::new(self.width, self.height);
        let n = self.width * self.height;
        for i in 0..n {
            let j = n - 1 - i;
            out.data[j * 3..j * 3 + 3].copy_from_slice(&self.data[i * 3..i * 3 + 3]);
        }
        out
    }

    /// Turned 90° anticlockwise (numpy's `rot90`): the right edge becomes the top.
    pub fn rotate90_ccw(&self) -> RgbImage {
        let (w, h) = (self.width, self.height);
        let mut out = RgbImage::new(h, w);
        for y in 0..w {
            for x in 0..h {
                let src = x * w + (w - 1 - y);
                let dst = y * h + x;
                out.data[dst * 3..dst * 3 + 3].copy_from_slice(&self.data[src * 3..src * 3 + 3]);
            }
        }
        out
    }

    /// The quadrilateral `corners` (top-left, top-right, bottom-right, bottom-left, in source
    /// pixels) mapped onto an upright `width` × `height` image: OpenCV's `getPerspectiveTransform`
    /// plus `warpPerspective` with `INTER_CUBIC` and `BORDER_REPLICATE`.
    pub fn warp_quad(&self, corners: &[[f32; 2]; 4], width: usize, height: usize) -> RgbImage {
        let mut out = RgbImage::new(width, height);
        if self.width == 0 || self.height == 0 {
            return out;
        }
        let dest = [[0.0, 0.0], [width as f64, 0.0], [width as f64, height as f64], [0.0, height as f64]];
        let src: Vec<[f64; 2]> = corners.iter().map(|p| [p[0] as f64, p[1] as f64]).collect();
        // The map from destination to source pixels (what warpPerspective evaluates per pixel).
        let Some(h) = homography(&dest, &[src[0], src[1], src[2], src[3]]) else {
            return out;
        };
        let (sw, sh) = (self.width as isize, self.height as isize);
        for y in 0..height {
            for x in 0..width {
                let (xf, yf) = (x as f64, y as f64);
                let wz = h[6] * xf + h[7] * yf + h[8];
                let wz = if wz != 0.0 { 1.0 / wz } else { 0.0 };
                let sx = (h[0] * xf + h[1] * yf + h[2]) * wz;
                let sy = (h[3] * xf + h[4] * yf + h[5]) * wz;
                // Full-precision fractions (OpenCV 4 quantised them to 1/32 of a pixel; the
                // warp kernels of the OpenCV that RapidOCR installs today do not).
                let (ix, iy) = (sx.floor() as isize, sy.floor() as isize);
                let fx = (sx - ix as f64) as f32;
                let fy = (sy - iy as f64) as f32;
                let wx = cubic_weights(fx);
                let wy = cubic_weights(fy);
                let mut acc = [0f32; 3];
                for (j, wyj) in wy.iter().enumerate() {
                    let yy = (iy - 1 + j as isize).clamp(0, sh - 1) as usize;
                    for (i, wxi) in wx.iter().enumerate() {
                        let xx = (ix - 1 + i as isize).clamp(0, sw - 1) as usize;
                        let p = (yy * self.width + xx) * 3;
                        let w = wyj * wxi;
                        for (a, &v) in acc.iter_mut().zip(&self.data[p..p + 3]) {
                            *a += v as f32 * w;
                        }
                    }
                }
                let o = (y * width + x) * 3;
                for (d, a) in out.data[o..o + 3].iter_mut().zip(acc) {
                    *d = a.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        out
    }
}

/// OpenCV's bicubic weights (A = −0.75) for the four taps around a fraction `t`.
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let w0 = ((A * (t + 1.0) - 5.0 * A) * (t + 1.0) + 8.0 * A) * (t + 1.0) - 4.0 * A;
    let w1 = ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0;
    let w2 = ((A + 2.0) * (1.0 - t) - (A + 3.0)) * (1.0 - t) * (1.0 - t) + 1.0;
    [w0, w1, w2, 1.0 - w0 - w1 - w2]
}

/// Fixed-point precision of Pillow's 8-bit resampling weights.
const PIL_PRECISION: u32 = 22;

/// Pillow's `precompute_coeffs` for the bicubic filter: per output position its first input
/// position and `taps` weights in fixed point.
fn pil_coefficients(in_size: usize, out_size: usize) -> (Vec<usize>, Vec<i32>, usize) {
    let cubic = |x: f64| {
        let (a, x) = (-0.5, x.abs());
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * a
        } else {
            0.0
        }
    };
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    let taps = support.ceil() as usize * 2 + 1;
    let mut starts = vec![0usize; out_size];
    let mut weights = vec![0i32; out_size * taps];
    for (x, start) in starts.iter_mut().enumerate() {
        let center = (x as f64 + 0.5) * scale;
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = hi.saturating_sub(lo).min(taps);
        let k: Vec<f64> = (0..n).map(|i| cubic((i as f64 + lo as f64 - center + 0.5) / filter_scale)).collect();
        let total: f64 = k.iter().sum();
        for (i, &w) in k.iter().enumerate() {
            let w = if total != 0.0 { w / total } else { w };
            let fixed = w * (1u64 << PIL_PRECISION) as f64;
            weights[x * taps + i] = if fixed < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
        }
        *start = lo;
    }
    (starts, weights, taps)
}

/// The 3 × 3 projective map (row-major, last entry 1) taking each `from` point onto its `to`
/// point; `None` when the points are degenerate (three on a line).
pub fn homography(from: &[[f64; 2]; 4], to: &[[f64; 2]; 4]) -> Option<[f64; 9]> {
    let mut a = [[0f64; 9]; 8];
    for i in 0..4 {
        let ([x, y], [u, v]) = (from[i], to[i]);
        a[i] = [x, y, 1.0, 0.0, 0.0, 0.0, -x * u, -y * u, u];
        a[i + 4] = [0.0, 0.0, 0.0, x, y, 1.0, -x * v, -y * v, v];
    }
    // Gaussian elimination with partial pivoting on the 8 × 8 system.
    for col in 0..8 {
        let pivot = (col..8).max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        for row in 0..8 {
            if row != col {
                let f = a[row][col] / a[col][col];
                if f != 0.0 {
                    let pivot_row = a[col];
                    for (v, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                        *v -= f * p;
                    }
                }
            }
        }
    }
    let mut h = [0f64; 9];
    for i in 0..8 {
        h[i] = a[i][8] / a[i][i];
    }
    h[8] = 1.0;
    Some(h)
}

/// Reads and decodes an image file (PNG or JPEG; the format is sniffed from the bytes).
pub fn load_image(path: &Path) -> Result<RgbImage, ImageError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ImageError::NotFound { path: shown.clone() }
        } else {
            ImageError::Io { path: shown.clone(), source }
        }
    })?;
    decode_image(&bytes, &shown)
}

/// Decodes image bytes; `name` is what errors call the input. Transparent pixels are laid on
/// white (as RapidOCR does), grey images are widened to RGB.
pub fn decode_image(bytes: &[u8], name: &str) -> Result<RgbImage, ImageError> {
    use image::ImageDecoder;
    if bytes.is_empty() {
        return Err(ImageError::Empty { path: name.to_string() });
    }
    let format = image::guess_format(bytes).map_err(|e| ImageError::Unsupported {
        path: name.to_string(),
        detail: e.to_string(),
    })?;
    if !matches!(format, image::ImageFormat::Png | image::ImageFormat::Jpeg) {
        return Err(ImageError::Unsupported {
            path: name.to_string(),
            detail: format!("{format:?} images are not read"),
        });
    }
    let corrupt = |e: image::ImageError| ImageError::Corrupt { path: name.to_string(), detail: e.to_string() };
    let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > MAX_PIXELS {
        return Err(ImageError::TooLarge {
            path: name.to_string(),
            width: w as u64,
            height: h as u64,
            mp: pixels as f64 / 1e6,
            max: MAX_PIXELS / 1_000_000,
        });
    }
    if pixels == 0 {
        return Err(ImageError::Corrupt { path: name.to_string(), detail: "the image has no pixels".into() });
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    decoder.set_limits(limits).map_err(corrupt)?;
    let img = image::DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = if img.color().has_alpha() {
        let rgba = img.into_rgba8();
        let mut data = Vec::with_capacity(width * height * 3);
        for p in rgba.pixels() {
            let a = p.0[3] as u32;
            for c in 0..3 {
                data.push(((p.0[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8);
            }
        }
        data
    } else {
        img.into_rgb8().into_raw()
    };
    Ok(RgbImage { width, height, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> RgbImage {
        let mut img = RgbImage::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let i = (y * w + x) * 3;
                img.data[i] = (x * 10) as u8;
                img.data[i + 1] = (y * 10) as u8;
                img.data[i + 2] = 7;
            }
        }
        img
    }

    #[test]
    fn resize_to_the_same_size_is_the_identity_and_halving_averages_pairs() {
        let img = gradient(8, 6);
        assert_eq!(img.resize(8, 6), img);
        let half = img.resize(4, 3);
        // Pixel centres of the half-size image fall between source pixels 2i and 2i+1.
        assert_eq!(half.pixel(1, 1), [25, 25, 7]);
    }

    #[test]
    fn turns_move_corners_where_numpy_and_opencv_put_them() {
        let img = gradient(3, 2);
        let r = img.rotate90_ccw();
        assert_eq!((r.width, r.height), (2, 3));
        assert_eq!(r.pixel(0, 0), img.pixel(2, 0)); // the top-right corner goes to the top-left
        assert_eq!(r.pixel(1, 2), img.pixel(0, 1));
        let r = img.rotate180();
        assert_eq!(r.pixel(0, 0), img.pixel(2, 1));
        assert_eq!(img.pad_vertical(2, 1).height, 5);
        assert_eq!(img.pad_vertical(2, 1).pixel(1, 2), img.pixel(1, 0));
    }

    #[test]
    fn warping_an_upright_rectangle_copies_it() {
        let img = gradient(10, 8);
        let crop = img.warp_quad(&[[2.0, 1.0], [7.0, 1.0], [7.0, 5.0], [2.0, 5.0]], 5, 4);
        for y in 0..4 {
            for x in 0..5 {
                assert_eq!(crop.pixel(x, y), img.pixel(x + 2, y + 1), "at {x},{y}");
            }
        }
        // A degenerate quadrilateral gives a black image, not a panic.
        let flat = img.warp_quad(&[[1.0, 1.0]; 4], 3, 2);
        assert_eq!(flat.data, vec![0; 18]);
    }

    #[test]
    fn bad_bytes_get_clear_errors() {
        assert!(matches!(decode_image(b"", "x.png"), Err(ImageError::Empty { .. })));
        assert!(matches!(decode_image(b"hello world, not an image", "x.png"), Err(ImageError::Unsupported { .. })));
        let mut png = Vec::new();
        image::RgbImage::from_pixel(4, 3, image::Rgb([9, 8, 7]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let img = decode_image(&png, "x.png").unwrap();
        assert_eq!((img.width, img.height, img.pixel(3, 2)), (4, 3, [9, 8, 7]));
        let cut = &png[..png.len() - 20];
        assert!(matches!(decode_image(cut, "x.png"), Err(ImageError::Corrupt { .. })), "{:?}", decode_image(cut, "x.png"));
    }

    #[test]
    fn a_header_claiming_twenty_thousand_pixels_square_is_refused_before_decoding() {
        // A PNG header (and an IHDR chunk) for 20,000 x 20,000 RGB, with no pixel data at all.
        // (The decoder reads the header up to the first IDAT chunk.)
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&20_000u32.to_be_bytes());
        ihdr.extend_from_slice(&20_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        for chunk in [&b"IDAT"[..], &b"IEND"[..]] {
            png.extend_from_slice(&0u32.to_be_bytes());
            png.extend_from_slice(chunk);
            png.extend_from_slice(&crc32(chunk).to_be_bytes());
        }
        let err = decode_image(&png, "huge.png").unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { width: 20_000, height: 20_000, .. }), "{err}");
        assert!(err.to_string().contains("400 megapixels"), "{err}");
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
}
