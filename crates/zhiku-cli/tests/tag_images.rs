//! `zhiku tag-images` and `zhiku serve --clip` through the binary, on the tiny random
//! Chinese-CLIP and CLIP folders that transformers wrote (tests/fixtures/tiny-clip): labels
//! ranked with probabilities, embeddings equal to transformers' (up to length), the HTTP routes
//! answering as the command does, and bad input.

use std::path::PathBuf;

mod common;
use common::{fails_with, ok, zhiku, Server};

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

#[test]
fn served_models_tag_and_embed_uploads_as_the_command_does() {
    let model = fixture("tiny-clip/chinese-clip");
    let a = fixture("ocr/000.png");
    let image = std::fs::read(&a).unwrap();
    // What the command prints for the same image, labels and texts.
    let cli = ok(&zhiku(&["tag-images", "--model", &model, "--labels", "猫,狗,草地", "--template", "{}的照片", "--format", "json", "--embeddings", "--embed-text", "一只猫的照片", &a]));
    let cli: Vec<serde_json::Value> = cli.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let server = Server::start(&["--clip", &format!("covers={model}"), "--max-upload-mib", "1"], &[]);
    let post = |path: &str, fields: &[(&str, Option<&str>, &[u8])]| {
        let (status, _, body) = server.raw("POST", path, &[("Content-Type", "multipart/form-data; boundary=zhikuBOUNDARY")], &common::multipart_form(fields));
        (status, serde_json::from_slice::<serde_json::Value>(&body).unwrap_or(serde_json::Value::Null))
    };
    let close = |x: &serde_json::Value, y: &serde_json::Value| {
        let (x, y) = (x.as_array().unwrap(), y.as_array().unwrap());
        x.len() == y.len() && x.iter().zip(y).all(|(p, q)| (p.as_f64().unwrap() - q.as_f64().unwrap()).abs() < 1e-6)
    };
    let (status, v) = post("/v1/images/tags", &[("file", Some("000.png"), &image), ("labels", None, "猫,狗\n草地".as_bytes()), ("template", None, "{}的照片".as_bytes()), ("top", None, b"2")]);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "covers");
    let (got, want) = (v["labels"].as_array().unwrap(), cli[1]["labels"].as_array().unwrap());
    assert_eq!(got.len(), 2);
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["label"], w["label"]);
        assert!((g["probability"].as_f64().unwrap() - w["probability"].as_f64().unwrap()).abs() < 1e-6, "{g} {w}");
    }
    let (status, v) = post("/v1/images/embeddings", &[("file", Some("000.png"), &image), ("model", None, b"covers")]);
    assert_eq!(status, 200, "{v}");
    assert!(close(&v["data"][0]["embedding"], &cli[1]["embedding"]), "{v}");
    // Texts through the OpenAI route land in the same space.
    let (status, v) = server.json("POST", "/v1/embeddings", None, &serde_json::json!({"model": "covers", "input": ["一只猫的照片"]}));
    assert_eq!(status, 200, "{v}");
    assert!(close(&v["data"][0]["embedding"], &cli[0]["embedding"]), "{v}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    // Bad requests.
    for (fields, want_status, want) in [
        (vec![("file", Some("000.png"), &image[..])], 422, "labels:"),
        (vec![("file", Some("000.png"), &image[..]), ("labels", None, &b"a,b"[..]), ("top", None, &b"0"[..])], 422, "top:"),
        (vec![("file", Some("000.png"), &image[..]), ("labels", None, &b"a"[..]), ("model", None, &b"other"[..])], 404, "no image-text model"),
        (vec![("file", Some("notes.png"), &b"not an image"[..]), ("labels", None, &b"a"[..])], 422, "notes.png"),
        (vec![("labels", None, &b"a"[..])], 422, "file: the image is required"),
    ] {
        let (status, v) = post("/v1/images/tags", &fields);
        assert_eq!(status, want_status, "{v}");
        assert!(v["error"]["message"].as_str().unwrap_or_default().contains(want) || v.to_string().contains(want), "{v}");
    }
    let big = vec![0u8; 2 << 20];
    let (status, _) = post("/v1/images/embeddings", &[("file", Some("big.png"), &big)]);
    assert_eq!(status, 413);
    let (status, v) = server.json("POST", "/v1/embeddings", None, &serde_json::json!({"model": "covers", "input": ["x"], "dimensions": 3}));
    assert_eq!(status, 400, "{v}");
}
