//! `zhiku serve` end to end through the real binary and raw HTTP/1.1 (so tests can send bytes no
//! client library would: invalid UTF-8, truncated JSON, oversized bodies).

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
mod common;
use common::Server;
use zhiku_models::{ClassifierConfig, ModelFolder, Pooling, ProblemType, SequenceClassifier};

const WORDS: [&str; 8] = ["apple", "banana", "cherry", "grape", "car", "truck", "train", "boat"];

/// A tiny random encoder at `dir/encoder` and a classifier built on it at `dir/classifier`.
fn write_models(dir: &Path) {
    let enc = dir.join("encoder");
    zhiku_models::testing::write_tiny_model(&enc, &WORDS, 0.0, 7).unwrap();
    let folder = ModelFolder::open(&enc).unwrap();
    let head = ClassifierConfig { labels: vec!["fruit".into(), "vehicle".into(), "other".into()], pooling: Pooling::Cls, problem_type: ProblemType::SingleLabel, thresholds: None, text_pairs: false };
    let model = SequenceClassifier::from_folder(&folder, Some(head), 1, &candle_core::Device::Cpu).unwrap();
    model.save(&dir.join("classifier"), &folder.config, &folder.tokenizer(32).unwrap()).unwrap();
}


fn models_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_models(dir.path());
    dir
}

fn model_arg(dir: &Path, name: &str, sub: &str) -> String {
    format!("{name}={}", dir.join(sub).display())
}

#[test]
fn classifies_embeds_and_describes_itself() {
    let dir = models_dir();
    let srv = Server::start(&["--model", &model_arg(dir.path(), "cls", "classifier"), "--model", &model_arg(dir.path(), "enc", "encoder")], &[]);
    let (s, health) = srv.json("GET", "/health", None, &Value::Null);
    assert_eq!((s, health["models"].clone()), (200, json!(["cls", "enc"])));
    let (s, models) = srv.json("GET", "/v1/models", None, &Value::Null);
    assert_eq!(s, 200);
    assert_eq!(models["data"][0]["kind"], "classifier");
    assert_eq!(models["data"][1]["kind"], "encoder");

    let (s, r) = srv.json("POST", "/v1/classify", None, &json!({"model": "cls", "texts": ["apple banana", "car boat train"], "top_k": 2}));
    assert_eq!(s, 200, "{r}");
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for res in results {
        let scores = res["scores"].as_array().unwrap();
        assert_eq!(scores.len(), 2);
        let (a, b) = (scores[0]["score"].as_f64().unwrap(), scores[1]["score"].as_f64().unwrap());
        assert!(a >= b && a + b <= 1.0 + 1e-6 && b > 0.0);
        assert_eq!(res["labels"][0], scores[0]["label"]);
    }

    let (s, e) = srv.json("POST", "/v1/embed", None, &json!({"model": "enc", "texts": ["apple", "car truck"]}));
    assert_eq!(s, 200, "{e}");
    let v: Vec<f64> = serde_json::from_value(e["embeddings"][0].clone()).unwrap();
    assert_eq!(v.len(), e["dimensions"].as_u64().unwrap() as usize);
    assert!((v.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() < 1e-4, "normalised by default");
    // The same text alone and inside a batch (padded with longer texts) gets the same vector.
    let (_, alone) = srv.json("POST", "/v1/embed", None, &json!({"model": "enc", "text": "apple"}));
    let w: Vec<f64> = serde_json::from_value(alone["embeddings"][0].clone()).unwrap();
    assert!(v.iter().zip(&w).all(|(a, b)| (a - b).abs() < 1e-5));

    let (s, o) = srv.json("POST", "/v1/embeddings", None, &json!({"model": "enc", "input": ["apple", "boat"]}));
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["object"], "list");
    assert_eq!(o["data"][1]["index"], 1);
    assert!(o["usage"]["prompt_tokens"].as_u64().unwrap() >= 6, "counts [CLS] and [SEP]: {o}");

    let (s, spec) = srv.json("GET", "/openapi.json", None, &Value::Null);
    assert_eq!(s, 200);
    for p in ["/v1/classify", "/v1/embed", "/v1/embeddings", "/v1/models", "/health", "/metrics", "/v1/admin/models", "/v1/ocr", "/v1/audio/transcriptions", "/v1/images/tags", "/v1/images/embeddings"] {
        assert!(spec["paths"].get(p).is_some(), "openapi lacks {p}");
    }
    let (s, head, page) = srv.raw("GET", "/", &[], b"");
    assert_eq!(s, 200);
    assert!(head.contains("text/html") && String::from_utf8_lossy(&page).contains("/v1/classify"));

    let (s, _, metrics) = srv.raw("GET", "/metrics", &[], b"");
    let metrics = String::from_utf8(metrics).unwrap();
    assert_eq!(s, 200);
    for m in ["zhiku_requests_total{route=\"/v1/classify\",status=\"200\"} 1", "zhiku_request_duration_seconds_bucket", "zhiku_batch_size_count{model=\"cls\"}", "zhiku_queue_depth{model=\"enc\"} 0"] {
        assert!(metrics.contains(m), "metrics lack {m}:\n{metrics}");
    }
}

