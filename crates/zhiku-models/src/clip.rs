//! Image-text matching: CLIP and Chinese-CLIP (transformers' `CLIPModel` and
//! `ChineseCLIPModel`), for inference on candle.
//!
//! - Image tower (both): a ViT. The image is cut into patches by a strided convolution without
//!   bias, a learned class embedding is put first and learned positions added, then a LayerNorm
//!   (`pre_layrnorm`, sic), pre-norm transformer layers (QuickGELU MLP), and the class position
//!   through `post_layernorm` and `visual_projection`.
//! - Text tower: CLIP's is a causal pre-norm transformer whose output is read at the end-of-text
//!   token (its first occurrence; the largest id for configs whose `eos_token_id` is the legacy
//!   2), after `final_layer_norm`; Chinese-CLIP's is a BERT ([`crate::bert::BertModel`]) read at
//!   `[CLS]`. Either goes through `text_projection`.
//! - Both projections have no bias; image against text is `exp(logit_scale)` times the cosine.

use crate::bert::BertModel;
use crate::config::BertConfig;
use crate::layers::{additive_mask, softmax_last, LayerNorm, Linear};
use crate::params::{Init, WeightSource};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipKind {
    Clip,
    ChineseClip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    QuickGelu,
    GeluErf,
}

/// A transformer tower's shape.
#[derive(Debug, Clone)]
pub struct TowerConfig {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub eps: f64,
    act: Act,
}

#[derive(Debug, Clone)]
pub struct VisionConfig {
    pub tower: TowerConfig,
    pub image_size: usize,
    pub patch_size: usize,
    pub channels: usize,
}

#[derive(Debug, Clone)]
pub enum TextConfig {
    Clip { tower: TowerConfig, vocab: usize, max_positions: usize, eos_token_id: u32 },
    Bert(BertConfig),
}

#[derive(Debug, Clone)]
pub struct ClipConfig {
    pub kind: ClipKind,
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub projection_dim: usize,
}

fn usize_or(v: &Value, key: &str, default: usize) -> usize {
    v[key].as_u64().map_or(default, |x| x as usize)
}

fn tower(v: &Value, defaults: (usize, usize, usize, usize)) -> Result<TowerConfig> {
    let act = match v["hidden_act"].as_str().unwrap_or("quick_gelu") {
        "quick_gelu" => Act::QuickGelu,
        "gelu" => Act::GeluErf,
        other => bail!("hidden_act {other:?} is not supported (quick_gelu or gelu)"),
    };
    let t = TowerConfig {
        hidden: usize_or(v, "hidden_size", defaults.0),
        intermediate: usize_or(v, "intermediate_size", defaults.1),
        layers: usize_or(v, "num_hidden_layers", defaults.2),
        heads: usize_or(v, "num_attention_heads", defaults.3),
        eps: v["layer_norm_eps"].as_f64().unwrap_or(1e-5),
        act,
    };
    if t.heads == 0 || !t.hidden.is_multiple_of(t.heads) {
        bail!("hidden_size {} is not a multiple of num_attention_heads {}", t.hidden, t.heads)
    }
    Ok(t)
}

