use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use crate::columns::{LabelColumnArgs, TextColumnArgs};
use zhiku_data::augment::AugmentConfig;
use zhiku_models::{PeftConfig, Precision};
use zhiku_train::trainer::ClassWeights;
use zhiku_train::{DataConfig, StopReason, TaskData, TrainConfig, TrainEvent, Trainer};

#[derive(Args, Debug)]
#[command(after_help = "Data: CSV and TSV files need a header row; JSONL files hold one JSON object per line.\n\
Given only --train, zhiku holds out a stratified dev and test split (saved under OUTPUT/splits/).\n\
Multi-label data: a JSON list in the label field, or --label-separator for CSV/TSV.\n\n\
Output (a Hugging Face folder that transformers loads as it is): config.json, model.safetensors and\n\
tokenizer.json of the best checkpoint on dev; checkpoint/ (resume state), train_log.jsonl (one line\n\
per step), metrics.json, report.md and report.svg (loss and dev-metric curves).\n\n\
Ctrl-C writes a checkpoint; run the same command with --resume to continue to the same result.")]
pub struct TrainArgs {
    /// What to train: classification (a classifier on labelled texts or text pairs), retrieval
    /// (a bi-encoder on query-passage pairs with in-batch negatives; the output is a
    /// sentence-transformers folder) or reranker (a cross-encoder on the same pairs: each query
    /// with its passage labelled 1 and --hard-negatives BM25 negatives labelled 0; a classifier
    /// folder for `library search --rerank` and `eval --task retrieval --rerank`), or sft
    /// (supervised fine-tuning of a decoder, GGUF file or Hugging Face folder, with LoRA on
    /// JSONL conversations; the output is a PEFT adapter folder), or ctr (a text ranker for
    /// recommendation: --train is an interaction log, --items the item table; a cross-encoder
    /// learns click or skip from (the user's history as text, a candidate's text); it reranks
    /// with `zhiku recommend eval --reranker`).
    #[arg(long, default_value = "classification")]
    task: String,
    /// Pretrained encoder folder (Hugging Face layout) or an earlier zhiku output to continue
    /// from; for --task sft a decoder (GGUF file or Hugging Face folder).
    #[arg(long)]
    model: PathBuf,
    /// Training data (.csv, .tsv or .jsonl; for --task sft JSONL with {"prompt", "response"} or
    /// {"messages": [{"role", "content"}, ...]} per line).
    #[arg(long)]
    train: PathBuf,
    /// Dev data for model selection and early stopping (default: split off --train).
    #[arg(long)]
    dev: Option<PathBuf>,
    /// Test data scored once at the end with the best model (default: split off --train when --dev is absent).
    #[arg(long)]
    test: Option<PathBuf>,
    #[command(flatten)]
    text: TextColumnArgs,
    #[command(flatten)]
    media: crate::media_data::MediaArgs,
    #[command(flatten)]
    label: LabelColumnArgs,
    /// Treat the task as multi-label (sigmoid per label, tuned thresholds).
    #[arg(long)]
    multi_label: bool,
    /// Output folder.
    #[arg(long, default_value = "runs/classifier")]
    output: PathBuf,
    /// Replace an existing output folder.
    #[arg(long)]
    overwrite: bool,
    /// Continue an interrupted run from OUTPUT/checkpoint (same command line otherwise).
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Examples per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Micro-batches per optimizer step (effective batch = batch-size x grad-accum).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Peak learning rate [default: 5e-5 for full fine-tuning, 5e-4 for LoRA, 1e-3 for adapters, 1e-2 for prefix tuning].
    #[arg(long)]
    lr: Option<f64>,
    /// Tokens per text (longer texts are truncated; batches are padded only to their longest
    /// text) [default: 128; 512 for --task sft, where --overlong says what happens to longer
    /// conversations].
    #[arg(long)]
    max_length: Option<usize>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// AdamW decoupled weight decay (not applied to biases and LayerNorm).
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Share of steps spent warming the learning rate up from 0.
    #[arg(long, default_value_t = 0.1)]
    warmup_ratio: f64,
    /// Learning-rate schedule after warm-up: linear, cosine or constant.
    #[arg(long, default_value = "linear")]
    schedule: String,
    /// Clip the global gradient norm to this value (0 disables clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Label smoothing for single-label cross-entropy.
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Hidden and attention dropout probability (default: the model's config.json, usually 0.1).
    #[arg(long)]
    dropout: Option<f64>,
    /// FGM adversarial training: also learn from the loss after a step of this size on the word
    /// embeddings along their gradient (typical: 0.5-1.0; full fine-tuning only). Costs a second
    /// forward and backward pass per batch.
    #[arg(long)]
    fgm_epsilon: Option<f64>,
    /// R-Drop: run each batch twice with different dropout masks and add this weight times the
    /// symmetric KL between the two predictions (typical: 0.5-5). Costs a second pass per batch.
    #[arg(long, default_value_t = 0.0)]
    rdrop_alpha: f64,
    /// Class weights for the loss: "balanced" (inverse frequency) or one number per label, comma-separated, in label order.
    #[arg(long)]
    class_weights: Option<String>,
    /// Sentence vector for the head: pooler (transformers' BertForSequenceClassification), cls or mean.
    #[arg(long, default_value = "pooler")]
    pooling: String,
    /// Dev metric that picks the best checkpoint: macro_f1, accuracy, weighted_f1, loss (multi-label: micro_f1, macro_f1, subset_accuracy, loss).
    #[arg(long)]
    metric: Option<String>,
    /// Stop after this many evaluations without dev improvement.
    #[arg(long)]
    patience: Option<usize>,
    /// Evaluate on dev every N steps (default: every epoch).
    #[arg(long)]
    eval_steps: Option<u64>,
    /// Stop after N optimizer steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Also save the model after every epoch as OUTPUT/epoch-N (average them with `zhiku average`).
    #[arg(long)]
    save_every_epoch: bool,
    /// Mixed precision: fp32, bf16 or fp16 activations over f32 master weights (fp16 adds dynamic
    /// loss scaling; steps whose gradients overflow are skipped). For GPUs (--features cuda): on
    /// the CPU, fp32 is the fastest.
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// Held-out dev share when --dev is not given.
    #[arg(long, default_value_t = 0.1)]
    dev_fraction: f64,
    /// Held-out test share when neither --dev nor --test is given.
    #[arg(long, default_value_t = 0.1)]
    test_fraction: f64,
    /// Print the final summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// Add N augmented copies of each training example (EDA: synonym replacement from WordNet
    /// for English and Tongyici Cilin for Chinese, random insertion, swap and deletion).
    #[arg(long, default_value_t = 0, help_heading = "Augmentation")]
    augment: usize,
    /// Operations the copies use, one chosen at random per copy: synonym, insert, swap, delete.
    #[arg(long, default_value = "synonym,insert,swap,delete", help_heading = "Augmentation")]
    augment_ops: String,
    /// Share of a text's words each operation changes.
    #[arg(long, default_value_t = 0.1, help_heading = "Augmentation")]
    augment_rate: f64,
    #[command(flatten)]
    peft: PeftArgs,
    /// Few-shot training the SetFit way: contrastive fine-tuning of the sentence encoder on pairs
    /// of training texts (same label vs different labels), then a logistic-regression head on
    /// mean-pooled embeddings. For a handful of examples per class and a sentence-embedding model.
    /// Uses --batch-size (pairs per step), --lr [default 2e-5], --max-length and --seed.
    #[arg(long, help_heading = "Few-shot (SetFit)")]
    setfit: bool,
    /// SetFit: pair-sampling rounds (each draws one positive and one negative pair per example).
    #[arg(long, default_value_t = 20, help_heading = "Few-shot (SetFit)")]
    setfit_iterations: usize,
    /// SetFit: epochs over the pairs.
    #[arg(long, default_value_t = 1, help_heading = "Few-shot (SetFit)")]
    setfit_epochs: usize,
    /// Retrieval: BM25 hard negatives mined per training pair (among the other pairs'
    /// passages), added to the in-batch negatives.
    #[arg(long, default_value_t = 0, help_heading = "Retrieval (--task retrieval)")]
    hard_negatives: usize,
    /// Retrieval: passages ranked beside the test pairs' own (JSONL, a "text" or "answer" per line).
    #[arg(long, help_heading = "Retrieval (--task retrieval)")]
    corpus: Option<PathBuf>,
    /// Retrieval: scale of the cosine similarities in MultipleNegativesRankingLoss.
    #[arg(long, default_value_t = 20.0, help_heading = "Retrieval (--task retrieval)")]
    scale: f64,
    /// SFT: pack several short conversations into each row of --max-length tokens (each still
    /// attends only to itself and starts at position 0): fewer padded tokens per step.
    #[arg(long, help_heading = "Generative models (--task sft)")]
    packing: bool,
    /// SFT: a conversation longer than --max-length is cut to its first tokens (truncate) or
    /// left out (skip); either way they are counted and reported.
    #[arg(long, default_value = "truncate", help_heading = "Generative models (--task sft)")]
    overlong: String,
    /// SFT: keep every layer's activations for the backward pass instead of recomputing each
    /// layer in it (faster; memory grows with layers x tokens).
    #[arg(long, help_heading = "Generative models (--task sft)")]
    no_recompute: bool,
    /// SFT: start the LoRA adapters from this adapter folder (PEFT's layout: an earlier zhiku
    /// run's output or Python PEFT's save_pretrained) instead of a random initialisation, to
    /// train an adapter further on new data. Its rank, alpha and targets are used (--lora-r,
    /// --lora-alpha and --lora-targets are ignored); the base must be the one it was made for.
    #[arg(long, value_name = "DIR", help_heading = "Generative models (--task sft)")]
    init_adapter: Option<PathBuf>,
    #[command(flatten)]
    ctr: CtrArgs,
}

/// `--task ctr`: click prediction from text for recommendation.
#[derive(Args, Debug)]
#[command(next_help_heading = "Click prediction (--task ctr)")]
pub struct CtrArgs {
    /// The item table (CSV, TSV or JSONL with an item_id column; the other columns are its text).
    #[arg(long, value_name = "FILE")]
    items: Option<PathBuf>,
    /// Items of the user's history the ranker reads, most recent first.
    #[arg(long, default_value_t = 10)]
    history_items: usize,
    /// Items the user never touched, drawn by popularity, per clicked item.
    #[arg(long, default_value_t = 3)]
    negatives: usize,
    /// Clicked items drawn per user.
    #[arg(long, default_value_t = 5)]
    positives_per_user: usize,
    /// A recommender folder (`zhiku recommend train`) whose top items for each user, unclicked,
    /// are the negatives: the ranker then learns to reorder what that model proposes (hard
    /// negatives). Without it, negatives are drawn by popularity.
    #[arg(long, value_name = "DIR")]
    negatives_from: Option<PathBuf>,
    /// User and item id columns of the log and the item table, and its time column.
    #[arg(long, default_value = "user_id")]
    user_column: String,
    #[arg(long, default_value = "item_id")]
    item_column: String,
    #[arg(long, default_value = "timestamp")]
    time_column: String,
}

/// Parameter-efficient fine-tuning: train a small module on a frozen base encoder.
#[derive(Args, Debug)]
#[command(next_help_heading = "Parameter-efficient tuning")]
pub struct PeftArgs {
    /// Method: none (full fine-tuning), lora, adapter (Houlsby bottleneck adapters) or prefix
    /// (learned attention prefixes). With a method, the base stays frozen and OUTPUT is an
    /// adapter folder (adapter_model.safetensors with the module and the head, adapter_config.json
    /// naming the base); `zhiku merge` turns a LoRA adapter into a plain model folder.
    /// --task sft: lora (the default), or none to train every weight of a small decoder (up to
    /// 600M parameters), written as OUTPUT/model.gguf (GGUF base) or a model folder.
    /// [default: none; lora for --task sft]
    #[arg(long)]
    peft: Option<String>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    lora_r: usize,
    /// LoRA scaling numerator: the update is (alpha / r) · B A x.
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// Dropout on LoRA's input [default: 0.1; --task sft: 0].
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// Linear layers that get LoRA, comma-separated, matched as name suffixes: query, key, value,
    /// attention.output.dense, intermediate.dense, output.dense, dense (all dense layers), all
    /// [default: query,value]. For --task sft: q_proj, k_proj, v_proj, o_proj, gate_proj,
    /// up_proj, down_proj, or all [default: all].
    #[arg(long)]
    lora_targets: Option<String>,
    /// Bottleneck width of each adapter.
    #[arg(long, default_value_t = 64)]
    adapter_size: usize,
    /// Learned key/value vectors per layer for prefix tuning.
    #[arg(long, default_value_t = 16)]
    prefix_length: usize,
}

impl PeftArgs {
    pub fn config(&self) -> Result<Option<PeftConfig>> {
        let c = match self.peft.as_deref().unwrap_or("none") {
            "none" | "full" => return Ok(None),
            "lora" => PeftConfig::Lora {
                r: self.lora_r,
                alpha: self.lora_alpha,
                dropout: self.lora_dropout.unwrap_or(0.1),
                targets: self.lora_targets.as_deref().unwrap_or("query,value").split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
            },
            "adapter" => PeftConfig::Adapter { size: self.adapter_size },
            "prefix" => PeftConfig::Prefix { length: self.prefix_length },
            other => bail!("unknown --peft {other:?}: expected none, lora, adapter or prefix"),
        };
        c.validate()?;
        Ok(Some(c))
    }
}

/// Each method's usual learning rate when --lr is not given.
fn default_lr(peft: Option<&PeftConfig>) -> f64 {
    match peft {
        None => 5e-5,
        Some(PeftConfig::Lora { .. }) => 5e-4,
        Some(PeftConfig::Adapter { .. }) => 1e-3,
        Some(PeftConfig::Prefix { .. }) => 1e-2,
    }
}

pub fn run(a: TrainArgs) -> Result<i32> {
    match a.task.as_str() {
        "classification" => {}
        "retrieval" => return run_retrieval(&a),
        "reranker" => {}
        "ctr" => {}
        "sft" => return run_sft(&a),
        other => bail!("unknown --task {other:?}: expected classification, retrieval, reranker, ctr or sft"),
    }
    let peft = a.peft.config()?;
    let mut data = DataConfig::new(&a.train);
    data.dev = a.dev.clone();
    data.test = a.test.clone();
    data.columns = a.text.columns(Some(&a.label));
    data.format = a.text.format()?;
    if a.media.media_column.is_some() || a.media.speech_model.is_some() || a.media.ocr_model.is_some() {
        if a.task != "classification" {
            bail!("--media-column reads media for --task classification")
        }
        prepare_output(&a)?;
        crate::media_data::read_media(&mut data, &a.media, &a.output, a.resume, a.quiet)?;
    }
    if a.task == "reranker" {
        // Query-passage pairs become labelled text pairs, written beside the run (the same
        // seed mines the same negatives again on --resume).
        if a.hard_negatives == 0 {
            bail!("--task reranker learns from negatives: give --hard-negatives N (3 is a good start)")
        }
        let options = zhiku_train::retrieval::RetrievalOptions { hard_negatives: a.hard_negatives, dev_fraction: a.dev_fraction, split_seed: a.seed, ..Default::default() };
        let mut pairs = zhiku_train::retrieval::RetrievalData::load(&a.train, a.dev.as_deref(), None, None, &options)?;
        let zhiku_train::retrieval::EvalSet::Pairs(mut dev) = pairs.dev else { bail!("--task reranker: --dev must hold query-passage pairs") };
        zhiku_train::retrieval::mine_hard_negatives(&mut pairs.train, a.hard_negatives, a.seed, &mut |_, _| {});
        zhiku_train::retrieval::mine_hard_negatives(&mut dev, a.hard_negatives, a.seed ^ 1, &mut |_, _| {});
        prepare_output(&a)?;
        let dir = a.output.join("splits");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("rerank-train.jsonl"), zhiku_train::retrieval::reranker_rows(&pairs.train))?;
        std::fs::write(dir.join("rerank-dev.jsonl"), zhiku_train::retrieval::reranker_rows(&dev))?;
        data = DataConfig::new(dir.join("rerank-train.jsonl"));
        data.dev = Some(dir.join("rerank-dev.jsonl"));
        data.columns = zhiku_data::Columns { text: "text".into(), pair: Some("pair".into()), label: "label".into(), label_separator: None };
        data.split_seed = a.seed;
    }
    if a.task == "ctr" {
        data = ctr_data(&a)?;
    }
    data.dev_fraction = a.dev_fraction;
    data.test_fraction = a.test_fraction;
    data.split_seed = a.seed;
    data.multi_label = a.multi_label;
    if a.augment > 0 {
        let config = AugmentConfig::from_flags(a.augment, &a.augment_ops, a.augment_rate, a.seed).map_err(|e| anyhow::anyhow!("--augment-ops / --augment-rate: {e}"))?;
        data.augment = Some(config);
    }
    if !(0.0..0.9).contains(&(a.dev_fraction + a.test_fraction)) {
        bail!("--dev-fraction plus --test-fraction must be below 0.9")
    }

