use std::path::PathBuf;

/// A problem with an input file, precise enough to fix by hand.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: no such file", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: cannot read: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: unknown file type; use a .csv, .tsv or .jsonl file (or pass --format)", path.display())]
    UnknownFormat { path: PathBuf },
    #[error("{}:{line}: not valid UTF-8 text (convert the file to UTF-8, e.g. `iconv -f GBK -t UTF-8`)", path.display())]
    NotUtf8 { path: PathBuf, line: usize },
    #[error("{}:{line}: no column {column:?} (columns here: {available}); choose one with --{flag}", path.display())]
    MissingColumn { path: PathBuf, line: usize, column: String, available: String, flag: &'static str },
    #[error("{}:{line}: column {column:?} is empty", path.display())]
    EmptyText { path: PathBuf, line: usize, column: String },
    #[error("{}:{line}: {detail}", path.display())]
    Malformed { path: PathBuf, line: usize, detail: String },
    #[error("{}: holds no examples", path.display())]
    Empty { path: PathBuf },
    #[error("{}:{line}: label {label:?} does not occur in the training data (known labels: {known})", path.display())]
    UnseenLabel { path: PathBuf, line: usize, label: String, known: String },
    #[error("{}: {detail}", path.display())]
    Invalid { path: PathBuf, detail: String },
}
