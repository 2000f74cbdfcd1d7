//! Supervised fine-tuning of decoders (`--task sft`) with LoRA, on the one training loop.
//!
//! Data: JSONL, one conversation per line, `{"prompt", "response"}` (optionally `"system"`) or
//! OpenAI-style `{"messages": [{"role", "content"}, ...]}`. Each conversation is rendered with
//! the model's chat template and tokenised piece by piece, so the tokens of every assistant
//! turn (its end-of-turn token included) are known: the loss is next-token cross-entropy on
//! those tokens only, summed over the step and divided by the step's number of such tokens.
//!
//! The model is a [`GraphDecoder`] over the frozen base in its file's form (quantised blocks
//! stay quantised) with LoRA adapters as the only parameters. A micro-batch is cut into one
//! shard of rows per core; each shard runs its forward and backward pass alone. The backward
//! pass goes layer by layer: the forward keeps only each layer's input, and the backward
//! recomputes one layer at a time (activation checkpointing), so memory holds one layer's
//! activations instead of all of them; `recompute: false` keeps every layer's graph instead
//! (faster, more memory). The loss at the output is taken a block of rows at a time with a
//! fused cross-entropy that never stores the probabilities over the vocabulary.

use crate::sharded::{add_grad, sum_grads};
use crate::state::TrainConfig;
use crate::train_loop::{DevScores, FinalScores, TrainTask};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;
use zhiku_infer::template::{ChatTemplate, Message};
use zhiku_infer::ModelParts;
use zhiku_models::decoder::adapter;
use zhiku_models::decoder::graph::{GraphDecoder, GraphOptions, LoraSpec, PackedRow};
use zhiku_models::layers::DropoutRng;
use zhiku_models::{kernels, shard, Params};

/// One training conversation and the line it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub messages: Vec<Message>,
    pub line: usize,
}

/// Reads SFT data: every non-empty line a conversation; errors name the file and line.
pub fn read_conversations(path: &Path) -> Result<Vec<Conversation>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(text).map_err(|e| anyhow!("{}: not UTF-8 (byte {})", path.display(), e.utf8_error().valid_up_to()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |what: String| anyhow!("{}:{}: {what}", path.display(), i + 1);
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| at(format!("not valid JSON ({e})")))?;
        let text_of = |key: &str| -> Result<Option<String>> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(at(format!("\"{key}\" must be a string, got {other}"))),
            }
        };
        let messages = if let Some(list) = v.get("messages") {
            let Value::Array(list) = list else { return Err(at("\"messages\" must be a list of {\"role\", \"content\"} objects".into())) };
            let mut messages = Vec::with_capacity(list.len());
            for (k, m) in list.iter().enumerate() {
                let role = m.get("role").and_then(Value::as_str).ok_or_else(|| at(format!("message {} has no \"role\"", k + 1)))?;
                if !["system", "user", "assistant", "tool"].contains(&role) {
                    return Err(at(format!("message {} has role {role:?} (expected system, user, assistant or tool)", k + 1)));
                }
                let content = m.get("content").and_then(Value::as_str).ok_or_else(|| at(format!("message {} has no text \"content\"", k + 1)))?;
                messages.push(Message::new(role, content));
            }
            if !messages.iter().any(|m| m.role == "assistant") {
                return Err(at("the conversation has no assistant turn to learn from".into()));
            }
            messages
        } else {
            match (text_of("prompt")?, text_of("response")?.or(text_of("completion")?)) {
                (Some(p), Some(r)) => {
                    let mut m = Vec::with_capacity(3);
                    if let Some(s) = text_of("system")? {
                        m.push(Message::new("system", &s));
                    }
                    m.push(Message::new("user", &p));
                    m.push(Message::new("assistant", &r));
                    m
                }
                (None, _) => return Err(at("needs \"prompt\" and \"response\", or \"messages\"".into())),
                (Some(_), None) => return Err(at("has a \"prompt\" but no \"response\"".into())),
            }
        };
        out.push(Conversation { messages, line: i + 1 });
    }
    if out.is_empty() {
        bail!("{}: no conversations", path.display())
    }
    Ok(out)
}

/// A tokenised conversation: `learn[i]` says whether `tokens[i]` is one the model learns to
/// produce (it belongs to an assistant turn).
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    pub tokens: Vec<u32>,
    pub learn: Vec<bool>,
    pub line: usize,
}

impl SftExample {
    /// Positions whose next token is learned, with that token.
    fn targets(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        (1..self.tokens.len()).filter(|&i| self.learn[i]).map(|i| (i - 1, self.tokens[i]))
    }