    // Everything is checked before the output folder is touched.
    let task = TaskData::load(&data)?;
    let class_weights = match a.class_weights.as_deref() {
        None => ClassWeights::None,
        Some("balanced") => ClassWeights::Balanced,
        Some(list) => ClassWeights::Explicit(
            list.split(',').map(|x| x.trim().parse::<f32>().with_context(|| format!("--class-weights: {x:?} is not a number"))).collect::<Result<_>>()?,
        ),
    };
    let metric = a.metric.clone().unwrap_or_else(|| {
        if a.task == "ctr" {
            "loss".into() // the click probability is what reranks: log loss
        } else if task.multi_label {
            "micro_f1".into()
        } else {
            "macro_f1".into()
        }
    });
    let config = TrainConfig { class_weights, lr: a.lr.unwrap_or_else(|| default_lr(peft.as_ref())), metric, peft, ..loop_config(&a) };
    let device = device_for(&a);
    if a.setfit {
        return run_setfit(&a, task, device);
    }
    let mut trainer = Trainer::new(&a.model, task, &a.output, config, device)?;
    if a.task != "reranker" && a.task != "ctr" {
        prepare_output(&a)?;
    }
    let interrupt = Arc::new(AtomicBool::new(false));
    trainer.set_interrupt_flag(interrupt.clone());
    drive(&a, interrupt, |on_event| trainer.run(a.resume, on_event))
}

