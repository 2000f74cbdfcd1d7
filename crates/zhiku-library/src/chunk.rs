//! Cutting a document into chunks that follow sentence and paragraph boundaries, in Chinese
//! (。！？；) and English (. ! ? ; followed by a space), with a size and an overlap in characters.

/// A piece of a document: its text and where it lies (character offsets, end exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub position: usize,
    pub start: usize,
    pub end: usize,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkOptions {
    /// Most characters in a chunk (a longer sentence is cut at this length).
    pub size: usize,
    /// Characters of the previous chunk's last sentences repeated at the start of the next.
    pub overlap: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        Self { size: 400, overlap: 50 }
    }
}

/// Sentence spans (character offsets) of `chars`: a sentence ends after 。！？；!?; or '.',
/// with any closing quotes or brackets, when what follows is a space, a line break or the
/// end (so 3.14 and e.g. inside a word stay whole); a blank line ends a paragraph.
pub fn sentences(chars: &[char]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let n = chars.len();
    while i < n {
        let c = chars[i];
        let mut end = None;
        let cjk_end = matches!(c, '。' | '！' | '？' | '；' | '…');
        let latin_end = matches!(c, '.' | '!' | '?' | ';') && (i + 1 == n || chars[i + 1].is_whitespace() || is_closer(chars[i + 1]));
        if cjk_end || latin_end {
            end = Some(i + 1);
        } else if c == '\n' && i + 1 < n && chars[i + 1] == '\n' {
            end = Some(i);
        }
        if let Some(mut e) = end {
            while e < n && is_closer(chars[e]) {
                e += 1;
            }
            push_trimmed(chars, start, e, &mut out);
            start = e;
            i = e.max(i + 1);
            continue;
        }
        i += 1;
    }
    push_trimmed(chars, start, n, &mut out);
    out
}

fn is_closer(c: char) -> bool {
    matches!(c, '”' | '’' | '"' | '\'' | ')' | '）' | '」' | '』' | '】' | '》')
}

fn push_trimmed(chars: &[char], mut s: usize, mut e: usize, out: &mut Vec<(usize, usize)>) {
    while s < e && chars[s].is_whitespace() {
        s += 1;
    }
    while e > s && chars[e - 1].is_whitespace() {
        e -= 1;
    }
    if e > s {
        out.push((s, e));
    }
}

/// Packs whole sentences into chunks of at most `size` characters; the next chunk starts with
/// the previous chunk's last sentences that fit in `overlap` characters.
pub fn chunk(text: &str, options: ChunkOptions) -> Vec<Chunk> {
    let size = options.size.max(1);
    let overlap = options.overlap.min(size / 2);
    let chars: Vec<char> = text.chars().collect();
    // Sentences longer than a chunk are cut into pieces of `size`.
    let mut spans = Vec::new();
    for (s, e) in sentences(&chars) {
        let mut a = s;
        while e - a > size {
            spans.push((a, a + size));
            a += size;
        }
        spans.push((a, e));
    }
    let mut chunks = Vec::new();
    let mut first = 0;
    while first < spans.len() {
        let mut last = first;
        while last + 1 < spans.len() && spans[last + 1].1 - spans[first].0 <= size {
            last += 1;
        }
        let (start, end) = (spans[first].0, spans[last].1);
        chunks.push(Chunk { position: chunks.len(), start, end, text: chars[start..end].iter().collect() });
        if last + 1 >= spans.len() {
            break;
        }
        // Step back over trailing sentences that fit in the overlap, but always move forward.
        let mut next = last + 1;
        while next - 1 > first && end - spans[next - 1].0 <= overlap {
            next -= 1;
        }
        first = next;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_and_english_sentences_split_where_they_end() {
        let text = "今天天气很好。我们去公园吧！你来吗？好的；走。\n\nPi is 3.14 today. Is it? Yes! \"Quoted.\" End";
        let chars: Vec<char> = text.chars().collect();
        let got: Vec<String> = sentences(&chars).iter().map(|&(s, e)| chars[s..e].iter().collect()).collect();
        assert_eq!(got, ["今天天气很好。", "我们去公园吧！", "你来吗？", "好的；", "走。", "Pi is 3.14 today.", "Is it?", "Yes!", "\"Quoted.\"", "End"]);
    }

    #[test]
    fn paragraphs_end_sentences_without_punctuation() {
        let text = "标题一行\n\n第二段的内容";
        let chars: Vec<char> = text.chars().collect();
        assert_eq!(sentences(&chars).len(), 2);
    }

    #[test]
    fn chunks_respect_size_overlap_and_spans() {
        let text = "一二三四五。六七八九十。甲乙丙丁戊。己庚辛壬癸。子丑寅卯辰。";
        let chunks = chunk(text, ChunkOptions { size: 12, overlap: 6 });
        let chars: Vec<char> = text.chars().collect();
        for c in &chunks {
            assert!(c.end - c.start <= 12, "{c:?}");
            assert_eq!(c.text, chars[c.start..c.end].iter().collect::<String>());
        }
        assert_eq!(chunks[0].text, "一二三四五。六七八九十。");
        // The second chunk repeats the first one's last sentence (6 characters of overlap).
        assert_eq!(chunks[1].text, "六七八九十。甲乙丙丁戊。");
        assert_eq!(chunks.last().unwrap().end, chars.len());
        assert!(chunks.windows(2).all(|w| w[1].start > w[0].start));
    }

    #[test]
    fn a_sentence_longer_than_a_chunk_is_cut() {
        let text = "a".repeat(25);
        let chunks = chunk(&text, ChunkOptions { size: 10, overlap: 0 });
        assert_eq!(chunks.iter().map(|c| c.end - c.start).collect::<Vec<_>>(), [10, 10, 5]);
    }

    #[test]
    fn empty_text_has_no_chunks() {
        assert!(chunk("  \n\n ", ChunkOptions::default()).is_empty());
    }
}