    pub fn target_count(&self) -> usize {
        self.learn.iter().skip(1).filter(|&&l| l).count()
    }
}

/// What to do with a conversation longer than `--max-length` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// Keep its first `max_length` tokens (skipped if no learned token is left).
    Truncate,
    Skip,
}

impl Overlong {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "truncate" => Ok(Self::Truncate),
            "skip" => Ok(Self::Skip),
            other => bail!("unknown --overlong {other:?}: expected truncate or skip"),
        }
    }
}

/// Tokenised data and what had to be cut or left out.
#[derive(Debug, Default, Serialize)]
pub struct EncodeReport {
    pub examples: usize,
    pub truncated: usize,
    pub skipped: usize,
    /// Lines skipped (the first few), for the message.
    pub skipped_lines: Vec<usize>,
    pub tokens: usize,
    pub learned_tokens: usize,
}

/// Renders and tokenises conversations with a model's template and tokenizer.
pub struct Formatter<'a> {
    pub tokenizer: &'a Tokenizer,
    pub template: &'a ChatTemplate,
}

impl Formatter<'_> {
    /// Tokens and learn-flags of one conversation. The template is rendered up to each
    /// assistant turn (with the generation prompt) and through it; what the turn adds is
    /// learned. The prefix of each rendering must be the previous one's text, as it is for
    /// templates that render a conversation turn by turn.
    pub fn encode(&self, conv: &Conversation) -> Result<SftExample> {
        let mut tokens = Vec::new();
        let mut learn = Vec::new();
        let mut done = String::new();
        let mut push = |text: &str, learned: bool| -> Result<()> {
            if text.is_empty() {
                return Ok(());
            }
            let enc = self.tokenizer.encode(text, false).map_err(|e| anyhow!("cannot tokenise: {e}"))?;
            tokens.extend_from_slice(enc.get_ids());
            learn.extend(std::iter::repeat_n(learned, enc.get_ids().len()));
            Ok(())
        };
        for (i, m) in conv.messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = if i == 0 { String::new() } else { self.template.render(&conv.messages[..i], true)? };
            let through = self.template.render(&conv.messages[..=i], false)?;
            if !before.starts_with(&done) || !through.starts_with(&before) {
                bail!("the chat template does not render this conversation turn by turn (its text before assistant turn {} changes later), so the turn's tokens cannot be told apart", i + 1)
            }
            push(&before[done.len()..], false)?;
            push(&through[before.len()..], true)?;
            done = through;
        }
        Ok(SftExample { tokens, learn, line: conv.line })
    }

    /// Every conversation, cut or dropped at `max_length` tokens as `overlong` says; errors
    /// name `path` and the line.
    pub fn encode_all(&self, path: &Path, convs: &[Conversation], max_length: usize, overlong: Overlong) -> Result<(Vec<SftExample>, EncodeReport)> {
        let mut report = EncodeReport::default();
        let mut out = Vec::with_capacity(convs.len());
        for c in convs {
            let mut ex = self.encode(c).with_context(|| format!("{}:{}", path.display(), c.line))?;
            if ex.tokens.len() > max_length {
                match overlong {
                    Overlong::Skip => {
                        report.skipped += 1;
                        if report.skipped_lines.len() < 10 {
                            report.skipped_lines.push(c.line);
                        }
                        continue;
                    }
                    Overlong::Truncate => {
                        ex.tokens.truncate(max_length);
                        ex.learn.truncate(max_length);
                        if ex.target_count() == 0 {
                            report.skipped += 1;
                            if report.skipped_lines.len() < 10 {
                                report.skipped_lines.push(c.line);
                            }
                            continue;
                        }
                        report.truncated += 1;
                    }
                }
            }
            if ex.target_count() == 0 {
                bail!("{}:{}: the assistant turns are empty: nothing to learn", path.display(), c.line)
            }
            report.tokens += ex.tokens.len();
            report.learned_tokens += ex.target_count();
            out.push(ex);
        }
        report.examples = out.len();
        Ok((out, report))
    }
}

/// Examples packed into rows of at most `max_length` tokens, first fit in a seeded order.
pub fn pack(examples: &[SftExample], max_length: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5ac4));
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        let len = examples[i].tokens.len();
        match rows.iter_mut().find(|(used, _)| used + len <= max_length) {
            Some((used, members)) => {
                *used += len;
                members.push(i);
            }
            None => rows.push((len, vec![i])),
        }
    }
    rows.into_iter().map(|(_, m)| m).collect()
}

