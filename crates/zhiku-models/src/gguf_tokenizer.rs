//! A tokenizer from a GGUF file's metadata (`tokenizer.ggml.*`), built as the same
//! `tokenizers` pipeline that the model's own `tokenizer.json` describes:
//! - `gpt2` (byte-level BPE: Qwen2, SmolLM2, Llama 3): the file's vocabulary and merges, split
//!   first by the regex that `tokenizer.ggml.pre` names;
//! - `llama` (SentencePiece BPE with byte fallback: Gemma): merges rebuilt from the vocabulary
//!   (the file has none), spaces written as `▁`, no pre-tokenizer.
//!
//! Tokens the file marks as control (`<|im_start|>`, `<end_of_turn>`) are added as special
//! tokens and user-defined ones as plain added tokens, so both are matched whole in text, as
//! llama.cpp does.

use crate::gguf::{GgufFile, Value};
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;
use tokenizers::Tokenizer;

const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Pre-tokenizer regexes by `tokenizer.ggml.pre` (llama.cpp's names), as in the models' own
/// `tokenizer.json` files.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Control tokens that end an assistant's turn in the chat formats we know.
pub const END_OF_TURN: [&str; 5] = ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>", "<|end|>"];

/// Special-token facts a generator needs besides the tokenizer itself.
#[derive(Debug, Clone)]
pub struct TokenizerInfo {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    /// Tokens that end a turn: the EOS and any control token named like an end of turn
    /// (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`).
    pub stop_tokens: Vec<u32>,
    pub chat_template: Option<String>,
}

pub fn from_gguf(file: &GgufFile) -> Result<(Tokenizer, TokenizerInfo)> {
    let model = file.get_str("tokenizer.ggml.model").ok_or_else(|| anyhow!("{} has no tokenizer (tokenizer.ggml.model)", file.path().display()))?;
    let tokens = file.string_array("tokenizer.ggml.tokens").ok_or_else(|| anyhow!("{} lacks tokenizer.ggml.tokens", file.path().display()))?;
    let types: Vec<i64> = match file.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a.iter().map(|v| v.as_u64().map(|x| x as i64).unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        bail!("tokenizer.ggml.token_type has {} entries for {} tokens", types.len(), tokens.len())
    }
    let pre = file.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let id = |k: &str| file.get_u64(k).map(|v| v as u32).filter(|&v| (v as usize) < tokens.len());
    let bos = id("tokenizer.ggml.bos_token_id");
    let eos = id("tokenizer.ggml.eos_token_id");
    let add_bos = file.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(model == "llama");

    let spec = match model {
        "gpt2" => {
            let merges = file.string_array("tokenizer.ggml.merges").ok_or_else(|| anyhow!("byte-level tokenizer without tokenizer.ggml.merges"))?;
            byte_level(&tokens, &merges, pre)?
        }
        "llama" => sentencepiece(&tokens, file.get_u64("tokenizer.ggml.unknown_token_id").map(|v| v as usize))?,
        other => bail!("tokenizer model '{other}' is not supported (supported: gpt2, llama)"),
    };
    let mut spec = spec;
    let byte_alphabet: std::collections::HashSet<char> = byte_to_unicode().into_iter().collect();
    let vocab = spec["model"]["vocab"].as_object().cloned().unwrap_or_default();
    let mut added = Vec::new();
    for (i, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        let keep = match ty {
            // A control token outside the byte alphabet in a byte-level vocabulary is a
            // mislabel (transformers skips it too).
            CONTROL => model != "gpt2" || t.chars().all(|c| byte_alphabet.contains(&c)),
            USER_DEFINED => vocab.contains_key(*t),
            _ => false,
        };
        if keep {
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": ty == CONTROL}));
        }
    }
    spec["added_tokens"] = Json::Array(added);
    if add_bos {
        if let Some(b) = bos {
            let name = tokens[b as usize];
            spec["post_processor"] = json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {name: {"id": name, "ids": [b], "tokens": [name]}}
            });
        }
    }
    let text = serde_json::to_string(&spec)?;
    let tokenizer: Tokenizer = text.parse().map_err(|e| anyhow!("cannot build the tokenizer from {}: {e}", file.path().display()))?;

    let mut stop_tokens: Vec<u32> = eos.into_iter().collect();
    for name in END_OF_TURN {
        if let Some(i) = tokens.iter().position(|t| *t == name) {
            if types[i] == CONTROL && !stop_tokens.contains(&(i as u32)) {
                stop_tokens.push(i as u32);
            }
        }
    }
    let chat_template = file.get_str("tokenizer.chat_template").map(str::to_string);
    Ok((tokenizer, TokenizerInfo { bos, eos, add_bos, stop_tokens, chat_template }))
}

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the rest map to
/// U+0100 onwards.
fn byte_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        if printable.contains(&b) {
            chars[b as usize] = char::from_u32(b).unwrap();
        } else {
            chars[b as usize] = char::from_u32(256 + extra).unwrap();
            extra += 1;
        }
    }
    printable.clear();
    chars
}

