//! Documents as the library stores them, and reading them from files: `.txt`, `.md`,
//! `.html`, `.pdf`, `.jsonl` and `.csv` (one document per file or per row), and with the models
//! of [`MediaReaders`], audio (transcribed) and images (OCR). Errors name the
//! file and, for rows, the line (for PDF pages, the page); a non-UTF-8 file names the byte
//! offset.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use crate::media::MediaReaders;
use std::path::{Path, PathBuf};

/// Files larger than this are refused (a library holds texts, not dumps).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Document {
    pub id: String,
    pub title: String,
    pub text: String,
    /// Where it came from (the file, and the row for JSONL and CSV), unless a field says.
    pub source: String,
    pub date: Option<String>,
    pub tags: Vec<String>,
    /// Every other field of a JSONL or CSV row.
    pub metadata: Map<String, Value>,
}

impl Document {
    /// A hash of everything stored about the document: re-adding an identical one is a no-op.
    pub fn content_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(self).expect("a document serialises"));
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// An id for a document that has none: from where it came from, so that adding the same file
/// again replaces it.
pub fn derived_id(source: &str) -> String {
    let h = Sha256::digest(source.as_bytes());
    format!("doc-{}", h.iter().take(6).map(|b| format!("{b:02x}")).collect::<String>())
}

/// The files under `paths` the library can read (directories are walked, sorted by name).
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("{}: cannot read", p.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p).with_context(|| format!("{}: cannot list", p.display()))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) = entries.into_iter().partition(|e| e.is_dir());
            out.extend(files.into_iter().filter(|f| kind(f).is_some()));
            out.extend(collect_files(&dirs)?);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Markdown,
    Html,
    Jsonl,
    Csv,
    Pdf,
    /// WAV, FLAC, MP3, Ogg (Vorbis, Opus): transcribed.
    Audio,
    /// PNG, JPEG: read by OCR.
    Image,
}

pub fn kind(path: &Path) -> Option<Kind> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "txt" | "text" => Kind::Text,
        "md" | "markdown" => Kind::Markdown,
        "html" | "htm" => Kind::Html,
        "jsonl" | "ndjson" => Kind::Jsonl,
        "csv" => Kind::Csv,
        "pdf" => Kind::Pdf,
        "wav" | "flac" | "mp3" | "ogg" | "oga" | "opus" => Kind::Audio,
        "png" | "jpg" | "jpeg" => Kind::Image,
        _ => return None,
    })
}

/// Reads the documents of one text file (media files need [`read_file_with`]).
pub fn read_file(path: &Path) -> Result<Vec<Document>> {
    read_file_with(path, &MediaReaders::default())
}

/// Reads the documents of one file; audio and images go through `media`'s models.
pub fn read_file_with(path: &Path, media: &MediaReaders) -> Result<Vec<Document>> {
    let Some(kind) = kind(path) else {
        bail!("{}: unsupported file type (the library reads .txt, .md, .html, .pdf, .jsonl, .csv, audio: .wav, .flac, .mp3, .ogg, .opus, and images: .png, .jpg)", path.display())
    };
    match kind {
        // Their decoders bound them (4 hours of audio, 120 megapixels).
        Kind::Audio => return Ok(vec![crate::media::read_audio(path, media)?]),
        Kind::Image => return Ok(vec![crate::media::read_image(path, media)?]),
        _ => {}
    }
    let size = std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?.len();
    if size > MAX_FILE_BYTES {
        bail!("{}: {} MB is over the limit of {} MB per file; split it", path.display(), size >> 20, MAX_FILE_BYTES >> 20)
    }
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if kind == Kind::Pdf {
        return read_pdf(path, &bytes, media);
    }
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t.strip_prefix('\u{feff}').unwrap_or(t),
        Err(e) => bail!("{}: not UTF-8 text (invalid byte at offset {})", path.display(), e.valid_up_to()),
    };
    let source = path.display().to_string();
    match kind {
        Kind::Text | Kind::Markdown | Kind::Html => {
            let (title, body) = match kind {
                Kind::Html => html_to_text(text),
                Kind::Markdown => markdown_title(text),
                _ => (first_line_title(text), text.to_string()),
            };
            let body = body.trim().to_string();
            if body.is_empty() {
                bail!("{}: empty document", path.display())
            }
            let title = title.unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
            Ok(vec![Document { id: derived_id(&source), title, text: body, source, date: None, tags: Vec::new(), metadata: Map::new() }])
        }
        Kind::Jsonl => read_jsonl(path, text),
        Kind::Csv => read_csv(path, text),
        Kind::Pdf | Kind::Audio | Kind::Image => unreachable!("read above"),
    }
}