/// LoRA and the rest of what `--task sft` needs beyond the loop's settings.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SftOptions {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
    pub packing: bool,
    pub overlong: Overlong,
    /// Recompute each layer in the backward pass instead of keeping every layer's activations.
    pub recompute: bool,
    /// Held out of `--train` as dev when no dev file is given.
    pub dev_fraction: f64,
    /// Train every weight (no adapters); the output is a whole model.
    pub full: bool,
    /// Dropout on the adapters' inputs in training.
    pub dropout: f64,
    /// An adapter folder (PEFT's layout: an earlier run's, or Python PEFT's) whose weights the
    /// adapters start from instead of a seeded random initialisation. Its rank, alpha and
    /// targets must be the run's.
    #[serde(default)]
    pub init_adapter: Option<PathBuf>,
}

/// The data of a run: tokenised train and dev (and test) conversations.
pub struct SftData {
    pub train_path: PathBuf,
    pub train: Vec<SftExample>,
    pub dev: Vec<SftExample>,
    pub test: Option<Vec<SftExample>>,
    /// Dev conversations held out of `--train` (written to `splits/dev.jsonl`).
    pub held_out: Option<Vec<Conversation>>,
    pub report: EncodeReport,
}

impl SftData {
    /// Reads and tokenises everything before anything is written.
    pub fn load(parts: &ModelParts, train: &Path, dev: Option<&Path>, test: Option<&Path>, max_length: usize, options: &SftOptions, seed: u64) -> Result<Self> {
        let f = Formatter { tokenizer: &parts.tokenizer, template: &parts.template };
        let mut convs = read_conversations(train)?;
        let (dev_examples, held_out) = match dev {
            Some(p) => (f.encode_all(p, &read_conversations(p)?, max_length, options.overlong)?.0, None),
            None => {
                if convs.len() < 2 {
                    bail!("{}: too few conversations to hold out a dev split; give --dev", train.display())
                }
                let mut order: Vec<usize> = (0..convs.len()).collect();
                order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
                let n_dev = ((convs.len() as f64 * options.dev_fraction).round() as usize).clamp(1, convs.len() - 1);
                let mut is_dev = vec![false; convs.len()];
                order[..n_dev].iter().for_each(|&i| is_dev[i] = true);
                let mut kept = Vec::new();
                let mut dev = Vec::new();
                for (c, d) in convs.into_iter().zip(is_dev) {
                    if d { dev.push(c) } else { kept.push(c) }
                }
                convs = kept;
                (f.encode_all(train, &dev, max_length, options.overlong)?.0, Some(dev))
            }
        };
        let (train_examples, report) = f.encode_all(train, &convs, max_length, options.overlong)?;
        if train_examples.is_empty() {
            bail!("{}: every conversation is longer than --max-length {max_length} (--overlong skip)", train.display())
        }
        if dev_examples.is_empty() {
            bail!("no dev conversation is left within --max-length {max_length}")
        }
        let test = test.map(|p| Ok::<_, anyhow::Error>(f.encode_all(p, &read_conversations(p)?, max_length, options.overlong)?.0)).transpose()?;
        Ok(Self { train_path: train.to_path_buf(), train: train_examples, dev: dev_examples, test, held_out, report })
    }
}

/// A gradient store with nothing in it (candle offers no constructor).
fn empty_grads() -> Result<GradStore> {
    let v = Var::zeros(1, DType::F32, &candle_core::Device::Cpu)?;
    let mut g = v.as_tensor().sum_all()?.backward()?;
    g.remove(v.as_tensor());
    Ok(g)
}


/// Rows of the head's loss taken at once: bounds the `[rows, vocab]` logits in memory.
const HEAD_ROWS: usize = 128;

