//! Rows of named fields from CSV, TSV or JSONL, streamed to a callback without a String per
//! field: the readers of interaction logs (millions of rows) and item tables share the error
//! reporting of the text readers (file and line) without their per-example allocations.

use crate::{DataError, Format};
use serde_json::Value;
use std::borrow::Cow;
use std::path::Path;

/// A column to read: its name in the file, the flag that renames it (for the error message),
/// and whether a row may lack it.
#[derive(Debug, Clone)]
pub struct Column<'a> {
    pub name: &'a str,
    pub flag: &'static str,
    pub required: bool,
}

/// Calls `row(line, fields)` for every non-blank row, `fields[k]` holding column `k`'s value
/// (None where an optional column is absent or empty). JSON numbers and booleans arrive as their
/// text. Returns the number of rows; an error from `row` stops the read and is returned as is.
pub fn for_each_row<F>(path: &Path, format: Option<Format>, columns: &[Column], mut row: F) -> Result<usize, DataError>
where
    F: FnMut(usize, &[Option<&str>]) -> Result<(), DataError>,
{
    if !path.exists() {
        return Err(DataError::NotFound { path: path.to_path_buf() });
    }
    let format = format.or_else(|| Format::from_path(path)).ok_or_else(|| DataError::UnknownFormat { path: path.to_path_buf() })?;
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    let n = match format {
        Format::Jsonl => jsonl_rows(path, bytes, columns, &mut row)?,
        Format::Csv => delimited_rows(path, bytes, b',', columns, &mut row)?,
        Format::Tsv => delimited_rows(path, bytes, b'\t', columns, &mut row)?,
    };
    if n == 0 {
        return Err(DataError::Empty { path: path.to_path_buf() });
    }
    Ok(n)
}

/// The column names of a table: a CSV/TSV header, or the keys of a JSONL file's first object.
pub fn column_names(path: &Path, format: Option<Format>) -> Result<Vec<String>, DataError> {
    let format = format.or_else(|| Format::from_path(path)).ok_or_else(|| DataError::UnknownFormat { path: path.to_path_buf() })?;
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::NotFound { path: path.to_path_buf() },
        _ => DataError::Io { path: path.to_path_buf(), source },
    })?;
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    let first = bytes.split(|&b| b == b'\n').enumerate().find(|(_, l)| !l.iter().all(u8::is_ascii_whitespace));
    let Some((i, first)) = first else { return Err(DataError::Empty { path: path.to_path_buf() }) };
    let line = i + 1;
    let text = std::str::from_utf8(first).map_err(|_| DataError::NotUtf8 { path: path.to_path_buf(), line })?.trim();
    match format {
        Format::Jsonl => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(obj)) => Ok(obj.keys().cloned().collect()),
            _ => Err(DataError::Malformed { path: path.to_path_buf(), line, detail: "expected a JSON object per line".into() }),
        },
        Format::Csv | Format::Tsv => {
            let delimiter = if format == Format::Csv { b',' } else { b'\t' };
            let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).has_headers(true).from_reader(text.as_bytes());
            let header = reader.headers().map_err(|e| DataError::Malformed { path: path.to_path_buf(), line, detail: e.to_string() })?;
            Ok(header.iter().map(|h| h.trim().to_string()).collect())
        }
    }
}

/// The non-blank records of a CSV/TSV reader with the 1-based line each starts on, counted from
/// its byte offset: the csv crate's own line count skips blank lines, and its position is where
/// the parser started, before any blank lines it then skipped.
pub(crate) struct Records<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    at: usize,
    newlines: usize,
    pub(crate) record: csv::ByteRecord,
}

impl<'a> Records<'a> {
    /// `bytes`: what the reader reads (after any byte-order mark).
    pub(crate) fn new(path: &'a Path, bytes: &'a [u8]) -> Self {
        Self { path, bytes, at: 0, newlines: 0, record: csv::ByteRecord::new() }
    }

    /// Reads the next non-blank record into `self.record` and returns its line; None at the end.
    pub(crate) fn next(&mut self, reader: &mut csv::Reader<&[u8]>) -> Result<Option<usize>, DataError> {
        loop {
            if !reader.read_byte_record(&mut self.record).map_err(|e| csv_error(self.path, e))? {
                return Ok(None);
            }
            let bytes = self.bytes;
            let mut at = self.record.position().map_or(0, |pos| pos.byte() as usize).min(bytes.len());
            while at < bytes.len() && matches!(bytes[at], b'\n' | b'\r') {
                at += 1;
            }
            self.newlines += bytes[self.at.min(at)..at].iter().filter(|&&b| b == b'\n').count();
            self.at = self.at.max(at);
            if self.record.len() == 1 && self.record.get(0).is_some_and(|f| f.is_empty()) {
                continue; // a blank line
            }
            return Ok(Some(self.newlines + 1));
        }
    }
}

/// A csv crate error as a `DataError` with the file and line.
pub(crate) fn csv_error(path: &Path, e: csv::Error) -> DataError {
    let line = e.position().map(|pos| pos.line() as usize).unwrap_or(0);
    let detail = match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => format!("expected {expected_len} fields like the header, found {len}"),
        _ => e.to_string(),
    };
    DataError::Malformed { path: path.to_path_buf(), line, detail }
}

/// The trimmed header names of a CSV/TSV reader.
pub(crate) fn header_names(path: &Path, reader: &mut csv::Reader<&[u8]>) -> Result<Vec<String>, DataError> {
    let header = reader.byte_headers().map_err(|e| csv_error(path, e))?.clone();
    header
        .iter()
        .map(|h| std::str::from_utf8(h).map(|s| s.trim().to_string()).map_err(|_| DataError::NotUtf8 { path: path.to_path_buf(), line: 1 }))
        .collect()
}

