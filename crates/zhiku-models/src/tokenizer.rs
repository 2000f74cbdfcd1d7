//! Tokenisation: `tokenizer.json` (any Hugging Face fast tokenizer) or a bare WordPiece `vocab.txt`,
//! with truncation to the model's limit and dynamic padding to the longest sequence of a batch.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use std::path::Path;
use tokenizers::{EncodeInput, Tokenizer, TruncationParams};

pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    max_length: usize,
    /// The folder it was read from: its companion files (`tokenizer_config.json`, ...) carry
    /// settings, such as `do_lower_case`, that transformers applies on top of `tokenizer.json`.
    source_dir: std::path::PathBuf,
    /// For a tokenizer built from a bare `vocab.txt`: the lowercasing it used.
    built_lowercase: Option<bool>,
}

/// Files that transformers reads next to `tokenizer.json`; copied into saved models.
const COMPANION_FILES: [&str; 4] = ["tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "added_tokens.json"];

/// A tokenised batch padded to its longest member (not to `max_length`: dynamic padding).
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
    /// Real (unpadded) token count of each row.
    pub lengths: Vec<usize>,
}

/// One text (or pair) as token ids, truncated but not padded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedText {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Whether tokens were cut off to fit the maximum length.
    pub truncated: bool,
}

impl EncodedBatch {
    pub fn seq_len(&self) -> usize {
        self.input_ids.dim(1).unwrap_or(0)
    }
}

impl TextTokenizer {
    pub fn from_folder(dir: &Path, max_length: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let mut built_lowercase = None;
        let mut inner = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| anyhow!("cannot load tokenizer {}: {e}", json.display()))?
        } else {
            let vocab = dir.join("vocab.txt");
            if !vocab.is_file() {
                bail!("model folder {} has no tokenizer: expected tokenizer.json or vocab.txt", dir.display())
            }
            let lowercase = lowercase_setting(dir);
            built_lowercase = Some(lowercase);
            wordpiece_from_vocab(&vocab, lowercase)?
        };
        inner.with_padding(None);
        let pad_id = ["[PAD]", "<pad>"].iter().find_map(|t| inner.token_to_id(t)).unwrap_or(0);
        let mut tok = Self { inner, pad_id, max_length, source_dir: dir.to_path_buf(), built_lowercase };
        tok.set_max_length(max_length)?;
        Ok(tok)
    }

    pub fn set_max_length(&mut self, max_length: usize) -> Result<()> {
        if max_length < 4 {
            bail!("max length {max_length} is too short (at least 4 tokens)")
        }
        self.max_length = max_length;
        self.inner
            .with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
            .map_err(|e| anyhow!("cannot set truncation: {e}"))?;
        Ok(())
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Tokenises texts (and optional second segments) into one padded batch on `device`.
    pub fn encode_batch(&self, texts: &[&str], pairs: Option<&[&str]>, device: &Device) -> Result<EncodedBatch> {
        let tokenized = self.encode_many(texts, pairs)?;
        let refs: Vec<&TokenizedText> = tokenized.iter().collect();
        self.pad_batch(&refs, device)
    }

    /// Tokenises without padding (to tokenise a data set once and batch it many times).
    pub fn encode_many(&self, texts: &[&str], pairs: Option<&[&str]>) -> Result<Vec<TokenizedText>> {
        let inputs: Vec<EncodeInput> = match pairs {
            Some(p) => {
                if p.len() != texts.len() {
                    bail!("{} texts but {} pair texts", texts.len(), p.len())
                }
                texts.iter().zip(p).map(|(a, b)| (a.to_string(), b.to_string()).into()).collect()
            }
            None => texts.iter().map(|t| t.to_string().into()).collect(),
        };
        let encodings = self.inner.encode_batch(inputs, true).map_err(|e| anyhow!("tokenisation failed: {e}"))?;
        Ok(encodings
            .into_iter()
            .map(|e| TokenizedText { ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec(), truncated: !e.get_overflowing().is_empty() })
            .collect())
    }

    /// Pads tokenised texts to the longest of them and builds the batch tensors.
    pub fn pad_batch(&self, items: &[&TokenizedText], device: &Device) -> Result<EncodedBatch> {
        let seq = items.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
        let n = items.len();
        let mut ids = vec![self.pad_id; n * seq];
        let mut types = vec![0u32; n * seq];
        let mut mask = vec![0u32; n * seq];
        let mut lengths = Vec::with_capacity(n);
        for (row, enc) in items.iter().enumerate() {
            let len = enc.ids.len();
            lengths.push(len);
            ids[row * seq..row * seq + len].copy_from_slice(&enc.ids);
            types[row * seq..row * seq + len].copy_from_slice(&enc.type_ids);
            mask[row * seq..row * seq + len].iter_mut().for_each(|m| *m = 1);
        }
        Ok(EncodedBatch {
            input_ids: Tensor::from_vec(ids, (n, seq), device)?,
            token_type_ids: Tensor::from_vec(types, (n, seq), device)?,
            attention_mask: Tensor::from_vec(mask, (n, seq), device)?,
            lengths,
        })
    }

    /// Token strings of one text (for `--help` examples and debugging).
    pub fn tokens(&self, text: &str) -> Result<Vec<String>> {
        let enc = self.inner.encode(text, true).map_err(|e| anyhow!("tokenisation failed: {e}"))?;
        Ok(enc.get_tokens().to_vec())
    }

    /// Writes `tokenizer.json` and the source folder's companion files into `dir`, so a saved
    /// model folder is self-contained and transformers tokenises exactly as zhiku does.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut copy = self.inner.clone();
        copy.with_truncation(None).map_err(|e| anyhow!("{e}"))?;
        let tmp = dir.join(".tokenizer.json.tmp");
        copy.save(&tmp, true).map_err(|e| anyhow!("cannot write tokenizer.json: {e}"))?;
        std::fs::rename(&tmp, dir.join("tokenizer.json"))?;
        let same_dir = std::fs::canonicalize(&self.source_dir).ok() == std::fs::canonicalize(dir).ok();
        if !same_dir {
            for name in COMPANION_FILES {
                let src = self.source_dir.join(name);
                if src.is_file() {
                    let tmp = dir.join(format!(".{name}.tmp"));
                    std::fs::copy(&src, &tmp).with_context(|| format!("cannot copy {}", src.display()))?;
                    std::fs::rename(&tmp, dir.join(name))?;
                }
            }
        }
        if let (Some(lowercase), false) = (self.built_lowercase, dir.join("tokenizer_config.json").is_file()) {
            let cfg = serde_json::json!({"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase});
            std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&cfg)?)?;
        }
        Ok(())
    }
}

/// `do_lower_case` from `tokenizer_config.json`, defaulting to true as BERT's uncased models do.
fn lowercase_setting(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("do_lower_case").and_then(|b| b.as_bool()))
        .unwrap_or(true)
}

/// BERT's tokenizer pipeline (normaliser, pre-tokeniser, WordPiece, `[CLS] a [SEP] b [SEP]`).
fn wordpiece_from_vocab(vocab: &Path, lowercase: bool) -> Result<Tokenizer> {
    use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    let path = vocab.to_str().context("vocab path is not UTF-8")?;
    let model = WordPiece::from_file(path)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| anyhow!("cannot read {}: {e}", vocab.display()))?;
    let mut tok = Tokenizer::new(model);
    let id = |t: &str| tok.token_to_id(t).ok_or_else(|| anyhow!("{} has no {t} token", vocab.display()));
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase))).map_err(|e| anyhow!("{e}"))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
    tok.with_decoder(Some(WordPieceDecoder::default()));
    Ok(tok)
}