impl ClipConfig {
    /// From a `config.json` (`model_type` "clip" or "chinese_clip"), with transformers' defaults
    /// for fields it leaves out.
    pub fn from_json(v: &Value) -> Result<Self> {
        let kind = match v["model_type"].as_str() {
            Some("clip") => ClipKind::Clip,
            Some("chinese_clip") => ClipKind::ChineseClip,
            Some(other) => bail!("a {other} model, not CLIP or Chinese-CLIP"),
            None => bail!("no model_type (expected \"clip\" or \"chinese_clip\")"),
        };
        let vc = &v["vision_config"];
        let vision = VisionConfig {
            tower: tower(vc, (768, 3072, 12, 12)).context("vision_config")?,
            image_size: usize_or(vc, "image_size", 224),
            patch_size: usize_or(vc, "patch_size", 32),
            channels: usize_or(vc, "num_channels", 3),
        };
        if vision.patch_size == 0 || !vision.image_size.is_multiple_of(vision.patch_size) {
            bail!("vision_config: image_size {} is not a multiple of patch_size {}", vision.image_size, vision.patch_size)
        }
        let tc = &v["text_config"];
        let text = match kind {
            ClipKind::Clip => TextConfig::Clip {
                tower: tower(tc, (512, 2048, 12, 8)).context("text_config")?,
                vocab: usize_or(tc, "vocab_size", 49408),
                max_positions: usize_or(tc, "max_position_embeddings", 77),
                eos_token_id: usize_or(tc, "eos_token_id", 49407) as u32,
            },
            ClipKind::ChineseClip => {
                // A BERT under another name.
                let mut tc = tc.clone();
                tc["model_type"] = Value::from("bert");
                TextConfig::Bert(BertConfig::from_json_str(&tc.to_string()).context("text_config")?)
            }
        };
        Ok(Self { kind, vision, text, projection_dim: usize_or(v, "projection_dim", 512) })
    }

    /// Longest text the text tower reads, in tokens.
    pub fn max_text_tokens(&self) -> usize {
        match &self.text {
            TextConfig::Clip { max_positions, .. } => *max_positions,
            TextConfig::Bert(b) => b.max_position_embeddings,
        }
    }
}

/// A pre-norm transformer layer (`layer_norm1`, self-attention, `layer_norm2`, MLP).
struct Layer {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Layer {
    fn load(ws: &mut WeightSource, p: &str, t: &TowerConfig) -> Result<Self> {
        let (h, i) = (t.hidden, t.intermediate);
        let lin = |ws: &mut WeightSource, n: &str, a: usize, b: usize| Linear::load(ws, &format!("{p}.{n}"), a, b, 0.02);
        Ok(Self {
            norm1: LayerNorm::load(ws, &format!("{p}.layer_norm1"), h, t.eps)?,
            q: lin(ws, "self_attn.q_proj", h, h)?,
            k: lin(ws, "self_attn.k_proj", h, h)?,
            v: lin(ws, "self_attn.v_proj", h, h)?,
            out: lin(ws, "self_attn.out_proj", h, h)?,
            norm2: LayerNorm::load(ws, &format!("{p}.layer_norm2"), h, t.eps)?,
            fc1: lin(ws, "mlp.fc1", h, i)?,
            fc2: lin(ws, "mlp.fc2", i, h)?,
        })
    }

    /// `x` is `[batch, seq, hidden]`; `mask` is added to the attention scores
    /// (`[batch, 1, seq, seq]` or broadcastable).
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>, t: &TowerConfig) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let (heads, dh) = (t.heads, h / t.heads);
        let y = self.norm1.forward(x)?;
        let split = |z: Tensor| -> Result<Tensor> { Ok(z.reshape((b, s, heads, dh))?.transpose(1, 2)?.contiguous()?) };
        let q = split((self.q.forward(&y)? * (dh as f64).powf(-0.5))?)?;
        let k = split(self.k.forward(&y)?)?;
        let v = split(self.v.forward(&y)?)?;
        let mut scores = q.matmul(&k.transpose(2, 3)?.contiguous()?)?;
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        let ctx = softmax_last(&scores)?.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))?;
        let x = (x + self.out.forward(&ctx)?)?;
        let y = self.fc1.forward(&self.norm2.forward(&x)?)?;
        let y = match t.act {
            Act::QuickGelu => (&y * candle_nn::ops::sigmoid(&(&y * 1.702)?)?)?,
            Act::GeluErf => crate::kernels::gelu_erf(&y)?,
        };
        Ok((x + self.fc2.forward(&y)?)?)
    }
}

struct VisionTower {
    class: Tensor,
    patch: Tensor,
    positions: Tensor,
    pre_norm: LayerNorm,
    layers: Vec<Layer>,
    post_norm: LayerNorm,
}

