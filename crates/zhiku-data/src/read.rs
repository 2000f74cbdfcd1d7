use crate::DataError;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Tsv,
    Jsonl,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "tsv" | "tab" => Some(Format::Tsv),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            _ => None,
        }
    }

    pub fn from_path(path: &Path) -> Option<Self> {
        Self::parse(path.extension()?.to_str()?)
    }
}

/// Which columns hold what.
#[derive(Debug, Clone)]
pub struct Columns {
    pub text: String,
    /// The second text of a pair (sentence-pair tasks: question/answer, query/document).
    pub pair: Option<String>,
    pub label: String,
    /// For multi-label data in CSV/TSV: the separator inside the label cell (e.g. `|`).
    /// In JSONL a label may also be a JSON array.
    pub label_separator: Option<String>,
}

impl Default for Columns {
    fn default() -> Self {
        Self { text: "text".into(), pair: None, label: "label".into(), label_separator: None }
    }
}

/// One labelled (or unlabelled) text, with the line it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    pub pair: Option<String>,
    pub labels: Vec<String>,
    /// 1-based line in the source file (for CSV, the line where the record starts).
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    pub examples: Vec<Example>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.examples.len()
    }
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The first texts, in file order.
    pub fn texts(&self) -> Vec<&str> {
        self.examples.iter().map(|e| e.text.as_str()).collect()
    }

    /// The second texts of a sentence-pair data set (None when the pair column was not read).
    pub fn pairs(&self) -> Option<Vec<&str>> {
        self.examples.first()?.pair.as_ref()?;
        Some(self.examples.iter().map(|e| e.pair.as_deref().unwrap_or("")).collect())
    }
}

/// Reads a data file. `need_labels`: every row must have a non-empty label (training and
/// evaluation); otherwise a missing label column is fine (prediction).
pub fn read_file(path: &Path, columns: &Columns, format: Option<Format>, need_labels: bool) -> Result<Dataset, DataError> {
    if !path.exists() {
        return Err(DataError::NotFound { path: path.to_path_buf() });
    }
    let format = format.or_else(|| Format::from_path(path)).ok_or_else(|| DataError::UnknownFormat { path: path.to_path_buf() })?;
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let examples = match format {
        Format::Jsonl => read_jsonl(path, &bytes, columns, need_labels)?,
        Format::Csv => read_delimited(path, &bytes, b',', columns, need_labels)?,
        Format::Tsv => read_delimited(path, &bytes, b'\t', columns, need_labels)?,
    };
    if examples.is_empty() {
        return Err(DataError::Empty { path: path.to_path_buf() });
    }
    Ok(Dataset { path: path.to_path_buf(), examples })
}

fn split_labels(raw: &str, sep: Option<&str>) -> Vec<String> {
    match sep {
        Some(s) if !s.is_empty() => raw.split(s).map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect(),
        _ => vec![raw.trim().to_string()],
    }
}