/// A PDF is one document: its pages' text, the title and date from its information
/// dictionary, and `pages` (count) and `page_starts` (character offsets) as metadata, so a
/// chunk's span tells its page. Pages without a text layer (scans) are rendered and read by
/// OCR when `media` has a model (listed in `ocr_pages`).
fn read_pdf(path: &Path, bytes: &[u8], media: &MediaReaders) -> Result<Vec<Document>> {
    let mut pdf = crate::pdf::read(path, bytes)?;
    let blank: Vec<usize> = pdf.pages.iter().enumerate().filter(|(_, p)| p.trim().is_empty()).map(|(i, _)| i + 1).collect();
    let mut ocr_pages = Vec::new();
    if let (Some(ocr), false) = (&media.ocr, blank.is_empty()) {
        for (n, image) in zhiku_media::pdf::render_pages(bytes, &path.display().to_string(), Some(&blank))? {
            let page = ocr.recognize(&image).with_context(|| format!("{}: page {n}: OCR failed", path.display()))?;
            pdf.pages[n - 1] = page.text;
            ocr_pages.push(n);
        }
    }
    if pdf.pages.iter().all(|p| p.trim().is_empty()) {
        let hint = if media.ocr.is_some() { "and OCR found no text on them" } else { "give an OCR model (--ocr-model DIR) to read them" };
        bail!("{}: no text layer on any of its {} pages (a scan?); {hint}", path.display(), pdf.pages.len())
    }
    let (text, starts) = pdf.joined();
    let source = path.display().to_string();
    let title = pdf.title.clone().or_else(|| first_line_title(&text)).unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    let mut metadata = Map::new();
    metadata.insert("pages".into(), Value::from(pdf.pages.len()));
    metadata.insert("page_starts".into(), Value::from(starts));
    if !ocr_pages.is_empty() {
        metadata.insert("ocr_pages".into(), Value::from(ocr_pages));
    }
    Ok(vec![Document { id: derived_id(&source), title, text, source, date: pdf.date, tags: Vec::new(), metadata }])
}

/// `parts` joined by `sep`, and the character offset where each part starts (how a document
/// remembers its pages, transcript segments and OCR lines).
pub fn join_with_offsets<'a>(parts: impl IntoIterator<Item = &'a str>, sep: &str) -> (String, Vec<usize>) {
    let (mut text, mut starts, mut chars) = (String::new(), Vec::new(), 0);
    let sep_chars = sep.chars().count();
    for (i, p) in parts.into_iter().enumerate() {
        if i > 0 {
            text.push_str(sep);
            chars += sep_chars;
        }
        starts.push(chars);
        text.push_str(p);
        chars += p.chars().count();
    }
    (text, starts)
}

/// The page (from 1) that character offset `at` of a PDF document's text falls on.
pub fn page_of(metadata: &Map<String, Value>, at: usize) -> Option<usize> {
    let starts = metadata.get("page_starts")?.as_array()?;
    Some(starts.iter().filter_map(Value::as_u64).take_while(|&s| s as usize <= at).count().max(1))
}

fn first_line_title(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(80).collect())
}

fn markdown_title(text: &str) -> (Option<String>, String) {
    let title = text.lines().map(str::trim).find(|l| l.starts_with("# ")).map(|l| l[2..].trim().to_string()).or_else(|| first_line_title(text));
    (title, text.to_string())
}

