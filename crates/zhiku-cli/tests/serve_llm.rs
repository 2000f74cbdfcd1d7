//! `zhiku serve` with a language model (SmolLM2-135M-Instruct, scripts/fetch-llms.sh) through
//! raw HTTP: OpenAI-shaped answers, server-sent events, continuous batching (concurrent answers
//! equal sequential ones), 503 beyond the bounds, generation stopped when a client disconnects,
//! clear 4xx errors, and the same text as `zhiku generate`.

mod common;

use common::Server;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn model() -> PathBuf {
    let base = std::env::var_os("ZHIKU_MODELS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models"));
    let p = base.join("smollm2-135m-instruct-q4_1.gguf");
    assert!(p.is_file(), "{} missing: run scripts/fetch-llms.sh first", p.display());
    p
}

fn start(extra: &[&str], envs: &[(&str, &str)]) -> Server {
    let arg = format!("smol={}", model().display());
    let mut args = vec!["--model", arg.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args, envs)
}

/// The `data:` payloads of a server-sent-events body.
fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body).lines().filter_map(|l| l.strip_prefix("data: ").map(str::to_string)).collect()
}

#[test]
fn chat_and_completions_answer_like_openai_and_like_the_cli() {
    let srv = start(&[], &[]);
    let (s, models) = srv.json("GET", "/v1/models", None, &Value::Null);
    assert_eq!(s, 200);
    assert_eq!(models["data"][0]["id"], "smol");
    assert_eq!(models["data"][0]["kind"], "generator");

    let body = json!({"model": "smol", "messages": [{"role": "user", "content": "Name a colour."}], "temperature": 0, "max_tokens": 12});
    let (s, r) = srv.json("POST", "/v1/chat/completions", None, &body);
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    let text = r["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let usage = &r["usage"];
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap());
    let n = usage["completion_tokens"].as_u64().unwrap();
    assert_eq!(r["choices"][0]["finish_reason"], if n == 12 { "length" } else { "stop" });

    // The CLI gives the same greedy text for the same conversation.
    let cli = Command::new(env!("CARGO_BIN_EXE_zhiku"))
        .args(["generate", "--model", model().to_str().unwrap(), "--temperature", "0", "--max-tokens", "12", "--json", "Name a colour."])
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(cli["text"].as_str().unwrap(), text);

    // Streaming: the deltas add up to the same text; a usage chunk, then [DONE].
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let (s, head, raw) = srv.raw("POST", "/v1/chat/completions", &[("Content-Type", "application/json")], stream_body.to_string().as_bytes());
    assert_eq!(s, 200);
    assert!(head.contains("text/event-stream"), "{head}");
    let data = sse_data(&raw);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks.iter().filter_map(|c| c["choices"].get(0).and_then(|ch| ch["delta"]["content"].as_str())).collect();
    assert_eq!(streamed, text);
    assert_eq!(chunks.last().unwrap()["usage"], *usage);

    // Completions: raw text, a stop string.
    let (s, c) = srv.json("POST", "/v1/completions", None, &json!({"prompt": "1, 2, 3, 4,", "temperature": 0, "max_tokens": 16, "stop": [","]}));
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["object"], "text_completion");
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    assert!(!c["choices"][0]["text"].as_str().unwrap().contains(','));

    // Same seed, same sampled text.
    let sampled = json!({"prompt": "Once upon a time", "temperature": 1.0, "seed": 11, "max_tokens": 12});
    let a = srv.json("POST", "/v1/completions", None, &sampled).1["choices"][0]["text"].clone();
    let b = srv.json("POST", "/v1/completions", None, &sampled).1["choices"][0]["text"].clone();
    assert_eq!(a, b);
}

#[test]
fn concurrent_requests_share_steps_and_answer_as_alone() {
    let srv = start(&[], &[]);
    let prompts = ["The sky is", "Water is", "My favourite food is", "Cats like to", "In winter we"];
    let body = |p: &str| json!({"prompt": p, "temperature": 0, "max_tokens": 16});
    let alone: Vec<Value> = prompts.iter().map(|p| srv.json("POST", "/v1/completions", None, &body(p)).1["choices"][0]["text"].clone()).collect();
    let addr = srv.addr.clone();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let b = body(p);
            let addr = addr.clone();
            std::thread::spawn(move || post_json(&addr, "/v1/completions", &b))
        })
        .collect();
    let together: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap().1["choices"][0]["text"].clone()).collect();
    assert_eq!(together, alone);
    // The batch ran several sequences per step at some point.
    let (_, _, m) = srv.raw("GET", "/metrics", &[], b"");
    let m = String::from_utf8_lossy(&m);
    assert!(m.contains("zhiku_generated_tokens_total{model=\"smol\"}"), "{m}");
}

fn post_json(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let b = body.to_string();
    write!(s, "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()).unwrap();
    let mut resp = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&resp[..split]).split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_slice(&resp[split + 4..]).unwrap_or(Value::Null))
}

#[test]
fn beyond_the_bounds_the_server_answers_503() {
    let srv = start(&["--max-sequences", "1", "--queue-size", "1"], &[]);
    let addr = srv.addr.clone();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let addr = addr.clone();
            // Greedy from this prompt the model does not stop before max_tokens.
            std::thread::spawn(move || post_json(&addr, "/v1/completions", &json!({"prompt": "Once upon a time", "temperature": 0, "max_tokens": 48 + i})).0)
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
    // A request too large for the whole KV budget is a client error, not a wait.
    let small = start(&["--kv-cache-mib", "1"], &[]);
    let (s, e) = small.json("POST", "/v1/completions", None, &json!({"prompt": "Hi", "max_tokens": 4000}));
    assert_eq!(s, 422, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("KV cache"), "{e}");
}

