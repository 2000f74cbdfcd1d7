//! Whisper from a Hugging Face folder (`config.json` with `"model_type": "whisper"`,
//! `model.safetensors` in f32, f16 or bf16, as `WhisperForConditionalGeneration.save_pretrained`
//! writes it), read under CTranslate2's names so that one loader serves both formats.
//!
//! transformers keeps Q, K and V apart and gives K no bias; CTranslate2 fuses them (self-attention
//! `linear_0` = Q, K, V; cross-attention `linear_1` = K, V). The fused matrices are stacked here,
//! with zeros for K's bias. The output projection is tied to the token embeddings in both.

use crate::whisper::Tensors;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A folder with `config.json` and `model.safetensors` (and no CTranslate2 `model.bin`).
pub fn is_hugging_face_folder(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").is_file() && path.join("model.safetensors").is_file() && !path.join("model.bin").is_file()
}

pub(crate) struct HfWhisper {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    /// "model." when the names carry it (WhisperForConditionalGeneration), else "".
    prefix: &'static str,
    encoder_heads: usize,
    decoder_heads: usize,
}

/// A CTranslate2 tensor as pieces of Hugging Face tensors stacked along the first axis.
enum Piece {
    Named(String),
    /// Zeros as long as the named tensor's first axis (K's missing bias).
    ZerosLike(String),
}

impl HfWhisper {
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
        let config: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config_path.display()))?;
        match config["model_type"].as_str() {
            Some("whisper") => {}
            Some(other) => bail!("{}: a {other} model, not Whisper", config_path.display()),
            None => bail!("{}: no model_type (expected \"whisper\")", config_path.display()),
        }
        let heads = |key: &str| config[key].as_u64().map(|v| v as usize).with_context(|| format!("{}: no {key}", config_path.display()));
        let (encoder_heads, decoder_heads) = (heads("encoder_attention_heads")?, heads("decoder_attention_heads")?);
        let weights = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu).with_context(|| format!("cannot read {}", weights.display()))?;
        let prefix = if tensors.contains_key("model.encoder.conv1.weight") { "model." } else { "" };
        if !tensors.contains_key(&format!("{prefix}encoder.conv1.weight")) {
            bail!("{}: no encoder.conv1.weight: not a Whisper checkpoint", weights.display())
        }
        Ok(Self { path: weights, tensors, prefix, encoder_heads, decoder_heads })
    }

    /// The Hugging Face pieces of a CTranslate2 name.
    fn pieces(&self, name: &str) -> Option<Vec<Piece>> {
        let p = self.prefix;
        let one = |n: String| Some(vec![Piece::Named(n)]);
        let (head, kind) = name.rsplit_once('/')?;
        // CTranslate2's LayerNorm gamma/beta are weight/bias.
        let kind = match kind {
            "gamma" => "weight",
            "beta" => "bias",
            "weight" | "bias" | "encodings" => kind,
            _ => return None,
        };
        match head {
            "encoder/conv1" | "encoder/conv2" => return one(format!("{p}{}.{kind}", head.replace('/', "."))),
            "encoder/position_encodings" => return one(format!("{p}encoder.embed_positions.weight")),
            "decoder/position_encodings" => return one(format!("{p}decoder.embed_positions.weight")),
            "decoder/embeddings" => return one(format!("{p}decoder.embed_tokens.weight")),
            "encoder/layer_norm" | "decoder/layer_norm" => return one(format!("{p}{}.{kind}", head.replace('/', "."))),
            _ => {}
        }
        // {encoder|decoder}/layer_{i}/{block}/{part}
        let mut it = head.splitn(4, '/');
        let (stack, layer, block, part) = (it.next()?, it.next()?.strip_prefix("layer_")?, it.next()?, it.next()?);
        let base = format!("{p}{stack}.layers.{layer}");
        let proj = |module: &str, names: &[&str]| -> Option<Vec<Piece>> {
            Some(
                names
                    .iter()
                    .map(|n| {
                        let full = format!("{base}.{module}.{n}.{kind}");
                        if kind == "bias" && *n == "k_proj" {
                            Piece::ZerosLike(format!("{base}.{module}.{n}.weight"))
                        } else {
                            Piece::Named(full)
                        }
                    })
                    .collect(),
            )
        };
        match (block, part) {
            ("self_attention", "layer_norm") => one(format!("{base}.self_attn_layer_norm.{kind}")),
            ("self_attention", "linear_0") => proj("self_attn", &["q_proj", "k_proj", "v_proj"]),
            ("self_attention", "linear_1") => proj("self_attn", &["out_proj"]),
            ("attention", "layer_norm") => one(format!("{base}.encoder_attn_layer_norm.{kind}")),
            ("attention", "linear_0") => proj("encoder_attn", &["q_proj"]),
            ("attention", "linear_1") => proj("encoder_attn", &["k_proj", "v_proj"]),
            ("attention", "linear_2") => proj("encoder_attn", &["out_proj"]),
            ("ffn", "layer_norm") => one(format!("{base}.final_layer_norm.{kind}")),
            ("ffn", "linear_0") => one(format!("{base}.fc1.{kind}")),
            ("ffn", "linear_1") => one(format!("{base}.fc2.{kind}")),
            _ => None,
        }
    }

    fn piece_rows(&self, piece: &Piece) -> Option<(usize, Vec<usize>)> {
        match piece {
            Piece::Named(n) => self.tensors.get(n).map(|t| (t.dims()[0], t.dims().to_vec())),
            Piece::ZerosLike(n) => self.tensors.get(n).map(|t| (t.dims()[0], vec![t.dims()[0]])),
        }
    }
}