/// `--task ctr`: (history, candidate, click) examples from the interaction log and the item
/// table, written beside the run as the classifier's pair data, with what the reranker needs
/// later (`ctr.json`, `ctr-items.jsonl`: the item texts as the ranker read them).
fn ctr_data(a: &TrainArgs) -> Result<DataConfig> {
    use zhiku_recommend::{ctr, data};
    let c = &a.ctr;
    let Some(items_path) = &c.items else { bail!("--task ctr needs --items: the item table whose texts the ranker reads") };
    if a.dev.is_some() || a.test.is_some() {
        bail!("--task ctr holds out --dev-fraction of the log's users for dev; --dev and --test are not used")
    }
    let items = data::read_items(items_path, &c.item_column, &[], None)?;
    let cols = data::InteractionColumns { user: c.user_column.clone(), item: c.item_column.clone(), time: c.time_column.clone(), ..Default::default() };
    let log = data::read_interactions(&a.train, &cols, data::IdMap::default(), items.ids.clone(), true)?;
    if let Some(s) = log.report.summary(&a.train) {
        eprintln!("{s}");
    }
    let options = ctr::CtrOptions { history: c.history_items, negatives: c.negatives, per_user: c.positives_per_user, dev_fraction: a.dev_fraction.max(0.01), seed: a.seed };
    if options.history == 0 || options.per_user == 0 {
        bail!("--history-items and --positives-per-user must be at least 1")
    }
    // The candidate generator's top 50 per user, in the item table's indices.
    let generator = c.negatives_from.as_deref().map(zhiku_recommend::Recommender::load).transpose()?;
    let candidates = |u: u32| -> Vec<u32> {
        let Some(model) = &generator else { return Vec::new() };
        if model.users.get(log.users.id(u)).is_none() {
            return Vec::new();
        }
        let q = model.query_for(log.users.id(u));
        model.recommend(q, 50, &[], &mut Vec::new()).into_iter().filter_map(|(i, _)| items.ids.get(model.items.id(i))).collect()
    };
    let built = ctr::pairs(&log, &items, &options, generator.is_some().then_some(&candidates as &dyn Fn(u32) -> Vec<u32>));
    if built.train.is_empty() || built.dev.is_empty() {
        bail!("{}: too few users with two or more interactions to train and check a ranker ({} users, {} skipped)", a.train.display(), built.users, built.users_skipped)
    }
    if !a.json {
        eprintln!(
            "ctr: {} training and {} dev examples from {} users ({} with fewer than 2 interactions skipped), {} negatives per click",
            built.train_examples, built.dev_examples, built.users, built.users_skipped, options.negatives
        );
    }
    prepare_output(a)?;
    let dir = a.output.join("splits");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("ctr-train.jsonl"), ctr::jsonl(&built.train))?;
    std::fs::write(dir.join("ctr-dev.jsonl"), ctr::jsonl(&built.dev))?;
    zhiku_models::classifier::write_atomic(&a.output.join("ctr-items.jsonl"), ctr::item_texts_jsonl(&items).as_bytes())?;
    let meta = serde_json::json!({"options": options, "examples": built, "items": items.ids.len(), "negatives_from": c.negatives_from});
    zhiku_models::classifier::write_atomic(&a.output.join("ctr.json"), serde_json::to_string_pretty(&meta)?.as_bytes())?;
    let mut data = DataConfig::new(dir.join("ctr-train.jsonl"));
    data.dev = Some(dir.join("ctr-dev.jsonl"));
    data.columns = zhiku_data::Columns { text: "text".into(), pair: Some("pair".into()), label: "label".into(), label_separator: None };
    Ok(data)
}