fn read_jsonl(path: &Path, bytes: &[u8], cols: &Columns, need_labels: bool) -> Result<Vec<Example>, DataError> {
    let p = || path.to_path_buf();
    let mut out = Vec::new();
    for (i, raw_line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let text = std::str::from_utf8(raw_line).map_err(|_| DataError::NotUtf8 { path: p(), line })?;
        let text = text.trim_start_matches('\u{feff}').trim();
        if text.is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| DataError::Malformed { path: p(), line, detail: format!("not a JSON object: {e}") })?;
        let Value::Object(obj) = value else {
            return Err(DataError::Malformed { path: p(), line, detail: "expected a JSON object per line".into() });
        };
        let available = || obj.keys().cloned().collect::<Vec<_>>().join(", ");
        let get_text = |name: &str, flag: &'static str| -> Result<String, DataError> {
            match obj.get(name) {
                None => Err(DataError::MissingColumn { path: p(), line, column: name.into(), available: available(), flag }),
                Some(Value::String(s)) if s.trim().is_empty() => Err(DataError::EmptyText { path: p(), line, column: name.into() }),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                Some(other) => Err(DataError::Malformed { path: p(), line, detail: format!("column {name:?} should be a string, found {other}") }),
            }
        };
        let text_value = get_text(&cols.text, "text-column")?;
        let pair = match &cols.pair {
            Some(c) => Some(get_text(c, "pair-column")?),
            None => None,
        };
        let labels = match obj.get(&cols.label) {
            None if !need_labels => Vec::new(),
            None => return Err(DataError::MissingColumn { path: p(), line, column: cols.label.clone(), available: available(), flag: "label-column" }),
            Some(Value::String(s)) => split_labels(s, cols.label_separator.as_deref()),
            Some(Value::Number(n)) => vec![n.to_string()],
            Some(Value::Bool(b)) => vec![b.to_string()],
            Some(Value::Array(items)) => {
                let mut v = Vec::with_capacity(items.len());
                for it in items {
                    match it {
                        Value::String(s) => v.push(s.trim().to_string()),
                        Value::Number(n) => v.push(n.to_string()),
                        other => return Err(DataError::Malformed { path: p(), line, detail: format!("label list holds {other}, expected strings") }),
                    }
                }
                v
            }
            Some(Value::Null) if !need_labels => Vec::new(),
            Some(other) => return Err(DataError::Malformed { path: p(), line, detail: format!("label should be a string, number or list, found {other}") }),
        };
        if need_labels && labels.iter().all(|l| l.is_empty()) && !matches!(obj.get(&cols.label), Some(Value::Array(_))) {
            return Err(DataError::EmptyText { path: p(), line, column: cols.label.clone() });
        }
        out.push(Example { text: text_value, pair, labels, line });
    }
    Ok(out)
}

fn read_delimited(path: &Path, bytes: &[u8], delimiter: u8, cols: &Columns, need_labels: bool) -> Result<Vec<Example>, DataError> {
    let p = || path.to_path_buf();
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).has_headers(true).flexible(false).from_reader(bytes);
    let header = crate::table::header_names(path, &mut reader)?;
    let available = header.join(", ");
    let find = |name: &str, flag: &'static str| -> Result<usize, DataError> {
        header.iter().position(|h| h == name).ok_or_else(|| DataError::MissingColumn { path: p(), line: 1, column: name.into(), available: available.clone(), flag })
    };
    let text_idx = find(&cols.text, "text-column")?;
    let pair_idx = cols.pair.as_deref().map(|c| find(c, "pair-column")).transpose()?;
    let label_idx = match find(&cols.label, "label-column") {
        Ok(i) => Some(i),
        Err(_) if !need_labels => None,
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let mut records = crate::table::Records::new(path, bytes);
    while let Some(line) = records.next(&mut reader)? {
        let record = &records.record;
        let field = |idx: usize, name: &str| -> Result<String, DataError> {
            let raw = record.get(idx).unwrap_or_default();
            let s = std::str::from_utf8(raw).map_err(|_| DataError::NotUtf8 { path: p(), line })?;
            if s.trim().is_empty() {
                return Err(DataError::EmptyText { path: p(), line, column: name.into() });
            }
            Ok(s.to_string())
        };
        let text = field(text_idx, &cols.text)?;
        let pair = match (pair_idx, &cols.pair) {
            (Some(i), Some(name)) => Some(field(i, name)?),
            _ => None,
        };
        let labels = match label_idx {
            Some(i) => split_labels(&field(i, &cols.label)?, cols.label_separator.as_deref()),
            None => Vec::new(),
        };
        out.push(Example { text, pair, labels, line });
    }
    Ok(out)
}

