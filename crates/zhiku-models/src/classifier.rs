//! Sequence classification: encoder, pooling, dropout, linear head. The default head is
//! transformers' `BertForSequenceClassification` (pooler + classifier), so a saved folder loads
//! with `AutoModelForSequenceClassification.from_pretrained` and predicts the same labels.

use crate::bert::{cls_pool, mean_pool, BertModel, ENCODER_PREFIX};
use crate::config::BertConfig;
use crate::folder::ModelFolder;
use crate::layers::{maybe_dropout, DropoutRng, Linear};
use crate::params::{Params, WeightSource};
use crate::peft::{adapter_config_json, AdapterFolder, PeftConfig, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::tokenizer::{EncodedBatch, TextTokenizer};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// How a sequence becomes one vector for the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// transformers' BertPooler on `[CLS]` (tanh dense): the `BertForSequenceClassification` head.
    Pooler,
    /// The raw `[CLS]` hidden state.
    Cls,
    /// Mean over non-padded tokens (sentence-transformers' default).
    Mean,
}

impl Pooling {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pooler" => Pooling::Pooler,
            "cls" => Pooling::Cls,
            "mean" => Pooling::Mean,
            _ => bail!("unknown pooling {s:?}: expected pooler, cls or mean"),
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Pooler => "pooler",
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// One label per text: softmax cross-entropy.
    SingleLabel,
    /// Any number of labels per text: a sigmoid per label, binary cross-entropy.
    MultiLabel,
}

impl ProblemType {
    pub fn hf_name(self) -> &'static str {
        match self {
            ProblemType::SingleLabel => "single_label_classification",
            ProblemType::MultiLabel => "multi_label_classification",
        }
    }
}

/// What the head predicts; stored in `config.json` next to the encoder's settings.
#[derive(Debug, Clone)]
pub struct ClassifierConfig {
    pub labels: Vec<String>,
    pub pooling: Pooling,
    pub problem_type: ProblemType,
    /// Per-label decision thresholds for multi-label models (tuned on dev).
    pub thresholds: Option<Vec<f32>>,
    /// Whether the inputs are text pairs (recorded so `predict` can insist on them).
    pub text_pairs: bool,
}

impl ClassifierConfig {
    /// Turns one row of probabilities into the decided labels (the argmax, or for multi-label
    /// models every label over its threshold) and the `top_k` best labels with their scores.
    pub fn decide(&self, probs: &[f32], top_k: usize) -> (Vec<String>, Vec<(String, f32)>) {
        let names = &self.labels;
        let mut ranked: Vec<usize> = (0..probs.len().min(names.len())).collect();
        ranked.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let top = ranked.iter().take(top_k.max(1)).map(|&i| (names[i].clone(), probs[i])).collect();
        let labels = match self.problem_type {
            ProblemType::MultiLabel => (0..ranked.len())
                .filter(|&i| probs[i] >= self.thresholds.as_ref().and_then(|t| t.get(i).copied()).unwrap_or(0.5))
                .map(|i| names[i].clone())
                .collect(),
            ProblemType::SingleLabel => ranked.first().map(|&i| vec![names[i].clone()]).unwrap_or_default(),
        };
        (labels, top)
    }

    /// Reads a fine-tuned head's settings from a folder's `config.json`, if it has them.
    pub fn from_raw(raw: &serde_json::Map<String, Value>) -> Result<Option<Self>> {
        let Some(id2label) = raw.get("id2label").and_then(|v| v.as_object()) else { return Ok(None) };
        let is_classifier = raw
            .get("architectures")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.iter().any(|x| x.as_str().is_some_and(|s| s.ends_with("ForSequenceClassification"))));
        if !is_classifier {
            return Ok(None);
        }
        let mut labels = vec![String::new(); id2label.len()];
        for (id, name) in id2label {
            let i: usize = id.parse().with_context(|| format!("id2label key {id:?} is not an integer"))?;
            if i >= labels.len() {
                bail!("id2label ids are not 0..{}", labels.len())
            }
            labels[i] = name.as_str().unwrap_or_default().to_string();
        }
        let pooling = Pooling::parse(raw.get("zhiku_pooling").and_then(|v| v.as_str()).unwrap_or("pooler"))?;
        let problem_type = match raw.get("problem_type").and_then(|v| v.as_str()) {
            Some("multi_label_classification") => ProblemType::MultiLabel,
            _ => ProblemType::SingleLabel,
        };
        let thresholds = raw
            .get("zhiku_thresholds")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.5) as f32).collect());
        let text_pairs = raw.get("zhiku_text_pairs").and_then(|v| v.as_bool()).unwrap_or(false);
        Ok(Some(Self { labels, pooling, problem_type, thresholds, text_pairs }))
    }
}