/// The settings every task shares, from the command line.
fn loop_config(a: &TrainArgs) -> TrainConfig {
    TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        lr: a.lr.unwrap_or(5e-5),
        max_length: a.max_length.unwrap_or(128),
        seed: a.seed,
        weight_decay: a.weight_decay,
        warmup_ratio: a.warmup_ratio,
        schedule: a.schedule.clone(),
        max_grad_norm: if a.max_grad_norm > 0.0 { Some(a.max_grad_norm) } else { None },
        label_smoothing: a.label_smoothing,
        class_weights: ClassWeights::None,
        pooling: a.pooling.clone(),
        metric: a.metric.clone().unwrap_or_default(),
        patience: a.patience,
        eval_steps: a.eval_steps,
        max_steps: a.max_steps,
        eval_batch_size: 64,
        peft: None,
        fgm_epsilon: a.fgm_epsilon,
        rdrop_alpha: a.rdrop_alpha,
        dropout: a.dropout,
        save_every_epoch: a.save_every_epoch,
        precision: a.precision,
    }
}

fn device_for(a: &TrainArgs) -> candle_core::Device {
    let device = zhiku_models::default_device();
    if a.precision != Precision::Fp32 && device.is_cpu() && !a.quiet {
        eprintln!("note: --precision {} on the CPU uses candle's generic half-precision kernels, which are slower than fp32; mixed precision is meant for GPUs", a.precision);
    }
    device
}

