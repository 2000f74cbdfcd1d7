//! Inference over any model folder we can load, for serving: a fine-tuned classifier (labels and
//! embeddings) or a base encoder such as a sentence-transformers checkpoint (embeddings only).
//! Weights are frozen (outside autograd) and nothing here allocates gradients.

use crate::bert::{cls_pool, mean_pool, BertModel, ENCODER_PREFIX};
use crate::classifier::{ClassifierConfig, ProblemType, SequenceClassifier};
use crate::folder::ModelFolder;
use crate::params::WeightSource;
use crate::tokenizer::{TextTokenizer, TokenizedText};
use crate::peft::{is_adapter_folder, AdapterFolder};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Base-model tensors already in memory, by folder, so that adapters on the same base share it
/// (a tensor clone shares its storage).
#[derive(Default)]
pub struct BaseCache {
    loaded: Mutex<HashMap<PathBuf, HashMap<String, Tensor>>>,
}

impl BaseCache {
    fn weights(&self, folder: &ModelFolder, device: &Device) -> Result<HashMap<String, Tensor>> {
        let key = std::fs::canonicalize(&folder.dir).unwrap_or_else(|_| folder.dir.clone());
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = loaded.get(&key) {
            return Ok(w.clone());
        }
        let w = folder.load_weights(device)?;
        loaded.insert(key, w.clone());
        Ok(w)
    }
}

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingPooling {
    Mean,
    Cls,
}

// One per loaded model, so the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Net {
    Classifier(SequenceClassifier),
    Encoder(BertModel),
}

pub struct TextModel {
    net: Net,
    pub tokenizer: TextTokenizer,
    pub pooling: EmbeddingPooling,
    device: Device,
    hidden_size: usize,
    /// For an adapter folder: its method and the base model folder it runs on.
    pub adapter: Option<(&'static str, PathBuf)>,
}

impl TextModel {
    /// Opens a folder: a classifier when its `config.json` names a sequence-classification head,
    /// otherwise a plain encoder. Sentence-transformers' `1_Pooling/config.json` picks the pooling
    /// (mean when absent).
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        Self::open_shared(dir, device, &BaseCache::default(), None)
    }

    /// Like [`Self::open`]; an adapter folder (LoRA, bottleneck adapters, prefix tuning) is put
    /// on its base model (`base`, else the folder its `adapter_config.json` names), which is
    /// taken from `bases` when already there.
    pub fn open_shared(dir: &Path, device: &Device, bases: &BaseCache, base: Option<&Path>) -> Result<Self> {
        if is_adapter_folder(dir) {
            let adapter = AdapterFolder::open(dir, base)?;
            let base = ModelFolder::open(&adapter.base_dir)?;
            let model = SequenceClassifier::from_adapter(&adapter, &bases.weights(&base, device)?, device)?;
            let tokenizer = adapter.tokenizer(&base)?;
            let hidden_size = base.config.hidden_size;
            let about = (adapter.peft.method(), adapter.base_dir.clone());
            return Ok(Self { net: Net::Classifier(model), tokenizer, pooling: folder_pooling(&base.dir), device: device.clone(), hidden_size, adapter: Some(about) });
        }
        let folder = ModelFolder::open(dir)?;
        let tokenizer = folder.tokenizer(folder.inference_max_length())?;
        let net = if ClassifierConfig::from_raw(folder.raw_config())?.is_some() {
            Net::Classifier(SequenceClassifier::for_inference(&folder, None, device)?)
        } else {
            let mut ws = WeightSource::new(folder.load_weights(device)?, 0, device, DType::F32).freeze();
            let encoder = BertModel::load(&mut ws, &folder.config, ENCODER_PREFIX, false)?;
            if !ws.initialised.is_empty() {
                bail!("{}: the weights lack {} (and {} more)", dir.display(), ws.initialised[0], ws.initialised.len() - 1)
            }
            Net::Encoder(encoder)
        };
        Ok(Self { net, tokenizer, pooling: folder_pooling(dir), device: device.clone(), hidden_size: folder.config.hidden_size, adapter: None })
    }

    /// Int8 weights for the encoder's linear layers (about 1/4 of their memory; see
    /// `quant.rs`). Returns how many layers changed.
    pub fn quantize_int8(&mut self) -> Result<usize> {
        match &mut self.net {
            Net::Classifier(c) => c.quantize_int8(),
            Net::Encoder(e) => e.quantize_int8(),
        }
    }

    /// The label names of a classifier (None for a plain encoder).
    pub fn labels(&self) -> Option<&[String]> {
        match &self.net {
            Net::Classifier(c) => Some(&c.config.labels),
            Net::Encoder(_) => None,
        }
    }

    pub fn classifier_config(&self) -> Option<&ClassifierConfig> {
        match &self.net {
            Net::Classifier(c) => Some(&c.config),
            Net::Encoder(_) => None,
        }
    }

    pub fn dimensions(&self) -> usize {
        self.hidden_size
    }

    pub fn max_length(&self) -> usize {
        self.tokenizer.max_length()
    }

    fn encoder(&self) -> &BertModel {
        match &self.net {
            Net::Classifier(c) => &c.encoder,
            Net::Encoder(e) => e,
        }
    }

    /// Class probabilities (softmax, or sigmoid per label for multi-label models), one row per item.
    pub fn classify(&self, items: &[&TokenizedText]) -> Result<Vec<Vec<f32>>> {
        let Net::Classifier(model) = &self.net else { bail!("this model is an encoder without a classification head") };
        let batch = self.tokenizer.pad_batch(items, &self.device)?;
        let logits = model.forward(&batch, None)?;
        let p = match model.config.problem_type {
            ProblemType::MultiLabel => candle_nn::ops::sigmoid(&logits)?,
            ProblemType::SingleLabel => candle_nn::ops::softmax(&logits, 1)?,
        };
        Ok(p.to_dtype(DType::F32)?.to_vec2()?)
    }