#[test]
fn bad_input_gets_a_json_4xx_and_the_server_keeps_serving() {
    let dir = models_dir();
    let srv = Server::start(&["--model", &model_arg(dir.path(), "cls", "classifier"), "--max-texts", "4", "--max-body-bytes", "2000", "--long-text", "reject"], &[]);
    let ct = [("Content-Type", "application/json")];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", b"{\"texts\": [\"apple\"".to_vec(), 400),
        ("not JSON at all", b"texts=apple".to_vec(), 400),
        ("empty body", Vec::new(), 400),
        ("wrong type", br#"{"texts": [1, 2]}"#.to_vec(), 422),
        ("texts not a list", br#"{"texts": "apple"}"#.to_vec(), 422),
        ("unknown field", br#"{"txts": ["apple"]}"#.to_vec(), 422),
        ("empty list", br#"{"texts": []}"#.to_vec(), 422),
        ("no texts", br#"{"top_k": 2}"#.to_vec(), 422),
        ("invalid UTF-8", b"{\"texts\": [\"\xff\xfe\"]}".to_vec(), 400),
        ("unknown model", br#"{"model": "nope", "texts": ["apple"]}"#.to_vec(), 404),
        ("too many texts", br#"{"texts": ["a", "b", "c", "d", "e"]}"#.to_vec(), 413),
        ("huge body", format!("{{\"texts\": [\"{}\"]}}", "apple ".repeat(1000)).into_bytes(), 413),
        ("text over the model's length", format!("{{\"texts\": [\"{}\"]}}", "car ".repeat(40)).into_bytes(), 413),
    ];
    for (what, body, want) in cases {
        let (status, head, b) = srv.raw("POST", "/v1/classify", &ct, &body);
        assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&b));
        assert!(head.contains("application/json"), "{what}: not JSON: {head}");
        let v: Value = serde_json::from_slice(&b).unwrap_or_else(|_| panic!("{what}: body is not JSON"));
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {v}");
        // Still serving after each.
        let (ok, _) = srv.json("POST", "/v1/classify", None, &json!({"texts": ["apple"]}));
        assert_eq!(ok, 200, "after {what}");
    }
    let (s, v) = srv.json("GET", "/v1/nothing", None, &Value::Null);
    assert_eq!(s, 404);
    assert!(v["error"]["message"].is_string());
    let (s, v) = srv.json("GET", "/v1/classify", None, &Value::Null);
    assert_eq!(s, 405);
    assert!(v["error"]["message"].is_string());
}

#[test]
fn api_keys_scopes_and_rate_limits() {
    let dir = models_dir();
    let keys = dir.path().join("keys.txt");
    let (predict, admin) = ("predict-key-0123456789", "admin-key-0123456789ab");
    std::fs::write(&keys, format!("# test keys\n{predict} predict\n{admin} admin\n")).unwrap();
    let srv = Server::start(&["--model", &model_arg(dir.path(), "cls", "classifier"), "--api-keys", keys.to_str().unwrap(), "--rate-limit", "3"], &[]);
    let body = json!({"texts": ["apple"]});
    let (s, _, _) = srv.raw("POST", "/v1/classify", &[], br#"{"texts": ["apple"]}"#);
    assert_eq!(s, 401, "no key");
    let (s, v) = srv.json("POST", "/v1/classify", Some("wrong-key-0123456789"), &body);
    assert_eq!(s, 401, "{v}");
    let (s, _) = srv.json("POST", "/v1/classify", Some(predict), &body);
    assert_eq!(s, 200);
    let (s, _, _) = srv.raw("GET", "/metrics", &[("Authorization", &format!("Bearer {predict}"))], b"");
    assert_eq!(s, 403, "predict key on an admin route");
    let (s, _, _) = srv.raw("GET", "/metrics", &[("Authorization", &format!("Bearer {admin}"))], b"");
    assert_eq!(s, 200);
    let (s, _) = srv.json("GET", "/health", None, &Value::Null);
    assert_eq!(s, 200, "health needs no key");
    // The predict key has used 2 of its 3-request burst; the next ones hit the limit.
    let mut limited = None;
    for _ in 0..5 {
        let (s, head, _) = srv.raw("POST", "/v1/classify", &[("Authorization", &format!("Bearer {predict}"))], br#"{"texts": ["apple"]}"#);
        if s == 429 {
            limited = Some(head);
            break;
        }
        assert_eq!(s, 200);
    }
    let head = limited.expect("the rate limit answered 429");
    assert!(head.contains("retry-after: 1"), "{head}");

    // Keys come from the environment too; without any, a public address is refused.
    let env_srv = Server::start(&["--model", &model_arg(dir.path(), "cls", "classifier")], &[("ZHIKU_API_KEYS", &format!("{predict} predict"))]);
    assert_eq!(env_srv.json("POST", "/v1/classify", None, &body).0, 401);
    assert_eq!(env_srv.json("POST", "/v1/classify", Some(predict), &body).0, 200);
    let out = Command::new(env!("CARGO_BIN_EXE_zhiku"))
        .args(["serve", "--host", "0.0.0.0", "--port", "0", "--model", &model_arg(dir.path(), "cls", "classifier")])
        .env_remove("ZHIKU_API_KEYS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without API keys"));
}

#[test]
fn admin_loads_and_unloads_models_while_serving() {
    let dir = models_dir();
    let srv = Server::start(&["--model", &model_arg(dir.path(), "cls", "classifier")], &[]);
    let (s, v) = srv.json("POST", "/v1/admin/models", None, &json!({"name": "enc2", "path": dir.path().join("encoder")}));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["kind"], "encoder");
    let (s, _) = srv.json("POST", "/v1/embed", None, &json!({"model": "enc2", "text": "apple"}));
    assert_eq!(s, 200);
    let (s, v) = srv.json("POST", "/v1/admin/models", None, &json!({"name": "bad", "path": dir.path().join("missing")}));
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("missing"), "{v}");
    let (s, _) = srv.json("DELETE", "/v1/admin/models/enc2", None, &Value::Null);
    assert_eq!(s, 200);
    assert_eq!(srv.json("POST", "/v1/embed", None, &json!({"model": "enc2", "text": "apple"})).0, 404);
    assert_eq!(srv.json("DELETE", "/v1/admin/models/enc2", None, &Value::Null).0, 404);
    // The other model kept serving throughout.
    assert_eq!(srv.json("POST", "/v1/classify", None, &json!({"model": "cls", "text": "apple"})).0, 200);
}

#[test]
fn lora_adapters_load_on_one_base_and_are_chosen_per_call() {
    let dir = models_dir();
    let folder = ModelFolder::open(dir.path().join("encoder")).unwrap();
    let peft = zhiku_models::PeftConfig::Lora { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["query".into(), "value".into()] };
    for (i, name) in ["task-a", "task-b"].iter().enumerate() {
        let head = ClassifierConfig { labels: vec!["fruit".into(), "vehicle".into()], pooling: Pooling::Mean, problem_type: ProblemType::SingleLabel, thresholds: None, text_pairs: false };
        let m = SequenceClassifier::from_folder_peft(&folder, Some(head), 10 + i as u64, &candle_core::Device::Cpu, Some(&peft)).unwrap();
        m.save_adapter(&dir.path().join(name), &folder, &folder.tokenizer(32).unwrap()).unwrap();
    }
    let srv = Server::start(&["--model", &model_arg(dir.path(), "a", "task-a")], &[]);
    let (s, v) = srv.json("POST", "/v1/admin/models", None, &json!({"name": "b", "path": dir.path().join("task-b")}));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["kind"], "classifier");
    let score = |model: &str| {
        let (s, v) = srv.json("POST", "/v1/classify", None, &json!({"model": model, "text": "apple car", "top_k": 2}));
        assert_eq!(s, 200, "{v}");
        v["results"][0]["scores"].as_array().unwrap().iter().find(|x| x["label"] == "fruit").unwrap()["score"].as_f64().unwrap()
    };
    let (a, b) = (score("a"), score("b"));
    assert!((a - b).abs() > 1e-4, "each name must use its own adapter ({a} vs {b})");
    assert_eq!(score("a"), a, "and keep using it");

    // The same adapter with int8 linear layers, chosen per model: close, not identical.
    let (s, v) = srv.json("POST", "/v1/admin/models", None, &json!({"name": "a8", "path": dir.path().join("task-a"), "int8": true}));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["int8"], true);
    assert_eq!(v["adapter"]["method"], "lora");
    assert!(v["adapter"]["base"].as_str().unwrap().ends_with("encoder"), "{v}");
    let a8 = score("a8");
    assert!((a8 - a).abs() < 0.02 && a8 != a, "int8 {a8} vs f32 {a}");
    let (_, list) = srv.json("GET", "/v1/models", None, &Value::Null);
    let flag = |id: &str| list["data"].as_array().unwrap().iter().find(|m| m["id"] == id).unwrap()["int8"].clone();
    assert_eq!((flag("a"), flag("a8")), (json!(false), json!(true)));
}

#[test]
fn int8_is_chosen_per_model_at_start() {
    let dir = models_dir();
    let srv = Server::start(&["--model", &model_arg(dir.path(), "cls", "classifier"), "--model", &model_arg(dir.path(), "cls8", "classifier"), "--int8", "cls8"], &[]);
    let (_, list) = srv.json("GET", "/v1/models", None, &Value::Null);
    let flags: Vec<(String, bool)> = list["data"].as_array().unwrap().iter().map(|m| (m["id"].as_str().unwrap().to_string(), m["int8"].as_bool().unwrap())).collect();
    assert_eq!(flags, vec![("cls".to_string(), false), ("cls8".to_string(), true)]);
    assert_eq!(srv.json("POST", "/v1/classify", None, &json!({"model": "cls8", "text": "apple"})).0, 200);
    let o = Command::new(env!("CARGO_BIN_EXE_zhiku")).args(["serve", "--model", &model_arg(dir.path(), "cls", "classifier"), "--int8", "other"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("other"));
}

/// POSTs `body` on a fresh connection; the status, or why there was none.
fn post(addr: &str, path: &str, body: &[u8]) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).and_then(|_| s.write_all(body)).map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&resp);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status in {:?}", &text[..text.len().min(200)]))
}

