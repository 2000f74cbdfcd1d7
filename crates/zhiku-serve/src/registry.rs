//! The models being served, by name; loaded and unloaded while requests continue.

use crate::batcher::{BatchConfig, Batcher};
use crate::metrics::Metrics;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use zhiku_models::{BaseCache, TextModel};

pub struct LoadedModel {
    pub name: String,
    pub path: PathBuf,
    /// Whether the encoder runs with int8 weights.
    pub int8: bool,
    pub model: Arc<TextModel>,
    pub batcher: Batcher,
}

pub struct Registry {
    models: RwLock<BTreeMap<String, Arc<LoadedModel>>>,
    batch: BatchConfig,
    metrics: Arc<Metrics>,
    /// Base models under adapters: many adapters on one base hold it in memory once.
    bases: BaseCache,
}

impl Registry {
    pub fn new(batch: BatchConfig, metrics: Arc<Metrics>) -> Self {
        Self { models: RwLock::new(BTreeMap::new()), batch, metrics, bases: BaseCache::default() }
    }

    /// Loads `dir` (a model folder, or an adapter folder on the base it names) under `name`, with
    /// int8 linear layers when `int8`,
    /// replacing a model of that name once loaded; blocking.
    pub fn load(&self, name: &str, dir: &Path, int8: bool) -> Result<Arc<LoadedModel>> {
        let device = zhiku_models::default_device();
        let mut model = TextModel::open_shared(dir, &device, &self.bases, None)?;
        if int8 {
            model.quantize_int8()?;
        }
        let model = Arc::new(model);
        let batcher = Batcher::start(name.to_string(), model.clone(), self.batch, self.metrics.clone());
        let loaded = Arc::new(LoadedModel { name: name.to_string(), path: dir.to_path_buf(), int8, model, batcher });
        self.models.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), loaded.clone());
        Ok(loaded)
    }

    /// Removes a model; requests already holding it finish.
    pub fn unload(&self, name: &str) -> bool {
        let removed = self.models.write().unwrap_or_else(|e| e.into_inner()).remove(name).is_some();
        if removed {
            self.metrics.forget_model(name);
        }
        removed
    }

    pub fn get(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.models.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<LoadedModel>> {
        self.models.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}
