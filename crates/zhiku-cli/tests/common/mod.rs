//! Helpers shared by the end-to-end tests: running the binary and checking its exit, and a
//! `zhiku serve` child process on a free port with raw HTTP/1.1 requests to it.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// Runs the binary under test with `args`, capturing its output.
pub fn zhiku(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zhiku")).args(args).output().expect("zhiku runs")
}

/// Asserts success and returns stdout.
pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a failure (not a panic) whose stderr contains `want`.
pub fn fails_with(o: &Output, want: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(want), "expected an error containing {want:?}, got: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
}

/// A multipart form with the boundary `zhikuBOUNDARY`: (name, optional file name, content).
pub fn multipart_form(fields: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file, content) in fields {
        body.extend_from_slice(b"--zhikuBOUNDARY\r\n");
        match file {
            Some(f) => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes()),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--zhikuBOUNDARY--\r\n");
    body
}

pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_zhiku"));
        cmd.arg("serve").args(["--port", "0"]).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).env_remove("ZHIKU_API_KEYS");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("zhiku serve starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("server printed its address").unwrap();
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, addr }
    }

    /// One request on a fresh connection: (status, lower-cased headers, body).
    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n", self.addr, body.len());
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let _ = s.write_all(body); // the server may answer 413 and close before reading it all
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let split = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete HTTP response");
        let head = String::from_utf8_lossy(&resp[..split]).to_lowercase();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, head, resp[split + 4..].to_vec())
    }

    pub fn json(&self, method: &str, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let bytes = if body.is_null() { Vec::new() } else { serde_json::to_vec(body).unwrap() };
        let (status, _, b) = self.raw(method, path, &headers, &bytes);
        (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