/// `--task retrieval`: a bi-encoder on query-passage pairs, on the same loop.
fn run_retrieval(a: &TrainArgs) -> Result<i32> {
    if a.setfit || a.peft.config()?.is_some() || a.fgm_epsilon.is_some() || a.rdrop_alpha > 0.0 || a.augment > 0 || a.class_weights.is_some() || a.multi_label {
        bail!("--task retrieval fine-tunes the whole encoder with MultipleNegativesRankingLoss; --setfit, --peft, --fgm-epsilon, --rdrop-alpha, --augment, --class-weights and --multi-label are for classification")
    }
    let options = zhiku_train::retrieval::RetrievalOptions { scale: a.scale, hard_negatives: a.hard_negatives, dev_fraction: a.dev_fraction, split_seed: a.seed };
    let mut data = zhiku_train::retrieval::RetrievalData::load(&a.train, a.dev.as_deref(), a.test.as_deref(), a.corpus.as_deref(), &options)?;
    if a.hard_negatives > 0 {
        let bar = if !a.quiet && crate::util::stderr_is_terminal() { ProgressBar::new(data.train.len() as u64) } else { ProgressBar::hidden() };
        bar.set_style(ProgressStyle::with_template("mining BM25 hard negatives {bar:30.cyan/blue} {pos}/{len}").unwrap());
        zhiku_train::retrieval::mine_hard_negatives(&mut data.train, a.hard_negatives, a.seed, &mut |done, _| bar.set_position(done as u64));
        bar.finish_and_clear();
    }
    let config = TrainConfig { lr: a.lr.unwrap_or(2e-5), metric: a.metric.clone().unwrap_or_else(|| "mrr".into()), pooling: "mean".into(), ..loop_config(a) };
    zhiku_train::train_loop::validate(&config)?;
    let device = device_for(a);
    let folder = zhiku_models::ModelFolder::open(&a.model)?;
    if config.max_length > folder.config.max_position_embeddings {
        bail!("--max-length {} exceeds the model's limit of {} positions", config.max_length, folder.config.max_position_embeddings)
    }
    let mut task = zhiku_train::retrieval::RetrievalTask::new(&folder, &data, &config, options, &device)?;
    prepare_output(a)?;
    let interrupt = Arc::new(AtomicBool::new(false));
    let control = zhiku_train::train_loop::LoopControl { interrupt: interrupt.clone(), stop_after: None };
    drive(a, interrupt, |on_event| zhiku_train::train_loop::run(&mut task, &config, &a.output, a.resume, &control, on_event))
}

