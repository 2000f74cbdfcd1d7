//! `zhiku`: fine-tune, evaluate and run text classifiers from one binary.

mod augment_cmd;
mod average_cmd;
mod bench_cmd;
mod columns;
mod eval_cmd;
mod generate_cmd;
mod library_cmd;
mod merge_cmd;
mod predict_cmd;
mod recommend_cmd;
mod serve_cmd;
mod summarize_cmd;
mod transcribe_cmd;
mod media_data;
mod ocr_cmd;
mod tag_images_cmd;
mod train_cmd;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "zhiku",
    version,
    about = "Fine-tune and serve language models on your own content: classifiers, generators, search (知库)",
    long_about = "zhiku fine-tunes pretrained models on a platform's own data and serves them, on the CPU or (built \
with --features cuda) an NVIDIA GPU: BERT-family encoders into classifiers and retrievers (Hugging Face folders), \
decoders (GGUF or Hugging Face folders: Qwen2.5, SmolLM2/Llama, Gemma 3) by LoRA or full supervised fine-tuning, \
with generation, summaries, data augmentation, a searchable content library and recommenders trained on \
interaction logs and item texts. Models it writes are ordinary \
Hugging Face folders, PEFT adapters or GGUF files that Python transformers, PEFT and llama.cpp load as they are.",
    after_help = "Examples:\n  zhiku train --model models/all-MiniLM-L6-v2 --train news.jsonl --output runs/news\n  \
zhiku train --model models/all-MiniLM-L6-v2 --train news.jsonl --peft lora --output runs/news-lora\n  \
zhiku merge --adapter runs/news-lora --output runs/news-merged\n  \
zhiku eval --model runs/news --data test.jsonl\n  zhiku predict --model runs/news \"Stocks rallied as rates fell\"\n  \
zhiku bench --model models/all-MiniLM-L6-v2\n  zhiku serve --model news=runs/news\n  \
zhiku train --task sft --model qwen2.5-0.5b-instruct-q4_k_m.gguf --train replies.jsonl --output runs/replies\n  \
zhiku generate --adapter runs/replies \"怎么退货？\"\n  \
zhiku augment train.jsonl --method back-translation --model qwen2.5-0.5b-instruct-q4_k_m.gguf --output train-bt.jsonl\n  \
zhiku recommend train --interactions ratings.tsv --algorithm als --output runs/als"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the large argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Fine-tune a classifier on labelled text (CSV, TSV or JSONL).
    Train(train_cmd::TrainArgs),
    /// Score a fine-tuned classifier on labelled data: accuracy, macro-F1, per-class metrics, confusion matrix.
    Eval(eval_cmd::EvalArgs),
    /// Label texts with a fine-tuned classifier (arguments, a file, or standard input).
    Predict(predict_cmd::PredictArgs),
    /// Fold a LoRA adapter into its base model's weights: a plain model folder, as fast as the base.
    Merge(merge_cmd::MergeArgs),
    /// Average the weights of several checkpoints of one model (e.g. the last epochs of a run).
    Average(average_cmd::AverageArgs),
    /// Measure training-step and inference speed (optionally against a PyTorch reference).
    Bench(bench_cmd::BenchArgs),
    /// Serve classifiers and encoders over HTTP (classify, embed, OpenAI-compatible embeddings).
    Serve(serve_cmd::ServeArgs),
    /// Generate text with a language model (GGUF: Qwen2.5, SmolLM2/Llama, Gemma 3), streamed.
    Generate(generate_cmd::GenerateArgs),
    /// Talk with a language model in the terminal; the conversation's history is kept.
    Chat(generate_cmd::ChatArgs),
    /// A content library: add documents, then search them (BM25, dense or hybrid).
    Library(library_cmd::LibraryArgs),
    /// Summarise documents: lead sentences, extractive (TextRank or embedding centrality) or abstractive (a language model, map-reduce for long texts).
    Summarize(summarize_cmd::SummarizeArgs),
    /// Write variants of training texts: EDA word edits, or paraphrase and back-translation by a language model.
    Augment(augment_cmd::AugmentArgs),
    /// Recommend items from behaviour and item text: split logs, train (popularity, item-kNN, BPR, ALS, EASE, content, hybrid), evaluate, predict.
    Recommend(recommend_cmd::RecommendArgs),
    /// Speech to text with Whisper: WAV, FLAC, MP3, Ogg (Vorbis, Opus); txt, srt, vtt or json with timestamps.
    Transcribe(transcribe_cmd::TranscribeArgs),
    /// Text in images with PP-OCR (detection, orientation, recognition): PNG or JPEG; txt, or json with a box per line.
    Ocr(ocr_cmd::OcrArgs),
    /// Tag images by label text and embed images and texts with CLIP or Chinese-CLIP (zero-shot).
    TagImages(tag_images_cmd::TagImagesArgs),
}

fn main() {
    // Freed memory stays with the process: training re-allocates the same large buffers every
    // step, and returning them to the kernel costs page faults and zeroing each time.
    configure_allocator();
    configure_threads();
    zhiku_models::float_env::init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        restore_sigpipe();
    }
    let result = match cli.command {
        Command::Train(a) => train_cmd::run(a),
        Command::Eval(a) => eval_cmd::run(a),
        Command::Predict(a) => predict_cmd::run(a),
        Command::Merge(a) => merge_cmd::run(a),
        Command::Average(a) => average_cmd::run(a),
        Command::Bench(a) => bench_cmd::run(a),
        Command::Serve(a) => serve_cmd::run(a),
        Command::Generate(a) => generate_cmd::run_generate(a),
        Command::Chat(a) => generate_cmd::run_chat(a),
        Command::Library(a) => library_cmd::run(a),
        Command::Summarize(a) => summarize_cmd::run(a),
        Command::Augment(a) => augment_cmd::run(a),
        Command::Recommend(a) => recommend_cmd::run(a),
        Command::Transcribe(a) => transcribe_cmd::run(a),
        Command::Ocr(a) => ocr_cmd::run(a),
        Command::TagImages(a) => tag_images_cmd::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::exit(1);
        }
    }
}

/// candle runs its element-wise ops on a pool of its own, one caller at a time (a lock). The
/// engine's parallelism is one data-parallel shard per core (`zhiku_models::shard`) plus its own
/// kernels on rayon, so candle's pool would only make the shards queue for its lock and spin;
/// candle ops then run on the calling thread. `CANDLE_NUM_THREADS` still overrides.
fn configure_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Called once at start-up before other threads exist.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// `zhiku ... | head` should end quietly when `head` closes the pipe, as other Unix tools do,
/// rather than panic on the failed write (Rust ignores SIGPIPE by default). Not for the server,
/// where a client hanging up must not end the process.
fn restore_sigpipe() {
    // SAFETY: called once at start-up before other threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn configure_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: called once at start-up before other threads exist.
        // `mi_option_purge_delay` is 15 in mimalloc 2 and 3 (the sys crate names no constant for it).
        unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    }
}

/// Shared helpers for the subcommands.
pub mod util {
    use std::io::IsTerminal;

    pub fn stderr_is_terminal() -> bool {
        std::io::stderr().is_terminal()
    }
}
