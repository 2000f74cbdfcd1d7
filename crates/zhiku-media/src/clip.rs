//! Images and texts in one embedding space (CLIP, Chinese-CLIP): a model folder's weights
//! ([`zhiku_models::clip`]), its tokenizer and its image processor, for image embeddings, text
//! embeddings and zero-shot tagging of images by label text.
//!
//! The image processor follows transformers' `CLIPImageProcessor` as `preprocessor_config.json`
//! sets it: the shorter side resized to `size.shortest_edge` (Pillow's bicubic), the centre cut
//! to `crop_size`, values scaled by `rescale_factor` and normalised by `image_mean`/`image_std`.

use crate::image::RgbImage;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::path::Path;
use zhiku_models::clip::{normalize, ClipModel};
use zhiku_models::tokenizer::TextTokenizer;

/// Images per forward pass.
const IMAGE_BATCH: usize = 16;

/// transformers' `CLIPImageProcessor` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub shortest_edge: Option<usize>,
    /// (height, width), or None without a centre crop.
    pub crop: Option<(usize, usize)>,
    pub rescale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImageProcessor {
    /// CLIP's defaults for a model reading `image_size` pixels square (the constants as
    /// transformers writes them).
    #[allow(clippy::excessive_precision)]
    pub fn clip_default(image_size: usize) -> Self {
        Self { shortest_edge: Some(image_size), crop: Some((image_size, image_size)), rescale: 1.0 / 255.0, mean: [0.481_454_66, 0.457_827_5, 0.408_210_73], std: [0.268_629_54, 0.261_302_58, 0.275_777_11] }
    }

    /// From `preprocessor_config.json` (CLIP's defaults for what it leaves out, or without the file).
    pub fn from_folder(dir: &Path, image_size: usize) -> Result<Self> {
        let mut p = Self::clip_default(image_size);
        let path = dir.join("preprocessor_config.json");
        if !path.is_file() {
            return Ok(p);
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| format!("{}: not valid JSON", path.display()))?;
        let three = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match v[key].as_array() {
                None => Ok(default),
                Some(a) if a.len() == 3 && a.iter().all(Value::is_number) => Ok([0, 1, 2].map(|i| a[i].as_f64().unwrap_or(0.0) as f32)),
                Some(_) => bail!("{}: {key} is not three numbers", path.display()),
            }
        };
        if v["do_resize"].as_bool() == Some(false) {
            p.shortest_edge = None;
        } else if let Some(e) = v["size"]["shortest_edge"].as_u64().or(v["size"].as_u64()) {
            p.shortest_edge = Some(e as usize);
        } else if let (Some(h), Some(w)) = (v["size"]["height"].as_u64(), v["size"]["width"].as_u64()) {
            if h != w {
                bail!("{}: resizing to {h} x {w} is not supported (only a shortest edge or a square)", path.display())
            }
            p.shortest_edge = Some(h as usize);
        }
        if v["do_center_crop"].as_bool() == Some(false) {
            p.crop = None;
        } else if let (Some(h), Some(w)) = (v["crop_size"]["height"].as_u64(), v["crop_size"]["width"].as_u64()) {
            p.crop = Some((h as usize, w as usize));
        } else if let Some(s) = v["crop_size"].as_u64() {
            p.crop = Some((s as usize, s as usize));
        }
        if v["do_rescale"].as_bool() == Some(false) {
            p.rescale = 1.0;
        } else if let Some(r) = v["rescale_factor"].as_f64() {
            p.rescale = r as f32;
        }
        if v["do_normalize"].as_bool() == Some(false) {
            (p.mean, p.std) = ([0.0; 3], [1.0; 3]);
        } else {
            (p.mean, p.std) = (three("image_mean", p.mean)?, three("image_std", p.std)?);
        }
        if p.std.contains(&0.0) {
            bail!("{}: image_std has a zero", path.display())
        }
        Ok(p)
    }

    /// The pixel values `[3, height, width]` (channel-major) of an image.
    pub fn pixels(&self, image: &RgbImage) -> Result<(Vec<f32>, usize, usize)> {
        if image.width == 0 || image.height == 0 {
            bail!("the image is empty ({} x {})", image.width, image.height)
        }
        let mut img = image.clone();
        if let Some(edge) = self.shortest_edge {
            let (short, long) = (img.width.min(img.height), img.width.max(img.height));
            let new_long = (edge as f64 * long as f64 / short as f64) as usize;
            let (w, h) = if img.width <= img.height { (edge, new_long) } else { (new_long, edge) };
            img = img.resize_bicubic(w.max(1), h.max(1));
        }
        if let Some((ch, cw)) = self.crop {
            let top = (img.height as i64 - ch as i64).div_euclid(2);
            let left = (img.width as i64 - cw as i64).div_euclid(2);
            img = img.crop(left, top, cw, ch);
        }
        let (w, h) = (img.width, img.height);
        let mut out = vec![0f32; 3 * w * h];
        for (i, px) in img.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * w * h + i] = (px[c] as f32 * self.rescale - self.mean[c]) / self.std[c];
            }
        }
        Ok((out, h, w))
    }
}

