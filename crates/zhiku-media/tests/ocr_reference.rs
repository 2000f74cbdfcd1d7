//! PP-OCRv4 (scripts/fetch-models.sh, .cache/models/ppocr-v4) on six rendered pages against
//! RapidOCR on the same ONNX models (fixture: tests/fixtures/ocr/rapidocr.json, made by
//! make_fixtures.py): the same lines in the same order, the same boxes, the same confidences.

use std::path::PathBuf;
use zhiku_media::image::load_image;
use zhiku_media::ocr::OcrModel;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ocr")
}

fn model_dir() -> PathBuf {
    let base = std::env::var_os("ZHIKU_MODELS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models"));
    let p = base.join("ppocr-v4");
    assert!(p.exists(), "{} missing: run scripts/fetch-models.sh first", p.display());
    p
}

#[test]
fn pp_ocr_v4_reads_what_rapidocr_reads() {
    let model = OcrModel::load(&model_dir()).unwrap();
    let reference: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(fixtures().join("rapidocr.json")).unwrap()).unwrap();
    assert_eq!(reference.len(), 6);
    let mut lines_seen = 0;
    for r in &reference {
        let file = r["file"].as_str().unwrap();
        let page = model.recognize(&load_image(&fixtures().join(file)).unwrap()).unwrap();
        assert_eq!(page.text, r["text"].as_str().unwrap(), "{file}");
        let expected = r["lines"].as_array().unwrap();
        assert_eq!(page.lines.len(), expected.len(), "{file}");
        for (ours, theirs) in page.lines.iter().zip(expected) {
            let corners: Vec<[i64; 2]> = theirs["box"].as_array().unwrap().iter().map(|p| [p[0].as_i64().unwrap(), p[1].as_i64().unwrap()]).collect();
            for (a, b) in ours.quad.iter().zip(&corners) {
                assert!((a[0] - b[0]).abs() <= 1 && (a[1] - b[1]).abs() <= 1, "{file} {:?}: box {:?} vs {:?}", ours.text, ours.quad, corners);
            }
            let c = theirs["confidence"].as_f64().unwrap() as f32;
            assert!((ours.confidence - c).abs() < 2e-3, "{file} {:?}: confidence {} vs {c}", ours.text, ours.confidence);
            lines_seen += 1;
        }
    }
    assert!(lines_seen >= 12, "{lines_seen}");
}

#[test]
fn a_folder_without_the_models_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let err = OcrModel::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("no det model"), "{err}");
    std::fs::write(dir.path().join("x_det.onnx"), b"not a model").unwrap();
    std::fs::write(dir.path().join("x_rec.onnx"), b"not a model").unwrap();
    let err = format!("{:#}", OcrModel::load(dir.path()).err().unwrap());
    assert!(err.contains("x_det.onnx") && err.contains("not an ONNX model"), "{err}");
}