pub struct SequenceClassifier {
    pub encoder: BertModel,
    pub head: Linear,
    pub config: ClassifierConfig,
    /// The trainable parameters (all of them, or under parameter-efficient tuning only the
    /// added modules and the head; none when built for inference).
    pub params: Params,
    /// The parameters held as constants.
    pub fixed: HashMap<String, Tensor>,
    /// The parameter-efficient method added to the encoder, if any.
    pub peft: Option<PeftConfig>,
    head_dropout: f64,
    /// Names of parameters that were randomly initialised (not in the checkpoint).
    pub initialised: Vec<String>,
}

impl SequenceClassifier {
    /// Builds a classifier from an encoder config and checkpoint tensors (possibly empty).
    pub fn build(
        bert: &BertConfig,
        weights: HashMap<String, Tensor>,
        config: ClassifierConfig,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Self::build_with(bert, weights, config, seed, device, dtype, false, None)
    }

    /// The general constructor: `frozen` builds for inference (no trainable parameters), `peft`
    /// adds a parameter-efficient method and trains only its modules and the head.
    #[allow(clippy::too_many_arguments)]
    pub fn build_with(
        bert: &BertConfig,
        weights: HashMap<String, Tensor>,
        config: ClassifierConfig,
        seed: u64,
        device: &Device,
        dtype: DType,
        frozen: bool,
        peft: Option<&PeftConfig>,
    ) -> Result<Self> {
        let n = config.labels.len();
        if n == 0 {
            bail!("a classifier needs at least one label")
        }
        let mut weights = weights;
        // A head for other labels than ours (a different task, or a base model's) is replaced.
        if weights.get("classifier.weight").is_some_and(|w| w.dim(0).ok() != Some(n)) {
            weights.remove("classifier.weight");
            weights.remove("classifier.bias");
        }
        let mut ws = WeightSource::new(weights, seed, device, dtype);
        if frozen {
            ws = ws.freeze();
        } else if let Some(p) = peft {
            let p = p.clone();
            ws = ws.train_only(move |name| p.is_trainable(name));
        }
        if let Some(p) = peft {
            p.validate()?;
        }
        let encoder = BertModel::load_with_peft(&mut ws, bert, ENCODER_PREFIX, config.pooling == Pooling::Pooler, peft)?;
        let head = Linear::load(&mut ws, "classifier", bert.hidden_size, n, bert.initializer_range)?;
        let head_dropout = bert.classifier_dropout.unwrap_or(bert.hidden_dropout_prob);
        Ok(Self { encoder, head, config, params: ws.params, fixed: ws.fixed, peft: peft.cloned(), head_dropout, initialised: ws.initialised })
    }

    /// Int8 weights for the encoder's linear layers (inference only); the f32 copies are
    /// released. Returns how many layers changed.
    pub fn quantize_int8(&mut self) -> Result<usize> {
        if !self.params.is_empty() {
            bail!("int8 is for inference: build the model with for_inference or from_adapter")
        }
        let n = self.encoder.quantize_int8()?;
        let quantised = |name: &str| name.starts_with("bert.encoder.layer.") && crate::peft::LINEAR_NAMES.iter().any(|l| name.ends_with(&format!("{l}.weight")));
        self.fixed.retain(|name, _| !quantised(name));
        Ok(n)
    }

    /// Every parameter's current value by name, trainable or not.
    pub fn all_tensors(&self) -> HashMap<String, Tensor> {
        let mut all = self.fixed.clone();
        all.extend(self.params.tensors());
        all
    }

    /// The same model over the same weight storage (nothing is copied, and the optimiser's
    /// in-place updates show through) but outside autograd: evaluating with it during training
    /// records no graph and keeps no activations for a backward pass that never comes.
    pub fn inference_view(&self, bert: &BertConfig) -> Result<Self> {
        let weights = self.all_tensors().into_iter().map(|(name, t)| (name, t.detach())).collect();
        let (device, dtype) = (self.head.weight.device().clone(), self.head.weight.dtype());
        let mut view = Self::build_with(bert, weights, self.config.clone(), 0, &device, dtype, true, self.peft.as_ref())?;
        view.encoder.set_compute_dtype(self.encoder.compute_dtype());
        Ok(view)
    }

