//! `zhiku tag-images` through the binary, on the tiny random Chinese-CLIP and CLIP folders that
//! transformers wrote (tests/fixtures/tiny-clip): labels ranked with probabilities, embeddings
//! equal to transformers' (up to length), and bad input.

use std::path::PathBuf;

mod common;
use common::{fails_with, ok, zhiku};

fn fixture(p: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(p).to_str().unwrap().to_string()
}

#[test]
fn tags_images_and_embeds_texts() {
    let model = fixture("tiny-clip/chinese-clip");
    let (a, b) = (fixture("ocr/000.png"), fixture("ocr/004.jpg"));
    let txt = ok(&zhiku(&["tag-images", "--model", &model, "--labels", "猫,狗,草地", "--template", "{}的照片", &a, &b]));
    let lines: Vec<&str> = txt.lines().collect();
    assert_eq!(lines.len(), 2, "{txt}");
    assert!(lines[0].starts_with(&format!("{a}\t")) && lines[0].matches(" (0.").count() == 3, "{txt}");
    let json = ok(&zhiku(&["tag-images", "--model", &model, "--labels", "猫,狗,草地", "--top", "2", "--format", "json", "--embeddings", "--embed-text", "一只猫的照片", &a]));
    let rows: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    // The text's embedding points where transformers' does.
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("tiny-clip/chinese-clip/reference.json")).unwrap()).unwrap();
    let want: Vec<f64> = reference["text_embeds"][0].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let got: Vec<f64> = rows[0]["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let norm = want.iter().map(|x| x * x).sum::<f64>().sqrt();
    let cos: f64 = got.iter().zip(&want).map(|(g, w)| g * w / norm).sum();
    assert!(cos > 0.99999, "cosine with transformers' embedding {cos}");
    let labels = rows[1]["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 2);
    assert!(labels[0]["similarity"].as_f64() >= labels[1]["similarity"].as_f64());
    assert_eq!(rows[1]["embedding"].as_array().unwrap().len(), 16);
    // CLIP (byte-level BPE tokenizer), embeddings only.
    let clip = ok(&zhiku(&["tag-images", "--model", &fixture("tiny-clip/clip"), "--format", "json", &a]));
    let v: serde_json::Value = serde_json::from_str(clip.trim()).unwrap();
    assert_eq!(v["embedding"].as_array().unwrap().len(), 16);
}

#[test]
fn bad_input_is_a_clear_error() {
    let model = fixture("tiny-clip/chinese-clip");
    let a = fixture("ocr/000.png");
    fails_with(&zhiku(&["tag-images", "--model", &model, &a]), "no labels");
    fails_with(&zhiku(&["tag-images", "--model", &model, "--labels", "猫", "--format", "xml", &a]), "unknown --format");
    fails_with(&zhiku(&["tag-images", "--model", &model, "--labels", "猫", "--embeddings", &a]), "--format json");
    fails_with(&zhiku(&["tag-images", "--model", &fixture("tiny-whisper"), "--labels", "猫", &a]), "not CLIP or Chinese-CLIP");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.png");
    std::fs::write(&bad, "not an image").unwrap();
    let o = zhiku(&["tag-images", "--model", &model, "--labels", "猫,狗", &a, bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("000.png"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("notes.png"), "{}", String::from_utf8_lossy(&o.stderr));
}
