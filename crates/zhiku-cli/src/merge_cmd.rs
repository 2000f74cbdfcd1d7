use anyhow::{bail, Context, Result};
use candle_core::DType;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use zhiku_models::blocks::GgmlType;
use clap::Args;
use std::path::PathBuf;
use zhiku_models::decoder::adapter::{is_decoder_adapter, DecoderAdapter};
use zhiku_models::decoder::export::{self, Merger};
use zhiku_models::decoder::{hf, DecoderConfig, WeightSource};
use zhiku_models::gguf::GgufFile;
use zhiku_models::peft::is_adapter_folder;
use zhiku_models::{AdapterFolder, ModelFolder, SequenceClassifier};

#[derive(Args, Debug)]
#[command(after_help = "Encoder adapters (zhiku train --peft lora on a classifier): the output is an ordinary Hugging Face folder\n\
(config.json, model.safetensors, tokenizer.json) whose outputs equal the adapter on its base (to within float\n\
rounding), and which runs at the base model's speed. Only LoRA merges: bottleneck adapters and prefixes add\n\
computation that no weight can absorb.\n\n\
Decoder adapters (zhiku train --task sft): an --output ending in .gguf is a GGUF file (matrices in f16, q8_0 or\n\
f32; tokenizer and chat template from the base GGUF) that llama.cpp, zhiku generate and zhiku serve load; any\n\
other --output is a Hugging Face folder (safetensors in f16, bf16 or f32, config.json, tokenizer files) that\n\
transformers loads. Each adapted projection becomes W + (alpha/r)·B·A over the base's dequantised weights.\n\n\
Examples:\n  \
zhiku merge --adapter runs/replies --output replies-q8_0.gguf --dtype q8_0\n  \
zhiku merge --adapter runs/replies --output runs/replies-merged")]
pub struct MergeArgs {
    /// A LoRA adapter folder written by `zhiku train --peft lora` or `zhiku train --task sft`
    /// (or by Python PEFT).
    #[arg(long)]
    adapter: PathBuf,
    /// Base model (folder or GGUF file), instead of the one the adapter's adapter_config.json names.
    #[arg(long, alias = "model")]
    base: Option<PathBuf>,
    /// Where to write the merged model: a .gguf file, or a folder.
    #[arg(long)]
    output: PathBuf,
    /// Decoders: the stored type of the weights: f16 (default), q8_0 or f32 for GGUF; f16
    /// (default), bf16 or f32 for a folder.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// Replace an existing output.
    #[arg(long)]
    overwrite: bool,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

pub fn run(a: MergeArgs) -> Result<i32> {
    if !is_adapter_folder(&a.adapter) {
        bail!("{} is not an adapter folder (no adapter_config.json)", a.adapter.display())
    }
    if is_decoder_adapter(&a.adapter) {
        return merge_decoder(&a);
    }
    if a.output.join("config.json").exists() && !a.overwrite {
        bail!("{} already holds a model; pass --overwrite to replace it", a.output.display())
    }
    let device = candle_core::Device::Cpu;
    let adapter = AdapterFolder::open(&a.adapter, a.base.as_deref())?;
    let base = ModelFolder::open(&adapter.base_dir)?;
    let model = SequenceClassifier::from_adapter(&adapter, &base.load_weights(&device)?, &device)?;
    let tokenizer = adapter.tokenizer(&base)?;
    // Written beside the target and renamed, so a failure leaves no half-merged folder. Saving a
    // model with an adapter as a plain folder folds LoRA into the weights (and refuses others).
    let tmp = a.output.with_file_name(format!(".{}.merging", a.output.file_name().and_then(|n| n.to_str()).unwrap_or("merged")));
    let _ = std::fs::remove_dir_all(&tmp);
    model.save(&tmp, &base.config, &tokenizer)?;
    if a.output.exists() {
        std::fs::remove_dir_all(&a.output).with_context(|| format!("cannot replace {}", a.output.display()))?;
    }
    std::fs::rename(&tmp, &a.output).with_context(|| format!("cannot write {}", a.output.display()))?;
    println!("merged the LoRA adapter into {}: {}", base.dir.display(), a.output.display());
    Ok(0)
}

/// A decoder's LoRA adapter folded into its base, written as GGUF or as a Hugging Face folder.
fn merge_decoder(a: &MergeArgs) -> Result<i32> {
    let gguf_out = a.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let dtype = a.dtype.to_ascii_lowercase();
    let allowed: &[&str] = if gguf_out { &["f16", "q8_0", "f32"] } else { &["f16", "bf16", "f32"] };
    if !allowed.contains(&dtype.as_str()) {
        bail!("--dtype {} is not available for {} output (choose {})", a.dtype, if gguf_out { "GGUF" } else { "folder" }, allowed.join(", "))
    }
    if a.output.exists() && !a.overwrite {
        bail!("{} already exists; pass --overwrite to replace it", a.output.display())
    }
    let adapter = DecoderAdapter::open(&a.adapter)?;
    let base = adapter.base_model(a.base.as_deref())?;
    let started = std::time::Instant::now();
    // The tokenizer and chat template as zhiku reads them from either kind of base.
    let parts = zhiku_infer::ModelParts::open(&base, true)?;
    let (config, gguf, folder): (DecoderConfig, Option<GgufFile>, Option<hf::HfWeights>) = if base.is_dir() {
        let (c, w) = hf::open(&base)?;
        (c, None, Some(w))
    } else {
        let f = GgufFile::open(&base)?;
        (DecoderConfig::from_gguf(&f)?, Some(f), None)
    };
    let source: &dyn WeightSource = match (&gguf, &folder) {
        (Some(f), _) => f,
        (_, Some(w)) => w,
        _ => unreachable!("one of the two is set"),
    };
    let merger = Merger::new(&config, source, Some((adapter.spec.alpha, adapter.spec.rank, &adapter.tensors)))
        .with_context(|| format!("adapter {} does not fit {}", a.adapter.display(), base.display()))?;
    let bar = if std::io::stderr().is_terminal() && !a.json { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("merging {bar:30} {pos}/{len} tensors {elapsed}").unwrap());
    let mut progress = |done: usize, all: usize| {
        bar.set_length(all as u64);
        bar.set_position(done as u64);
    };
    let name = a.output.file_name().and_then(|n| n.to_str()).unwrap_or("merged").to_string();
    if gguf_out {
        let Some(file) = &gguf else {
            bail!("GGUF output needs a GGUF base (its metadata carries the tokenizer); {} is a folder: merge to a folder instead, or convert that folder with llama.cpp's convert_hf_to_gguf.py", base.display())
        };
        let ty = match dtype.as_str() {
            "q8_0" => GgmlType::Q8_0,
            "f32" => GgmlType::F32,
            _ => GgmlType::F16,
        };
        // GgufWriter writes NAME.gguf.partial and renames it into place.
        export::write_gguf(file, &merger, ty, &a.output, &mut progress)?;
    } else {
        let dt = match dtype.as_str() {
            "bf16" => DType::BF16,
            "f32" => DType::F32,
            _ => DType::F16,
        };
        let tmp = a.output.with_file_name(format!(".{name}.merging"));
        let _ = std::fs::remove_dir_all(&tmp);
        if let Err(e) = export::write_hf_folder(&tmp, &merger, dt, &parts.tokenizer, &parts.info, &mut progress) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if a.output.exists() {
            std::fs::remove_dir_all(&a.output).with_context(|| format!("cannot replace {}", a.output.display()))?;
        }
        std::fs::rename(&tmp, &a.output).with_context(|| format!("cannot write {}", a.output.display()))?;
    }
    bar.finish_and_clear();
    let bytes = dir_size(&a.output);
    if a.json {
        println!("{}", serde_json::json!({"output": a.output, "base": base, "adapter": a.adapter, "format": if gguf_out { "gguf" } else { "hf" }, "dtype": dtype, "bytes": bytes, "seconds": started.elapsed().as_secs_f64()}));
    } else {
        println!("merged {} into {}: {} ({}, {dtype}, {:.0} MB, {:.1} s)", a.adapter.display(), base.display(), a.output.display(), if gguf_out { "GGUF" } else { "Hugging Face folder" }, bytes as f64 / 1e6, started.elapsed().as_secs_f64());
    }
    Ok(0)
}

/// Bytes of a file, or of the files in a folder.
fn dir_size(path: &std::path::Path) -> u64 {
    match std::fs::read_dir(path) {
        Ok(entries) => entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum(),
        Err(_) => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    }
}