    /// Opens an adapter folder on `base_weights` (the base model's tensors, shared: they are not
    /// copied, so many adapters can sit on one base in memory), for inference.
    pub fn from_adapter(adapter: &AdapterFolder, base_weights: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let own = adapter.load_weights(device)?;
        let own_names: Vec<String> = own.keys().cloned().collect();
        let Some(config) = ClassifierConfig::from_raw(&adapter.head_raw_config(&own)?)? else {
            bail!("{}: config.json names no classification head", adapter.dir.display())
        };
        let base = BertConfig::from_file(&adapter.base_dir.join("config.json"))?;
        let mut weights = base_weights.clone();
        weights.extend(own);
        let model = Self::build_with(&base, weights, config, 0, device, DType::F32, true, Some(&adapter.peft))?;
        if let Some(missing) = model.initialised.first() {
            bail!("adapter {} lacks the tensor {missing} that its configuration implies", adapter.dir.display())
        }
        let all = model.all_tensors();
        if let Some(stray) = own_names.iter().find(|n| !all.contains_key(*n)) {
            bail!("adapter {} holds the tensor {stray}, which its configuration does not use", adapter.dir.display())
        }
        Ok(model)
    }

    /// Opens a folder: a fine-tuned classifier (labels from its config), or a base encoder with a
    /// new head for `labels`.
    pub fn from_folder(folder: &ModelFolder, new_head: Option<ClassifierConfig>, seed: u64, device: &Device) -> Result<Self> {
        Self::from_folder_peft(folder, new_head, seed, device, None)
    }

    /// For training with a parameter-efficient method on the base encoder in `folder`.
    pub fn from_folder_peft(folder: &ModelFolder, new_head: Option<ClassifierConfig>, seed: u64, device: &Device, peft: Option<&PeftConfig>) -> Result<Self> {
        let config = head_config(folder, new_head)?;
        let weights = folder.load_weights(device)?;
        Self::build_with(&folder.config, weights, config, seed, device, DType::F32, false, peft)
    }

    /// Like [`Self::from_folder`], with weights outside autograd: for prediction and evaluation.
    pub fn for_inference(folder: &ModelFolder, new_head: Option<ClassifierConfig>, device: &Device) -> Result<Self> {
        let config = head_config(folder, new_head)?;
        Self::build_with(&folder.config, folder.load_weights(device)?, config, 0, device, DType::F32, true, None)
    }

