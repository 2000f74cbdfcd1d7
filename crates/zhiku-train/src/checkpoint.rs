//! Resumable training state: parameters, optimizer moments and the loop's position, written
//! together into `checkpoint/` via a temporary folder and renames (never a torn checkpoint).

use crate::optim::AdamW;
use crate::state::TrainerState;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

pub struct Checkpoint {
    pub params: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    pub state: TrainerState,
}

pub fn save(dir: &Path, params: &HashMap<String, Tensor>, optimizer: &AdamW, state: &TrainerState) -> Result<()> {
    let tmp = dir.with_file_name(format!("{}.tmp", dir.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint")));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    candle_core::safetensors::save(params, tmp.join("model.safetensors"))?;
    optimizer.save_state(&tmp.join("optimizer.safetensors"))?;
    std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)?;
    let old = dir.with_file_name(format!("{}.old", dir.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint")));
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old)?;
    }
    std::fs::rename(&tmp, dir)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).with_context(|| format!("no checkpoint to resume from: cannot read {}", state_path.display()))?;
    let state: TrainerState = serde_json::from_str(&text).with_context(|| format!("{}: corrupt checkpoint state", state_path.display()))?;
    let params = candle_core::safetensors::load(dir.join("model.safetensors"), device).context("corrupt checkpoint weights")?;
    let optimizer = candle_core::safetensors::load(dir.join("optimizer.safetensors"), device).context("corrupt checkpoint optimizer state")?;
    Ok(Checkpoint { params, optimizer, state })
}