/// Visible text of an HTML page: tags dropped (script and style with their content), block
/// elements ending lines, the common entities decoded; the title from `<title>`.
pub fn html_to_text(html: &str) -> (Option<String>, String) {
    let mut out = String::new();
    let mut title = None;
    let lower = html.to_ascii_lowercase();
    let mut i = 0;
    let bytes = html.as_bytes();
    while i < bytes.len() {
        if bytes[i] == b'<' {
            let Some(close) = html[i..].find('>') else { break };
            let tag = lower[i + 1..i + close].trim_start_matches('/');
            let name: String = tag.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            let end = i + close + 1;
            if (name == "script" || name == "style" || name == "title") && !lower[i + 1..].starts_with('/') {
                let closing = format!("</{name}");
                let stop = lower[end..].find(&closing).map_or(html.len(), |p| end + p);
                if name == "title" {
                    title = Some(decode_entities(html[end..stop].trim()));
                }
                i = lower[stop..].find('>').map_or(html.len(), |p| stop + p + 1);
                continue;
            }
            if matches!(name.as_str(), "p" | "div" | "br" | "li" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "tr" | "section" | "article") {
                out.push('\n');
            }
            i = end;
        } else {
            let next = html[i..].find('<').map_or(html.len(), |p| i + p);
            out.push_str(&decode_entities(&html[i..next]));
            i = next;
        }
    }
    // Collapse runs of blank lines and spaces.
    let lines: Vec<String> = out.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    let mut text = String::new();
    let mut blank = false;
    for l in lines {
        if l.is_empty() {
            blank = !text.is_empty();
            continue;
        }
        if !text.is_empty() {
            text.push_str(if blank { "\n\n" } else { "\n" });
        }
        text.push_str(&l);
        blank = false;
    }
    (title.filter(|t| !t.is_empty()), text)
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        let end = rest[..rest.len().min(12)].find(';');
        let decoded = end.and_then(|e| {
            let name = &rest[1..e];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" | "#39" => Some('\''),
                "nbsp" => Some(' '),
                _ if name.starts_with("#x") || name.starts_with("#X") => u32::from_str_radix(&name[2..], 16).ok().and_then(char::from_u32),
                _ if name.starts_with('#') => name[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            }?;
            Some((c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A row's fields as a document: `id`, `title`, `text` (required; `content` and `body` are
/// taken too), `source`, `date`, `tags` (a list, or a string split on commas); the rest is
/// metadata.
pub fn row_document(mut fields: Map<String, Value>, source: String, at: &str) -> Result<Document> {
    let take_str = |fields: &mut Map<String, Value>, key: &str| -> Option<String> {
        match fields.remove(key)? {
            Value::String(s) => Some(s),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    };
    // A question-answer row (FAQ): the question is what is searched, the answer stays in the
    // metadata for `Library::faq`.
    let faq_question = if !fields.contains_key("text") && fields.contains_key("answer") { fields.get("question").and_then(|q| q.as_str()).map(str::to_string) } else { None };
    let text = match faq_question {
        Some(q) => q,
        None => ["text", "content", "body"].iter().find_map(|k| take_str(&mut fields, k)).unwrap_or_default(),
    };
    if text.trim().is_empty() {
        bail!("{at}: the row has no text (a \"text\" field, or \"question\" and \"answer\", is required and must not be empty)")
    }
    let id = take_str(&mut fields, "id").filter(|s| !s.trim().is_empty()).unwrap_or_else(|| derived_id(&source));
    let title = take_str(&mut fields, "title").unwrap_or_else(|| first_line_title(&text).unwrap_or_default());
    let src = take_str(&mut fields, "source").unwrap_or(source);
    // Dates are kept as YYYY-MM-DD when they read as one (so that ranges compare), else as given.
    let date = take_str(&mut fields, "date").map(|d| normalize_date(&d).unwrap_or(d));
    let tags = match fields.remove("tags") {
        Some(Value::Array(a)) => a.into_iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect(),
        Some(Value::String(s)) => s.split([',', '，', ';']).map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![other.to_string()],
    };
    Ok(Document { id, title, text: text.trim().to_string(), source: src, date, tags, metadata: fields })
}

/// `2017/2/7`, `2017-02-07`, `2017.2.7` or `2017年2月7日` (anything may follow) as `2017-02-07`.
pub fn normalize_date(s: &str) -> Option<String> {
    let s = s.trim();
    let mut parts = Vec::new();
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            if !num.is_empty() {
                parts.push(std::mem::take(&mut num));
            }
            if parts.len() >= 3 || !matches!(c, '-' | '/' | '.' | '年' | '月' | '日') {
                break;
            }
        }
    }
    if !num.is_empty() && parts.len() < 3 {
        parts.push(num);
    }
    let [y, m, d] = parts.get(..3)? else { return None };
    let (y, m, d): (u32, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if y.to_string().len() != 4 || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

fn read_jsonl(path: &Path, text: &str) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let fields: Map<String, Value> = match serde_json::from_str(line) {
            Ok(Value::Object(m)) => m,
            Ok(_) => bail!("{at}: each line must be a JSON object"),
            Err(e) => bail!("{at}: invalid JSON ({e})"),
        };
        docs.push(row_document(fields, format!("{}#{}", path.display(), i + 1), &at)?);
    }
    if docs.is_empty() {
        bail!("{}: no documents (empty file)", path.display())
    }
    Ok(docs)
}

fn read_csv(path: &Path, text: &str) -> Result<Vec<Document>> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(text.as_bytes());
    let headers: Vec<String> = reader.headers().with_context(|| format!("{}:1: cannot read the header row", path.display()))?.iter().map(|h| h.trim().to_string()).collect();
    let faq = headers.iter().any(|h| h == "question") && headers.iter().any(|h| h == "answer");
    if !faq && !headers.iter().any(|h| h == "text" || h == "content" || h == "body") {
        bail!("{}:1: no \"text\" column, nor \"question\" and \"answer\" (columns: {})", path.display(), headers.join(", "))
    }
    let mut docs = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            anyhow::anyhow!("{}:{line}: {e}", path.display())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let at = format!("{}:{line}", path.display());
        let fields: Map<String, Value> = headers.iter().zip(record.iter()).map(|(h, v)| (h.clone(), Value::String(v.to_string()))).collect();
        docs.push(row_document(fields, format!("{}#{line}", path.display()), &at)?);
    }
    if docs.is_empty() {
        bail!("{}: no documents (only a header row)", path.display())
    }
    Ok(docs)
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
    fn jsonl_rows_become_documents_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.jsonl", "{\"id\": \"n1\", \"title\": \"标题\", \"text\": \"正文。\", \"tags\": [\"财经\"], \"author\": \"李\"}\n\n{\"text\": \"second\", \"tags\": \"a, b\"}\n".as_bytes());
        let docs = read_file(&p).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id, "n1");
        assert_eq!(docs[0].title, "标题");
        assert_eq!(docs[0].tags, ["财经"]);
        assert_eq!(docs[0].metadata["author"], "李");
        assert!(docs[1].id.starts_with("doc-"));
        assert_eq!(docs[1].tags, ["a", "b"]);
    }

    #[test]
    fn bad_rows_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "bad.jsonl", b"{\"text\": \"ok\"}\n{\"text\": \n");
        assert!(read_file(&p).unwrap_err().to_string().ends_with("bad.jsonl:2: invalid JSON (EOF while parsing a value at line 1 column 9)"));
        let p = write(dir.path(), "empty.jsonl", b"{\"title\": \"t\", \"text\": \"  \"}\n");
        assert!(read_file(&p).unwrap_err().to_string().contains("empty.jsonl:1: the row has no text"));
        let p = write(dir.path(), "x.csv", b"id,title,body2\n1,a,b\n");
        assert!(read_file(&p).unwrap_err().to_string().contains("x.csv:1: no \"text\" column"));
        let p = write(dir.path(), "y.csv", b"id,text\n1,a\n2,b,c\n");
        assert!(read_file(&p).unwrap_err().to_string().contains("y.csv:3:"), "{}", read_file(&p).unwrap_err());
        let p = write(dir.path(), "latin.txt", b"caf\xe9 au lait");
        assert!(read_file(&p).unwrap_err().to_string().contains("invalid byte at offset 3"));
        let p = write(dir.path(), "blank.md", b"  \n\n");
        assert!(read_file(&p).unwrap_err().to_string().contains("empty document"));
    }

    #[test]
    fn csv_rows_and_text_files_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "b.csv", "id,title,text,date,level\nq1,问,答案在这里,2024-01-02,3\n".as_bytes());
        let d = &read_file(&p).unwrap()[0];
        assert_eq!((d.id.as_str(), d.date.as_deref(), d.metadata["level"].as_str()), ("q1", Some("2024-01-02"), Some("3")));
        let p = write(dir.path(), "c.md", b"intro\n# The Title\n\nBody text.");
        assert_eq!(read_file(&p).unwrap()[0].title, "The Title");
    }

    #[test]
    fn dates_normalise_to_iso() {
        assert_eq!(normalize_date("2017/2/7").as_deref(), Some("2017-02-07"));
        assert_eq!(normalize_date("2024-05-01T10:00:00").as_deref(), Some("2024-05-01"));
        assert_eq!(normalize_date("2023年12月3日").as_deref(), Some("2023-12-03"));
        assert_eq!(normalize_date("yesterday"), None);
        assert_eq!(normalize_date("17/2/7"), None);
        assert_eq!(normalize_date("2017/13/7"), None);
    }

    #[test]
    fn html_keeps_visible_text_only() {
        let (title, text) = html_to_text("<html><head><title>T &amp; U</title><style>p{}</style></head><body><p>One&nbsp;two</p><script>x<1</script><div>三&#22235;</div></body></html>");
        assert_eq!(title.as_deref(), Some("T & U"));
        assert_eq!(text, "One two\n\n三四");
    }

    fn pdf_fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pdf").join(name)
    }

    #[test]
    fn pdf_pages_become_one_document_with_page_offsets() {
        let docs = read_file(&pdf_fixture("handbook.pdf")).unwrap();
        let d = &docs[0];
        assert_eq!((d.title.as_str(), d.date.as_deref()), ("知库产品手册 / zhiku handbook", Some("2000-01-01")));
        assert!(d.text.contains("知库科技成立于2019年，总部位于杭州市西湖区。"), "{}", d.text);
        assert!(d.text.contains("中国农业发展银行"), "{}", d.text);
        assert!(d.text.contains("The support desk is open from 9 am to 6 pm on weekdays."), "{}", d.text);
        assert_eq!(d.metadata["pages"], 2);
        let english = d.text.chars().collect::<String>().find("The support").map(|b| d.text[..b].chars().count()).unwrap();
        assert_eq!((page_of(&d.metadata, 0), page_of(&d.metadata, english)), (Some(1), Some(2)));
    }

    #[test]
    fn unreadable_pdfs_say_why() {
        let err = |name: &str| format!("{:#}", read_file(&pdf_fixture(name)).unwrap_err());
        let e = err("broken.pdf");
        assert!(e.contains("broken.pdf") && e.contains("not a readable PDF"), "{e}");
        let e = err("locked.pdf");
        assert!(e.contains("locked.pdf") && e.contains("encrypted"), "{e}");
        let e = err("scan.pdf");
        assert!(e.contains("scan.pdf") && e.contains("no text layer"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = format!("{:#}", read_file(&write(dir.path(), "fake.pdf", b"hello, not a pdf")).unwrap_err());
        assert!(e.contains("fake.pdf") && e.contains("not a readable PDF"), "{e}");
    }
}
