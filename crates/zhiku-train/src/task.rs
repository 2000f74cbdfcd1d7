//! The labelled data of one classification task: train/dev/test sets and their label set.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use zhiku_data::augment::{augment_examples, AugmentConfig};
use zhiku_data::{read_file, stratified_split, write_jsonl, Columns, Dataset, Format, LabelSet};

#[derive(Debug, Clone)]
pub struct DataConfig {
    pub train: PathBuf,
    pub dev: Option<PathBuf>,
    pub test: Option<PathBuf>,
    pub columns: Columns,
    pub format: Option<Format>,
    /// Shares of the train file held out as dev and test when those files are not given.
    pub dev_fraction: f64,
    pub test_fraction: f64,
    pub split_seed: u64,
    /// Force multi-label training (otherwise inferred: a label list or separator in the data).
    pub multi_label: bool,
    /// Augmented copies of the training examples (after the split: dev and test stay real).
    pub augment: Option<AugmentConfig>,
}

impl DataConfig {
    pub fn new(train: impl Into<PathBuf>) -> Self {
        Self {
            train: train.into(),
            dev: None,
            test: None,
            columns: Columns::default(),
            format: None,
            dev_fraction: 0.1,
            test_fraction: 0.1,
            split_seed: 42,
            multi_label: false,
            augment: None,
        }
    }
}

pub struct TaskData {
    pub train: Dataset,
    pub dev: Dataset,
    pub test: Option<Dataset>,
    pub labels: LabelSet,
    pub multi_label: bool,
    /// Which parts were carved out of the train file (and should be saved for the record).
    pub made_dev: bool,
    pub made_test: bool,
    /// Augmented copies of train examples, trained on alongside them.
    pub augmented: Vec<zhiku_data::Example>,
}

impl TaskData {
    /// Reads and checks everything before any training starts: formats, columns, labels of
    /// dev/test against train. Makes a stratified split when dev (and test) are not given.
    pub fn load(cfg: &DataConfig) -> Result<Self> {
        let read = |p: &Path| -> Result<Dataset> { Ok(read_file(p, &cfg.columns, cfg.format, true)?) };
        let full = read(&cfg.train)?;
        let dev_file = cfg.dev.as_deref().map(read).transpose()?;
        let test_file = cfg.test.as_deref().map(read).transpose()?;
        let multi_label = cfg.multi_label
            || cfg.columns.label_separator.is_some()
            || full.examples.iter().any(|e| e.labels.len() != 1);
        if !multi_label {
            if let Some(e) = full.examples.iter().find(|e| e.labels.len() != 1) {
                bail!("{}:{}: expected exactly one label, found {}", full.path.display(), e.line, e.labels.len())
            }
        }
        let (made_dev, made_test) = (dev_file.is_none(), dev_file.is_none() && test_file.is_none());
        let (train, dev, test) = match (dev_file, test_file) {
            (Some(d), t) => (full, d, t),
            (None, Some(t)) => {
                let (tr, dv, _) = stratified_split(&full.examples, cfg.dev_fraction, 0.0, cfg.split_seed);
                (Dataset { path: full.path.clone(), examples: tr }, Dataset { path: full.path.clone(), examples: dv }, Some(t))
            }
            (None, None) => {
                let (tr, dv, te) = stratified_split(&full.examples, cfg.dev_fraction, cfg.test_fraction, cfg.split_seed);
                let part = |e| Dataset { path: full.path.clone(), examples: e };
                let test = if te.is_empty() { None } else { Some(part(te)) };
                (part(tr), part(dv), test)
            }
        };
        if train.examples.is_empty() {
            bail!("{}: no training examples left after the split", train.path.display())
        }
        if dev.examples.is_empty() {
            bail!("{}: too few examples to hold out a dev set; pass --dev", train.path.display())
        }
        let labels = LabelSet::from_examples(&train.examples);
        if labels.len() < 2 && !multi_label {
            bail!("{}: a classifier needs at least two labels, found {:?}", train.path.display(), labels.names())
        }
        labels.check(&dev)?;
        if let Some(t) = &test {
            labels.check(t)?;
        }
        let augmented = cfg.augment.as_ref().map(|a| augment_examples(&train.examples, a)).unwrap_or_default();
        Ok(Self { train, dev, test, labels, multi_label, made_dev, made_test, augmented })
    }

    /// What the model trains on: the train examples and their augmented copies.
    pub fn training_set(&self) -> Dataset {
        let mut examples = self.train.examples.clone();
        examples.extend(self.augmented.iter().cloned());
        Dataset { path: self.train.path.clone(), examples }
    }

    /// Saves the parts that were split off the train file as `splits/{train,dev,test}.jsonl`.
    pub fn save_splits(&self, dir: &Path) -> Result<()> {
        if !self.made_dev {
            return Ok(());
        }
        std::fs::create_dir_all(dir)?;
        write_jsonl(&dir.join("train.jsonl"), &self.train.examples, self.multi_label)?;
        write_jsonl(&dir.join("dev.jsonl"), &self.dev.examples, self.multi_label)?;
        if let (true, Some(t)) = (self.made_test, &self.test) {
            write_jsonl(&dir.join("test.jsonl"), &t.examples, self.multi_label)?;
        }
        Ok(())
    }

    /// Label ids of each example of `data`.
    pub fn label_ids(&self, data: &Dataset) -> Vec<Vec<u32>> {
        data.examples.iter().map(|e| e.labels.iter().filter_map(|l| self.labels.id(l)).map(|i| i as u32).collect()).collect()
    }

    /// Inverse-frequency class weights (scikit-learn's "balanced": n / (k · count)).
    pub fn balanced_class_weights(&self) -> Vec<f32> {
        let k = self.labels.len();
        let mut counts = vec![0usize; k];
        for ids in self.label_ids(&self.train) {
            for i in ids {
                counts[i as usize] += 1;
            }
        }
        let n = self.train.examples.len() as f32;
        counts.iter().map(|&c| if c == 0 { 0.0 } else { n / (k as f32 * c as f32) }).collect()
    }
}