/// `--task sft`: LoRA on a decoder, on the same loop.
fn run_sft(a: &TrainArgs) -> Result<i32> {
    if a.setfit || a.fgm_epsilon.is_some() || a.rdrop_alpha > 0.0 || a.augment > 0 || a.class_weights.is_some() || a.multi_label || a.hard_negatives > 0 || a.corpus.is_some() {
        bail!("--setfit, --fgm-epsilon, --rdrop-alpha, --augment, --class-weights, --multi-label, --hard-negatives and --corpus are not for --task sft")
    }
    let full = match a.peft.peft.as_deref().unwrap_or("lora") {
        "lora" => false,
        "none" | "full" => true,
        other => bail!("--task sft trains LoRA adapters (--peft lora) or every weight (--peft none); --peft {other} is for encoders"),
    };
    if full && (a.peft.lora_targets.is_some() || a.peft.lora_dropout.is_some()) {
        bail!("--peft none trains every weight; --lora-targets and --lora-dropout are for --peft lora")
    }
    let dropout = a.peft.lora_dropout.unwrap_or(0.0);
    if !(0.0..1.0).contains(&dropout) {
        bail!("--lora-dropout must be in [0, 1)")
    }
    if a.precision != Precision::Fp32 {
        bail!("--task sft trains in fp32 (on the CPU the fastest); leave out --precision")
    }
    let targets: Vec<String> = match a.peft.lora_targets.as_deref().unwrap_or("all") {
        "all" => zhiku_models::decoder::graph::PROJECTIONS.iter().map(|p| p.to_string()).collect(),
        list => list.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
    };
    // A starting adapter brings its own shape (SftTask refuses one for --peft none).
    let start = a.init_adapter.as_deref().map(zhiku_models::decoder::adapter::DecoderAdapter::open).transpose()?;
    let (rank, alpha, targets) = match &start {
        Some(s) => (s.spec.rank, s.spec.alpha, s.spec.targets.clone()),
        None => (a.peft.lora_r, a.peft.lora_alpha, targets),
    };
    let options = zhiku_train::sft::SftOptions {
        rank,
        alpha,
        targets,
        packing: a.packing,
        overlong: zhiku_train::sft::Overlong::parse(&a.overlong)?,
        recompute: !a.no_recompute,
        dev_fraction: a.dev_fraction,
        full,
        dropout,
        init_adapter: a.init_adapter.clone(),
    };
    if !(0.0..0.9).contains(&a.dev_fraction) {
        bail!("--dev-fraction must be below 0.9")
    }
    // Everything is read and checked before the output folder is touched.
    let parts = zhiku_infer::ModelParts::open(&a.model, true)?;
    // Full fine-tuning holds the weights, their gradients and AdamW's two moments in f32.
    let params = parts.model.parameter_count();
    if full && params > FULL_SFT_MAX_PARAMS {
        bail!("--peft none trains every weight: {:.0}M parameters need about {:.1} GB for weights, gradients and optimizer state; full fine-tuning is for models up to {}M parameters, use --peft lora", params as f64 / 1e6, params as f64 * 16.0 / 1e9, FULL_SFT_MAX_PARAMS / 1_000_000)
    }
    let max_length = a.max_length.unwrap_or(512.min(parts.model.config.context_length));
    let config = TrainConfig { lr: a.lr.unwrap_or(2e-4), max_length, metric: a.metric.clone().unwrap_or_else(|| "loss".into()), ..loop_config(a) };
    zhiku_train::train_loop::validate(&config)?;
    let data = zhiku_train::sft::SftData::load(&parts, &a.train, a.dev.as_deref(), a.test.as_deref(), max_length, &options, a.seed)?;
    let r = &data.report;
    if !a.quiet && (r.truncated > 0 || r.skipped > 0) {
        let lines = if r.skipped_lines.is_empty() { String::new() } else { format!(" (lines {:?}{})", r.skipped_lines, if r.skipped > r.skipped_lines.len() { ", ..." } else { "" }) };
        eprintln!("{} conversations longer than --max-length {max_length}: {} truncated, {} skipped{lines}", r.truncated + r.skipped, r.truncated, r.skipped);
    }
    let mut task = zhiku_train::sft::SftTask::new(parts, &a.model, data, &config, options)?;
    if !a.quiet {
        let r = task.report();
        eprintln!("{} conversations, {} tokens ({} learned) in {} rows of up to {max_length} tokens", r.examples, r.tokens, r.learned_tokens, task.rows());
    }
    prepare_output(a)?;
    let interrupt = Arc::new(AtomicBool::new(false));
    let control = zhiku_train::train_loop::LoopControl { interrupt: interrupt.clone(), stop_after: None };
    drive(a, interrupt, |on_event| zhiku_train::train_loop::run(&mut task, &config, &a.output, a.resume, &control, on_event))
}