#[test]
fn a_full_queue_answers_503_and_requests_in_flight_finish_on_shutdown() {
    let dir = models_dir();
    // A 64-token budget runs a heavy request as thousands of small forward passes, so the
    // worker stays busy for a while even on the tiny model.
    let srv = Server::start(
        &["--model", &model_arg(dir.path(), "enc", "encoder"), "--queue-size", "1", "--max-batch-tokens", "64", "--max-texts", "100000", "--max-body-bytes", "100000000"],
        &[],
    );
    let heavy = serde_json::to_vec(&json!({"texts": vec!["apple banana cherry grape car truck train boat ".repeat(8); 4000]})).unwrap();
    let send = |body: Vec<u8>| {
        let addr = srv.addr.clone();
        std::thread::spawn(move || post(&addr, "/v1/embed", &body))
    };
    let metric = |name: &str| -> Option<f64> {
        let (_, _, body) = srv.raw("GET", "/metrics", &[], b"");
        String::from_utf8_lossy(&body).lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().last()?.parse().ok())
    };
    let wait_for = |name: &str, want: f64| {
        let t = Instant::now();
        while metric(name).unwrap_or(0.0) < want {
            assert!(t.elapsed() < Duration::from_secs(60), "{name} never reached {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let started = Instant::now();
    let first = send(heavy);
    // The worker has started on the heavy request...
    wait_for("zhiku_batch_size_count{model=\"enc\"}", 1.0);
    // ...a small one waits in the one-slot queue...
    let second = send(br#"{"text": "apple"}"#.to_vec());
    wait_for("zhiku_queue_depth{model=\"enc\"}", 1.0);
    // ...and the next is refused.
    let (third, head, _) = srv.raw("POST", "/v1/embed", &[("Content-Type", "application/json")], br#"{"text": "apple"}"#);
    let waited = started.elapsed();
    // Shut down while both are still in flight: they must still be answered.
    let _ = Command::new("kill").args(["-TERM", &srv.child.id().to_string()]).status();
    let (first, second) = (first.join().unwrap(), second.join().unwrap());
    let total = started.elapsed();
    assert_eq!(third, 503, "queue full after {waited:?} (the heavy request took {total:?})");
    assert!(head.contains("retry-after"));
    assert_eq!(first, Ok(200));
    assert_eq!(second, Ok(200));
}