/// One label's match with an image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LabelScore {
    pub label: String,
    /// Cosine similarity of the image and the label's text.
    pub similarity: f32,
    /// Softmax over the labels of the scaled similarities (CLIP's zero-shot probability).
    pub probability: f32,
}

/// A CLIP or Chinese-CLIP folder, ready to embed images and texts.
pub struct ImageTextModel {
    pub model: ClipModel,
    tokenizer: TextTokenizer,
    pub processor: ImageProcessor,
}

impl ImageTextModel {
    /// A Hugging Face folder: `config.json`, `model.safetensors`, `tokenizer.json` (or
    /// `vocab.txt`), and `preprocessor_config.json` (CLIP's defaults without it).
    pub fn load(dir: &Path) -> Result<Self> {
        let model = ClipModel::load(dir)?;
        let tokenizer = TextTokenizer::from_folder(dir, model.config.max_text_tokens()).with_context(|| format!("{}: no usable tokenizer", dir.display()))?;
        let processor = ImageProcessor::from_folder(dir, model.config.vision.image_size)?;
        Ok(Self { model, tokenizer, processor })
    }

    /// Unit-length embeddings of images, one row each.
    pub fn embed_images(&self, images: &[&RgbImage]) -> Result<Vec<Vec<f32>>> {
        let size = self.model.config.vision.image_size;
        let mut out = Vec::with_capacity(images.len());
        for batch in images.chunks(IMAGE_BATCH) {
            let mut data = Vec::with_capacity(batch.len() * 3 * size * size);
            for img in batch {
                let (px, h, w) = self.processor.pixels(img)?;
                if (h, w) != (size, size) {
                    bail!("the image processor gives {w} x {h} pixels; the model reads {size} x {size}")
                }
                data.extend(px);
            }
            let pixels = Tensor::from_vec(data, (batch.len(), 3, size, size), &Device::Cpu)?;
            out.extend(normalize(&self.model.image_features(&pixels)?)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// Unit-length embeddings of texts (cut to the text tower's length), one row each.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(self.embed_texts_counted(texts)?.0)
    }

    /// [`Self::embed_texts`] and the number of tokens read.
    pub fn embed_texts_counted(&self, texts: &[&str]) -> Result<(Vec<Vec<f32>>, usize)> {
        if texts.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let batch = self.tokenizer.encode_batch(texts, None, &Device::Cpu)?;
        let rows = normalize(&self.model.text_features(&batch.input_ids, &batch.attention_mask)?)?.to_vec2::<f32>()?;
        Ok((rows, batch.lengths.iter().sum()))
    }

    /// Labels embedded once, to rank many images against: `template` with `{}` replaced by the
    /// label is the text each label is matched as ("a photo of {}", "{}的照片").
    pub fn labels(&self, labels: &[&str], template: &str) -> Result<Labels> {
        if labels.is_empty() {
            bail!("no labels to tag with")
        }
        let prompts: Vec<String> = labels.iter().map(|l| if template.contains("{}") { template.replace("{}", l) } else { format!("{template}{l}") }).collect();
        let embeddings = self.embed_texts(&prompts.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(Labels { names: labels.iter().map(|l| l.to_string()).collect(), embeddings })
    }

    /// An image's labels (from its unit-length embedding), best first.
    pub fn rank(&self, image: &[f32], labels: &Labels) -> Vec<LabelScore> {
        let scale = self.model.logit_scale;
        let sims: Vec<f32> = labels.embeddings.iter().map(|t| t.iter().zip(image).map(|(a, b)| a * b).sum()).collect();
        let max = sims.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s * scale));
        let exp: Vec<f32> = sims.iter().map(|&s| (s * scale - max).exp()).collect();
        let total: f32 = exp.iter().sum();
        let mut scores: Vec<LabelScore> = labels.names.iter().zip(sims.iter().zip(&exp)).map(|(l, (&s, &e))| LabelScore { label: l.clone(), similarity: s, probability: e / total }).collect();
        scores.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        scores
    }

    /// Each image's labels, best first (see [`Self::labels`] for `template`).
    pub fn tag(&self, images: &[&RgbImage], labels: &[&str], template: &str) -> Result<Vec<Vec<LabelScore>>> {
        let labels = self.labels(labels, template)?;
        Ok(self.embed_images(images)?.iter().map(|img| self.rank(img, &labels)).collect())
    }
}

/// Label texts with their unit-length embeddings.
pub struct Labels {
    names: Vec<String>,
    embeddings: Vec<Vec<f32>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dir(kind: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-clip").join(kind)
    }

