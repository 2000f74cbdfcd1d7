//! Turning generated token ids into text piece by piece without ever splitting a UTF-8
//! character (a Chinese character is often two or three byte-level tokens), and holding back
//! text that may turn out to be the start of a stop string.

use tokenizers::Tokenizer;

/// Incremental detokenisation of one sequence's generated tokens.
pub struct TextStream {
    ids: Vec<u32>,
    /// Text is decoded from `prefix` on (a little context so spacing decodes right) and the
    /// part from `read` on is new.
    prefix: usize,
    read: usize,
}

impl Default for TextStream {
    fn default() -> Self {
        Self::new()
    }
}

impl TextStream {
    pub fn new() -> Self {
        Self { ids: Vec::new(), prefix: 0, read: 0 }
    }

    /// Adds a token; returns the text it completes, if any. Bytes of an unfinished character
    /// wait for the tokens that finish it.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read], true).unwrap_or_default();
        let now = tokenizer.decode(&self.ids[self.prefix..], true).unwrap_or_default();
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.is_char_boundary(before.len()) {
            self.prefix = self.read;
            self.read = self.ids.len();
            now[before.len()..].to_string()
        } else {
            String::new()
        }
    }

    /// Text still held back at the end (an incomplete character is dropped as U+FFFD).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> String {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read], true).unwrap_or_default();
        let now = tokenizer.decode(&self.ids[self.prefix..], true).unwrap_or_default();
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        if now.len() > before.len() && now.is_char_boundary(before.len()) {
            now[before.len()..].to_string()
        } else {
            String::new()
        }
    }
}

/// Stop strings over streamed text: releases text only once it cannot be the start of a stop
/// string, and reports where the first stop string begins.
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    released: usize,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), text: String::new(), released: 0 }
    }

    /// Adds text; returns `(text safe to show, stopped)`.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        // Search from where a stop string could begin that overlaps the new text.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.released.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let found = self.stops.iter().filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i)).min();
        if let Some(at) = found {
            let out = self.text[self.released.min(at)..at].to_string();
            self.text.truncate(at);
            self.released = at;
            return (out, true);
        }
        // Hold back the longest tail that is a prefix of a stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if self.text.ends_with(&s[..k]) {
                    hold = hold.max(k);
                }
            }
        }
        let safe = self.text.len() - hold.min(self.text.len() - self.released);
        let out = self.text[self.released..safe].to_string();
        self.released = safe;
        (out, false)
    }

    /// Releases what was held back (the sequence ended for another reason).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.released..].to_string();
        self.released = self.text.len();
        out
    }

    /// All text so far, up to the stop string if one was found.
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_cut_and_never_shown_in_part() {
        let mut m = StopMatcher::new(&["END".to_string(), "\n\n".to_string()]);
        let mut shown = String::new();
        for piece in ["Hel", "lo E", "N", "D tail"] {
            let (s, stop) = m.push(piece);
            shown.push_str(&s);
            if stop {
                break;
            }
        }
        assert_eq!(shown, "Hello ");
        assert_eq!(m.text(), "Hello ");

        let mut m = StopMatcher::new(&["END".to_string()]);
        let (a, _) = m.push("xE");
        let (b, stop) = m.push("Nx");
        assert_eq!((a.as_str(), b.as_str(), stop), ("x", "ENx", false));
        assert_eq!(m.flush(), "");

        let mut m = StopMatcher::new(&["。".to_string()]);
        let (a, stop) = m.push("你好。再见");
        assert_eq!((a.as_str(), stop), ("你好", true));
    }
}
