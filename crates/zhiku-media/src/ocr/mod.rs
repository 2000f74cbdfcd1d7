//! Text in images: PP-OCR's three ONNX models (detection, orientation, recognition) run by rten,
//! a pure-Rust ONNX runtime, with RapidOCR's steps around them so that the same image gives the
//! same lines:
//!
//! 1. pages over 2,000 pixels on a side are shrunk, very flat ones padded with black bands;
//! 2. detection at 736 pixels on the short side, boxes by DB post-processing ([`db`]);
//! 3. boxes in reading order (top to bottom, then left to right within 10 pixels of height);
//! 4. each box warped upright (bicubic), tall ones turned a quarter; the classifier turns
//!    upside-down lines round;
//! 5. recognition in batches of 6 of similar width, CTC decoding over the character list the
//!    recognition model carries in its metadata;
//! 6. lines under 0.5 confidence dropped, boxes mapped back to the input's pixels.

pub mod db;
pub mod onnx_meta;

use crate::image::RgbImage;
use anyhow::{anyhow, bail, Context, Result};
use db::{DbOptions, Quad};
use rten::Model;
use rten_tensor::prelude::*;
use rten_tensor::{NdTensor, Tensor};
use std::path::{Path, PathBuf};

/// RapidOCR's settings (its `config.yaml`), which the models were tuned with.
#[derive(Debug, Clone)]
pub struct OcrOptions {
    pub db: DbOptions,
    /// Detection input: the shorter side is scaled up to this many pixels.
    pub det_short_side: usize,
    /// Pages longer than this on a side are shrunk first.
    pub max_side: usize,
    /// Pages shorter than this on a side are enlarged first.
    pub min_side: usize,
    /// Pages this low, or wider than `flat_ratio` times their height, get black bands above and below.
    pub min_height: usize,
    pub flat_ratio: f32,
    /// Turn a line round when the classifier says "180°" with more confidence than this.
    pub cls_thresh: f32,
    /// Lines recognised with less mean confidence are dropped.
    pub text_score: f32,
    /// Use the orientation classifier (when its model is present).
    pub use_cls: bool,
}

impl Default for OcrOptions {
    fn default() -> Self {
        OcrOptions {
            db: DbOptions::default(),
            det_short_side: 736,
            max_side: 2000,
            min_side: 30,
            min_height: 30,
            flat_ratio: 8.0,
            cls_thresh: 0.9,
            text_score: 0.5,
            use_cls: true,
        }
    }
}

/// One recognised line: its text, its box in the input image's pixels (top-left, top-right,
/// bottom-right, bottom-left as x, y) and the mean probability of its characters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OcrLine {
    pub text: String,
    #[serde(rename = "box")]
    pub quad: [[i64; 2]; 4],
    pub confidence: f32,
}

/// Everything read off one image, lines in reading order.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OcrPage {
    pub text: String,
    pub width: usize,
    pub height: usize,
    pub lines: Vec<OcrLine>,
}

/// The three models and the recognition alphabet.
pub struct OcrModel {
    det: Model,
    cls: Option<Model>,
    rec: Model,
    /// Index 0 is CTC's blank; the last entry is a space, as PaddleOCR appends it.
    characters: Vec<String>,
    pub files: Vec<PathBuf>,
    pub options: OcrOptions,
}

/// The one `.onnx` file in `dir` whose name contains `role`.
fn find_model(dir: &Path, role: &str, required: bool) -> Result<Option<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list the model folder", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_lowercase();
        if name.ends_with(".onnx") && name.contains(role) {
            found.push(path);
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.pop()),
        0 if !required => Ok(None),
        0 => bail!(
            "{}: no {role} model (an .onnx file with \"{role}\" in its name, as rapidocr_onnxruntime/models/ ships them)",
            dir.display()
        ),
        _ => bail!("{}: more than one {role} model: {:?}; keep one", dir.display(), found),
    }
}

/// The model and its `metadata_props` (read from the bytes before rten takes them).
fn load_onnx(path: &Path) -> Result<(Model, Vec<(String, String)>)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let meta = onnx_meta::metadata(&bytes).map_err(|e| anyhow!("{}: not an ONNX model rten can run: {e}", path.display()));
    let model = Model::load(bytes).map_err(|e| anyhow!("{}: not an ONNX model rten can run: {e}", path.display()))?;
    Ok((model, meta?))
}