    /// Pooled sentence vectors `[batch, hidden]` (before head dropout).
    pub fn embed(&self, batch: &EncodedBatch, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let hidden = self.encoder.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, rng)?;
        crate::layers::as_dtype(&self.pool(&hidden, batch)?, self.head.weight.dtype())
    }

    /// The sentence vector of each row under the head's pooling.
    fn pool(&self, hidden: &Tensor, batch: &EncodedBatch) -> Result<Tensor> {
        match self.config.pooling {
            Pooling::Pooler => self.encoder.pool(hidden),
            Pooling::Cls => cls_pool(hidden),
            Pooling::Mean => mean_pool(hidden, &batch.attention_mask),
        }
    }

    /// Logits `[batch, num_labels]`; `rng` is `Some` in training mode.
    pub fn forward(&self, batch: &EncodedBatch, mut rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let hidden = self.encoder.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, rng.as_deref_mut())?;
        let pooled = maybe_dropout(&self.pool(&hidden, batch)?, self.head_dropout, &mut rng)?;
        // Logits in the weights' precision (f32 under mixed precision), for the loss.
        crate::layers::as_dtype(&self.head.forward(&pooled)?, self.head.weight.dtype())
    }

    /// Mixed precision (see [`crate::precision`]): activations in bf16 or fp16 over the f32
    /// weights; the logits come back in f32.
    pub fn set_precision(&mut self, precision: crate::Precision) {
        self.encoder.set_compute_dtype(precision.compute_dtype());
    }

    /// Writes a Hugging Face folder: `config.json` (`BertForSequenceClassification`, `id2label`,
    /// `label2id`), `model.safetensors` with transformers' names, and `tokenizer.json`. Each file
    /// is written under a temporary name and renamed, so a crash never leaves a torn file.
    pub fn save(&self, dir: &Path, base: &BertConfig, tokenizer: &TextTokenizer) -> Result<()> {
        let mut tensors = self.all_tensors();
        if let Some(peft) = &self.peft {
            // A plain folder cannot hold the added modules; LoRA folds into the weights.
            crate::peft::merge_lora(&mut tensors, peft)?;
        }
        save_full(dir, &tensors, &self.head_config_json(base, tokenizer), tokenizer)
    }

    /// Writes an adapter folder: `adapter_model.safetensors` with only the trained tensors (the
    /// added modules and the head), `adapter_config.json` naming the base folder, `config.json`
    /// with the head's labels and `tokenizer.json`.
    pub fn save_adapter(&self, dir: &Path, base: &ModelFolder, tokenizer: &TextTokenizer) -> Result<()> {
        let Some(peft) = &self.peft else { bail!("this model has no adapter to save") };
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // PEFT's names (`base_model.model.` + ours), so Python PEFT can load the adapter too.
        let own: HashMap<String, Tensor> =
            self.all_tensors().into_iter().filter(|(n, _)| peft.is_trainable(n)).map(|(n, t)| (format!("{}{n}", crate::peft::PEFT_PREFIX), t)).collect();
        let raw = self.head_config_json(&base.config, tokenizer);
        write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&raw)?.as_bytes())?;
        write_atomic(&dir.join(ADAPTER_CONFIG), serde_json::to_string_pretty(&adapter_config_json(peft, &base.dir))?.as_bytes())?;
        let tmp = dir.join(format!(".{ADAPTER_WEIGHTS}.tmp"));
        candle_core::safetensors::save(&own, &tmp)?;
        std::fs::rename(&tmp, dir.join(ADAPTER_WEIGHTS))?;
        tokenizer.save(dir)?;
        Ok(())
    }

    /// `config.json` of a saved classifier: the encoder's settings plus the head's.
    fn head_config_json(&self, base: &BertConfig, tokenizer: &TextTokenizer) -> Value {
        let mut raw = base.raw.clone();
        let labels = &self.config.labels;
        raw.insert("architectures".into(), json!(["BertForSequenceClassification"]));
        raw.insert("model_type".into(), json!("bert"));
        raw.insert("id2label".into(), Value::Object(labels.iter().enumerate().map(|(i, l)| (i.to_string(), json!(l))).collect()));
        raw.insert("label2id".into(), Value::Object(labels.iter().enumerate().map(|(i, l)| (l.clone(), json!(i))).collect()));
        raw.insert("num_labels".into(), json!(labels.len()));
        raw.insert("problem_type".into(), json!(self.config.problem_type.hf_name()));
        raw.insert("zhiku_pooling".into(), json!(self.config.pooling.name()));
        raw.insert("zhiku_text_pairs".into(), json!(self.config.text_pairs));
        raw.insert("zhiku_max_length".into(), json!(tokenizer.max_length()));
        match &self.config.thresholds {
            Some(t) => raw.insert("zhiku_thresholds".into(), json!(t)),
            None => raw.remove("zhiku_thresholds"),
        };
        Value::Object(raw)
    }
}

/// Writes a plain Hugging Face folder from a full set of tensors.
pub fn save_full(dir: &Path, tensors: &HashMap<String, Tensor>, config: &Value, tokenizer: &TextTokenizer) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(config)?.as_bytes())?;
    let tmp = dir.join(".model.safetensors.tmp");
    candle_core::safetensors::save(tensors, &tmp)?;
    std::fs::rename(&tmp, dir.join("model.safetensors"))?;
    tokenizer.save(dir)?;
    // A pytorch_model.bin from an earlier save would shadow nothing (safetensors wins) but
    // would confuse people; the folder holds exactly one weights file. Likewise an adapter.
    let _ = std::fs::remove_file(dir.join("pytorch_model.bin"));
    let _ = std::fs::remove_file(dir.join(ADAPTER_CONFIG));
    let _ = std::fs::remove_file(dir.join(ADAPTER_WEIGHTS));
    Ok(())
}

/// The head to build: the one asked for, else the one saved in the folder's `config.json`.
fn head_config(folder: &ModelFolder, new_head: Option<ClassifierConfig>) -> Result<ClassifierConfig> {
    match (new_head, ClassifierConfig::from_raw(folder.raw_config())?) {
        (Some(c), _) | (None, Some(c)) => Ok(c),
        (None, None) => bail!(
            "{} is a base encoder without a classification head; train one first with `zhiku train --model {}`",
            folder.dir.display(),
            folder.dir.display()
        ),
    }
}

/// Writes `bytes` to `path` via a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
