//! Audio and images in a library, through the binary: `zhiku library add` transcribes a
//! recording (Whisper tiny.en) and reads a scan (PP-OCRv4), and search hits and citations point
//! into them (a time range, a page).

use std::path::PathBuf;

mod common;
use common::{ok, zhiku};

fn root(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    assert!(p.exists(), "{} missing: run scripts/fetch-models.sh and scripts/fetch-media.sh", p.display());
    p.to_str().unwrap().to_string()
}

#[test]
fn recordings_and_scans_are_searchable_with_times_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("in");
    std::fs::create_dir(&files).unwrap();
    std::fs::copy(root(".cache/media/jfk.wav"), files.join("jfk.wav")).unwrap();
    std::fs::copy(root("tests/fixtures/ocr/000.png"), files.join("scan.png")).unwrap();
    std::fs::write(files.join("note.txt"), "A note about gardens and roses.\n").unwrap();
    let lib = dir.path().join("lib");
    let (lib_s, files_s) = (lib.to_str().unwrap(), files.to_str().unwrap());
    // Without the models the text goes in, and each media file is an error naming its option.
    let o = zhiku(&["library", "add", "-l", lib_s, files_s]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("jfk.wav: an audio file; give a Whisper model (--speech-model DIR)") && err.contains("scan.png: an image; give an OCR model (--ocr-model DIR)"), "{err}");
    let (speech, ocr) = (root(".cache/models/whisper-tiny.en"), root(".cache/models/ppocr-v4"));
    let report = ok(&zhiku(&["library", "add", "-l", lib_s, "--speech-model", &speech, "--ocr-model", &ocr, "--json", files_s]));
    let r: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!((r["added"].as_u64(), r["unchanged"].as_u64()), (Some(2), Some(1)), "{r}");
    let hits = ok(&zhiku(&["library", "search", "-l", lib_s, "--json", "ask what you can do for your country"]));
    let v: serde_json::Value = serde_json::from_str(hits.trim()).unwrap();
    let top = &v["results"][0];
    assert!(top["source"].as_str().unwrap().ends_with("jfk.wav"), "{v}");
    assert_eq!(top["time"]["label"], "0:00-0:11", "{top}");
    assert_eq!(top["time"]["to"].as_f64(), Some(11.0));
    let text = ok(&zhiku(&["library", "search", "-l", lib_s, "收视不佳"]));
    assert!(text.starts_with("1. scan [") && text.contains(" page 1 "), "{text}");
    // The stored document keeps each OCR line's box.
    let id = text.split('[').nth(1).unwrap().split(']').next().unwrap();
    let shown = ok(&zhiku(&["library", "show", "-l", lib_s, "--json", id]));
    let d: serde_json::Value = serde_json::from_str(shown.trim()).unwrap();
    assert_eq!(d["document"]["metadata"]["ocr_lines"].as_array().map(|a| a.len()), Some(3), "{d}");
    // `zhiku summarize` reads the same files through the same models.
    let summary = ok(&zhiku(&["summarize", "--method", "lead", "--speech-model", &speech, &root(".cache/media/jfk.wav")]));
    assert!(summary.contains("ask not what your country can do for you"), "{summary}");
}

#[test]
fn scanned_pdf_pages_are_read_by_ocr_and_hits_name_their_page() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib");
    let lib_s = lib.to_str().unwrap();
    let scan = root("tests/fixtures/ocr/scan.pdf");
    // Small chunks (set when the library is created), so that each page's text is a chunk of its own.
    let o = zhiku(&["library", "add", "-l", lib_s, "--chunk-size", "60", "--chunk-overlap", "0", &scan]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no text layer on any of its 2 pages (a scan?); give an OCR model (--ocr-model DIR)"), "{o:?}");
    ok(&zhiku(&["library", "add", "-l", lib_s, "--ocr-model", &root(".cache/models/ppocr-v4"), &scan]));
    let hit = |q: &str| -> serde_json::Value {
        let out = ok(&zhiku(&["library", "search", "-l", lib_s, "--json", q]));
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["results"][0].clone()
    };
    assert_eq!(hit("收视不佳")["page"], 1);
    assert_eq!(hit("Coal-to-liquid")["page"], 2);
}

/// `zhiku train --media-column`: rows name scans and a recording instead of holding text; the
/// texts are read (OCR, Whisper), written into the run, and trained on; a missing file names its
/// data line.
#[test]
fn training_reads_the_media_a_data_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for f in ["000.png", "004.jpg", "006.png", "009.png", "010.png", "037.jpg"] {
        std::fs::copy(root(&format!("tests/fixtures/ocr/{f}")), d.join(f)).unwrap();
    }
    std::fs::copy(root(".cache/media/jfk.wav"), d.join("jfk.wav")).unwrap();
    let rows = "file,label\n000.png,news\n004.jpg,news\n006.png,news\njfk.wav,speech\n009.png,news\n010.png,finance\n037.jpg,news\njfk.wav,speech\n";
    std::fs::write(d.join("train.csv"), rows).unwrap();
    zhiku_models::testing::write_tiny_model(&d.join("model"), &["ask", "country", "not", "what"], 0.1, 1).unwrap();
    let (speech, ocr) = (root(".cache/models/whisper-tiny.en"), root(".cache/models/ppocr-v4"));
    let (model, train, out) = (d.join("model"), d.join("train.csv"), d.join("run"));
    let args = |train: &std::path::Path, out: &std::path::Path| -> Vec<String> {
        ["train", "--model", model.to_str().unwrap(), "--train", train.to_str().unwrap(), "--output", out.to_str().unwrap(), "--media-column", "file", "--speech-model", &speech, "--ocr-model", &ocr,
         "--epochs", "1", "--batch-size", "4", "--max-length", "16", "--dev-fraction", "0.25", "--quiet"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let a = args(&train, &out);
    ok(&zhiku(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    let texts = std::fs::read_to_string(out.join("media-text/train.jsonl")).unwrap();
    assert_eq!(texts.lines().count(), 8, "{texts}");
    assert!(texts.contains("周杰伦回应收视不佳") && texts.contains("ask not what your country"), "{texts}");
    assert!(out.join("config.json").exists());
    // A row naming a missing file: an error with the data file and line, no run left behind.
    std::fs::write(d.join("bad.csv"), "file,label\n000.png,news\ngone.png,news\n").unwrap();
    let a = args(&d.join("bad.csv"), &d.join("bad-run"));
    common::fails_with(&zhiku(&a.iter().map(String::as_str).collect::<Vec<_>>()), "bad.csv, line 3");
    assert!(!d.join("bad-run/config.json").exists());
}