impl OcrModel {
    /// Loads `dir`: the det, rec and (optional) cls `.onnx` files; the character list comes
    /// from the rec model's `character` metadata or, failing that, the one `.txt` file in `dir`.
    pub fn load(dir: &Path) -> Result<OcrModel> {
        if !dir.is_dir() {
            bail!("{}: not a folder (give the folder holding the det, cls and rec .onnx files)", dir.display());
        }
        let det_path = find_model(dir, "det", true)?.expect("required");
        let rec_path = find_model(dir, "rec", true)?.expect("required");
        let cls_path = find_model(dir, "cls", false)?;
        let (det, _) = load_onnx(&det_path)?;
        let (rec, meta) = load_onnx(&rec_path)?;
        let cls = cls_path.as_deref().map(load_onnx).transpose()?.map(|(m, _)| m);
        let listed = match meta.into_iter().find(|(k, _)| k == "character") {
            Some((_, chars)) => chars,
            None => {
                let txts: Vec<PathBuf> = std::fs::read_dir(dir)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "txt"))
                    .collect();
                if txts.len() != 1 {
                    bail!("{}: carries no character list in its metadata, and {} has {} .txt files (need exactly one dictionary)", rec_path.display(), dir.display(), txts.len());
                }
                std::fs::read_to_string(&txts[0]).with_context(|| format!("{}: cannot read", txts[0].display()))?
            }
        };
        let mut characters = vec![String::new()];
        characters.extend(listed.lines().map(|l| l.to_string()));
        characters.push(" ".to_string());
        let files = [Some(det_path), cls_path, Some(rec_path)].into_iter().flatten().collect();
        let model = OcrModel { det, cls, rec, characters, files, options: OcrOptions::default() };
        // A dictionary that does not fit the model would decode to the wrong characters.
        let probe = model.run_rec(&[&RgbImage::new(32, 48)])?;
        let classes = probe.shape()[2];
        if classes != model.characters.len() {
            bail!(
                "the recognition model predicts {classes} classes but its dictionary gives {} (blank + {} characters + space)",
                model.characters.len(),
                model.characters.len() - 2
            );
        }
        Ok(model)
    }

    /// Reads the text off one image.
    pub fn recognize(&self, image: &RgbImage) -> Result<OcrPage> {
        let o = &self.options;
        let (raw_w, raw_h) = (image.width, image.height);
        let empty = || OcrPage { text: String::new(), width: raw_w, height: raw_h, lines: Vec::new() };
        if raw_w == 0 || raw_h == 0 {
            return Ok(empty());
        }
        // 1. Size bounds, then black bands for very flat pages.
        let mut img = std::borrow::Cow::Borrowed(image);
        let (mut ratio_w, mut ratio_h) = (1.0f64, 1.0f64);
        for (limit, shrink) in [(o.max_side, true), (o.min_side, false)] {
            let (h, w) = (img.height, img.width);
            let side = if shrink { h.max(w) } else { h.min(w) };
            if (shrink && side > limit) || (!shrink && side < limit) {
                let ratio = limit as f64 / side as f64;
                let rh = py_round_to_32((h as f64 * ratio) as usize);
                let rw = py_round_to_32((w as f64 * ratio) as usize);
                if rh == 0 || rw == 0 {
                    return Ok(empty());
                }
                img = std::borrow::Cow::Owned(img.resize(rw, rh));
                ratio_h *= h as f64 / rh as f64;
                ratio_w *= w as f64 / rw as f64;
            }
        }
        let mut top = 0usize;
        if img.height <= o.min_height || img.width as f32 / img.height as f32 > o.flat_ratio {
            let new_h = ((img.width as f32 / o.flat_ratio) as usize).max(o.min_height) * 2;
            top = new_h.abs_diff(img.height) / 2;
            img = std::borrow::Cow::Owned(img.pad_vertical(top, top));
        }
        // 2. Detection.
        let quads = self.detect(&img)?;
        if quads.is_empty() {
            return Ok(empty());
        }
        // 3.-4. Crops, upright.
        let mut crops: Vec<RgbImage> = quads.iter().map(|q| crop_upright(&img, q)).collect();
        if o.use_cls {
            if let Some(cls) = &self.cls {
                self.classify_and_turn(cls, &mut crops)?;
            }
        }
        // 5. Recognition.
        let texts = self.recognize_lines(&crops)?;
        // 6. Back to the input's pixels.
        let mut lines = Vec::new();
        for (quad, (text, confidence)) in quads.iter().zip(texts) {
            if confidence < o.text_score {
                continue;
            }
            let mut out = [[0i64; 2]; 4];
            for (p, q) in out.iter_mut().zip(quad) {
                let x = ((q[0] as f64) * ratio_w).clamp(0.0, raw_w as f64);
                let y = ((q[1] as f64 - top as f64) * ratio_h).clamp(0.0, raw_h as f64);
                *p = [x as i64, y as i64];
            }
            lines.push(OcrLine { text, quad: out, confidence });
        }
        let text = lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>().join("\n");
        Ok(OcrPage { text, width: raw_w, height: raw_h, lines })
    }

    /// Text boxes in `img`'s pixels, in reading order.
    fn detect(&self, img: &RgbImage) -> Result<Vec<Quad>> {
        let (h, w) = (img.height, img.width);
        let short = h.min(w);
        let ratio = if short < self.options.det_short_side { self.options.det_short_side as f64 / short as f64 } else { 1.0 };
        let rh = py_round_to_32((h as f64 * ratio) as usize);
        let rw = py_round_to_32((w as f64 * ratio) as usize);
        if rh == 0 || rw == 0 {
            return Ok(Vec::new());
        }
        let input = to_tensor(&[img.resize(rw, rh)], rw);
        let out = run(&self.det, input).context("text detection")?;
        let shape = out.shape().to_vec();
        if shape.len() != 4 || shape[2] != rh || shape[3] != rw {
            bail!("the detection model returned shape {shape:?} for a {rw} x {rh} input");
        }
        let boxes = db::boxes_from_probabilities(out.data().context("non-contiguous output")?, rw, rh, w, h, &self.options.db);
        Ok(reading_order(boxes.into_iter().map(|(q, _)| q).collect()))
    }

    /// Runs the orientation classifier and turns lines it finds upside down.
    fn classify_and_turn(&self, cls: &Model, crops: &mut [RgbImage]) -> Result<()> {
        const HEIGHT: usize = 48;
        const WIDTH: usize = 192;
        for batch in batches_by_ratio(crops) {
            let resized: Vec<RgbImage> = batch
                .iter()
                .map(|&i| {
                    let c = &crops[i];
                    let rw = ((HEIGHT as f64 * c.width as f64 / c.height as f64).ceil() as usize).clamp(1, WIDTH);
                    c.resize(rw, HEIGHT)
                })
                .collect();
            let out = run(cls, to_tensor(&resized, WIDTH)).context("text orientation")?;
            let probs = out.data().context("non-contiguous output")?;
            let classes = out.shape()[1];
            for (row, &i) in batch.iter().enumerate() {
                let p = &probs[row * classes..(row + 1) * classes];
                let best = crate::speech::argmax(p) as usize;
                if best == 1 && p[best] > self.options.cls_thresh {
                    crops[i] = crops[i].rotate180();
                }
            }
        }
        Ok(())
    }

    fn run_rec(&self, batch: &[&RgbImage]) -> Result<Tensor<f32>> {
        const HEIGHT: usize = 48;
        let max_ratio = batch.iter().map(|c| c.width as f64 / c.height as f64).fold(320.0 / 48.0, f64::max);
        let width = (HEIGHT as f64 * max_ratio) as usize;
        let resized: Vec<RgbImage> = batch
            .iter()
            .map(|c| {
                let rw = ((HEIGHT as f64 * c.width as f64 / c.height as f64).ceil() as usize).clamp(1, width);
                c.resize(rw, HEIGHT)
            })
            .collect();
        run(&self.rec, to_tensor(&resized, width)).context("text recognition")
    }

    /// Text and mean confidence of each crop, by CTC decoding.
    fn recognize_lines(&self, crops: &[RgbImage]) -> Result<Vec<(String, f32)>> {
        let mut out = vec![(String::new(), 0.0f32); crops.len()];
        for batch in batches_by_ratio(crops) {
            let images: Vec<&RgbImage> = batch.iter().map(|&i| &crops[i]).collect();
            let probs = self.run_rec(&images)?;
            let shape = probs.shape().to_vec();
            let (steps, classes) = (shape[1], shape[2]);
            let data = probs.data().context("non-contiguous output")?;
            for (row, &i) in batch.iter().enumerate() {
                out[i] = ctc_decode(&data[row * steps * classes..(row + 1) * steps * classes], classes, &self.characters);
            }
        }
        Ok(out)
    }
}