    /// The processor's pixels for tests/fixtures/ocr/000.png equal transformers' (Pillow backend),
    /// and the tokenizer's ids the reference's.
    #[test]
    fn processor_and_tokenizer_match_transformers() {
        for kind in ["clip", "chinese-clip"] {
            let r: Value = serde_json::from_str(&std::fs::read_to_string(dir(kind).join("reference.json")).unwrap()).unwrap();
            let m = ImageTextModel::load(&dir(kind)).unwrap();
            let img = crate::image::load_image(&dir(kind).join("../../ocr/000.png")).unwrap();
            let (px, h, w) = m.processor.pixels(&img).unwrap();
            assert_eq!((h, w), (32, 32));
            let want: Vec<f64> = r["processed_pixels_000png"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let worst = px.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
            eprintln!("{kind}: pixels max |diff| {worst:.2e}");
            assert!(worst < 1e-4, "{kind}: pixels max |diff| {worst}");
            let texts: Vec<&str> = r["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
            let batch = m.tokenizer.encode_batch(&texts, None, &Device::Cpu).unwrap();
            let mask: Vec<Vec<u32>> = batch.attention_mask.to_vec2().unwrap();
            let ids: Vec<Vec<u32>> = batch.input_ids.to_vec2().unwrap();
            for (row, want) in r["input_ids"].as_array().unwrap().iter().enumerate() {
                let want: Vec<u32> = want.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
                let real: Vec<u32> = ids[row].iter().zip(&mask[row]).filter(|(_, &m)| m == 1).map(|(&t, _)| t).collect();
                let want_real: Vec<u32> = want.iter().zip(r["attention_mask"][row].as_array().unwrap()).filter(|(_, m)| m.as_u64() == Some(1)).map(|(&t, _)| t).collect();
                assert_eq!(real, want_real, "{kind} text {row}");
            }
            // The embeddings of those texts through the model equal the reference's direction.
            let emb = m.embed_texts(&texts).unwrap();
            for (row, want) in r["text_embeds"].as_array().unwrap().iter().enumerate() {
                let want: Vec<f32> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
                let norm = want.iter().map(|x| x * x).sum::<f32>().sqrt();
                let cos: f32 = emb[row].iter().zip(&want).map(|(a, b)| a * b / norm).sum();
                assert!(cos > 0.99999, "{kind} text {row}: cosine {cos}");
            }
        }
    }

    #[test]
    fn tagging_ranks_labels_and_probabilities_sum_to_one() {
        let m = ImageTextModel::load(&dir("chinese-clip")).unwrap();
        let img = crate::image::load_image(&dir("chinese-clip").join("../../ocr/000.png")).unwrap();
        let tags = m.tag(&[&img, &img], &["猫", "狗", "草地"], "{}的照片").unwrap();
        assert_eq!(tags.len(), 2);
        let t = &tags[0];
        assert_eq!(t.len(), 3);
        assert!(t.windows(2).all(|w| w[0].similarity >= w[1].similarity));
        assert!((t.iter().map(|s| s.probability).sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(tags[0][0].label, tags[1][0].label);
        assert!(m.tag(&[&img], &[], "{}").is_err());
        assert!(m.processor.pixels(&RgbImage::new(0, 5)).is_err());
    }

    #[test]
    fn pillow_bicubic_keeps_a_flat_image_flat_and_shrinks_with_antialiasing() {
        let mut img = RgbImage::new(40, 30);
        img.data.fill(77);
        let small = img.resize_bicubic(13, 9);
        assert!(small.data.iter().all(|&v| v == 77));
        // Stripes one pixel wide average out when shrunk 4x (antialiasing), not alias.
        let mut stripes = RgbImage::new(64, 4);
        for x in 0..64 {
            for y in 0..4 {
                let v = if x % 2 == 0 { 0 } else { 200 };
                let i = (y * 64 + x) * 3;
                stripes.data[i..i + 3].fill(v);
            }
        }
        let s = stripes.resize_bicubic(16, 4);
        assert!(s.data[3 * 5..3 * 11].iter().all(|&v| (90..=110).contains(&v)), "{:?}", &s.data[..48]);
    }
}