/// One forward and backward pass over packed rows of examples: the sum of the learned
/// tokens' cross-entropy times `weight`, and the adapters' gradients (of that weighted sum).
/// `dropout_seed`: the seed of this pass's LoRA dropout masks (a recomputed layer draws the
/// same ones); `None` for no dropout.
pub fn rows_pass(model: &GraphDecoder, rows: &[Vec<&SftExample>], weight: f64, recompute: bool, dropout_seed: Option<u64>) -> Result<(f64, Option<GradStore>)> {
    let layout = RowLayout::new(rows);
    let packed = layout.packed();
    let mut geometry = model.geometry(&packed)?;
    geometry.dropout_seed = dropout_seed;
    let t = geometry.t;
    let picks = layout.picks(t);
    let n_layers = model.num_layers();
    // Forward: each layer from a detached input, keeping the inputs (recompute) or the graphs.
    // The first layer's input is the embedding: a constant with adapters, whose gradient is not
    // needed; in full fine-tuning its graph is kept for the embedding's gradient at the end.
    let full = model.is_full();
    let embedded = model.embed_rows(&packed, t)?;
    let needs_input_grad = |li: usize| li > 0 || full;
    let mut x = embedded.detach();
    let mut inputs: Vec<Tensor> = Vec::with_capacity(n_layers);
    let mut kept: Vec<(Option<Var>, Tensor)> = Vec::new();
    for li in 0..n_layers {
        if recompute {
            inputs.push(x.clone());
            x = model.layer_forward(li, &x, &geometry)?.detach();
        } else {
            let input = if needs_input_grad(li) { Some(Var::from_tensor(&x)?) } else { None };
            let y = model.layer_forward(li, input.as_ref().map_or(&x, |v| v.as_tensor()), &geometry)?;
            x = y.detach();
            kept.push((input, y));
        }
    }
    // The head, a block of rows at a time, each block's backward at once.
    let last = Var::from_tensor(&x)?;
    let hidden = model.config.hidden;
    let flat = last.as_tensor().reshape((rows.len() * t, hidden))?;
    let mut loss = 0.0;
    let mut grad_x: Option<Tensor> = None;
    let head_vars = model.head_trainable();
    let mut acc = empty_grads()?;
    for block in picks.chunks(HEAD_ROWS) {
        let idx: Vec<u32> = block.iter().map(|p| p.0).collect();
        let targets: Vec<u32> = block.iter().map(|p| p.1).collect();
        let states = flat.index_select(&Tensor::new(idx.as_slice(), model.device())?, 0)?;
        let logits = model.logits(&model.final_norm(&states)?)?;
        let ce = kernels::cross_entropy_rows(&logits.to_dtype(DType::F32)?, &targets)?.sum_all()?;
        loss += ce.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let g = (ce * weight)?.backward()?;
        let gx = g.get(last.as_tensor()).ok_or_else(|| anyhow!("no gradient reached the last layer"))?.detach();
        for var in &head_vars {
            if let Some(gv) = g.get(var.as_tensor()) {
                // A tied weight gets gradients from two places, the head from every block of rows.
                add_grad(&mut acc, var.as_tensor(), &gv.detach())?;
            }
        }
        grad_x = Some(match grad_x {
            None => gx,
            Some(prev) => (prev + gx)?,
        });
    }
    let Some(mut grad) = grad_x else { return Ok((0.0, None)) };
    // Backward, layer by layer from the top.
    for li in (0..n_layers).rev() {
        let (input, y) = if recompute {
            let input = if needs_input_grad(li) { Some(Var::from_tensor(&inputs[li])?) } else { None };
            let y = model.layer_forward(li, input.as_ref().map_or(&inputs[li], |v| v.as_tensor()), &geometry)?;
            (input, y)
        } else {
            kept.pop().expect("one graph per layer")
        };
        let mut own = (y * &grad)?.sum_all()?.backward()?;
        // Gradients that went through an adapter are themselves results of tracked operations:
        // detached, so that they do not keep this layer's graph alive into the next.
        if let Some(input) = &input {
            grad = own.remove(input.as_tensor()).ok_or_else(|| anyhow!("no gradient reached layer {li}'s input"))?.detach();
        }
        // Only the adapters' gradients are kept: candle's store also holds gradients for the
        // constants a layer reads (masks, rotary tables, the incoming gradient), which would
        // pile up layer after layer.
        for var in model.layer_trainable(li) {
            if let Some(g) = own.remove(var.as_tensor()) {
                acc.insert(var.as_tensor(), g.detach());
            }
        }
    }
    // Full fine-tuning: the gradient at the first layer's input flows into the embedding rows.
    if let Some(embed) = model.embed_trainable() {
        let g = (embedded * &grad)?.sum_all()?.backward()?;
        if let Some(ge) = g.get(embed.as_tensor()) {
            add_grad(&mut acc, embed.as_tensor(), &ge.detach())?;
        }
    }
    Ok((loss, Some(acc)))
}

/// Rows of packed examples as the decoder takes them (shared by training and scoring).
struct RowLayout<'a> {
    rows: &'a [Vec<&'a SftExample>],
    /// Each row's examples' tokens end to end.
    tokens: Vec<Vec<u32>>,
}