/// Greedy CTC: the best class per step, repeats merged, blanks dropped; the confidence is the
/// mean probability of the characters kept (0 when none).
fn ctc_decode(probs: &[f32], classes: usize, characters: &[String]) -> (String, f32) {
    let mut text = String::new();
    let (mut sum, mut kept) = (0f64, 0usize);
    let mut previous = usize::MAX;
    for step in probs.chunks_exact(classes) {
        let best = crate::speech::argmax(step) as usize;
        if best != 0 && best != previous {
            text.push_str(characters.get(best).map(String::as_str).unwrap_or(""));
            sum += step[best] as f64;
            kept += 1;
        }
        previous = best;
    }
    (text, if kept == 0 { 0.0 } else { (sum / kept as f64) as f32 })
}

/// Python's `int(round(v / 32) * 32)`: halves go to the even multiple.
fn py_round_to_32(v: usize) -> usize {
    ((v as f64 / 32.0).round_ties_even() * 32.0) as usize
}

/// Indices of `crops` sorted by width / height, in batches of 6 (as RapidOCR batches them: the
/// padding, and so the output, depends on the company a line keeps).
fn batches_by_ratio(crops: &[RgbImage]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..crops.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = crops[a].width as f64 / crops[a].height as f64;
        let rb = crops[b].width as f64 / crops[b].height as f64;
        ra.total_cmp(&rb)
    });
    order.chunks(6).map(|c| c.to_vec()).collect()
}

