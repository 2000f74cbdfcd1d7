//! API keys with scopes, read from a file or the environment, and an optional per-key rate limit.
//! Keys are compared in constant time and never logged or echoed.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Classify, embed, list models.
    Predict,
    /// Load and unload models, read metrics; implies `Predict`.
    Admin,
}

impl Scope {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "predict" => Some(Self::Predict),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Predict => "predict",
            Self::Admin => "admin",
        }
    }
}

struct Key {
    secret: Vec<u8>,
    scopes: Vec<Scope>,
    /// Libraries this key may use: (name, may write). `library:NAME` reads (search, documents),
    /// `library:NAME:write` also adds and removes.
    libraries: Vec<(String, bool)>,
}

/// One line of a key file: the key, its scopes and its libraries.
pub type ParsedKey = (String, Vec<Scope>, Vec<(String, bool)>);

/// Token bucket per key: `rate` requests per second, bursts up to `rate` (at least 1).
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct ApiKeys {
    keys: Vec<Key>,
    rate: Option<f64>,
    buckets: Mutex<HashMap<usize, Bucket>>,
}

pub enum Decision {
    Allow,
    /// No or unknown key.
    Unauthorized,
    /// A valid key without the scope.
    Forbidden,
    /// Over the key's rate; retry after this many seconds.
    RateLimited(u64),
}