impl<'a> RowLayout<'a> {
    fn new(rows: &'a [Vec<&'a SftExample>]) -> Self {
        let tokens = rows.iter().map(|r| r.iter().flat_map(|e| e.tokens.iter().copied()).collect()).collect();
        Self { rows, tokens }
    }

    fn packed(&self) -> Vec<PackedRow<'_>> {
        self.rows.iter().zip(&self.tokens).map(|(r, t)| PackedRow { tokens: t, segments: r.iter().map(|e| e.tokens.len()).collect() }).collect()
    }

    /// (flattened row * t + position, next token) of every learned token, rows padded to `t`.
    fn picks(&self, t: usize) -> Vec<(u32, u32)> {
        let mut picks = Vec::new();
        for (ri, r) in self.rows.iter().enumerate() {
            let mut offset = 0;
            for e in r {
                picks.extend(e.targets().map(|(p, tok)| ((ri * t + offset + p) as u32, tok)));
                offset += e.tokens.len();
            }
        }
        picks
    }
}


/// Cross-entropy sum, learned-token count and correct greedy predictions over examples, in
/// batches of about `budget` tokens, without gradients.
pub fn score(model: &GraphDecoder, examples: &[SftExample], budget: usize) -> Result<(f64, usize, usize)> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].tokens.len());
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        let longest = examples[i].tokens.len();
        if !current.is_empty() && (current.len() + 1) * longest > budget {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    let per_batch = |b: &Vec<usize>| -> Result<(f64, usize, usize)> {
        let rows: Vec<Vec<&SftExample>> = b.iter().map(|&i| vec![&examples[i]]).collect();
        let layout = RowLayout::new(&rows);
        let packed = layout.packed();
        let geometry = model.geometry(&packed)?;
        let t = geometry.t;
        // Layer by layer, each output detached, so no graph holds the activations.
        let mut x = model.embed_rows(&packed, t)?;
        for li in 0..model.num_layers() {
            x = model.layer_forward(li, &x, &geometry)?.detach();
        }
        let flat = model.final_norm(&x)?.detach().reshape((packed.len() * t, model.config.hidden))?;
        let picks = layout.picks(t);
        let (mut loss, mut correct) = (0.0, 0);
        for block in picks.chunks(HEAD_ROWS) {
            let idx: Vec<u32> = block.iter().map(|p| p.0).collect();
            let targets: Vec<u32> = block.iter().map(|p| p.1).collect();
            let logits = model.logits(&flat.index_select(&Tensor::new(idx.as_slice(), model.device())?, 0)?)?.detach().to_dtype(DType::F32)?;
            loss += kernels::cross_entropy_rows(&logits, &targets)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let best = logits.argmax(1)?.to_vec1::<u32>()?;
            correct += best.iter().zip(&targets).filter(|(a, b)| a == b).count();
        }
        Ok((loss, picks.len(), correct))
    };
    let n = shard::shard_count(batches.len(), model.device());
    let parts = shard::run(n, |s| {
        let mut sum = (0.0, 0, 0);
        for b in batches.iter().skip(s).step_by(n) {
            let (l, c, k) = per_batch(b)?;
            sum = (sum.0 + l, sum.1 + c, sum.2 + k);
        }
        Ok(sum)
    })?;
    Ok(parts.into_iter().fold((0.0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2)))
}

/// `--task sft`: a decoder with LoRA adapters on the loop.
pub struct SftTask {
    model: GraphDecoder,
    params: Params,
    spec: LoraSpec,
    base: PathBuf,
    data: SftData,
    options: SftOptions,
    config: TrainConfig,
    /// Training units: the examples of each row (one each unless packed).
    units: Vec<Vec<usize>>,
    total_params: usize,
    /// The base's tokenizer, written beside a fully fine-tuned model in a folder.
    tokenizer: (tokenizers::Tokenizer, zhiku_models::gguf_tokenizer::TokenizerInfo),
}

/// The file a fully fine-tuned model from a GGUF base is written to, inside the output folder.
pub const FULL_GGUF: &str = "model.gguf";

/// Sets the adapters of `model` to those saved in `dir`, which must have the run's shape.
fn start_from(model: &GraphDecoder, spec: &LoraSpec, dir: &Path, full: bool) -> Result<()> {
    if full {
        bail!("--init-adapter starts LoRA adapters; it is not for full fine-tuning (--peft none)")
    }
    let start = adapter::DecoderAdapter::open(dir)?;
    let mut theirs = start.spec.targets.clone();
    let mut ours = spec.targets.clone();
    theirs.sort();
    ours.sort();
    if start.spec.rank != spec.rank || start.spec.alpha != spec.alpha || theirs != ours {
        bail!(
            "adapter {} has rank {}, alpha {} on {}; this run has rank {}, alpha {} on {}",
            dir.display(),
            start.spec.rank,
            start.spec.alpha,
            theirs.join(","),
            spec.rank,
            spec.alpha,
            ours.join(",")
        )
    }
    model.load_lora(&start.tensors).with_context(|| format!("cannot start from adapter {}", dir.display()))
}

