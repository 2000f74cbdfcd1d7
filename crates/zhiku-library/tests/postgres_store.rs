//! The PostgreSQL store against a real server with pgvector, started here on a free port in a
//! throwaway data directory and stopped at the end (`scripts/fetch-postgres.sh` provides the
//! server; `ZHIKU_PG_HOME` may point at another installation with pgvector). The same
//! documents and queries go into an embedded library too: both stores must return the same
//! results, and two handles on one PostgreSQL library (two servers) see each other's writes.

use std::path::{Path, PathBuf};
use zhiku_library::document::Document;
use zhiku_library::store::Filter;
use zhiku_library::{CreateOptions, Library, Mode, SearchOptions};

fn doc(id: &str, title: &str, text: &str, source: &str, date: Option<&str>, tags: &[&str]) -> Document {
    Document { id: id.into(), title: title.into(), text: text.into(), source: source.into(), date: date.map(str::to_string), tags: tags.iter().map(|t| t.to_string()).collect(), metadata: Default::default() }
}

fn corpus() -> Vec<Document> {
    vec![
        doc("bank", "银行新闻", "中国农业发展银行是一家政策性银行。它支持农村的发展。", "news", Some("2024-03-01"), &["金融"]),
        doc("farm", "农业", "今年的农业产量很高，农民很高兴。", "news", Some("2023-05-01"), &["农业"]),
        doc("rates", "Rates", "The central bank cut interest rates to support lending. Banks followed quickly.", "wire", Some("2024-06-10"), &["finance"]),
        doc("fruit", "Fruit", "Apple and banana prices rose at the market this week.", "wire", None, &[]),
    ]
}

fn ids(r: &[zhiku_library::SearchResult]) -> Vec<String> {
    r.iter().map(|x| x.id.clone()).collect()
}

#[test]
fn postgres_store_matches_the_embedded_store_and_is_shared() {
    let server = zhiku_library::testing::PgServer::start(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let dir = tempfile::tempdir().unwrap();
    let words = ["apple", "banana", "bank", "rates", "central", "market", "prices", "interest", "support", "lending"];
    zhiku_models::testing::write_tiny_model(&dir.path().join("encoder"), &words, 0.0, 5).unwrap();
    let create = CreateOptions { encoder: Some(dir.path().join("encoder")), ..Default::default() };
    let url = server.url("kb");
    let mut pg = Library::open_for_writing(Path::new(&url), &create).unwrap();
    let mut folder = Library::open_for_writing(&dir.path().join("lib"), &create).unwrap();
    let docs = corpus();
    let a = pg.add(&docs, |_| {}).unwrap();
    let b = folder.add(&docs, |_| {}).unwrap();
    assert_eq!((a.added, a.chunks), (b.added, b.chunks));
    assert!(pg.check().unwrap().consistent(), "{:?}", pg.check().unwrap());
    assert_eq!(pg.list().unwrap().len(), 4);

    // The same results from both stores, mode by mode.
    for (query, mode) in [("农业", Mode::Bm25), ("interest rates", Mode::Bm25), ("banana market", Mode::Dense), ("bank rates", Mode::Hybrid)] {
        let o = SearchOptions { mode: Some(mode), top_k: 3, ..Default::default() };
        let (x, y) = (pg.search(query, &o).unwrap(), folder.search(query, &o).unwrap());
        assert_eq!(ids(&x), ids(&y), "{query} ({mode:?})");
        for (p, e) in x.iter().zip(&y) {
            assert!((p.score - e.score).abs() < 0.05 * e.score.abs().max(1e-3) || mode != Mode::Dense, "{query}: {} against {}", p.score, e.score);
        }
    }
    // 农业 finds 中国农业发展银行 (jieba's search mode), and filters hold.
    let bank = pg.search("农业", &SearchOptions { mode: Some(Mode::Bm25), top_k: 5, ..Default::default() }).unwrap();
    assert!(ids(&bank).contains(&"bank".to_string()));
    let filtered = SearchOptions { mode: Some(Mode::Bm25), top_k: 5, filter: Filter { tags: vec!["金融".into()], date_from: Some("2024-01-01".into()), ..Default::default() }, ..Default::default() };
    assert_eq!(ids(&pg.search("农业", &filtered).unwrap()), vec!["bank"]);
    let dense_filtered = SearchOptions { mode: Some(Mode::Dense), top_k: 5, filter: Filter { sources: vec!["wire".into()], ..Default::default() }, ..Default::default() };
    let hits = pg.search("bank", &dense_filtered).unwrap();
    assert!(!hits.is_empty() && hits.iter().all(|h| h.source == "wire"));

    // A second server on the same library sees the first one's writes, and its own go through.
    let mut replica = Library::open_for_writing(Path::new(&url), &CreateOptions::default()).unwrap();
    assert_eq!(replica.config.dimensions, pg.config.dimensions, "the description comes from the database");
    replica.add(&[doc("new", "New", "Lemon prices fell at the market.", "wire", None, &[])], |_| {}).unwrap();
    assert!(ids(&pg.search("lemon", &SearchOptions { mode: Some(Mode::Bm25), ..Default::default() }).unwrap()).contains(&"new".to_string()));

    // Re-adding is a no-op, a change replaces the chunks, removal removes.
    assert_eq!(pg.add(&docs, |_| {}).unwrap().unchanged, 4);
    let mut changed = docs[3].clone();
    changed.text = "Cherry prices fell.".into();
    assert_eq!(pg.add(&[changed], |_| {}).unwrap().replaced, 1);
    assert!(pg.search("banana", &SearchOptions { mode: Some(Mode::Bm25), ..Default::default() }).unwrap().is_empty());
    assert!(pg.remove("bank").unwrap());
    assert!(!pg.remove("bank").unwrap());
    assert!(!ids(&pg.search("农业发展银行", &SearchOptions { mode: Some(Mode::Bm25), ..Default::default() }).unwrap()).contains(&"bank".to_string()));
    let check = pg.check().unwrap();
    assert!(check.consistent() && check.documents == 4, "{check:?}");
    assert_eq!(pg.document("rates").unwrap().unwrap().0.tags, vec!["finance"]);

    // Clear errors: a library that does not exist, a bad name, a server that is not there.
    let e = format!("{:#}", Library::open(Path::new(&server.url("missing"))).err().unwrap());
    assert!(e.contains("no such library"), "{e}");
    let e = format!("{:#}", Library::open(Path::new("postgres://zhiku@127.0.0.1:1/postgres#x")).err().unwrap());
    assert!(e.contains("cannot connect to PostgreSQL"), "{e}");
    assert!(Library::open(Path::new(&format!("postgres://zhiku@127.0.0.1:{}/postgres#Bad", server.port))).is_err());
}
