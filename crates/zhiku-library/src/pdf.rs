//! Text of PDF files, page by page (`pdf-extract` over `lopdf`): the title and date from the
//! document information, each page's text, and where each page starts in the joined text so a
//! chunk can be traced to its page.
//!
//! PDF parsers meet malformed files; `pdf-extract` panics on some. Each page is extracted under
//! `catch_unwind`, so one bad page is an error naming the file and the page, never a crash, and
//! the panic's own message is kept off the terminal (a quiet hook for this thread only).

use anyhow::{bail, Result};
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

pub struct PdfText {
    pub title: Option<String>,
    /// `YYYY-MM-DD`, from the creation date.
    pub date: Option<String>,
    /// The text of each page, cleaned.
    pub pages: Vec<String>,
}

impl PdfText {
    /// The pages joined by blank lines, and the character offset where each page starts.
    pub fn joined(&self) -> (String, Vec<usize>) {
        crate::document::join_with_offsets(self.pages.iter().map(String::as_str), "\n\n")
    }
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static PANIC_MESSAGE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs `f`; a panic becomes `Err` with its message, and is not printed.
fn quietly<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let message = info.payload().downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| info.payload().downcast_ref::<String>().cloned()).unwrap_or_default();
                PANIC_MESSAGE.with(|m| *m.borrow_mut() = message);
            } else {
                previous(info)
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let out = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    out.map_err(|_| PANIC_MESSAGE.with(|m| std::mem::take(&mut *m.borrow_mut())))
}

/// Type0 fonts with a predefined Unicode CMap (`UniGB-UCS2-H`, `UniCNS-UCS2-H`,
/// `UniJIS-UCS2-H`, `UniKS-UCS2-H` and their UTF16 forms: what reportlab, iText and many
/// Chinese generators write for non-embedded CJK fonts) carry their text as UTF-16 codes, which
/// `pdf-extract` does not know. Rewritten here as `Identity` plus a ToUnicode map that reads
/// each two-byte code as itself, they extract.
fn unicode_cmaps_to_identity(doc: &mut pdf_extract::Document) {
    use pdf_extract::{Dictionary, Object, Stream};
    let fonts: Vec<_> = doc
        .objects
        .iter()
        .filter_map(|(id, o)| {
            let d = o.as_dict().ok()?;
            let name = d.get(b"Encoding").ok()?.as_name().ok()?;
            let name = String::from_utf8_lossy(name);
            let unicode = d.get(b"Subtype").ok()?.as_name().ok()? == b"Type0" && name.starts_with("Uni") && (name.contains("UCS2") || name.contains("UTF16"));
            unicode.then(|| (*id, if name.ends_with("-V") { "Identity-V" } else { "Identity-H" }))
        })
        .collect();
    if fonts.is_empty() {
        return;
    }
    let mut cmap = String::from("/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /Identity-UCS def /CMapType 2 def\n1 begincodespacerange <0000> <FFFF> endcodespacerange\n");
    for block in (0..256u32).collect::<Vec<_>>().chunks(100) {
        cmap.push_str(&format!("{} beginbfrange\n", block.len()));
        for hi in block {
            cmap.push_str(&format!("<{hi:02X}00> <{hi:02X}FF> <{hi:02X}00>\n"));
        }
        cmap.push_str("endbfrange\n");
    }
    cmap.push_str("endcmap CMapName currentdict /CMap defineresource pop end end\n");
    let to_unicode = doc.add_object(Stream::new(Dictionary::new(), cmap.into_bytes()));
    for (id, identity) in fonts {
        if let Ok(Object::Dictionary(d)) = doc.get_object_mut(id) {
            d.set("Encoding", Object::Name(identity.as_bytes().to_vec()));
            if !d.has(b"ToUnicode") {
                d.set("ToUnicode", Object::Reference(to_unicode));
            }
        }
    }
}

/// `D:20240131...` to `2024-01-31`.
fn pdf_date(s: &str) -> Option<String> {
    let digits: String = s.trim_start_matches("D:").chars().take(8).collect();
    if digits.len() != 8 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    crate::document::normalize_date(&format!("{}-{}-{}", &digits[..4], &digits[4..6], &digits[6..8]))
}

fn is_cjk(c: char) -> bool {
    ('\u{3000}'..='\u{303f}').contains(&c) || ('\u{4e00}'..='\u{9fff}').contains(&c) || ('\u{ff00}'..='\u{ffef}').contains(&c)
}

/// Tidies extracted text: spaces inside lines collapsed (and dropped between Chinese
/// characters, where extractors often put them), blank-line runs cut to one.
pub fn clean(text: &str) -> String {
    let mut out = String::new();
    let mut blank = 0;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        let mut prev: Option<char> = None;
        for w in words {
            if let Some(p) = prev {
                let next = w.chars().next().expect("non-empty word");
                if !(is_cjk(p) && is_cjk(next)) {
                    out.push(' ');
                }
            }
            out.push_str(w);
            prev = w.chars().last();
        }
    }
    out
}

/// Reads the text layer of a PDF (pages without one come back empty, for OCR to fill). Errors
/// name the file, and the page where one page fails.
pub fn read(path: &Path, bytes: &[u8]) -> Result<PdfText> {
    let shown = path.display();
    let mut doc = match quietly(|| pdf_extract::Document::load_mem(bytes)) {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => bail!("{shown}: not a readable PDF ({e})"),
        Err(e) => bail!("{shown}: not a readable PDF (malformed: {e})"),
    };
    if doc.is_encrypted() && !matches!(quietly(|| doc.decrypt("")), Ok(Ok(_))) {
        bail!("{shown}: the PDF is encrypted with a password; save an unencrypted copy to add it")
    }
    unicode_cmaps_to_identity(&mut doc);
    let info = doc.trailer.get(b"Info").ok().and_then(|o| o.as_reference().ok()).and_then(|id| doc.get_dictionary(id).ok());
    let field = |key: &[u8]| -> Option<String> {
        let v = info?.get(key).ok()?;
        let v = match v.as_reference() {
            Ok(id) => doc.get_object(id).ok()?,
            Err(_) => v,
        };
        pdf_extract::decode_text_string(v).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    };
    let title = field(b"Title");
    let date = field(b"CreationDate").and_then(|d| pdf_date(&d));
    let numbers: Vec<u32> = doc.get_pages().keys().copied().collect();
    if numbers.is_empty() {
        bail!("{shown}: the PDF has no pages")
    }
    let mut pages = Vec::with_capacity(numbers.len());
    for n in numbers {
        let extracted = quietly(|| {
            let mut s = String::new();
            pdf_extract::output_doc_page(&doc, &mut pdf_extract::PlainTextOutput::new(&mut s), n).map(|_| s)
        });
        match extracted {
            Ok(Ok(s)) => pages.push(clean(&s)),
            Ok(Err(e)) => bail!("{shown}: page {n}: cannot extract its text ({e})"),
            Err(e) => bail!("{shown}: page {n}: cannot extract its text ({})", if e.is_empty() { "malformed content" } else { e.as_str() }),
        }
    }
    Ok(PdfText { title, date, pages })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_joins_chinese_and_keeps_english_words_apart() {
        assert_eq!(clean("知 库 科 技\n\n\n\nThe  support   desk\n"), "知库科技\n\nThe support desk");
        assert_eq!(clean("共 3 门课程。"), "共 3 门课程。");
    }

    #[test]
    fn pdf_dates_become_iso() {
        assert_eq!(pdf_date("D:20240131120000+08'00'").as_deref(), Some("2024-01-31"));
        assert_eq!(pdf_date("yesterday"), None);
    }
}