/// The largest decoder `--task sft --peft none` trains (16 bytes a parameter: weights,
/// gradients and two AdamW moments in f32, before activations).
const FULL_SFT_MAX_PARAMS: usize = 600_000_000;

/// Runs a training with Ctrl-C handling, a progress bar and the summary printed at the end.
fn drive(a: &TrainArgs, interrupt: Arc<AtomicBool>, train: impl FnOnce(&mut dyn FnMut(TrainEvent)) -> Result<zhiku_train::TrainSummary>) -> Result<i32> {
    let flag = interrupt.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing this step and writing a checkpoint (Ctrl-C again to quit at once)");
    });

    let show_bar = !a.quiet && crate::util::stderr_is_terminal();
    let bar = ProgressBar::hidden();
    let quiet = a.quiet;
    let mut last_line = std::time::Instant::now();
    let mut on_event = |ev: TrainEvent| match ev {
        TrainEvent::Started { total_steps, done_steps, train_examples, dev_examples, labels, trainable, total } => {
            if !quiet {
                let labels = if labels.is_empty() { String::new() } else { format!(", {} labels: {}", labels.len(), preview(labels)) };
                eprintln!(
                    "training on {train_examples} examples ({dev_examples} dev){labels}; {:.2}M of {:.1}M parameters trainable ({:.2}%); {total_steps} steps",
                    trainable as f64 / 1e6,
                    total as f64 / 1e6,
                    100.0 * trainable as f64 / total.max(1) as f64
                );
            }
            if show_bar {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_length(total_steps);
                bar.set_position(done_steps);
                bar.set_style(ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}").unwrap());
            }
        }
        TrainEvent::Step(r) => {
            let msg = format!("epoch {:.2} loss {:.4} lr {:.2e} {:.1} ex/s", r.epoch, r.loss, r.lr, r.examples_per_s);
            if show_bar {
                bar.set_position(r.step);
                bar.set_message(msg);
            } else if !quiet && last_line.elapsed().as_secs() >= 30 {
                eprintln!("step {}: {msg}", r.step);
                last_line = std::time::Instant::now();
            }
        }
        TrainEvent::Eval(r, best) => {
            if !quiet {
                let line = format!("step {} dev loss {:.4} {} {:.4}{}", r.step, r.dev_loss, "metric", r.metric, if best { " (best, saved)" } else { "" });
                if show_bar { bar.println(line) } else { eprintln!("{line}") }
            }
        }
        TrainEvent::Checkpoint(_) => {}
        TrainEvent::Message(m) => {
            if !quiet {
                if show_bar { bar.println(m) } else { eprintln!("{m}") }
            }
        }
    };
    let summary = train(&mut on_event)?;
    bar.finish_and_clear();
    if summary.stop == StopReason::Interrupted {
        eprintln!(
            "stopped at step {}; checkpoint in {}. Continue with the same command plus --resume.",
            summary.steps,
            a.output.join("checkpoint").display()
        );
        return Ok(130);
    }
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("model saved to {} ({:?}, {} steps, {:.0} s)", a.output.display(), summary.stop, summary.steps, summary.seconds);
        let show = |r: &serde_json::Value, key: &str| r.get(key).and_then(|v| v.as_f64()).map_or("-".into(), |v| format!("{v:.4}"));
        for (name, part) in [("dev", &summary.dev), ("test", &summary.test)] {
            if let Some(r) = part {
                if r.get("perplexity").is_some() {
                    println!("{name}: loss {} perplexity {} token accuracy {}", show(r, "loss"), show(r, "perplexity"), show(r, "token_accuracy"));
                } else if r.get("mrr").is_some() {
                    let first = if r.get("r@1").is_some() { "r@1" } else { "recall@1" };
                    let second = if r.get("r@1").is_some() { "r@2" } else { "recall@10" };
                    println!("{name}: MRR {} {first} {} {second} {}", show(r, "mrr"), show(r, first), show(r, second));
                } else {
                    println!("{name}: accuracy {} macro-F1 {}", show(r, if r.get("accuracy").is_some() { "accuracy" } else { "subset_accuracy" }), show(r, "macro_f1"));
                }
            }
        }
        println!("report: {}", a.output.join("report.md").display());
    }
    Ok(0)
}