impl SftTask {
    /// Takes the loaded base model (its weights stay in their file's form) and attaches adapters.
    pub fn new(parts: ModelParts, base: &Path, data: SftData, config: &TrainConfig, options: SftOptions) -> Result<Self> {
        let c = &parts.model.config;
        let total_params = parts.model.parameter_count();
        if config.max_length > c.context_length {
            bail!("--max-length {} exceeds the model's context of {} tokens", config.max_length, c.context_length)
        }
        let spec = LoraSpec { rank: options.rank, alpha: options.alpha, targets: options.targets.clone(), seed: config.seed, dropout: options.dropout };
        let graph = if options.full { GraphOptions { full: true, ..GraphOptions::cpu() } } else { GraphOptions { lora: Some(spec.clone()), ..GraphOptions::cpu() } };
        let tokenizer = (parts.tokenizer.clone(), parts.info.clone());
        let model = GraphDecoder::new(parts.model, &graph)?;
        if let Some(dir) = &options.init_adapter {
            start_from(&model, &spec, dir, options.full)?;
        }
        let mut params = Params::default();
        for (name, var) in model.trainable() {
            params.insert(&name, var);
        }
        if params.is_empty() {
            bail!("no LoRA targets matched the model's projections")
        }
        let units = if options.packing { pack(&data.train, config.max_length, config.seed) } else { (0..data.train.len()).map(|i| vec![i]).collect() };
        let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
        Ok(Self { model, params, spec, base, data, options, config: config.clone(), units, total_params, tokenizer })
    }

    pub fn report(&self) -> &EncodeReport {
        &self.data.report
    }

    /// Rows the loop trains on (fewer than examples when packed).
    pub fn rows(&self) -> usize {
        self.units.len()
    }

    /// A fully fine-tuned model, in its base's format: `dir/model.gguf` with the base file's
    /// metadata (weights in f32, rows in the file's order) for a GGUF base, or a Hugging Face
    /// folder's files in `dir` for a folder base.
    fn save_full(&self, dir: &Path) -> Result<()> {
        use zhiku_models::decoder::export::{write_gguf, write_hf_folder, MemoryWeights, Merger};
        let weights = MemoryWeights(self.model.full_weights()?);
        let merger = Merger::new(&self.model.config, &weights, None)?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if self.base.is_dir() {
            write_hf_folder(dir, &merger, DType::F32, &self.tokenizer.0, &self.tokenizer.1, &mut |_, _| {})
        } else {
            let base = zhiku_models::gguf::GgufFile::open(&self.base)?;
            write_gguf(&base, &merger, zhiku_models::blocks::GgmlType::F32, &dir.join(FULL_GGUF), &mut |_, _| {})
        }
    }