enum TextTower {
    Clip { tokens: Tensor, positions: Tensor, layers: Vec<Layer>, final_norm: LayerNorm },
    Bert(Box<BertModel>),
}

/// A CLIP or Chinese-CLIP model with both towers and projections.
pub struct ClipModel {
    pub config: ClipConfig,
    vision: VisionTower,
    text: TextTower,
    visual_projection: Tensor,
    text_projection: Tensor,
    /// `exp(logit_scale)`: the factor on cosine similarities.
    pub logit_scale: f32,
}

impl ClipModel {
    /// Reads a Hugging Face folder: `config.json` and `model.safetensors` (or `pytorch_model.bin`).
    pub fn load(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
        let raw: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config_path.display()))?;
        let config = ClipConfig::from_json(&raw).with_context(|| format!("{}", config_path.display()))?;
        let (weights, tensors) = if dir.join("model.safetensors").is_file() {
            let p = dir.join("model.safetensors");
            let t = candle_core::safetensors::load(&p, &Device::Cpu).with_context(|| format!("cannot read {}", p.display()))?;
            (p, t)
        } else if dir.join("pytorch_model.bin").is_file() {
            // Older checkpoints (Chinese-CLIP's among them) ship only a PyTorch pickle.
            let p = dir.join("pytorch_model.bin");
            let t = candle_core::pickle::read_all(&p).with_context(|| format!("cannot read PyTorch weights {}", p.display()))?.into_iter().collect();
            (p, t)
        } else {
            bail!("{}: no model.safetensors or pytorch_model.bin", dir.display())
        };
        let mut ws = WeightSource::new(tensors, 0, &Device::Cpu, DType::F32).freeze();
        let model = Self::build(&mut ws, config).with_context(|| format!("{}", weights.display()))?;
        if !ws.initialised.is_empty() {
            bail!("{}: missing weights: {}", weights.display(), ws.initialised.join(", "))
        }
        Ok(model)
    }

    fn build(ws: &mut WeightSource, config: ClipConfig) -> Result<Self> {
        let vc = &config.vision;
        let h = vc.tower.hidden;
        let patches = (vc.image_size / vc.patch_size).pow(2);
        let vision = VisionTower {
            class: ws.get("vision_model.embeddings.class_embedding", h, Init::Zeros)?,
            patch: ws.get("vision_model.embeddings.patch_embedding.weight", (h, vc.channels, vc.patch_size, vc.patch_size), Init::Zeros)?,
            positions: ws.get("vision_model.embeddings.position_embedding.weight", (patches + 1, h), Init::Zeros)?,
            pre_norm: LayerNorm::load(ws, "vision_model.pre_layrnorm", h, vc.tower.eps)?,
            layers: (0..vc.tower.layers).map(|i| Layer::load(ws, &format!("vision_model.encoder.layers.{i}"), &vc.tower)).collect::<Result<_>>()?,
            post_norm: LayerNorm::load(ws, "vision_model.post_layernorm", h, vc.tower.eps)?,
        };
        let (text, text_width) = match &config.text {
            TextConfig::Clip { tower, vocab, max_positions, .. } => (
                TextTower::Clip {
                    tokens: ws.get("text_model.embeddings.token_embedding.weight", (*vocab, tower.hidden), Init::Zeros)?,
                    positions: ws.get("text_model.embeddings.position_embedding.weight", (*max_positions, tower.hidden), Init::Zeros)?,
                    layers: (0..tower.layers).map(|i| Layer::load(ws, &format!("text_model.encoder.layers.{i}"), tower)).collect::<Result<_>>()?,
                    final_norm: LayerNorm::load(ws, "text_model.final_layer_norm", tower.hidden, tower.eps)?,
                },
                tower.hidden,
            ),
            TextConfig::Bert(b) => (TextTower::Bert(Box::new(BertModel::load(ws, b, "text_model", false)?)), b.hidden_size),
        };
        let p = config.projection_dim;
        let visual_projection = ws.get("visual_projection.weight", (p, h), Init::Zeros)?;
        let text_projection = ws.get("text_projection.weight", (p, text_width), Init::Zeros)?;
        let logit_scale = ws.get("logit_scale", (), Init::Zeros)?.to_dtype(DType::F32)?.to_scalar::<f32>()?.exp();
        Ok(Self { config, vision, text, visual_projection, text_projection, logit_scale })
    }

    /// Image embeddings `[n, projection_dim]` (not normalised) of pixel values
    /// `[n, channels, image_size, image_size]`, as the image processor prepares them.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let vc = &self.config.vision;
        let (n, c, hh, ww) = pixels.dims4()?;
        if (c, hh, ww) != (vc.channels, vc.image_size, vc.image_size) {
            bail!("pixel values of shape [{n}, {c}, {hh}, {ww}]; the model reads [n, {}, {s}, {s}]", vc.channels, s = vc.image_size)
        }
        let v = &self.vision;
        let h = vc.tower.hidden;
        // [n, h, g, g] -> [n, g*g, h]
        let x = pixels.conv2d(&v.patch, 0, vc.patch_size, 1, 1)?.flatten_from(2)?.transpose(1, 2)?;
        let class = v.class.reshape((1, 1, h))?.broadcast_as((n, 1, h))?;
        let x = Tensor::cat(&[&class, &x], 1)?.broadcast_add(&v.positions)?;
        let mut x = v.pre_norm.forward(&x)?;
        for layer in &v.layers {
            x = layer.forward(&x, None, &vc.tower)?;
        }
        let pooled = v.post_norm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        Ok(pooled.matmul(&self.visual_projection.t()?)?)
    }

    /// Text embeddings `[n, projection_dim]` (not normalised) of token ids `[n, seq]` (u32)
    /// with their attention mask (1 for tokens, 0 for padding on the right).
    pub fn text_features(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (n, s) = ids.dims2()?;
        if s > self.config.max_text_tokens() {
            bail!("{s} tokens exceed the text tower's {} positions", self.config.max_text_tokens())
        }
        let pooled = match (&self.text, &self.config.text) {
            (TextTower::Clip { tokens, positions, layers, final_norm }, TextConfig::Clip { tower, eos_token_id, .. }) => {
                let x = tokens.embedding(&ids.flatten_all()?)?.reshape((n, s, tower.hidden))?.broadcast_add(&positions.narrow(0, 0, s)?)?;
                // Causal and padding masks, added.
                let causal: Vec<f32> = (0..s).flat_map(|i| (0..s).map(move |j| if j > i { -1e9 } else { 0.0 })).collect();
                let causal = Tensor::from_vec(causal, (1, 1, s, s), ids.device())?;
                let padding = additive_mask(mask, DType::F32)?.reshape((n, 1, 1, s))?;
                let m = causal.broadcast_add(&padding)?;
                let mut x = x;
                for layer in layers {
                    x = layer.forward(&x, Some(&m), tower)?;
                }
                let x = final_norm.forward(&x)?;
                // The end-of-text position: the first eos (or, with the legacy id 2, the largest id).
                let rows = ids.to_vec2::<u32>()?;
                let at: Vec<Tensor> = rows
                    .iter()
                    .enumerate()
                    .map(|(r, row)| {
                        let pos = if *eos_token_id == 2 {
                            row.iter().enumerate().fold((0, 0), |best, (i, &t)| if t > best.1 { (i, t) } else { best }).0
                        } else {
                            row.iter().position(|&t| t == *eos_token_id).unwrap_or(0)
                        };
                        Ok(x.get(r)?.get(pos)?)
                    })
                    .collect::<Result<_>>()?;
                Tensor::stack(&at, 0)?
            }
            (TextTower::Bert(bert), _) => {
                let types = ids.zeros_like()?;
                bert.forward(ids, &types, mask, None)?.narrow(1, 0, 1)?.squeeze(1)?
            }
            _ => unreachable!("the text tower follows the config"),
        };
        Ok(pooled.matmul(&self.text_projection.t()?)?)
    }

    /// `exp(logit_scale)` times the cosine of each image against each text: `[images, texts]`.
    pub fn logits(&self, image_features: &Tensor, text_features: &Tensor) -> Result<Tensor> {
        let i = normalize(image_features)?;
        let t = normalize(text_features)?;
        Ok((i.matmul(&t.t()?)? * self.logit_scale as f64)?)
    }
}