fn run_setfit(a: &TrainArgs, task: TaskData, device: candle_core::Device) -> Result<i32> {
    if a.peft.config()?.is_some() || a.resume {
        bail!("--setfit trains the whole encoder and cannot resume; leave out --peft and --resume")
    }
    if a.setfit_iterations == 0 || a.setfit_epochs == 0 {
        bail!("--setfit-iterations and --setfit-epochs must be at least 1")
    }
    let cfg = zhiku_train::setfit::SetFitConfig {
        iterations: a.setfit_iterations,
        epochs: a.setfit_epochs,
        batch_size: a.batch_size,
        lr: a.lr.unwrap_or(2e-5),
        max_length: a.max_length.unwrap_or(128),
        seed: a.seed,
        c: 1.0,
    };
    prepare_output(a)?;
    let show_bar = !a.quiet && crate::util::stderr_is_terminal();
    let bar = if show_bar { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} pair steps [{elapsed_precise}<{eta_precise}] {msg}").unwrap());
    let summary = zhiku_train::setfit::train(&a.model, &task, &a.output, &cfg, &device, &mut |step, total, loss| {
        bar.set_length(total);
        bar.set_position(step);
        bar.set_message(format!("loss {loss:.4}"));
    })?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("SetFit model saved to {} ({} pair steps, {:.0} s)", a.output.display(), summary.steps, summary.seconds);
        for (name, part) in [("dev", &summary.dev), ("test", &summary.test)] {
            if let Some(r) = part {
                println!("{name}: accuracy {:.4} macro-F1 {:.4}", r["accuracy"].as_f64().unwrap_or(f64::NAN), r["macro_f1"].as_f64().unwrap_or(f64::NAN));
            }
        }
    }
    Ok(0)
}

fn preview(labels: &[String]) -> String {
    let shown: Vec<&str> = labels.iter().take(8).map(|s| s.as_str()).collect();
    if labels.len() > 8 { format!("{}, ...", shown.join(", ")) } else { shown.join(", ") }
}

/// Refuses to mix a new run into an existing output unless told to replace or resume it.
fn prepare_output(a: &TrainArgs) -> Result<()> {
    let out = &a.output;
    let used = out.join("config.json").exists() || out.join("adapter_config.json").exists() || out.join("checkpoint").exists() || out.join("train_log.jsonl").exists();
    if a.resume {
        if !out.join("checkpoint/state.json").exists() {
            bail!("--resume: {} holds no checkpoint to continue from", out.display())
        }
        return Ok(());
    }
    if used {
        if !a.overwrite {
            bail!("{} already holds a run; pass --overwrite to replace it or --resume to continue it", out.display())
        }
        std::fs::remove_dir_all(out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    Ok(())
}
