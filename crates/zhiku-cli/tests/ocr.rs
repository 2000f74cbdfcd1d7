//! `zhiku ocr` and `POST /v1/ocr` through the binary: PP-OCRv4 (scripts/fetch-models.sh) on the
//! rendered pages of tests/fixtures/ocr, every output format, several files, and bad input.

use std::path::PathBuf;

mod common;
use common::{fails_with, ok, zhiku};

fn model() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models/ppocr-v4");
    assert!(p.exists(), "{} missing: run scripts/fetch-models.sh", p.display());
    p.to_str().unwrap().to_string()
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ocr").join(name).to_str().unwrap().to_string()
}

#[test]
fn reads_chinese_and_english_pages_as_text_and_json() {
    let m = model();
    let text = ok(&zhiku(&["ocr", "--model", &m, &fixture("000.png")]));
    assert_eq!(text, "周杰伦回应收视不佳称偶尔失利很正常\n古玩民藏春天到来收藏经济蓄势待发\n09成招考试大纲未公布考生复习可参考日大纲\n");
    let json = ok(&zhiku(&["ocr", "--model", &m, "--format", "json", &fixture("009.png"), &fixture("006.png")]));
    let pages: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(pages.len(), 2);
    let first = &pages[0];
    assert!(first["file"].as_str().unwrap().ends_with("009.png"));
    let lines = first["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 4, "{first}");
    for l in lines {
        assert_eq!(l["box"].as_array().unwrap().len(), 4);
        assert!(l["confidence"].as_f64().unwrap() >= 0.5);
    }
    // The upside-down page: the orientation classifier turns its lines round.
    assert!(pages[1]["text"].as_str().unwrap().contains("中秋夜戏说"), "{}", pages[1]);
    // Into a folder, one file per image.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    ok(&zhiku(&["ocr", "--model", &m, "--output-dir", out, &fixture("010.png"), &fixture("037.jpg")]));
    assert_eq!(std::fs::read_to_string(dir.path().join("010.txt")).unwrap(), "134亿资金流出 主力急抛两类股\n");
    assert!(std::fs::read_to_string(dir.path().join("037.txt")).unwrap().contains("project unearths ancient artefacts"));
}

#[test]
fn scanned_pdfs_are_read_page_by_page() {
    let m = model();
    let text = ok(&zhiku(&["ocr", "--model", &m, &fixture("scan.pdf")]));
    let pages: Vec<&str> = text.split("\n\x0c\n").collect();
    assert_eq!(pages.len(), 2, "{text:?}");
    assert!(pages[0].starts_with("周杰伦回应收视不佳称偶尔失利很正常\n"), "{text}");
    assert!(pages[1].contains("Trump") && pages[1].ends_with("\n"), "{text}");
    let json = ok(&zhiku(&["ocr", "--model", &m, "--format", "json", &fixture("scan.pdf")]));
    let lines: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|v| v["page"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2]);
    // Rendered at 2,000 pixels on the longer side, or at 4 pixels a point for small pages (this
    // one is 473 points wide).
    assert_eq!(lines[1]["width"].as_u64().unwrap().max(lines[1]["height"].as_u64().unwrap()), 1893, "{}", lines[1]);
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.pdf");
    std::fs::write(&cut, b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n").unwrap();
    fails_with(&zhiku(&["ocr", "--model", &m, cut.to_str().unwrap()]), "cut.pdf: corrupt image");
}

#[test]
fn bad_images_are_clear_errors() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    fails_with(&zhiku(&["ocr", "--model", &m, empty.to_str().unwrap()]), "empty.png: the file is empty (0 bytes)");
    let notes = dir.path().join("notes.jpg");
    std::fs::write(&notes, "just words\n".repeat(10)).unwrap();
    fails_with(&zhiku(&["ocr", "--model", &m, notes.to_str().unwrap()]), "not an image zhiku can decode");
    let cut = dir.path().join("cut.png");
    let png = std::fs::read(fixture("000.png")).unwrap();
    std::fs::write(&cut, &png[..png.len() / 2]).unwrap();
    fails_with(&zhiku(&["ocr", "--model", &m, cut.to_str().unwrap()]), "corrupt image");
    fails_with(&zhiku(&["ocr", "--model", &m, "--format", "docx", &fixture("000.png")]), "unknown --format");
    fails_with(&zhiku(&["ocr", "--model", &m, &fixture("000.png"), &fixture("009.png")]), "--output-dir");
    fails_with(&zhiku(&["ocr", "--model", dir.path().to_str().unwrap(), &fixture("000.png")]), "no det model");
    // A blank page has no text: empty output, success.
    let blank = dir.path().join("blank.png");
    image_png(&blank, 300, 200);
    assert_eq!(ok(&zhiku(&["ocr", "--model", &m, blank.to_str().unwrap()])), "");
    // One bad file among good ones: the good ones are read, the exit status says 1.
    let o = zhiku(&["ocr", "--model", &m, "--format", "json", &fixture("010.png"), empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("134亿资金流出"));
}

/// A white PNG.
fn image_png(path: &std::path::Path, w: u32, h: u32) {
    image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255])).save(path).unwrap();
}

#[test]
fn served_ocr_takes_multipart_uploads() {
    use common::Server;
    let server = Server::start(&["--ocr", &format!("ppocr={}", model()), "--max-upload-mib", "1"], &[]);
    let post = |fields: &[(&str, Option<&str>, &[u8])]| {
        let (status, _, body) = server.raw("POST", "/v1/ocr", &[("Content-Type", "multipart/form-data; boundary=zhikuBOUNDARY")], &common::multipart_form(fields));
        (status, String::from_utf8_lossy(&body).to_string())
    };
    let page = std::fs::read(fixture("000.png")).unwrap();
    let (status, body) = post(&[("file", Some("000.png"), &page), ("model", None, b"ppocr")]);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model"], "ppocr");
    assert_eq!(v["lines"].as_array().unwrap().len(), 3);
    assert!(v["text"].as_str().unwrap().starts_with("周杰伦回应收视不佳称偶尔失利很正常\n"), "{v}");
    let (status, body) = post(&[("file", Some("000.png"), &page), ("response_format", None, b"text"), ("min_confidence", None, b"0.99")]);
    assert_eq!(status, 200);
    assert!(body.lines().count() <= 3 && body.contains("古玩民藏"), "{body}");
    let big = vec![0u8; 2 << 20];
    for (fields, status, want) in [
        (vec![("file", Some("empty.png"), &b""[..])], 422, "empty"),
        (vec![("file", Some("notes.png"), &b"not an image, just words and more words"[..])], 422, "not an image"),
        (vec![("model", None, &b"ppocr"[..])], 422, "file: the image is required"),
        (vec![("file", Some("000.png"), &page[..]), ("model", None, &b"tesseract"[..])], 404, "no OCR model"),
        (vec![("file", Some("000.png"), &page[..]), ("response_format", None, &b"xml"[..])], 422, "response_format"),
        (vec![("file", Some("000.png"), &page[..]), ("min_confidence", None, &b"high"[..])], 422, "min_confidence"),
        (vec![("file", Some("big.png"), &big[..])], 413, ""),
    ] {
        let (s, body) = post(&fields);
        assert_eq!(s, status, "{body}");
        assert!(body.contains(want), "{body}");
    }
    // The route is counted in the metrics.
    let (_, _, metrics) = server.raw("GET", "/metrics", &[], b"");
    assert!(String::from_utf8_lossy(&metrics).contains("route=\"/v1/ocr\""));
}