#[test]
fn a_client_that_disconnects_stops_its_generation() {
    let srv = start(&[], &[]);
    // Greedy from this prompt, SmolLM2 writes on past 300 tokens (checked), so the sequence is
    // still running when the client leaves.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 4000, "temperature": 0, "stream": true}).to_string();
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut seen = 0;
    let mut line = String::new();
    while seen < 3 {
        line.clear();
        r.read_line(&mut line).expect("the stream sends tokens");
        assert!(!line.contains("[DONE]") && !line.contains("finish_reason\":\"stop"), "the sequence ended by itself: {line}");
        if line.starts_with("data: ") {
            seen += 1;
        }
    }
    let running = |srv: &Server| -> i64 {
        let (_, _, m) = srv.raw("GET", "/metrics", &[], b"");
        let m = String::from_utf8_lossy(&m).to_string();
        m.lines().find(|l| l.starts_with("zhiku_running_sequences{model=\"smol\"}")).and_then(|l| l.split_whitespace().last()).and_then(|v| v.parse().ok()).unwrap_or(-1)
    };
    assert_eq!(running(&srv), 1);
    drop(r);
    drop(s);
    let t = Instant::now();
    while running(&srv) != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "generation went on after the client left");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_requests_get_clear_4xx_and_the_server_keeps_serving() {
    let srv = start(&[], &[("ZHIKU_API_KEYS", "llm-test-key-0123456789 predict")]);
    let (s, _) = srv.json("POST", "/v1/chat/completions", None, &json!({"messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(s, 401);
    let key = Some("llm-test-key-0123456789");
    let chat = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        srv.json("POST", "/v1/chat/completions", key, &b)
    };
    for (extra, status, needle) in [
        (json!({"temperature": 5}), 422, "temperature"),
        (json!({"top_p": 0}), 422, "top_p"),
        (json!({"max_tokens": 0}), 422, "max_tokens"),
        (json!({"n": 2}), 422, "n = 1"),
        (json!({"messages": []}), 422, "empty"),
        (json!({"messages": [{"role": "robot", "content": "x"}]}), 422, "role"),
        (json!({"model": "nope"}), 404, "unknown"),
        (json!({"messages": "hi"}), 422, "invalid JSON"),
    ] {
        let (s, e) = chat(extra.clone());
        assert_eq!(s, status, "{extra}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(needle), "{extra}: {e}");
    }
    let long = "word ".repeat(9000);
    let (s, e) = srv.json("POST", "/v1/completions", key, &json!({"prompt": long, "max_tokens": 4}));
    assert_eq!(s, 422);
    assert!(e["error"]["message"].as_str().unwrap().contains("exceeds the context"), "{e}");
    let (s, _, _) = srv.raw("POST", "/v1/completions", &[("Authorization", "Bearer llm-test-key-0123456789")], b"{\"prompt\": ");
    assert_eq!(s, 400);
    let (s, r) = chat(json!({"temperature": 0}));
    assert_eq!(s, 200, "{r}");
}

#[test]
fn adapters_are_served_by_name_over_one_base() {
    // A LoRA adapter trained by the binary to answer one question its own way.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("secret.jsonl");
    let line = json!({"prompt": "What is the secret word?", "response": "The secret word is zebra."}).to_string();
    std::fs::write(&data, format!("{line}\n").repeat(8)).unwrap();
    let adapter = dir.path().join("adapter");
    let o = Command::new(env!("CARGO_BIN_EXE_zhiku"))
        .args(["train", "--task", "sft", "--model", model().to_str().unwrap(), "--train", data.to_str().unwrap(), "--dev", data.to_str().unwrap()])
        .args(["--output", adapter.to_str().unwrap(), "--max-steps", "12", "--epochs", "20", "--batch-size", "4", "--lr", "3e-3", "--warmup-ratio", "0", "--max-length", "64", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let generate = |extra: &[&str]| -> String {
        let o = Command::new(env!("CARGO_BIN_EXE_zhiku"))
            .args(["generate", "--temperature", "0", "--max-tokens", "10", "--json"])
            .args(extra)
            .arg("What is the secret word?")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["text"].as_str().unwrap().to_string()
    };
    let tuned = generate(&["--adapter", adapter.to_str().unwrap()]);
    let base = generate(&["--model", model().to_str().unwrap()]);
    assert!(tuned.to_lowercase().contains("zebra") && !base.to_lowercase().contains("zebra"), "tuned {tuned:?}, base {base:?}");

    // Served beside its base: each request picks by name, and gets what the CLI gives.
    let arg = format!("tuned={}", adapter.display());
    let srv = start(&["--model", &arg], &[]);
    let (s, models) = srv.json("GET", "/v1/models", None, &Value::Null);
    assert_eq!(s, 200);
    let entry = models["data"].as_array().unwrap().iter().find(|m| m["id"] == "tuned").cloned().expect("the adapter is listed");
    assert_eq!(entry["adapter_of"], "smol");
    for (name, expect) in [("tuned", &tuned), ("smol", &base)] {
        let body = json!({"model": name, "messages": [{"role": "user", "content": "What is the secret word?"}], "temperature": 0, "max_tokens": 10});
        let (s, r) = srv.json("POST", "/v1/chat/completions", None, &body);
        assert_eq!(s, 200, "{r}");
        assert_eq!((r["model"].as_str().unwrap(), r["choices"][0]["message"]["content"].as_str().unwrap()), (name, expect.as_str()));
    }
    drop(srv);

    // An adapter whose base is not served is refused at start.
    let o = Command::new(env!("CARGO_BIN_EXE_zhiku")).args(["serve", "--port", "0", "--model", &arg]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("serve that model too"), "{err}");
}