/// Images (all `HEIGHT` high, at most `width` wide) as one NCHW tensor in BGR order, scaled to
/// [-1, 1], zero-padded on the right.
fn to_tensor(images: &[RgbImage], width: usize) -> NdTensor<f32, 4> {
    let height = images.first().map(|i| i.height).unwrap_or(0);
    let mut data = vec![0f32; images.len() * 3 * height * width];
    for (n, img) in images.iter().enumerate() {
        for c in 0..3 {
            let plane = &mut data[(n * 3 + c) * height * width..(n * 3 + c + 1) * height * width];
            let channel = 2 - c; // BGR, as OpenCV loads images
            for y in 0..img.height.min(height) {
                for x in 0..img.width.min(width) {
                    let v = img.data[(y * img.width + x) * 3 + channel] as f32;
                    plane[y * width + x] = (v / 255.0 - 0.5) / 0.5;
                }
            }
        }
    }
    NdTensor::from_data([images.len(), 3, height, width], data)
}

fn run(model: &Model, input: NdTensor<f32, 4>) -> Result<Tensor<f32>> {
    let out = model.run_one(input.view().into(), None).map_err(|e| anyhow!("{e}"))?;
    out.try_into().map_err(|_| anyhow!("the model's output is not a float tensor"))
}

/// The box cut out and warped upright; a box at least 1.5 times taller than wide is a vertical
/// line and is turned a quarter anticlockwise.
fn crop_upright(img: &RgbImage, q: &Quad) -> RgbImage {
    let d = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let w = d(q[0], q[1]).max(d(q[2], q[3])) as usize;
    let h = d(q[0], q[3]).max(d(q[1], q[2])) as usize;
    let crop = img.warp_quad(q, w.max(1), h.max(1));
    if crop.height as f64 / crop.width as f64 >= 1.5 {
        crop.rotate90_ccw()
    } else {
        crop
    }
}

/// RapidOCR's `sorted_boxes`: by top-left y then x, then one pass of swaps so that boxes whose
/// tops lie within 10 pixels read left to right.
fn reading_order(mut boxes: Vec<Quad>) -> Vec<Quad> {
    boxes.sort_by(|a, b| a[0][1].total_cmp(&b[0][1]).then(a[0][0].total_cmp(&b[0][0])));
    for i in 0..boxes.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            if (boxes[j + 1][0][1] - boxes[j][0][1]).abs() < 10.0 && boxes[j + 1][0][0] < boxes[j][0][0] {
                boxes.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
    boxes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctc_merges_repeats_and_drops_blanks() {
        let chars: Vec<String> = ["", "a", "b", " "].iter().map(|s| s.to_string()).collect();
        // steps: a a blank a b b -> "aab"
        let steps = [[0.1, 0.8, 0.05, 0.05], [0.1, 0.7, 0.1, 0.1], [0.9, 0.05, 0.05, 0.0], [0.2, 0.6, 0.1, 0.1], [0.1, 0.1, 0.8, 0.0], [0.0, 0.0, 1.0, 0.0]];
        let flat: Vec<f32> = steps.iter().flatten().copied().collect();
        let (text, conf) = ctc_decode(&flat, 4, &chars);
        assert_eq!(text, "aab");
        assert!((conf - (0.8 + 0.6 + 0.8) / 3.0).abs() < 1e-6);
        assert_eq!(ctc_decode(&[1.0, 0.0, 0.0, 0.0], 4, &chars), (String::new(), 0.0));
    }

    #[test]
    fn reading_order_puts_lines_of_one_row_left_to_right() {
        let bx = |x: f32, y: f32| [[x, y], [x + 10.0, y], [x + 10.0, y + 5.0], [x, y + 5.0]];
        let order = reading_order(vec![bx(50.0, 3.0), bx(0.0, 40.0), bx(0.0, 8.0)]);
        assert_eq!(order, vec![bx(0.0, 8.0), bx(50.0, 3.0), bx(0.0, 40.0)]);
    }

    #[test]
    fn rounding_to_32_follows_python() {
        assert_eq!(py_round_to_32(48), 64); // 1.5 -> 2
        assert_eq!(py_round_to_32(80), 64); // 2.5 -> 2
        assert_eq!(py_round_to_32(15), 0);
    }
}
