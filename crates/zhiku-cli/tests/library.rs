//! `zhiku library` end to end through the binary: adding, replacing, removing and searching
//! (BM25 with Chinese segmentation, dense and hybrid with an encoder), bad input, and a
//! `kill -9` in the middle of ingestion that loses nothing committed.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn zhiku() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zhiku"))
}

fn run(args: &[&str]) -> Output {
    zhiku().args(args).output().expect("zhiku runs")
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "zhiku failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn ids(v: &Value) -> Vec<String> {
    v["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

fn write_corpus(dir: &Path) -> PathBuf {
    let docs = dir.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("news.jsonl"),
        concat!(
            "{\"id\": \"bank\", \"title\": \"银行新闻\", \"text\": \"中国农业发展银行是一家政策性银行。它支持农村的发展。\", \"tags\": [\"金融\"], \"author\": \"王\"}\n",
            "{\"id\": \"fox\", \"title\": \"Foxes\", \"text\": \"The quick brown foxes are running across the field. Nobody saw them.\"}\n",
        ),
    )
    .unwrap();
    std::fs::write(docs.join("notes.txt"), "学习笔记\n\n今天学习了向量检索。明天复习全文检索。").unwrap();
    std::fs::write(docs.join("faq.csv"), "id,title,text,date\nq1,退货,七天无理由退货，运费由买家承担。,2024-05-01\n").unwrap();
    docs
}

#[test]
fn add_search_replace_remove_and_check_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let docs = write_corpus(dir.path());
    let lib = s(&dir.path().join("lib"));
    let report = json(&run(&["library", "add", "--library", &lib, &s(&docs), "--json"]));
    assert_eq!((report["added"].as_u64(), report["unchanged"].as_u64()), (Some(4), Some(0)), "{report}");

    // 农业 is inside the dictionary word 中国农业发展银行: jieba's search mode indexes it.
    let r = json(&run(&["library", "search", "--library", &lib, "农业", "--json"]));
    assert_eq!(r["mode"], "bm25");
    assert_eq!(ids(&r), ["bank"]);
    let hit = &r["results"][0];
    assert_eq!(hit["title"], "银行新闻");
    assert!(hit["highlighted"].as_str().unwrap().contains("**农业**"), "{hit}");
    assert_eq!(hit["bm25"]["rank"], 1);
    assert!(hit["dense"].is_null());
    assert_eq!(hit["start"], 0);
    // English is stemmed: "run" and "fox" find "running" and "foxes".
    assert_eq!(ids(&json(&run(&["library", "search", "-l", &lib, "run fox", "--json"])))[0], "fox");

    // Filters: tags (all of them), sources, dates (normalised to YYYY-MM-DD at ingestion).
    assert_eq!(ids(&json(&run(&["library", "search", "-l", &lib, "银行", "--tag", "金融", "--json"]))), ["bank"]);
    assert!(ids(&json(&run(&["library", "search", "-l", &lib, "银行", "--tag", "体育", "--json"]))).is_empty());
    assert_eq!(ids(&json(&run(&["library", "search", "-l", &lib, "退货", "--from", "2024-01-01", "--json"]))), ["q1"]);
    assert!(ids(&json(&run(&["library", "search", "-l", &lib, "退货", "--to", "2023/12/31", "--json"]))).is_empty());
    let notes = s(&docs.join("notes.txt"));
    assert_eq!(ids(&json(&run(&["library", "search", "-l", &lib, "检索", "--source", &notes, "--json"]))).len(), 1);
    assert!(ids(&json(&run(&["library", "search", "-l", &lib, "银行", "--source", &notes, "--json"]))).is_empty());
    let o = run(&["library", "search", "-l", &lib, "银行", "--from", "soon"]);
    assert!(stderr(&o).contains("soon: not a date"), "{}", stderr(&o));

    let list = json(&run(&["library", "list", "-l", &lib, "--json"]));
    assert_eq!(list["documents"].as_array().unwrap().len(), 4);
    let show = json(&run(&["library", "show", "-l", &lib, "bank", "--json"]));
    assert_eq!(show["document"]["metadata"]["author"], "王");
    assert_eq!(show["document"]["tags"][0], "金融");
    assert!(!show["chunks"].as_array().unwrap().is_empty());
    let q1 = json(&run(&["library", "show", "-l", &lib, "q1", "--json"]));
    assert_eq!(q1["document"]["date"], "2024-05-01");

    // Unchanged documents are skipped; a changed file replaces its chunks.
    let again = json(&run(&["library", "add", "-l", &lib, &s(&docs), "--json"]));
    assert_eq!((again["added"].as_u64(), again["unchanged"].as_u64()), (Some(0), Some(4)), "{again}");
    std::fs::write(docs.join("notes.txt"), "学习笔记\n\n今天学习了知识图谱。").unwrap();
    let changed = json(&run(&["library", "add", "-l", &lib, &s(&docs.join("notes.txt")), "--json"]));
    assert_eq!(changed["replaced"].as_u64(), Some(1), "{changed}");
    assert!(ids(&json(&run(&["library", "search", "-l", &lib, "向量", "--json"]))).is_empty(), "old chunks are gone");
    assert_eq!(json(&run(&["library", "search", "-l", &lib, "图谱", "--json"]))["results"].as_array().unwrap().len(), 1);

    let o = run(&["library", "remove", "-l", &lib, "bank"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(ids(&json(&run(&["library", "search", "-l", &lib, "农业", "--json"]))).is_empty());
    let o = run(&["library", "remove", "-l", &lib, "bank"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no document bank"), "{}", stderr(&o));
    let check = json(&run(&["library", "check", "-l", &lib, "--json"]));
    assert_eq!(check["consistent"], true, "{check}");
    assert_eq!(check["check"]["documents"], 3);
}

#[test]
fn bad_input_gets_clear_errors_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let docs = write_corpus(dir.path());
    std::fs::write(docs.join("bad.jsonl"), "{\"text\": \"fine row\"}\n{\"text\": oops}\n").unwrap();
    std::fs::write(docs.join("latin.txt"), b"caf\xe9").unwrap();
    let pdfs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pdf");
    for name in ["handbook.pdf", "broken.pdf", "locked.pdf", "scan.pdf"] {
        std::fs::copy(pdfs.join(name), docs.join(name)).unwrap();
    }
    let lib = s(&dir.path().join("lib"));
    let o = run(&["library", "add", "-l", &lib, &s(&docs)]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("bad.jsonl:2: invalid JSON"), "{err}");
    assert!(err.contains("latin.txt: not UTF-8 text (invalid byte at offset 3)"), "{err}");
    assert!(err.contains("broken.pdf: not a readable PDF"), "{err}");
    assert!(err.contains("locked.pdf: the PDF is encrypted"), "{err}");
    assert!(err.contains("scan.pdf: no text layer"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The good files went in all the same, the PDF with the page of each hit.
    assert_eq!(json(&run(&["library", "list", "-l", &lib, "--json"]))["documents"].as_array().unwrap().len(), 5);
    let hit = &json(&run(&["library", "search", "-l", &lib, "合作伙伴", "--json"]))["results"][0];
    assert_eq!((hit["title"].as_str(), hit["page"].as_u64()), (Some("知库产品手册 / zhiku handbook"), Some(1)), "{hit}");

    let o = run(&["library", "search", "-l", &lib, "x", "--mode", "dense"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("without an encoder"), "{}", stderr(&o));
    let long = "长".repeat(10_000);
    let o = run(&["library", "search", "-l", &lib, &long]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("10000 characters"), "{}", stderr(&o));
    let o = run(&["library", "search", "-l", &s(&dir.path().join("nowhere")), "x"]);
    assert!(stderr(&o).contains("not a library"), "{}", stderr(&o));
    let o = run(&["library", "add", "-l", &lib, &s(&dir.path().join("missing.txt"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("missing.txt: cannot read"), "{}", stderr(&o));

    // A folder written by a newer version is refused, not misread.
    let config = dir.path().join("lib/library.json");
    let text = std::fs::read_to_string(&config).unwrap().replace("\"format\": 1", "\"format\": 99");
    std::fs::write(&config, text).unwrap();
    let o = run(&["library", "list", "-l", &lib]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("newer zhiku"), "{}", stderr(&o));
}

fn tiny_encoder(dir: &Path) -> PathBuf {
    let words = ["apple", "banana", "cherry", "grape", "lemon", "mango", "car", "truck", "train", "plane", "boat", "bus"];
    let p = dir.join("encoder");
    zhiku_models::testing::write_tiny_model(&p, &words, 0.1, 1).unwrap();
    p
}

#[test]
fn dense_and_hybrid_search_show_each_retrievers_rank() {
    let dir = tempfile::tempdir().unwrap();
    let enc = tiny_encoder(dir.path());
    let docs = dir.path().join("fruit.jsonl");
    let texts = ["apple banana cherry", "car truck train", "plane boat bus", "grape lemon mango"];
    let lines: String = texts.iter().enumerate().map(|(i, t)| format!("{{\"id\": \"d{i}\", \"text\": \"{t}\", \"tags\": [\"t{}\"]}}\n", i % 2)).collect();
    std::fs::write(&docs, lines).unwrap();
    let lib = s(&dir.path().join("lib"));
    json(&run(&["library", "add", "-l", &lib, "--encoder", &s(&enc), &s(&docs), "--json"]));
    // A chunk's own text is its nearest neighbour.
    for (i, t) in texts.iter().enumerate() {
        let r = json(&run(&["library", "search", "-l", &lib, t, "--mode", "dense", "--json"]));
        assert_eq!(ids(&r)[0], format!("d{i}"), "{r}");
        assert!((r["results"][0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    }
    let r = json(&run(&["library", "search", "-l", &lib, "car truck train", "--json", "-k", "2"]));
    assert_eq!(r["mode"], "hybrid");
    assert_eq!(ids(&r)[0], "d1");
    let top = &r["results"][0];
    assert_eq!((top["bm25"]["rank"].as_u64(), top["dense"]["rank"].as_u64()), (Some(1), Some(1)), "{top}");
    assert_eq!(r["results"].as_array().unwrap().len(), 2);
    // A filtered dense search scans the allowed chunks exactly.
    let r = json(&run(&["library", "search", "-l", &lib, "car truck train", "--mode", "dense", "--tag", "t0", "--json"]));
    let mut got = ids(&r);
    got.sort();
    assert_eq!(got, ["d0", "d2"]);
    let check = json(&run(&["library", "check", "-l", &lib, "--json"]));
    assert_eq!((check["consistent"].as_bool(), check["check"]["vectors"].as_u64()), (Some(true), Some(4)), "{check}");
}

#[test]
fn kill_during_ingestion_loses_nothing_committed_and_searches_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let enc = tiny_encoder(dir.path());
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let words = ["apple", "banana", "cherry", "grape", "lemon", "mango", "car", "truck"];
    let n_files = 60;
    for f in 0..n_files {
        let lines: String = (0..20)
            .map(|i| {
                let k = f * 20 + i;
                let body: Vec<String> = (0..40).map(|j| format!("{} {}.", words[(k + j) % 8], words[(k * 7 + j) % 8])).collect();
                format!("{{\"id\": \"doc{k}\", \"text\": \"marker{k} {}\"}}\n", body.join(" "))
            })
            .collect();
        std::fs::write(docs.join(format!("part{f:03}.jsonl")), lines).unwrap();
    }
    let lib = dir.path().join("lib");
    let mut child = zhiku().args(["library", "add", "-l", &s(&lib), "--encoder", &s(&enc), "--chunk-size", "60", &s(&docs)]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Wait until some documents are in, search while the writer works, then kill it.
    let started = std::time::Instant::now();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let o = run(&["library", "list", "-l", &s(&lib), "--json"]);
        if o.status.success() && !json(&o)["documents"].as_array().unwrap().is_empty() {
            let r = run(&["library", "search", "-l", &s(&lib), "marker0", "--json"]);
            assert!(r.status.success(), "search during ingestion: {}", stderr(&r));
            break;
        }
        assert!(started.elapsed().as_secs() < 120, "no document was added");
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Reopening replays what the killed writer committed but had not indexed.
    let check = json(&run(&["library", "check", "-l", &s(&lib), "--json"]));
    assert_eq!(check["consistent"], true, "{check}");
    let listed = json(&run(&["library", "list", "-l", &s(&lib), "--json"]));
    let present: Vec<String> = listed["documents"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert!(!present.is_empty());
    assert!(present.len() < n_files * 20, "the writer finished before it was killed: the test proves nothing");
    for id in present.iter().take(5) {
        let marker = id.replace("doc", "marker");
        let r = json(&run(&["library", "search", "-l", &s(&lib), &marker, "--mode", "bm25", "--json"]));
        assert_eq!(ids(&r).first(), Some(id), "{marker}: {r}");
    }
    // Adding again finishes the job.
    let o = run(&["library", "add", "-l", &s(&lib), &s(&docs), "--json"]);
    let report = json(&o);
    assert_eq!(report["unchanged"].as_u64().unwrap() as usize, present.len(), "{report}");
    assert_eq!(json(&run(&["library", "list", "-l", &s(&lib), "--json"]))["documents"].as_array().unwrap().len(), n_files * 20);
    let check = json(&run(&["library", "check", "-l", &s(&lib), "--json"]));
    assert_eq!(check["consistent"], true, "{check}");
}

#[test]
fn faq_answers_from_the_best_matching_question_or_says_it_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let faq = dir.path().join("faq.jsonl");
    std::fs::write(
        &faq,
        concat!(
            "{\"question\": \"什么时候发货\", \"answer\": \"下单后48小时内发货哦\"}\n",
            "{\"question\": \"可以退货吗\", \"answer\": \"支持七天无理由退货\"}\n",
            "{\"question\": \"有没有优惠券\", \"answer\": \"店铺首页可以领券\"}\n",
        ),
    )
    .unwrap();
    let lib = s(&dir.path().join("lib"));
    json(&run(&["library", "add", "-l", &lib, &s(&faq), "--json"]));
    let r = json(&run(&["library", "faq", "-l", &lib, "请问什么时候发货呢", "--json"]));
    assert_eq!(r["found"], true, "{r}");
    assert_eq!(r["answer"], "下单后48小时内发货哦");
    assert_eq!(r["matched_question"], "什么时候发货");
    assert!(r["confidence"].as_f64().unwrap() >= 0.5);
    let r = json(&run(&["library", "faq", "-l", &lib, "今天天气怎么样", "--json"]));
    assert_eq!(r["found"], false, "{r}");
    assert!(r["answer"].is_null() || r["confidence"].as_f64().unwrap() < r["threshold"].as_f64().unwrap());
    let o = run(&["library", "faq", "-l", &lib, "可以退货吗", "--threshold", "2"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn mask_pii_masks_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("tickets.jsonl");
    std::fs::write(&f, "{\"id\": \"t1\", \"text\": \"客户电话13812345678，邮箱 li@example.com，身份证11010519491231002X。\", \"contact\": \"13912345678\"}\n").unwrap();
    let lib = s(&dir.path().join("lib"));
    let r = json(&run(&["library", "add", "-l", &lib, "--mask-pii", &s(&f), "--json"]));
    // The title (the text's first line here), the text and the metadata each count.
    assert_eq!(r["masked"], serde_json::json!({"email": 2, "phone": 3, "id_card": 2, "bank_card": 0}), "{r}");
    let show = json(&run(&["library", "show", "-l", &lib, "t1", "--json"]));
    assert_eq!(show["document"]["text"], "客户电话[PHONE]，邮箱 [EMAIL]，身份证[ID]。");
    assert_eq!(show["document"]["metadata"]["contact"], "[PHONE]");
    let raw = std::fs::read(dir.path().join("lib/library.sqlite")).unwrap();
    assert!(!raw.windows(11).any(|w| w == b"13812345678"), "the number is nowhere in the database");
    assert!(ids(&json(&run(&["library", "search", "-l", &lib, "13812345678", "--json"]))).is_empty());
}

fn qwen() -> PathBuf {
    let base = std::env::var_os("ZHIKU_MODELS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models"));
    base.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
}

/// Qwen2.5-0.5B answers from the library, citing the passage; what the passages do not
/// support is "not found" (here the model invents a stock code, and the answer drops it).
#[test]
fn ask_answers_with_citations_or_says_not_found() {
    let model = qwen();
    assert!(model.exists(), "{} missing: run scripts/fetch-llms.sh", model.display());
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("kb.jsonl");
    std::fs::write(
        &docs,
        concat!(
            "{\"id\": \"hq\", \"title\": \"公司介绍\", \"text\": \"知库科技成立于2019年，总部位于杭州市西湖区。公司主要提供在线课程和知识问答服务。\"}\n",
            "{\"id\": \"refund\", \"title\": \"退款政策\", \"text\": \"购买课程后七天内可以申请全额退款，超过七天不再退款。\"}\n",
            "{\"id\": \"hours\", \"title\": \"Opening hours\", \"text\": \"The support desk is open from 9 am to 6 pm on weekdays.\"}\n",
        ),
    )
    .unwrap();
    let lib = s(&dir.path().join("lib"));
    json(&run(&["library", "add", "-l", &lib, &s(&docs), "--json"]));
    let m = s(&model);
    let r = json(&run(&["library", "ask", "-l", &lib, "--model", &m, "知库科技的总部在哪里？", "--json"]));
    assert_eq!(r["found"], true, "{r}");
    let answer = r["answer"].as_str().unwrap();
    assert!(answer.contains("杭州") && answer.contains("[1]"), "{r}");
    assert_eq!((r["citations"][0]["id"].as_str(), r["citations"][0]["cited"].as_bool()), (Some("hq"), Some(true)), "{r}");
    let r = json(&run(&["library", "ask", "-l", &lib, "--model", &m, "When is the support desk open?", "--json"]));
    assert!(r["answer"].as_str().unwrap().contains("[1]") && r["found"] == true, "{r}");

    let r = json(&run(&["library", "ask", "-l", &lib, "--model", &m, "公司的股票代码是多少？", "--json"]));
    assert_eq!((r["found"].as_bool(), r["answer"].as_str()), (Some(false), Some("资料库中没有找到答案。")), "{r}");
    // Nothing retrieved: no generation at all.
    let r = json(&run(&["library", "ask", "-l", &lib, "--model", &m, "天气", "--json"]));
    assert_eq!((r["found"].as_bool(), r["completion_tokens"].as_u64()), (Some(false), Some(0)), "{r}");
    // Streaming: the answer arrives on stdout with its sources after it.
    let o = run(&["library", "ask", "-l", &lib, "--model", &m, "课程可以退款吗？"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("退款") && out.contains("[1] 退款政策 (refund"), "{out}");
}