impl Tensors for HfWhisper {
    fn path(&self) -> &Path {
        &self.path
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let pieces = self.pieces(name)?;
        let mut shape: Option<Vec<usize>> = None;
        for piece in &pieces {
            let (rows, dims) = self.piece_rows(piece)?;
            match &mut shape {
                None => shape = Some(dims),
                Some(s) => s[0] += rows,
            }
        }
        shape
    }

    fn f32(&self, name: &str) -> Result<Vec<f32>> {
        match name {
            "encoder/num_heads" => return Ok(vec![self.encoder_heads as f32]),
            "decoder/num_heads" => return Ok(vec![self.decoder_heads as f32]),
            _ => {}
        }
        let pieces = self.pieces(name).with_context(|| format!("{}: no tensor for {name}", self.path.display()))?;
        let mut out = Vec::new();
        for piece in &pieces {
            match piece {
                Piece::Named(n) => {
                    let t = self.tensors.get(n).with_context(|| format!("{}: no tensor {n}", self.path.display()))?;
                    out.extend(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
                }
                Piece::ZerosLike(n) => {
                    let t = self.tensors.get(n).with_context(|| format!("{}: no tensor {n}", self.path.display()))?;
                    out.extend(std::iter::repeat_n(0f32, t.dims()[0]));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::blocks::GgmlType;
    use crate::whisper::Whisper;
    use std::path::PathBuf;

    /// A tiny random Whisper saved by transformers (tests/fixtures/tiny-whisper, made by
    /// make_tiny_whisper.py): the encoder output and every position's logits equal transformers'.
    #[test]
    fn tiny_random_folder_matches_transformers() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-whisper");
        let f: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        assert!(super::is_hugging_face_folder(&dir));
        let model = Whisper::load(&dir, GgmlType::F32).unwrap();
        assert_eq!((model.dims.d_model, model.dims.encoder_layers, model.dims.decoder_layers, model.dims.vocab, model.dims.encoder_heads), (32, 2, 2, 128, 4));
        let mel: Vec<f32> = (0..80).flat_map(|c| (0..3000).map(move |t| ((0.013 * t as f64 * (c + 1) as f64).sin() / 2.0 + (0.7 * c as f64).cos() / 4.0) as f32)).collect();
        let enc = model.encode(&mel, 3000).unwrap();
        let mut worst = 0f64;
        for (row, want) in f["encoder_rows"].as_object().unwrap() {
            let r: usize = row.parse().unwrap();
            for (c, w) in want.as_array().unwrap().iter().enumerate() {
                worst = worst.max((enc[r * 32 + c] as f64 - w.as_f64().unwrap()).abs());
            }
        }
        eprintln!("encoder: max |diff| {worst:.2e}");
        assert!(worst < 1e-4, "encoder rows: max |diff| {worst}");
        let tokens: Vec<u32> = f["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let mut state = model.start(&enc).unwrap();
        let logits = model.decode(&mut state, &tokens, true).unwrap();
        let want: Vec<f64> = f["logits"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap())).collect();
        assert_eq!(logits.len(), want.len());
        let worst = logits.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0f64, f64::max);
        eprintln!("logits: max |diff| {worst:.2e}");
        assert!(worst < 1e-4, "logits: max |diff| {worst}");
    }

    #[test]
    fn a_folder_that_is_not_whisper_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"").unwrap();
        let err = Whisper::load(dir.path(), GgmlType::F32).err().unwrap();
        assert!(format!("{err:#}").contains("a bert model, not Whisper"), "{err:#}");
    }
}
