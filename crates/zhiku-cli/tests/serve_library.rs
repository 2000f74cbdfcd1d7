//! `zhiku serve --library`: documents added, shown, removed and searched over HTTP, and keys
//! that only ever see the libraries their scopes name.

use serde_json::{json, Value};
use std::process::Command;
mod common;
use common::Server;

const NEWS_READER: &str = "news-reader-key-0001";
const NEWS_WRITER: &str = "news-writer-key-0002";
const FAQ_READER: &str = "faq-reader-key-00003";
const PREDICT: &str = "predict-only-key-004";

fn make_library(dir: &std::path::Path, name: &str, line: &str) -> String {
    let src = dir.join(format!("{name}.jsonl"));
    std::fs::write(&src, line).unwrap();
    let lib = dir.join(name);
    let o = Command::new(env!("CARGO_BIN_EXE_zhiku")).args(["library", "add", "--library"]).arg(&lib).arg(&src).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    lib.display().to_string()
}

fn ids(v: &Value) -> Vec<String> {
    v["results"].as_array().map(|a| a.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

#[test]
fn libraries_over_http_with_scoped_keys() {
    let dir = tempfile::tempdir().unwrap();
    let news = make_library(dir.path(), "news", "{\"id\": \"n1\", \"title\": \"银行\", \"text\": \"中国农业发展银行发布了新的贷款政策。\"}\n");
    let faq = make_library(dir.path(), "faq", "{\"id\": \"f1\", \"text\": \"退货政策：七天无理由退货。\"}\n");
    let keys = format!("{NEWS_READER} library:news;{NEWS_WRITER} library:news:write;{FAQ_READER} library:faq;{PREDICT} predict");
    let srv = Server::start(&["--library", &format!("news={news}"), "--library", &format!("faq={faq}")], &[("ZHIKU_API_KEYS", &keys)]);

    // Reading with the right scope.
    let (s, r) = srv.json("POST", "/v1/search", Some(NEWS_READER), &json!({"library": "news", "query": "农业"}));
    assert_eq!(s, 200, "{r}");
    assert_eq!(ids(&r), ["n1"]);
    assert!(r["results"][0]["highlighted"].as_str().unwrap().contains("**农业**"));

    // A key never sees another library: 403 whether the library exists or not.
    for (lib, key) in [("faq", NEWS_READER), ("nope", NEWS_READER), ("news", FAQ_READER), ("news", PREDICT)] {
        let (s, r) = srv.json("POST", "/v1/search", Some(key), &json!({"library": lib, "query": "政策"}));
        assert_eq!(s, 403, "{lib} with {key}: {r}");
        assert!(r["results"].is_null());
    }
    let (s, _) = srv.json("GET", "/v1/libraries/faq/documents/f1", Some(NEWS_WRITER), &Value::Null);
    assert_eq!(s, 403);
    let (s, _) = srv.json("POST", "/v1/search", None, &json!({"library": "news", "query": "x"}));
    assert_eq!(s, 401);

    // Writing needs :write.
    let doc = json!({"documents": [{"id": "n2", "title": "Rates", "text": "The central bank cut interest rates today.", "tags": ["finance"], "date": "2024/3/5"}]});
    let (s, _) = srv.json("POST", "/v1/libraries/news/documents", Some(NEWS_READER), &doc);
    assert_eq!(s, 403);
    let (s, r) = srv.json("POST", "/v1/libraries/news/documents", Some(NEWS_WRITER), &doc);
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["added"], 1);
    let (s, r) = srv.json("POST", "/v1/search", Some(NEWS_READER), &json!({"library": "news", "query": "interest rate", "filter": {"tags": ["finance"], "from": "2024-01-01"}}));
    assert_eq!((s, ids(&r)), (200, vec!["n2".to_string()]), "{r}");
    let (s, r) = srv.json("GET", "/v1/libraries/news/documents/n2", Some(NEWS_READER), &Value::Null);
    assert_eq!(s, 200);
    assert_eq!(r["document"]["date"], "2024-03-05");

    // Bad requests are 4xx with a message, and the server keeps serving.
    let (s, r) = srv.json("POST", "/v1/libraries/news/documents", Some(NEWS_WRITER), &json!({"documents": [{"title": "no text"}]}));
    assert_eq!(s, 422);
    assert!(r["error"]["message"].as_str().unwrap().contains("documents[0]"), "{r}");
    let (s, _) = srv.json("POST", "/v1/search", Some(NEWS_READER), &json!({"library": "news", "query": "x", "mode": "dense"}));
    assert_eq!(s, 422, "no encoder: dense is refused");
    let (s, _) = srv.json("POST", "/v1/search", Some(NEWS_READER), &json!({"library": "news", "query": "x", "top_k": 0}));
    assert_eq!(s, 422);
    let (s, _, _) = srv.raw("POST", "/v1/search", &[("Authorization", &format!("Bearer {NEWS_READER}"))], b"{\"library\": ");
    assert_eq!(s, 400);

    let (s, _) = srv.json("DELETE", "/v1/libraries/news/documents/n2", Some(NEWS_READER), &Value::Null);
    assert_eq!(s, 403);
    let (s, r) = srv.json("DELETE", "/v1/libraries/news/documents/n2", Some(NEWS_WRITER), &Value::Null);
    assert_eq!((s, r["removed"].clone()), (200, json!(true)));
    let (s, _) = srv.json("DELETE", "/v1/libraries/news/documents/n2", Some(NEWS_WRITER), &Value::Null);
    assert_eq!(s, 404);
    let (_, r) = srv.json("POST", "/v1/search", Some(NEWS_READER), &json!({"library": "news", "query": "interest rate"}));
    assert!(ids(&r).is_empty(), "{r}");
}

#[test]
fn a_folder_that_is_not_a_library_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_zhiku")).args(["serve", "--port", "0", "--library"]).arg(format!("x={}", dir.path().display())).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a library"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `POST /v1/ask` with Qwen2.5-0.5B: the same answer and citations as `zhiku library ask`,
/// whole or streamed sentence by sentence; "not found" without generating when nothing is
/// retrieved; a key of another library gets 403.
#[test]
fn ask_over_http_answers_like_the_cli_whole_and_streamed() {
    let base = std::env::var_os("ZHIKU_MODELS").map(std::path::PathBuf::from).unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models"));
    let model = base.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(model.is_file(), "{} missing: run scripts/fetch-llms.sh", model.display());
    let dir = tempfile::tempdir().unwrap();
    let kb = make_library(
        dir.path(),
        "kb",
        concat!(
            "{\"id\": \"hq\", \"title\": \"公司介绍\", \"text\": \"知库科技成立于2019年，总部位于杭州市西湖区。公司主要提供在线课程和知识问答服务。\"}\n",
            "{\"id\": \"refund\", \"title\": \"退款政策\", \"text\": \"购买课程后七天内可以申请全额退款，超过七天不再退款。\"}\n",
        ),
    );
    let question = "知库科技的总部在哪里？";
    let o = Command::new(env!("CARGO_BIN_EXE_zhiku")).args(["library", "ask", "--library", &kb, "--model"]).arg(&model).args([question, "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cli: Value = serde_json::from_slice(&o.stdout).unwrap();

    let keys = format!("{NEWS_READER} library:kb;{FAQ_READER} library:faq");
    let srv = Server::start(&["--library", &format!("kb={kb}"), "--model", &format!("qwen={}", model.display())], &[("ZHIKU_API_KEYS", &keys)]);
    let (s, r) = srv.json("POST", "/v1/ask", Some(NEWS_READER), &json!({"library": "kb", "question": question}));
    assert_eq!(s, 200, "{r}");
    assert_eq!((&r["answer"], &r["found"], &r["model"]), (&cli["answer"], &json!(true), &json!("qwen")), "{r}\n{cli}");
    assert_eq!(r["citations"][0]["id"], "hq");
    assert_eq!(r["citations"][0]["cited"], true);

    let body = json!({"library": "kb", "question": question, "stream": true});
    let auth = format!("Bearer {NEWS_READER}");
    let (s, head, raw) = srv.raw("POST", "/v1/ask", &[("Authorization", &auth), ("Content-Type", "application/json")], body.to_string().as_bytes());
    assert_eq!(s, 200);
    assert!(head.contains("text/event-stream"), "{head}");
    let data: Vec<String> = String::from_utf8_lossy(&raw).lines().filter_map(|l| l.strip_prefix("data: ").map(str::to_string)).collect();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let events: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let streamed: String = events.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert_eq!(streamed, cli["answer"].as_str().unwrap());
    let last = events.last().unwrap();
    assert_eq!((&last["done"], &last["answer"]), (&json!(true), &cli["answer"]));

    // Nothing retrieved: not found, and no tokens generated.
    let (s, r) = srv.json("POST", "/v1/ask", Some(NEWS_READER), &json!({"library": "kb", "question": "天气"}));
    assert_eq!((s, &r["found"], &r["completion_tokens"]), (200, &json!(false), &json!(0)), "{r}");
    let (s, head, raw) = srv.raw("POST", "/v1/ask", &[("Authorization", &auth)], json!({"library": "kb", "question": "天气", "stream": true}).to_string().as_bytes());
    assert!(s == 200 && head.contains("text/event-stream") && String::from_utf8_lossy(&raw).contains("资料库中没有找到答案"), "{}", String::from_utf8_lossy(&raw));

    // Another library's key, no key, and bad fields.
    let (s, _) = srv.json("POST", "/v1/ask", Some(FAQ_READER), &json!({"library": "kb", "question": question}));
    assert_eq!(s, 403);
    let (s, _) = srv.json("POST", "/v1/ask", None, &json!({"library": "kb", "question": question}));
    assert_eq!(s, 401);
    for bad in [json!({"library": "kb"}), json!({"library": "kb", "question": "x", "top_k": 0}), json!({"library": "kb", "question": "x", "model": "nope"}), json!({"library": "kb", "question": "x", "temperature": 9})] {
        let (s, r) = srv.json("POST", "/v1/ask", Some(NEWS_READER), &bad);
        assert!(s == 422 || s == 404, "{bad} -> {s} {r}");
    }
}

/// Two `zhiku serve` processes on one library in PostgreSQL (a real server with pgvector): a
/// document added through one is found through the other, and removed through the other it is
/// gone from both; the library was created by `zhiku library add` on the same URL.
#[test]
fn two_servers_share_a_library_in_postgres() {
    let workspace = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let pg = zhiku_library::testing::PgServer::start(&workspace);
    let url = pg.url("news");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("news.jsonl");
    std::fs::write(&src, "{\"id\": \"n1\", \"title\": \"银行\", \"text\": \"中国农业发展银行发布了新的贷款政策。\"}\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_zhiku")).args(["library", "add", "--library", &url]).arg(&src).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(env!("CARGO_BIN_EXE_zhiku")).args(["library", "search", "--library", &url, "农业", "--json"]).output().unwrap();
    assert_eq!(ids(&serde_json::from_slice(&o.stdout).unwrap()), vec!["n1"]);

    let keys = format!("{NEWS_READER} library:news;{NEWS_WRITER} library:news:write");
    let library = format!("news={url}");
    let a = Server::start(&["--library", &library], &[("ZHIKU_API_KEYS", &keys)]);
    let b = Server::start(&["--library", &library], &[("ZHIKU_API_KEYS", &keys)]);
    let (s, r) = a.json("POST", "/v1/libraries/news/documents", Some(NEWS_WRITER), &json!({"documents": [{"id": "n2", "title": "Rates", "text": "The central bank cut interest rates.", "tags": ["finance"]}]}));
    assert_eq!((s, &r["added"]), (200, &json!(1)), "{r}");
    let (s, r) = b.json("POST", "/v1/search", Some(NEWS_READER), &json!({"library": "news", "query": "interest rates"}));
    assert_eq!((s, ids(&r)), (200, vec!["n2".to_string()]), "{r}");
    let (s, _) = b.json("DELETE", "/v1/libraries/news/documents/n2", Some(NEWS_WRITER), &Value::Null);
    assert_eq!(s, 200);
    let (_, r) = a.json("POST", "/v1/search", Some(NEWS_READER), &json!({"library": "news", "query": "interest rates"}));
    assert!(ids(&r).is_empty(), "{r}");
    let (_, r) = a.json("POST", "/v1/search", Some(NEWS_READER), &json!({"library": "news", "query": "农业"}));
    assert_eq!(ids(&r), vec!["n1"]);
}