    /// Unit sentence vectors of texts, tokenised and run in batches of `batch_size` texts of
    /// similar length (little padding), returned in the texts' order.
    pub fn embed_texts(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let items = self.tokenizer.encode_many(texts, None)?;
        in_length_order(&items, batch_size, |batch| self.embed(batch, true))
    }

    /// Sentence vectors (optionally scaled to unit length), one row per item.
    pub fn embed(&self, items: &[&TokenizedText], normalize: bool) -> Result<Vec<Vec<f32>>> {
        let batch = self.tokenizer.pad_batch(items, &self.device)?;
        let hidden = self.encoder().forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, None)?;
        let pooled: Tensor = match self.pooling {
            EmbeddingPooling::Mean => mean_pool(&hidden, &batch.attention_mask)?,
            EmbeddingPooling::Cls => cls_pool(&hidden)?,
        };
        let mut rows: Vec<Vec<f32>> = pooled.to_dtype(DType::F32)?.to_vec2()?;
        if normalize {
            rows.iter_mut().for_each(|r| normalize_l2(r));
        }
        Ok(rows)
    }
}

/// Runs `run` over tokenised texts in batches of up to `batch_size` texts of similar length (little
/// padding) and returns its rows (one per text) in the texts' order.
pub fn in_length_order<T>(items: &[TokenizedText], batch_size: usize, mut run: impl FnMut(&[&TokenizedText]) -> Result<Vec<T>>) -> Result<Vec<T>> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].ids.len());
    let mut out: Vec<Option<T>> = (0..items.len()).map(|_| None).collect();
    for idx in order.chunks(batch_size.max(1)) {
        let batch: Vec<&TokenizedText> = idx.iter().map(|&i| &items[i]).collect();
        let rows = run(&batch)?;
        if rows.len() != idx.len() {
            bail!("a batch of {} texts gave {} rows", idx.len(), rows.len())
        }
        for (row, &i) in rows.into_iter().zip(idx) {
            out[i] = Some(row);
        }
    }
    Ok(out.into_iter().map(|r| r.expect("every text is in one batch")).collect())
}

/// Scales a vector to unit length (dot product = cosine similarity); a zero vector stays zero.
pub fn normalize_l2(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// The pooling a folder's sentence-transformers `1_Pooling/config.json` names (mean when absent).
pub fn folder_pooling(dir: &Path) -> EmbeddingPooling {
    let Ok(text) = std::fs::read_to_string(dir.join("1_Pooling/config.json")) else { return EmbeddingPooling::Mean };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return EmbeddingPooling::Mean };
    if v.get("pooling_mode_cls_token").and_then(|x| x.as_bool()) == Some(true) {
        EmbeddingPooling::Cls
    } else {
        EmbeddingPooling::Mean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::{ClassifierConfig, ProblemType, SequenceClassifier};

    #[test]
    fn encoder_folder_embeds_and_refuses_to_classify() {
        let dir = tempfile::tempdir().unwrap();
        crate::testing::write_tiny_model(dir.path(), &["apple", "car"], 0.0, 3).unwrap();
        let m = TextModel::open(dir.path(), &Device::Cpu).unwrap();
        assert!(m.labels().is_none());
        let items = m.tokenizer.encode_many(&["apple car", "car"], None).unwrap();
        let refs: Vec<&TokenizedText> = items.iter().collect();
        let e = m.embed(&refs, true).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].len(), m.dimensions());
        let norm: f32 = e[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        // Padding must not change a text's vector: "car" alone equals "car" in the padded batch.
        let alone = m.embed(&refs[1..], true).unwrap();
        let d = alone[0].iter().zip(&e[1]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-5, "padding changed the embedding by {d}");
        assert!(m.classify(&refs).is_err());
    }

    #[test]
    fn int8_model_stays_close_to_f32() {
        let dir = tempfile::tempdir().unwrap();
        crate::testing::write_tiny_model(dir.path(), &["apple", "car", "road", "tree"], 0.0, 3).unwrap();
        let folder = ModelFolder::open(dir.path()).unwrap();
        let head = ClassifierConfig { labels: vec!["a".into(), "b".into(), "c".into()], pooling: crate::Pooling::Mean, problem_type: ProblemType::SingleLabel, thresholds: None, text_pairs: false };
        let trained = SequenceClassifier::from_folder(&folder, Some(head), 1, &Device::Cpu).unwrap();
        let out = dir.path().join("clf");
        trained.save(&out, &folder.config, &folder.tokenizer(32).unwrap()).unwrap();
        let f32_model = TextModel::open(&out, &Device::Cpu).unwrap();
        let mut int8_model = TextModel::open(&out, &Device::Cpu).unwrap();
        assert_eq!(int8_model.quantize_int8().unwrap(), 2 * 6);
        let items = f32_model.tokenizer.encode_many(&["apple car road", "tree", "car car apple tree road"], None).unwrap();
        let refs: Vec<&TokenizedText> = items.iter().collect();
        let (a, b) = (f32_model.classify(&refs).unwrap(), int8_model.classify(&refs).unwrap());
        let d = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d < 0.02, "int8 probabilities differ by {d}");
        assert!(d > 0.0, "int8 must actually run");
        let (ea, eb) = (f32_model.embed(&refs, true).unwrap(), int8_model.embed(&refs, true).unwrap());
        let cos: f32 = ea[0].iter().zip(&eb[0]).map(|(x, y)| x * y).sum();
        assert!(cos > 0.99, "int8 embedding cosine {cos}");
    }
}
