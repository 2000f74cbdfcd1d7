//! PDF pages to images, for OCR of scans: hayro (a pure-Rust PDF rasteriser) draws each page on
//! white at a scale that puts its longer side at [`PAGE_PIXELS`] pixels, the size OCR works at
//! anyway (RapidOCR shrinks pages to 2,000 pixels), so memory stays bounded whatever size the
//! page claims; small pages are drawn at 4 pixels a point at most (288 dpi). A renderer panic on a malformed file is caught and reported as a corrupt PDF.

use crate::image::{ImageError, RgbImage};
use hayro::hayro_interpret::InterpreterSettings;
use hayro::hayro_syntax::Pdf;
use hayro::vello_cpu::color::palette::css::WHITE;
use hayro::{render, PixmapSettings, RenderCache, RenderSettings};

/// The longer side of a rendered page, in pixels.
pub const PAGE_PIXELS: f32 = 2000.0;

/// Renders `pages` (numbered from 1; all pages when `None`) of the PDF in `bytes`; `name` is what
/// errors call it. Returns (page number, image) in page order.
pub fn render_pages(bytes: &[u8], name: &str, pages: Option<&[usize]>) -> Result<Vec<(usize, RgbImage)>, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty { path: name.to_string() });
    }
    let corrupt = |detail: String| ImageError::Corrupt { path: name.to_string(), detail };
    let data = bytes.to_vec();
    let wanted = pages.map(|p| p.to_vec());
    let result = std::panic::catch_unwind(move || -> Result<Vec<(usize, RgbImage)>, String> {
        let pdf = Pdf::new(data).map_err(|e| format!("not a readable PDF ({e:?})"))?;
        let all = pdf.pages();
        if all.is_empty() {
            return Err("the PDF has no pages".into());
        }
        let numbers: Vec<usize> = match &wanted {
            Some(w) => w.clone(),
            None => (1..=all.len()).collect(),
        };
        let cache = RenderCache::new();
        let mut out = Vec::with_capacity(numbers.len());
        for n in numbers {
            let Some(page) = all.get(n.wrapping_sub(1)) else {
                return Err(format!("no page {n} (the PDF has {})", all.len()));
            };
            let (w, h) = page.render_dimensions();
            let scale = (PAGE_PIXELS / w.max(h).max(1.0)).clamp(0.01, 4.0);
            let settings = PixmapSettings { x_scale: scale, y_scale: scale, bg_color: WHITE };
            let pixmap = render(page, &cache, &InterpreterSettings::default(), &RenderSettings::default(), &settings);
            let (pw, ph) = (pixmap.width() as usize, pixmap.height() as usize);
            let rgba = pixmap.data_as_u8_slice();
            let mut img = RgbImage::new(pw, ph);
            // Premultiplied RGBA over white (the background is opaque white already).
            for (dst, src) in img.data.chunks_exact_mut(3).zip(rgba.chunks_exact(4)) {
                let a = 255 - src[3] as u16;
                for c in 0..3 {
                    dst[c] = (src[c] as u16 + a).min(255) as u8;
                }
            }
            out.push((n, img));
        }
        Ok(out)
    });
    match result {
        Ok(Ok(pages)) => Ok(pages),
        Ok(Err(detail)) => Err(corrupt(detail)),
        Err(panic) => Err(corrupt(format!(
            "the PDF renderer failed on it ({})",
            panic.downcast_ref::<String>().map(String::as_str).or(panic.downcast_ref::<&str>().copied()).unwrap_or("malformed content")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pdfs_are_errors_not_panics() {
        assert!(matches!(render_pages(b"", "x.pdf", None), Err(ImageError::Empty { .. })));
        assert!(matches!(render_pages(b"%PDF-1.4 and then nothing useful", "x.pdf", None), Err(ImageError::Corrupt { .. })));
    }
}