fn byte_level(tokens: &[&str], merges: &[&str], pre: &str) -> Result<Json> {
    let table = byte_to_unicode();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        // Tokens written in plain UTF-8 rather than the byte alphabet are respelled.
        let spelled = if t.chars().all(|c| alphabet.contains(&c)) { t.to_string() } else { t.bytes().map(|b| table[b as usize]).collect() };
        vocab.insert(spelled, json!(i));
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').ok_or_else(|| anyhow!("merge '{m}' is not two tokens separated by a space"))?;
            Ok(json!([a, b]))
        })
        .collect::<Result<_>>()?;
    let split = match pre {
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2_SPLIT),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "falcon3" | "dbrx" => Some(LLAMA3_SPLIT),
        _ => None,
    };
    let byte_level_split = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": split.is_none()});
    let pre_tokenizer = match (split, pre) {
        (Some(re), _) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
        ]}),
        // SmolLM's tokenizer.json: single digits, then GPT-2's split.
        (None, "smollm") => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level_split
        ]}),
        _ => byte_level_split,
    };
    let normalizer = if split == Some(QWEN2_SPLIT) { json!({"type": "NFC"}) } else { Json::Null };
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
    }))
}

/// SentencePiece BPE: the file lists no merges, so they are rebuilt from the vocabulary: every
/// split of a token into two tokens is a merge, ranked by the token's position in the file
/// (earlier first; Gemma's scores do not follow its merge order, its token order does), then by
/// the longer left part. Tokens made only of spaces are stored as spaces and respelled as `▁`.
fn sentencepiece(tokens: &[&str], unk: Option<usize>) -> Result<Json> {
    let spelled: Vec<String> = tokens.iter().map(|t| if !t.is_empty() && t.chars().all(|c| c == ' ') { "▁".repeat(t.chars().count()) } else { t.to_string() }).collect();
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(spelled.len());
    // A token spelled twice keeps its last id (as a Python dict built from the list does).
    for (i, t) in spelled.iter().enumerate() {
        index.insert(t.as_str(), i);
    }
    let mut merges: Vec<(usize, usize, &str, &str)> = Vec::new();
    for (&t, &i) in &index {
        let mut local = Vec::new();
        for (cut, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(cut);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                local.push((li, ri, l, r));
            }
        }
        local.sort_by_key(|&(li, ri, _, _)| (li, ri));
        // Stable sort below keeps this order among equal keys.
        merges.extend(local.into_iter().map(|(_, _, l, r)| (i, l.chars().count(), l, r)));
    }
    merges.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut vocab = Map::new();
    for (i, t) in spelled.iter().enumerate() {
        vocab.insert(t.clone(), json!(i));
    }
    let merges: Vec<Json> = merges.into_iter().map(|(_, _, l, r)| json!([l, r])).collect();
    let unk_token = unk.and_then(|u| spelled.get(u)).cloned();
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk_token, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges}
    }))
}