/// Rows scaled to unit length.
pub fn normalize(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(kind: &str) -> (PathBuf, Value) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-clip").join(kind);
        let r = std::fs::read_to_string(dir.join("reference.json")).map_or(Value::Null, |t| serde_json::from_str(&t).unwrap());
        (dir, r)
    }

    /// The fixture script's pixel values: p[i][c][y][x] = sin(0.1 (x + 1) (c + 1) + 0.07 y + i) / 2.
    fn pixels() -> Tensor {
        let v: Vec<f32> = (0..2)
            .flat_map(|i| (0..3).flat_map(move |c| (0..32).flat_map(move |y| (0..32).map(move |x| ((0.1 * (x + 1) as f64 * (c + 1) as f64 + 0.07 * y as f64 + i as f64).sin() / 2.0) as f32))))
            .collect();
        Tensor::from_vec(v, (2, 3, 32, 32), &Device::Cpu).unwrap()
    }

    fn worst(got: &Tensor, want: &Value) -> f64 {
        let want: Vec<f64> = want.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap())).collect();
        let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got.len(), want.len());
        got.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max)
    }

    /// Tiny random CLIP and Chinese-CLIP saved by transformers (tests/fixtures/tiny-clip, made
    /// by make_tiny_clip.py): image and text embeddings and the logits equal transformers'.
    #[test]
    fn tiny_random_models_match_transformers() {
        for kind in ["clip", "chinese-clip"] {
            let (dir, r) = fixture(kind);
            let model = ClipModel::load(&dir).unwrap();
            let ids: Vec<Vec<u32>> = r["input_ids"].as_array().unwrap().iter().map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()).collect();
            let mask: Vec<Vec<u32>> = r["attention_mask"].as_array().unwrap().iter().map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()).collect();
            let ids = Tensor::new(ids, &Device::Cpu).unwrap();
            let mask = Tensor::new(mask, &Device::Cpu).unwrap();
            let img = model.image_features(&pixels()).unwrap();
            let txt = model.text_features(&ids, &mask).unwrap();
            let logits = model.logits(&img, &txt).unwrap();
            let (wi, wt, wl) = (worst(&img, &r["image_embeds"]), worst(&txt, &r["text_embeds"]), worst(&logits, &r["logits_per_image"]));
            eprintln!("{kind}: max |diff| image {wi:.2e}, text {wt:.2e}, logits {wl:.2e}");
            assert!(wi < 1e-4 && wt < 1e-4 && wl < 1e-4, "{kind}: image {wi}, text {wt}, logits {wl}");
        }
    }

    #[test]
    fn a_pytorch_pickle_loads_as_the_safetensors_file() {
        let (a, _) = fixture("chinese-clip");
        let (b, _) = fixture("chinese-clip-pt");
        let (a, b) = (ClipModel::load(&a).unwrap(), ClipModel::load(&b).unwrap());
        let diff = (a.image_features(&pixels()).unwrap() - b.image_features(&pixels()).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn bad_folders_and_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
        let err = ClipModel::load(dir.path()).err().unwrap();
        assert!(format!("{err:#}").contains("a bert model, not CLIP"), "{err:#}");
        let (dir, _) = fixture("clip");
        let model = ClipModel::load(&dir).unwrap();
        let wrong = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
        assert!(format!("{:#}", model.image_features(&wrong).err().unwrap()).contains("the model reads [n, 3, 32, 32]"));
        let long = Tensor::zeros((1, 30), DType::U32, &Device::Cpu).unwrap();
        assert!(model.text_features(&long, &long.ones_like().unwrap()).is_err());
    }
}
