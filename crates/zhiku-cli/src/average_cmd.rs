use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use zhiku_models::peft::{is_adapter_folder, ADAPTER_WEIGHTS};

#[derive(Args, Debug)]
#[command(after_help = "Every folder must hold the same tensors (names and shapes) and predict the same labels: checkpoints\n\
of one run (train --save-every-epoch writes OUTPUT/epoch-N), or adapters of one method on one base.\n\
The output is a folder of the same kind (a model folder or an adapter folder) with the element-wise mean.\n\
Example: zhiku average --model runs/news/epoch-2 --model runs/news/epoch-3 --output runs/news-avg")]
pub struct AverageArgs {
    /// Checkpoint folders to average (two or more).
    #[arg(long, required = true, num_args = 1)]
    model: Vec<PathBuf>,
    /// Where to write the averaged model.
    #[arg(long)]
    output: PathBuf,
    /// Replace an existing output folder.
    #[arg(long)]
    overwrite: bool,
}

fn weights_file(dir: &Path) -> Result<PathBuf> {
    let p = if is_adapter_folder(dir) { dir.join(ADAPTER_WEIGHTS) } else { dir.join("model.safetensors") };
    if !p.is_file() {
        bail!("{} has no {} to average (checkpoints written by zhiku train are safetensors)", dir.display(), p.file_name().unwrap().to_string_lossy())
    }
    Ok(p)
}

fn labels(dir: &Path) -> Result<serde_json::Value> {
    let p = dir.join("config.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?)
        .with_context(|| format!("{}: not valid JSON", p.display()))?;
    Ok(v.get("id2label").cloned().unwrap_or_default())
}

pub fn run(a: AverageArgs) -> Result<i32> {
    if a.model.len() < 2 {
        bail!("give at least two --model folders to average")
    }
    if a.output.exists() && !a.overwrite {
        bail!("{} already exists; pass --overwrite to replace it", a.output.display())
    }
    let first = &a.model[0];
    let adapter = is_adapter_folder(first);
    let file = weights_file(first)?;
    let mut sum: HashMap<String, Tensor> = candle_core::safetensors::load(&file, &Device::Cpu)
        .with_context(|| format!("cannot read {}", file.display()))?
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F64)?)))
        .collect::<Result<_>>()?;
    let want_labels = labels(first)?;
    for dir in &a.model[1..] {
        if is_adapter_folder(dir) != adapter {
            bail!("{} and {} are not the same kind of folder (adapter vs full model)", first.display(), dir.display())
        }
        if labels(dir)? != want_labels {
            bail!("{} predicts other labels than {}", dir.display(), first.display())
        }
        let file = weights_file(dir)?;
        let other = candle_core::safetensors::load(&file, &Device::Cpu).with_context(|| format!("cannot read {}", file.display()))?;
        if other.len() != sum.len() {
            bail!("{} holds {} tensors, {} holds {}", file.display(), other.len(), first.display(), sum.len())
        }
        for (name, t) in other {
            let Some(acc) = sum.get_mut(&name) else { bail!("{} has the tensor {name}, which {} lacks", file.display(), first.display()) };
            if acc.shape() != t.shape() {
                bail!("{name}: shape {:?} in {} but {:?} in {}", t.shape(), file.display(), acc.shape(), first.display())
            }
            *acc = (&*acc + t.to_dtype(DType::F64)?)?;
        }
    }
    let n = a.model.len() as f64;
    let mean: HashMap<String, Tensor> = sum.into_iter().map(|(k, v)| Ok((k, (v / n)?.to_dtype(DType::F32)?))).collect::<Result<_>>()?;

    // Built beside the target and renamed into place: never a half-written folder.
    let tmp = a.output.with_file_name(format!(".{}.averaging", a.output.file_name().and_then(|n| n.to_str()).unwrap_or("average")));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    for entry in std::fs::read_dir(first)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let copy = entry.file_type()?.is_file() && (name.ends_with(".json") || name.ends_with(".txt")) && !matches!(name.as_ref(), "metrics.json");
        if copy {
            std::fs::copy(entry.path(), tmp.join(entry.file_name()))?;
        }
    }
    let out_file = tmp.join(weights_file(first)?.file_name().unwrap());
    candle_core::safetensors::save(&mean, &out_file)?;
    if a.output.exists() {
        std::fs::remove_dir_all(&a.output).with_context(|| format!("cannot replace {}", a.output.display()))?;
    }
    std::fs::rename(&tmp, &a.output).with_context(|| format!("cannot write {}", a.output.display()))?;
    println!("averaged {} checkpoints ({} tensors) into {}", a.model.len(), mean.len(), a.output.display());
    Ok(0)
}
