//! `zhiku ocr`: text in images with PP-OCR (the ONNX models RapidOCR ships), run in Rust.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use zhiku_media::ocr::OcrModel;

#[derive(Args, Debug)]
#[command(after_help = "Images: PNG or JPEG (grey, colour or with transparency, laid on white), up to 120 megapixels;\n\
pages over 2,000 pixels on a side are shrunk before detection, as RapidOCR does. PDF: every page is rendered\n\
(2,000 pixels on its longer side) and read; txt separates pages with a form feed, json prints a line per page.\n\n\
Model: a folder with the det, rec and (optional) cls .onnx files as rapidocr_onnxruntime/models/ ships them\n\
(PP-OCRv4 detection and recognition, the mobile v2.0 orientation classifier); the character list is read\n\
from the rec model's metadata. `scripts/fetch-models.sh` puts them in .cache/models/ppocr-v4.\n\n\
Examples:\n  \
zhiku ocr --model .cache/models/ppocr-v4 scan.png\n  \
zhiku ocr --model .cache/models/ppocr-v4 --format json slides/*.jpg > slides.jsonl\n  \
zhiku ocr --model .cache/models/ppocr-v4 --output-dir texts/ pages/*.png")]
pub struct OcrArgs {
    /// Image files (PNG, JPEG) or PDFs (scans: each page is rendered and read).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The folder with the PP-OCR .onnx files.
    #[arg(long, short)]
    model: PathBuf,
    /// txt (a line per text line, in reading order) or json ({"text", "width", "height",
    /// "lines": [{"text", "box", "confidence"}], "seconds"}, boxes as four x, y corners from the
    /// top-left, clockwise, in the image's pixels; seconds: decoding plus OCR).
    #[arg(long, default_value = "txt")]
    format: String,
    /// Write FILE-STEM.txt or .json per input into this folder instead of printing (needed for
    /// several inputs, except with --format json, which prints a line per file).
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Skip the orientation classifier (faster; upside-down lines are then misread).
    #[arg(long)]
    no_cls: bool,
    /// Drop lines whose mean character confidence is below this.
    #[arg(long, default_value_t = 0.5)]
    min_confidence: f32,
    /// Timings per image on stderr.
    #[arg(long)]
    verbose: bool,
}

pub fn run(a: OcrArgs) -> Result<i32> {
    let json = match a.format.as_str() {
        "txt" | "text" => false,
        "json" => true,
        other => bail!("unknown --format {other:?}: expected txt or json"),
    };
    if a.files.len() > 1 && a.output_dir.is_none() && !json {
        bail!("{} files: give --output-dir for the texts (or --format json, a line per file)", a.files.len())
    }
    if !(0.0..=1.0).contains(&a.min_confidence) {
        bail!("--min-confidence {} is not between 0 and 1", a.min_confidence)
    }
    let started = Instant::now();
    let mut model = OcrModel::load(&a.model).with_context(|| format!("cannot load the OCR models from {}", a.model.display()))?;
    model.options.use_cls = !a.no_cls;
    model.options.text_score = a.min_confidence;
    if a.verbose {
        eprintln!("models loaded in {:.2} s", started.elapsed().as_secs_f64());
    }
    if let Some(dir) = &a.output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut failed = 0;
    for path in &a.files {
        let t0 = Instant::now();
        // A PDF is read page by page; any other file is one image.
        let is_pdf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("pdf"));
        let images = if is_pdf {
            std::fs::read(path)
                .map_err(|e| format!("{}: cannot read: {e}", path.display()))
                .and_then(|bytes| zhiku_media::pdf::render_pages(&bytes, &path.display().to_string(), None).map_err(|e| e.to_string()))
                .map(|pages| pages.into_iter().map(|(n, img)| (Some(n), img)).collect::<Vec<_>>())
        } else {
            zhiku_media::image::load_image(path).map(|img| vec![(None, img)]).map_err(|e| e.to_string())
        };
        let images = match images {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
                continue;
            }
        };
        let mut text = String::new();
        let mut texts = Vec::new();
        for (page_no, image) in images {
            let page = model.recognize(&image).with_context(|| format!("{}: OCR failed", path.display()))?;
            let seconds = t0.elapsed().as_secs_f64();
            if a.verbose {
                let at = page_no.map(|n| format!(" page {n}")).unwrap_or_default();
                eprintln!("{}{at}: {} x {}, {} lines in {seconds:.3} s", path.display(), page.width, page.height, page.lines.len());
            }
            if json {
                let mut v = serde_json::to_value(&page)?;
                v["seconds"] = serde_json::json!(seconds);
                if let Some(n) = page_no {
                    v["page"] = serde_json::json!(n);
                }
                if a.output_dir.is_none() {
                    v["file"] = serde_json::json!(path);
                }
                text.push_str(&(v.to_string() + "\n"));
            } else {
                texts.push(page.text.clone());
            }
        }
        if !json {
            // Pages of a PDF are separated by a form feed, as pdftotext separates them.
            text = texts.join("\n\x0c\n");
            if !text.is_empty() {
                text.push('\n');
            }
        }
        match &a.output_dir {
            Some(dir) => {
                let stem = path.file_stem().map_or_else(|| "image".into(), |s| s.to_string_lossy().to_string());
                let out = dir.join(format!("{stem}.{}", if json { "json" } else { "txt" }));
                zhiku_models::classifier::write_atomic(&out, text.as_bytes())?;
            }
            None => std::io::stdout().write_all(text.as_bytes())?,
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