/// Writes examples as JSONL (`text`, optional `text_pair`, `label` or a label list), atomically.
pub fn write_jsonl(path: &Path, examples: &[Example], multi_label: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for e in examples {
            let mut obj = serde_json::Map::new();
            obj.insert("text".into(), Value::String(e.text.clone()));
            if let Some(pair) = &e.pair {
                obj.insert("text_pair".into(), Value::String(pair.clone()));
            }
            let label = if multi_label {
                Value::Array(e.labels.iter().cloned().map(Value::String).collect())
            } else {
                Value::String(e.labels.first().cloned().unwrap_or_default())
            };
            obj.insert("label".into(), label);
            serde_json::to_writer(&mut f, &Value::Object(obj))?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
    }
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn reads_all_three_formats() {
        let d = tempfile::tempdir().unwrap();
        let cols = Columns::default();
        let j = write(d.path(), "a.jsonl", "{\"text\":\"你好\",\"label\":\"greet\"}\n\n{\"text\":\"bye\",\"label\":2}\n".as_bytes());
        let ds = read_file(&j, &cols, None, true).unwrap();
        assert_eq!(ds.examples.len(), 2);
        assert_eq!(ds.examples[1].labels, vec!["2"]);
        assert_eq!(ds.examples[1].line, 3);
        let c = write(d.path(), "a.csv", b"id,text,label\n1,\"hello, world\",x\n2,\"multi\nline\",y\n3,z,x\n");
        let ds = read_file(&c, &cols, None, true).unwrap();
        assert_eq!(ds.examples[0].text, "hello, world");
        assert_eq!(ds.examples[1].text, "multi\nline");
        assert_eq!(ds.examples[2].line, 5);
        let t = write(d.path(), "a.tsv", b"text\tlabel\nhi\ta|b\n");
        let cols_multi = Columns { label_separator: Some("|".into()), ..Columns::default() };
        let ds = read_file(&t, &cols_multi, None, true).unwrap();
        assert_eq!(ds.examples[0].labels, vec!["a", "b"]);
    }

    #[test]
    fn errors_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let cols = Columns::default();
        let check = |name: &str, content: &[u8], want: &str| {
            let p = write(d.path(), name, content);
            let err = read_file(&p, &cols, None, true).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains(want), "{name}: {err}");
        };
        check("m.jsonl", b"{\"text\":\"a\",\"label\":\"x\"}\n{\"text\": broken\n", "m.jsonl:2: not a JSON object");
        check("e.jsonl", b"{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"  \",\"label\":\"x\"}\n", "e.jsonl:2: column \"text\" is empty");
        check("c.jsonl", b"{\"body\":\"a\",\"label\":\"x\"}\n", "c.jsonl:1: no column \"text\"");
        check("u.jsonl", b"{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"\xff\xfe\",\"label\":\"x\"}\n", "u.jsonl:2: not valid UTF-8");
        check("r.csv", b"text,label\na,x\nb,x,extra\n", "r.csv:3: expected 2 fields");
        // Blank lines count: the empty label is on line 5 of the file.
        check("blank.tsv", b"text\tlabel\na\tx\n\n\nb\t\n", "blank.tsv:5: column \"label\" is empty");
        check("h.csv", b"body,label\na,x\n", "h.csv:1: no column \"text\"");
        check("v.csv", b"text,label\na,x\n\xc4\xe3,y\n", "v.csv:3: not valid UTF-8");
        check("z.csv", b"text,label\n", "holds no examples");
        check("q.txt", b"x", "unknown file type");
        let err = read_file(&d.path().join("missing.csv"), &cols, None, true).unwrap_err().to_string();
        assert!(err.contains("missing.csv: no such file"), "{err}");
    }

    #[test]
    fn labels_optional_for_prediction() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "p.csv", b"text\nhello\n");
        let ds = read_file(&p, &Columns::default(), None, false).unwrap();
        assert!(ds.examples[0].labels.is_empty());
    }

    #[test]
    fn jsonl_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let ex = vec![Example { text: "a\"b".into(), pair: Some("c".into()), labels: vec!["x".into()], line: 1 }];
        let p = d.path().join("o.jsonl");
        write_jsonl(&p, &ex, false).unwrap();
        let cols = Columns { pair: Some("text_pair".into()), ..Columns::default() };
        let back = read_file(&p, &cols, None, true).unwrap();
        assert_eq!(back.examples, ex);
    }
}
