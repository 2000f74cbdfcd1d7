use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use zhiku_models::peft::is_adapter_folder;
use zhiku_models::{AdapterFolder, ModelFolder, SequenceClassifier};

#[derive(Args, Debug)]
#[command(after_help = "The output is an ordinary Hugging Face folder (config.json, model.safetensors, tokenizer.json)\n\
whose outputs equal the adapter on its base (to within float rounding), and which runs at the base model's speed.\n\
Only LoRA merges: bottleneck adapters and prefixes add computation that no weight can absorb.")]
pub struct MergeArgs {
    /// A LoRA adapter folder written by `zhiku train --peft lora`.
    #[arg(long)]
    adapter: PathBuf,
    /// Base model folder, instead of the one the adapter's adapter_config.json names.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Where to write the merged model.
    #[arg(long)]
    output: PathBuf,
    /// Replace an existing output folder.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: MergeArgs) -> Result<i32> {
    if !is_adapter_folder(&a.adapter) {
        bail!("{} is not an adapter folder (no adapter_config.json)", a.adapter.display())
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