impl ApiKeys {
    /// Parses `KEY SCOPE[,SCOPE...]` lines (blank lines and `#` comments skipped); `origin` names
    /// the source in errors ("keys.txt", "ZHIKU_API_KEYS").
    pub fn parse(text: &str, origin: &str) -> Result<Vec<ParsedKey>> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let key = parts.next().unwrap_or_default();
            let Some(scopes) = parts.next() else { bail!("{origin}:{}: expected `KEY SCOPE[,SCOPE...]`, found only a key", i + 1) };
            if parts.next().is_some() {
                bail!("{origin}:{}: expected `KEY SCOPE[,SCOPE...]`, found more fields", i + 1)
            }
            if key.len() < 16 {
                bail!("{origin}:{}: keys must be at least 16 characters", i + 1)
            }
            let mut parsed = Vec::new();
            let mut libraries = Vec::new();
            for s in scopes.split(',').map(str::trim) {
                if let Some(lib) = s.strip_prefix("library:") {
                    let (name, write) = match lib.strip_suffix(":write") {
                        Some(n) => (n, true),
                        None => (lib.strip_suffix(":read").unwrap_or(lib), false),
                    };
                    if !crate::valid_model_name(name) {
                        bail!("{origin}:{}: {s:?}: expected library:NAME or library:NAME:write", i + 1)
                    }
                    libraries.push((name.to_string(), write));
                } else {
                    parsed.push(Scope::parse(s).with_context(|| format!("{origin}:{}: unknown scope {s:?} (expected predict, admin, library:NAME or library:NAME:write)", i + 1))?);
                }
            }
            out.push((key.to_string(), parsed, libraries));
        }
        Ok(out)
    }

    /// Keys from `file` and from the `ZHIKU_API_KEYS` environment variable (same format, entries
    /// separated by newlines or `;`).
    pub fn load(file: Option<&Path>, env: Option<&str>, rate: Option<f64>) -> Result<Self> {
        let mut keys = Vec::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the API key file", path.display()))?;
            keys.extend(Self::parse(&text, &path.display().to_string())?);
        }
        if let Some(env) = env {
            keys.extend(Self::parse(&env.replace(';', "\n"), "ZHIKU_API_KEYS")?);
        }
        if let Some(r) = rate {
            if !(r > 0.0 && r.is_finite()) {
                bail!("--rate-limit must be a positive number of requests per second")
            }
        }
        Ok(Self { keys: keys.into_iter().map(|(k, s, l)| Key { secret: k.into_bytes(), scopes: s, libraries: l }).collect(), rate, buckets: Mutex::new(HashMap::new()) })
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks an `Authorization` header value against `needed`.
    pub fn check(&self, header: Option<&str>, needed: Scope) -> Decision {
        self.check_with(header, |k| k.scopes.contains(&needed) || k.scopes.contains(&Scope::Admin))
    }

    /// Checks a header against a library: reading it needs `library:NAME` (or `:write`),
    /// changing it `library:NAME:write`; `admin` may do both. Without keys, everything is allowed.
    pub fn check_library(&self, header: Option<&str>, library: &str, write: bool) -> Decision {
        self.check_with(header, |k| k.scopes.contains(&Scope::Admin) || k.libraries.iter().any(|(n, w)| n == library && (*w || !write)))
    }

    fn check_with(&self, header: Option<&str>, allowed: impl Fn(&Key) -> bool) -> Decision {
        if !self.enabled() {
            return Decision::Allow;
        }
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) else { return Decision::Unauthorized };
        // Every key is compared (no early exit), each in constant time.
        let mut found = None;
        for (i, k) in self.keys.iter().enumerate() {
            if constant_time_eq(&k.secret, token.as_bytes()) {
                found = Some(i);
            }
        }
        let Some(i) = found else { return Decision::Unauthorized };
        if !allowed(&self.keys[i]) {
            return Decision::Forbidden;
        }
        if let Some(rate) = self.rate {
            let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let burst = rate.max(1.0);
            let b = buckets.entry(i).or_insert(Bucket { tokens: burst, at: now });
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
            b.at = now;
            if b.tokens < 1.0 {
                return Decision::RateLimited(((1.0 - b.tokens) / rate).ceil().max(1.0) as u64);
            }
            b.tokens -= 1.0;
        }
        Decision::Allow
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "pppppppppppppppp1";
    const A: &str = "aaaaaaaaaaaaaaaa2";

    fn keys(rate: Option<f64>) -> ApiKeys {
        ApiKeys::load(None, Some(&format!("{P} predict;{A} admin")), rate).unwrap()
    }

    #[test]
    fn scopes_and_missing_keys() {
        let k = keys(None);
        assert!(matches!(k.check(None, Scope::Predict), Decision::Unauthorized));
        assert!(matches!(k.check(Some("Bearer nope-nope-nope-nope"), Scope::Predict), Decision::Unauthorized));
        assert!(matches!(k.check(Some(&format!("Bearer {P}")), Scope::Predict), Decision::Allow));
        assert!(matches!(k.check(Some(&format!("Bearer {P}")), Scope::Admin), Decision::Forbidden));
        assert!(matches!(k.check(Some(&format!("Bearer {A}")), Scope::Predict), Decision::Allow));
        assert!(matches!(k.check(Some(P), Scope::Predict), Decision::Unauthorized), "the Bearer prefix is required");
    }

    #[test]
    fn rate_limit_answers_retry_after() {
        let k = keys(Some(2.0));
        let h = format!("Bearer {P}");
        assert!(matches!(k.check(Some(&h), Scope::Predict), Decision::Allow));
        assert!(matches!(k.check(Some(&h), Scope::Predict), Decision::Allow));
        assert!(matches!(k.check(Some(&h), Scope::Predict), Decision::RateLimited(1)));
        // Another key has its own bucket.
        assert!(matches!(k.check(Some(&format!("Bearer {A}")), Scope::Predict), Decision::Allow));
    }

    #[test]
    fn library_scopes_read_and_write_only_their_library() {
        let r = "rrrrrrrrrrrrrrrr3";
        let w = "wwwwwwwwwwwwwwww4";
        let k = ApiKeys::load(None, Some(&format!("{P} predict;{A} admin;{r} library:news;{w} library:news:write,library:faq")), None).unwrap();
        let h = |k: &str| format!("Bearer {k}");
        assert!(matches!(k.check_library(Some(&h(r)), "news", false), Decision::Allow));
        assert!(matches!(k.check_library(Some(&h(r)), "news", true), Decision::Forbidden));
        assert!(matches!(k.check_library(Some(&h(r)), "faq", false), Decision::Forbidden));
        assert!(matches!(k.check_library(Some(&h(w)), "news", true), Decision::Allow));
        assert!(matches!(k.check_library(Some(&h(w)), "faq", true), Decision::Forbidden));
        assert!(matches!(k.check_library(Some(&h(P)), "news", false), Decision::Forbidden), "predict does not open libraries");
        assert!(matches!(k.check_library(Some(&h(A)), "faq", true), Decision::Allow));
        assert!(ApiKeys::parse("abcdefghijklmnopq library:a/b\n", "k").unwrap_err().to_string().contains("library:NAME"));
    }

    #[test]
    fn bad_key_files_name_the_line() {
        let e = ApiKeys::parse("# comment\nshort predict\n", "keys.txt").unwrap_err().to_string();
        assert!(e.contains("keys.txt:2"), "{e}");
        let e = ApiKeys::parse("abcdefghijklmnopq writer\n", "keys.txt").unwrap_err().to_string();
        assert!(e.contains("keys.txt:1") && e.contains("writer"), "{e}");
    }
}
