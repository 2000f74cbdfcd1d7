//! The data-file flags shared by `train`, `eval` and `predict`, declared once so the three
//! commands name and document them identically.

use anyhow::{Context, Result};
use clap::Args;
use zhiku_data::{Columns, Format};

/// Which columns hold the texts, and how to read the file.
#[derive(Args, Debug, Clone)]
pub struct TextColumnArgs {
    /// Column holding the text.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Column holding a second text, for sentence-pair tasks.
    #[arg(long)]
    pub pair_column: Option<String>,
    /// File format when the extension does not tell: csv, tsv or jsonl.
    #[arg(long)]
    pub format: Option<String>,
}

/// Which column holds the label(s).
#[derive(Args, Debug, Clone)]
pub struct LabelColumnArgs {
    /// Column holding the label(s).
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// Separator between several labels in one cell (makes the task multi-label).
    #[arg(long)]
    pub label_separator: Option<String>,
}

impl TextColumnArgs {
    pub fn format(&self) -> Result<Option<Format>> {
        self.format.as_deref().map(|f| Format::parse(f).with_context(|| format!("unknown --format {f:?}: expected csv, tsv or jsonl"))).transpose()
    }

    /// The columns to read; `labels` is None where no label is read (prediction).
    pub fn columns(&self, labels: Option<&LabelColumnArgs>) -> Columns {
        let mut c = Columns { text: self.text_column.clone(), pair: self.pair_column.clone(), ..Columns::default() };
        if let Some(l) = labels {
            c.label = l.label_column.clone();
            c.label_separator = l.label_separator.clone();
        }
        c
    }
}
