//! Training data whose rows name media files (`--media-column`): each file is read to text, as
//! the library reads it (recordings transcribed, images and scanned PDF pages read by OCR, other
//! documents as text), and the labelled texts are written as JSONL into the run's folder, which
//! the trainer then reads like any data file. A file that cannot be read is an error naming the
//! data file and line.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use zhiku_data::{Columns, Format};
use zhiku_library::media::MediaReaders;
use zhiku_train::task::DataConfig;

#[derive(Args, Debug, Clone, Default)]
pub struct MediaArgs {
    /// The column naming a media file per row (a path relative to the data file) instead of
    /// holding text: recordings are transcribed (--speech-model), images and scanned PDFs read
    /// by OCR (--ocr-model), .txt/.md/.html/.pdf read as text. The texts are written to
    /// OUTPUT/media-text/ and trained on.
    #[arg(long, value_name = "COLUMN")]
    pub media_column: Option<String>,
    /// A Whisper model folder for the recordings named by --media-column.
    #[arg(long, value_name = "DIR")]
    pub speech_model: Option<PathBuf>,
    /// An OCR model folder (PP-OCR) for the images and scans named by --media-column.
    #[arg(long, value_name = "DIR")]
    pub ocr_model: Option<PathBuf>,
    /// The recordings' spoken language (ISO code); detected per recording by default.
    #[arg(long)]
    pub language: Option<String>,
}

/// Replaces `data`'s files by the texts of the media they name, written under `out`. On
/// `resume` the texts written before are used again (the same run reads the same files).
pub fn read_media(data: &mut DataConfig, media: &MediaArgs, out: &Path, resume: bool, quiet: bool) -> Result<()> {
    let Some(column) = &media.media_column else {
        if media.speech_model.is_some() || media.ocr_model.is_some() {
            bail!("--speech-model and --ocr-model read the files a data column names: give --media-column")
        }
        return Ok(());
    };
    // The models load on the first file to read (a resumed run reads none).
    let readers: std::cell::OnceCell<MediaReaders> = std::cell::OnceCell::new();
    let dir = out.join("media-text");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let columns = Columns { text: column.clone(), ..data.columns.clone() };
    let multi = data.multi_label || data.columns.label_separator.is_some();
    let convert = |path: &Path, name: &str| -> Result<PathBuf> {
        let target = dir.join(format!("{name}.jsonl"));
        if resume && target.is_file() {
            return Ok(target);
        }
        let set = zhiku_data::read_file(path, &columns, data.format, true)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(set.examples.len() as u64) };
        bar.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} files, {eta} left").expect("valid template").progress_chars("=> "));
        bar.set_message(format!("reading the media of {}", path.display()));
        let mut examples = set.examples;
        let multi = multi || examples.iter().any(|e| e.labels.len() != 1);
        if readers.get().is_none() && !examples.is_empty() {
            let _ = readers.set(MediaReaders::load(media.speech_model.as_deref(), media.ocr_model.as_deref(), media.language.clone())?);
        }
        for e in &mut examples {
            let file = base.join(e.text.trim());
            let docs = zhiku_library::document::read_file_with(&file, readers.get().expect("loaded above")).with_context(|| format!("{}, line {}", path.display(), e.line))?;
            let text = docs.iter().map(|d| d.text.trim()).filter(|t| !t.is_empty()).collect::<Vec<_>>().join("\n");
            if text.is_empty() {
                bail!("{}, line {}: {} holds no text", path.display(), e.line, file.display())
            }
            e.text = text;
            bar.inc(1);
        }
        bar.finish_and_clear();
        zhiku_data::write_jsonl(&target, &examples, multi).with_context(|| format!("cannot write {}", target.display()))?;
        Ok(target)
    };
    data.train = convert(&data.train.clone(), "train")?;
    if let Some(dev) = data.dev.clone() {
        data.dev = Some(convert(&dev, "dev")?);
    }
    if let Some(test) = data.test.clone() {
        data.test = Some(convert(&test, "test")?);
    }
    data.columns = Columns { text: "text".into(), pair: data.columns.pair.as_ref().map(|_| "text_pair".into()), label: "label".into(), label_separator: None };
    data.format = Some(Format::Jsonl);
    Ok(())
}
