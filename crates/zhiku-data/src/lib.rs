//! Reading labelled text for training and evaluation.
//!
//! CSV, TSV and JSONL files, with the text, text-pair and label columns chosen by name. Every
//! problem is reported as a [`DataError`] naming the file and, where it applies, the line, so
//! a person can open the file and fix it. Nothing here panics on user input.

pub mod augment;
mod error;
mod read;
mod split;
pub mod table;

pub use error::DataError;
pub use read::{read_file, write_jsonl, Columns, Dataset, Example, Format};
pub use split::stratified_split;

use std::collections::{BTreeSet, HashMap};

/// The label vocabulary of a task, in a fixed order (label id = position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSet {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl LabelSet {
    pub fn new(names: Vec<String>) -> Self {
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        Self { names, index }
    }

    /// All labels seen in `examples`, sorted (numerically when every label is an integer).
    pub fn from_examples(examples: &[Example]) -> Self {
        let set: BTreeSet<&str> = examples.iter().flat_map(|e| e.labels.iter().map(|s| s.as_str())).collect();
        let mut names: Vec<String> = set.into_iter().map(str::to_string).collect();
        if names.iter().all(|n| n.parse::<i64>().is_ok()) {
            names.sort_by_key(|n| n.parse::<i64>().unwrap());
        }
        Self::new(names)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn id(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Fails on the first example whose label this set does not know (a dev/test label unseen in
    /// training), naming the file and line.
    pub fn check(&self, data: &Dataset) -> Result<(), DataError> {
        for e in &data.examples {
            for l in &e.labels {
                if self.id(l).is_none() {
                    return Err(DataError::UnseenLabel {
                        path: data.path.clone(),
                        line: e.line,
                        label: l.clone(),
                        known: self.names.join(", "),
                    });
                }
            }
        }
        Ok(())
    }
}