fn missing(path: &Path, line: usize, c: &Column, available: String) -> DataError {
    DataError::MissingColumn { path: path.to_path_buf(), line, column: c.name.to_string(), available, flag: c.flag }
}

fn jsonl_rows<F>(path: &Path, bytes: &[u8], columns: &[Column], row: &mut F) -> Result<usize, DataError>
where
    F: FnMut(usize, &[Option<&str>]) -> Result<(), DataError>,
{
    let mut n = 0;
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let text = std::str::from_utf8(raw).map_err(|_| DataError::NotUtf8 { path: path.to_path_buf(), line })?.trim();
        if text.is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| DataError::Malformed { path: path.to_path_buf(), line, detail: format!("not a JSON object: {e}") })?;
        let Value::Object(obj) = value else {
            return Err(DataError::Malformed { path: path.to_path_buf(), line, detail: "expected a JSON object per line".into() });
        };
        let mut texts: Vec<Option<Cow<str>>> = Vec::with_capacity(columns.len());
        for c in columns {
            let v = match obj.get(c.name) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.trim().is_empty() => None,
                Some(Value::String(s)) => Some(Cow::Borrowed(s.as_str())),
                Some(Value::Number(x)) => Some(Cow::Owned(x.to_string())),
                Some(Value::Bool(b)) => Some(Cow::Owned(b.to_string())),
                Some(Value::Array(items)) => {
                    // A list of tags or genres: its strings joined by spaces.
                    let parts: Vec<String> = items.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect();
                    Some(Cow::Owned(parts.join(" ")))
                }
                Some(other) => {
                    return Err(DataError::Malformed { path: path.to_path_buf(), line, detail: format!("column {:?} should be a string or number, found {other}", c.name) })
                }
            };
            if v.is_none() && c.required {
                return Err(missing(path, line, c, obj.keys().cloned().collect::<Vec<_>>().join(", ")));
            }
            texts.push(v);
        }
        let fields: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
        row(line, &fields)?;
        n += 1;
    }
    Ok(n)
}

fn delimited_rows<F>(path: &Path, bytes: &[u8], delimiter: u8, columns: &[Column], row: &mut F) -> Result<usize, DataError>
where
    F: FnMut(usize, &[Option<&str>]) -> Result<(), DataError>,
{
    let p = || path.to_path_buf();
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).has_headers(true).flexible(false).from_reader(bytes);
    let header = header_names(path, &mut reader)?;
    let mut index = Vec::with_capacity(columns.len());
    for c in columns {
        match header.iter().position(|h| h == c.name) {
            Some(i) => index.push(Some(i)),
            None if !c.required => index.push(None),
            None => return Err(missing(path, 1, c, header.join(", "))),
        }
    }
    let mut records = Records::new(path, bytes);
    let mut n = 0;
    while let Some(line) = records.next(&mut reader)? {
        let record = &records.record;
        let mut fields: Vec<Option<&str>> = Vec::with_capacity(columns.len());
        for (c, idx) in columns.iter().zip(&index) {
            let v = match idx {
                Some(i) => {
                    let raw = record.get(*i).unwrap_or_default();
                    let s = std::str::from_utf8(raw).map_err(|_| DataError::NotUtf8 { path: p(), line })?.trim();
                    (!s.is_empty()).then_some(s)
                }
                None => None,
            };
            if v.is_none() && c.required {
                return Err(DataError::EmptyText { path: p(), line, column: c.name.to_string() });
            }
            fields.push(v);
        }
        row(line, &fields)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rows = Vec<(usize, Vec<Option<String>>)>;

    fn collect(name: &str, body: &str, cols: &[Column]) -> Result<Rows, DataError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let mut out = Vec::new();
        for_each_row(&path, None, cols, |line, f| {
            out.push((line, f.iter().map(|x| x.map(str::to_string)).collect()));
            Ok(())
        })?;
        Ok(out)
    }

    const COLS: [Column; 2] =
        [Column { name: "user_id", flag: "user-column", required: true }, Column { name: "rating", flag: "rating-column", required: false }];

    #[test]
    fn tsv_csv_and_jsonl_give_the_same_rows() {
        let tsv = collect("a.tsv", "user_id\titem\trating\nu1\ti1\t4\n\nu2\ti2\t\n", &COLS).unwrap();
        let csv = collect("a.csv", "user_id,item,rating\nu1,i1,4\nu2,i2,\n", &COLS).unwrap();
        let jsonl = collect("a.jsonl", "{\"user_id\":\"u1\",\"rating\":4}\n{\"user_id\":\"u2\"}\n", &COLS).unwrap();
        let want = vec![vec![Some("u1".to_string()), Some("4".to_string())], vec![Some("u2".to_string()), None]];
        for got in [&tsv, &csv, &jsonl] {
            assert_eq!(got.iter().map(|r| r.1.clone()).collect::<Vec<_>>(), want);
        }
        assert_eq!(tsv[1].0, 4, "the line of the second record, after a blank line");
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = collect("b.tsv", "item\trating\ni1\t3\n", &COLS).unwrap_err().to_string();
        assert!(e.contains("b.tsv:1") && e.contains("user_id") && e.contains("--user-column"), "{e}");
        let e = collect("c.jsonl", "{\"user_id\":\"u\"}\n{oops\n", &COLS).unwrap_err().to_string();
        assert!(e.contains("c.jsonl:2"), "{e}");
        let e = collect("d.tsv", "user_id\trating\n", &COLS).unwrap_err().to_string();
        assert!(e.contains("no examples"), "{e}");
        let e = collect("e.tsv", "user_id\trating\nu\t1\textra\n", &COLS).unwrap_err().to_string();
        assert!(e.contains("e.tsv:2"), "{e}");
    }
}
