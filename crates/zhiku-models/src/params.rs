//! Named parameters: the trainable variables of a model, and where their initial values come from.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// The trainable parameters of a model, in creation order, under their transformers names
/// (`bert.encoder.layer.0.attention.self.query.weight`, `classifier.bias`, ...).
#[derive(Default, Clone)]
pub struct Params {
    entries: Vec<(String, Var)>,
    index: HashMap<String, usize>,
}

impl Params {
    pub fn insert(&mut self, name: &str, var: Var) {
        if let Some(&i) = self.index.get(name) {
            self.entries[i].1 = var;
        } else {
            self.index.insert(name.to_string(), self.entries.len());
            self.entries.push((name.to_string(), var));
        }
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn num_elements(&self) -> usize {
        self.entries.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// A snapshot of every parameter's current value (for saving).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.entries.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
    }

    /// Overwrites parameter values from `values` (by name); every parameter must be present.
    pub fn load_values(&self, values: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.entries {
            let Some(t) = values.get(name) else { bail!("checkpoint has no tensor {name}") };
            if t.shape() != var.shape() {
                bail!("checkpoint tensor {name} has shape {:?}, the model expects {:?}", t.shape(), var.shape())
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// How a missing parameter is initialised (transformers' `_init_weights` for BERT).
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Normal(f64),
    /// Uniform on `[-bound, bound]` (PEFT's Kaiming-uniform init of LoRA's A matrix).
    Uniform(f64),
    Zeros,
    Ones,
}

/// Decides by name whether a parameter is trained.
type TrainableRule = Box<dyn Fn(&str) -> bool>;

/// Hands out parameters by name while a model is built: the value from a checkpoint when it has
/// one, otherwise a seeded random initialisation (recorded in [`WeightSource::initialised`]).
/// A parameter it hands out becomes a trainable [`Var`] in [`WeightSource::params`], unless the
/// source is frozen or the parameter is not trainable (parameter-efficient tuning); those stay
/// plain tensors in [`WeightSource::fixed`], outside autograd and never copied, so several
/// models built from one set of base tensors share their memory.
pub struct WeightSource {
    loaded: HashMap<String, Tensor>,
    pub params: Params,
    pub fixed: HashMap<String, Tensor>,
    pub initialised: Vec<String>,
    rng: ChaCha8Rng,
    device: Device,
    dtype: DType,
    frozen: bool,
    trainable: Option<TrainableRule>,
}

impl WeightSource {
    /// Hand out every weight as a constant (inference: no graph is recorded, activations are
    /// freed as soon as the next layer has used them).
    pub fn freeze(mut self) -> Self {
        self.frozen = true;
        self
    }

    /// Only parameters whose name passes `rule` are trainable; the rest are constants.
    pub fn train_only(mut self, rule: impl Fn(&str) -> bool + 'static) -> Self {
        self.trainable = Some(Box::new(rule));
        self
    }

    pub fn new(loaded: HashMap<String, Tensor>, seed: u64, device: &Device, dtype: DType) -> Self {
        Self {
            loaded,
            params: Params::default(),
            fixed: HashMap::new(),
            initialised: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            device: device.clone(),
            dtype,
            frozen: false,
            trainable: None,
        }
    }

    /// No checkpoint: every parameter is randomly initialised.
    pub fn random(seed: u64, device: &Device, dtype: DType) -> Self {
        Self::new(HashMap::new(), seed, device, dtype)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn has(&self, name: &str) -> bool {
        self.loaded.contains_key(name)
    }

    /// The parameter `name` with `shape`, from the checkpoint or freshly initialised.
    pub fn get(&mut self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        let shape = shape.into();
        let tensor = match self.loaded.remove(name) {
            Some(t) => {
                if t.shape() != &shape {
                    bail!("weight {name} has shape {:?}, the config implies {:?}", t.shape(), shape)
                }
                t.to_dtype(self.dtype)?.to_device(&self.device)?
            }
            None => {
                self.initialised.push(name.to_string());
                self.init_tensor(&shape, init)?
            }
        };
        if self.frozen || self.trainable.as_ref().is_some_and(|rule| !rule(name)) {
            self.fixed.insert(name.to_string(), tensor.clone());
            return Ok(tensor);
        }
        let var = Var::from_tensor(&tensor)?;
        let t = var.as_tensor().clone();
        self.params.insert(name, var);
        Ok(t)
    }

    fn init_tensor(&mut self, shape: &Shape, init: Init) -> Result<Tensor> {
        let n = shape.elem_count();
        let values: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => {
                use rand_distr_normal::sample_normal;
                (0..n).map(|_| sample_normal(&mut self.rng) * std as f32).collect()
            }
            Init::Uniform(bound) => {
                use rand::Rng;
                (0..n).map(|_| ((self.rng.random::<f64>() * 2.0 - 1.0) * bound) as f32).collect()
            }
        };
        Ok(Tensor::from_vec(values, shape.clone(), &Device::Cpu)?.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    /// Names in the checkpoint that no parameter asked for.
    pub fn unused(&self) -> Vec<String> {
        let mut v: Vec<String> = self.loaded.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Box-Muller normal samples from a seeded RNG (keeps us off an extra dependency).
mod rand_distr_normal {
    use rand::Rng;
    pub fn sample_normal(rng: &mut impl Rng) -> f32 {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}