    /// Sets every weight from a model [`SftTask::save_full`] wrote.
    fn load_full(&self, dir: &Path) -> Result<()> {
        use zhiku_models::decoder::WeightSource;
        let gguf;
        let folder;
        let source: &dyn WeightSource = if self.base.is_dir() {
            folder = zhiku_models::decoder::hf::open(dir)?.1;
            &folder
        } else {
            // Read into memory, not mapped: the allocator reuses the optimizer's freed memory
            // for it, where mapped file pages would add to the peak.
            gguf = zhiku_models::gguf::GgufFile::open_with(&dir.join(FULL_GGUF), false)?;
            &gguf
        };
        for (name, var) in self.model.trainable() {
            let values = if var.dims().len() == 2 { source.matrix(&name)?.to_f32()? } else { source.vector(&name)? };
            var.set(&Tensor::from_vec(values, var.dims(), var.device())?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    fn dev_scores(&self, examples: &[SftExample]) -> Result<Value> {
        let (loss, count, correct) = score(&self.model, examples, self.config.max_length.max(512) * 4)?;
        let mean = loss / count.max(1) as f64;
        Ok(json!({"loss": mean, "perplexity": mean.exp(), "token_accuracy": correct as f64 / count.max(1) as f64, "tokens": count}))
    }
}

impl TrainTask for SftTask {
    fn fingerprint(&self) -> String {
        format!(
            "task=sft model={} train={}:{} dev={} options={}",
            self.base.display(),
            self.data.train_path.display(),
            self.data.train.len(),
            self.data.dev.len(),
            serde_json::to_string(&self.options).unwrap_or_default()
        )
    }

    fn params(&self) -> &Params {
        &self.params
    }

    fn total_params(&self) -> usize {
        self.total_params + self.params.num_elements()
    }

    fn train_len(&self) -> usize {
        self.units.len()
    }

    fn dev_len(&self) -> usize {
        self.data.dev.len()
    }

    fn metrics(&self) -> Vec<(&'static str, bool)> {
        vec![("loss", false), ("perplexity", false), ("token_accuracy", true)]
    }

    fn accumulate(&self, group: &[&[usize]], step: u64, loss_scale: f64) -> Result<(f64, GradStore)> {
        let learned: usize = group.iter().flat_map(|m| m.iter()).flat_map(|&u| &self.units[u]).map(|&e| self.data.train[e].target_count()).sum();
        let weight = loss_scale / learned.max(1) as f64;
        let mut loss = 0.0;
        let mut acc: Option<GradStore> = None;
        for (mi, micro) in group.iter().enumerate() {
            let rows: Vec<Vec<&SftExample>> = micro.iter().map(|&u| self.units[u].iter().map(|&e| &self.data.train[e]).collect()).collect();
            let ranges = shard::split_rows(rows.len(), shard::shard_count(rows.len(), self.model.device()));
            // Dropout masks from the run's seed, the step, the micro-batch and the shard's first
            // row, as the encoders draw theirs: the same on a resumed run.
            let seed = |s: usize| (self.options.dropout > 0.0).then(|| DropoutRng::for_step(self.config.seed, step, mi as u64).for_rows(ranges[s].start).next_seed(1));
            let parts = shard::run(ranges.len(), |s| rows_pass(&self.model, &rows[ranges[s].clone()], weight, self.options.recompute, seed(s)))?;
            for (l, g) in parts {
                loss += l * weight;
                if let Some(g) = g {
                    sum_grads(&mut acc, g, &self.params)?;
                }
            }
        }
        let grads = acc.ok_or_else(|| anyhow!("a step had no learned tokens"))?;
        Ok((loss, grads))
    }

    fn evaluate(&mut self) -> Result<DevScores> {
        let metrics = self.dev_scores(&self.data.dev)?;
        Ok(DevScores { loss: metrics["loss"].as_f64().unwrap_or(f64::NAN), metrics })
    }

    fn save(&mut self, dir: &Path) -> Result<()> {
        if self.options.full {
            return self.save_full(dir);
        }
        let extra = json!({"zhiku_task": "sft", "zhiku_max_length": self.config.max_length});
        adapter::save(dir, &self.model, &self.spec, &self.base, &extra)
    }

    /// Writes the dev conversations held out of `--train`, so another tool can train and
    /// score on exactly the same split.
    fn prepare_output(&self, output: &Path) -> Result<()> {
        if let Some(dev) = &self.data.held_out {
            let dir = output.join("splits");
            std::fs::create_dir_all(&dir)?;
            let mut text = String::new();
            for c in dev {
                text.push_str(&json!({"messages": c.messages}).to_string());
                text.push('\n');
            }
            zhiku_models::classifier::write_atomic(&dir.join("dev.jsonl"), text.as_bytes())?;
        }
        Ok(())
    }

    fn final_scores(&self, output: &Path) -> Result<FinalScores> {
        // Score exactly what was saved: the best adapter or model.
        if self.options.full {
            self.load_full(output)?;
        } else {
            let best = adapter::DecoderAdapter::open(output)?;
            self.model.load_lora(&best.tensors)?;
        }
        let dev = self.dev_scores(&self.data.dev)?;
        let test = self.data.test.as_ref().map(|t| self.dev_scores(t)).transpose()?;
        let r = &self.data.report;
        let extra = json!({
            "task": "sft", "full_fine_tuning": self.options.full, "lora_rank": self.spec.rank, "lora_alpha": self.spec.alpha, "lora_targets": self.spec.targets,
            "train_examples": r.examples, "train_rows": self.units.len(), "train_tokens": r.tokens, "learned_tokens": r.learned_tokens,
            "truncated": r.truncated, "skipped": r.skipped, "packing": self.options.packing, "recompute": self.options.recompute,
        });
        let Value::Object(extra) = extra else { unreachable!("an object") };
        Ok(FinalScores { dev, test, extra })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_both_formats_and_names_the_line_of_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.jsonl", "{\"prompt\": \"hi\", \"response\": \"hello\", \"system\": \"be brief\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n");
        let c = read_conversations(&p).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].messages, vec![Message::new("system", "be brief"), Message::new("user", "hi"), Message::new("assistant", "hello")]);
        assert_eq!(c[1].line, 3);
        for (text, want) in [
            ("{\"text\": \"x\"}\n", "a.jsonl:1: needs \"prompt\" and \"response\""),
            ("{\"prompt\": \"x\"}\n", "a.jsonl:1: has a \"prompt\" but no \"response\""),
            ("{\"prompt\": \"x\", \"response\": \"y\"}\nnot json\n", "a.jsonl:2: not valid JSON"),
            ("{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n", "a.jsonl:1: the conversation has no assistant turn"),
            ("{\"messages\": [{\"role\": \"bot\", \"content\": \"q\"}]}\n", "has role \"bot\""),
            ("{\"prompt\": 3, \"response\": \"y\"}\n", "\"prompt\" must be a string"),
        ] {
            let p = write(dir.path(), "a.jsonl", text);
            let e = format!("{:#}", read_conversations(&p).unwrap_err());
            assert!(e.contains(want), "{e}");
        }
    }

    fn tokenizer() -> Tokenizer {
        // A word-level tokenizer whose vocabulary holds the template's markers whole.
        let vocab: Vec<(String, u32)> = ["<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "system", "\n", " ", "hi", "hello", "q", "a", "b", "be", "brief"]
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as u32))
            .collect();
        let model = tokenizers::models::wordlevel::WordLevel::builder().vocab(vocab.into_iter().collect()).unk_token("<unk>".into()).build().unwrap();
        let mut t = Tokenizer::new(model);
        t.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::split::Split::new(tokenizers::pre_tokenizers::split::SplitPattern::Regex(r"<\|im_start\|>|<\|im_end\|>|\n| |\w+".into()), tokenizers::SplitDelimiterBehavior::Isolated, false).unwrap()));
        t
    }

    #[test]
    fn learns_only_the_assistant_turns_with_their_end_of_turn() {
        let tok = tokenizer();
        let template = ChatTemplate::new(zhiku_infer::template::CHATML, "", "").unwrap();
        let f = Formatter { tokenizer: &tok, template: &template };
        let conv = Conversation {
            messages: vec![Message::new("user", "hi"), Message::new("assistant", "hello"), Message::new("user", "q"), Message::new("assistant", "a b")],
            line: 1,
        };
        let ex = f.encode(&conv).unwrap();
        let words: Vec<String> = ex.tokens.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
        let learned: Vec<&str> = words.iter().zip(&ex.learn).filter(|(_, l)| **l).map(|(w, _)| w.as_str()).collect();
        assert_eq!(learned, ["hello", "<|im_end|>", "\n", "a", " ", "b", "<|im_end|>", "\n"]);
        assert_eq!(words.iter().filter(|w| *w == "<|im_start|>").count(), 4);
        // The whole conversation rendered at once tokenises to the same ids.
        let whole = tok.encode(template.render(&conv.messages, false).unwrap(), false).unwrap();
        assert_eq!(whole.get_ids(), ex.tokens.as_slice());

        // Cut at --max-length: truncated, or skipped when nothing learned is left.
        let (out, report) = f.encode_all(Path::new("d.jsonl"), std::slice::from_ref(&conv), 10, Overlong::Truncate).unwrap();
        assert_eq!((out[0].tokens.len(), out[0].target_count(), report.truncated), (10, 1, 1));
        let (out, report) = f.encode_all(Path::new("d.jsonl"), std::slice::from_ref(&conv), 4, Overlong::Truncate).unwrap();
        assert_eq!((out.len(), report.skipped, report.skipped_lines.clone()), (0, 1, vec![1]));
        let (out, report) = f.encode_all(Path::new("d.jsonl"), &[conv], 12, Overlong::Skip).unwrap();
        assert_eq!((out.len(), report.skipped), (0, 1));
    }

    #[test]
    fn packing_fills_rows_without_exceeding_the_length() {
        let ex = |n: usize| SftExample { tokens: vec![1; n], learn: vec![true; n], line: 1 };
        let examples: Vec<SftExample> = [5, 3, 8, 2, 7, 1].into_iter().map(ex).collect();
        let rows = pack(&examples, 10, 1);
        let mut seen: Vec<usize> = rows.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..6).collect::<Vec<_>>());
        assert!(rows.iter().all(|r| r.iter().map(|&i| examples[i].tokens.len()).sum::<usize>() <= 10));
        assert!(rows.len() <= 3, "26 tokens fit 3 rows of 10: {rows:?}");
    }
}
