//! Masking personal data in text: e-mail addresses, phone numbers (Chinese mobiles and
//! landlines, international numbers with a + prefix), Chinese resident ID numbers (checksum
//! and birth date verified) and bank-card numbers (Luhn-verified, 13-19 digits, grouped or not).
//! Checksums keep ordinary numbers (amounts, dates, counts) from being masked.

use regex::Regex;
use serde::Serialize;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PiiCounts {
    pub email: usize,
    pub phone: usize,
    pub id_card: usize,
    pub bank_card: usize,
}

impl PiiCounts {
    pub fn total(&self) -> usize {
        self.email + self.phone + self.id_card + self.bank_card
    }
    pub fn add(&mut self, o: &PiiCounts) {
        self.email += o.email;
        self.phone += o.phone;
        self.id_card += o.id_card;
        self.bank_card += o.bank_card;
    }
}

struct Patterns {
    email: Regex,
    digits: Regex,
    intl_phone: Regex,
    landline: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| Patterns {
        email: Regex::new(r"[A-Za-z0-9][A-Za-z0-9._%+\-]*@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}").unwrap(),
        // Runs of digits, possibly grouped by single spaces or dashes (cards: 6222 0202 ...),
        // with an optional final X (ID numbers).
        digits: Regex::new(r"\d(?:[ \-]?\d){10,80}[Xx]?").unwrap(),
        intl_phone: Regex::new(r"\+\d{1,3}[ \-]?(?:\(\d{1,4}\)[ \-]?)?\d{1,4}(?:[ \-]?\d{2,4}){1,4}").unwrap(),
        // Area code in brackets or followed by a separator, then 7-8 digits (maybe split 4+3/4+4).
        landline: Regex::new(r"(?:\(0\d{2,3}\)[ \-]?|0\d{2,3}[ \-])\d{3,4}[ \-]?\d{3,4}").unwrap(),
    })
}

fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &x) in d.iter().rev().enumerate() {
        let mut v = x as u32;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// An 18-character Chinese resident ID: 17 digits and a check character (ISO 7064 MOD 11-2),
/// with a birth date from 1900 on.
fn china_id(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = b[..17].iter().zip(W).map(|(c, w)| (c - b'0') as u32 * w).sum();
    let check = b"10X98765432"[(sum % 11) as usize];
    if b[17].to_ascii_uppercase() != check {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(0);
    let (y, m, d) = (num(6..10), num(10..12), num(12..14));
    (1900..=2100).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d)
}

fn china_mobile(d: &str) -> bool {
    let d = d.strip_prefix("0086").or_else(|| d.strip_prefix("86")).unwrap_or(d);
    d.len() == 11 && d.starts_with('1') && matches!(d.as_bytes()[1], b'3'..=b'9')
}

/// What a stretch of digit groups is, if anything: an ID number, a mobile number (its groups
/// at least 2 digits), or a card number (Luhn; groups of 4-6 or a last short one).
fn classify(raw: &str, groups: usize) -> Option<&'static str> {
    let compact: String = raw.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if china_id(&compact) {
        return Some("[ID]");
    }
    if compact.ends_with(['X', 'x']) {
        return None;
    }
    let parts: Vec<&str> = raw.split([' ', '-']).collect();
    if china_mobile(&compact) && (groups == 1 || parts.iter().all(|g| g.len() >= 2)) {
        return Some("[PHONE]");
    }
    let digits: Vec<u8> = compact.bytes().map(|c| c - b'0').collect();
    let grouped_like_a_card = groups == 1 || parts[..parts.len() - 1].iter().all(|g| (4..=6).contains(&g.len()));
    if (13..=19).contains(&digits.len()) && grouped_like_a_card && luhn(&digits) {
        return Some("[CARD]");
    }
    None
}

fn digit_at(text: &str, i: usize, before: bool) -> bool {
    if before { text[..i].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric()) } else { text[i..].chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) }
}

/// `text` with personal data replaced by `[EMAIL]`, `[PHONE]`, `[ID]` and `[CARD]`, and how
/// many of each.
pub fn mask(text: &str) -> (String, PiiCounts) {
    let p = patterns();
    let mut counts = PiiCounts::default();
    // Spans to replace, found in order of precedence; later finds skip overlapping spans.
    let mut spans: Vec<(usize, usize, &'static str)> = Vec::new();
    let free = |spans: &[(usize, usize, &str)], s: usize, e: usize| spans.iter().all(|&(a, b, _)| e <= a || s >= b);
    for m in p.email.find_iter(text) {
        spans.push((m.start(), m.end(), "[EMAIL]"));
        counts.email += 1;
    }
    for m in p.digits.find_iter(text) {
        let (s, e) = (m.start(), m.end());
        if digit_at(text, s, true) || digit_at(text, e, false) {
            continue;
        }
        // Groups of a run (split at its separators); the longest valid stretch of whole groups
        // from each start is taken, so that "13912345678 4111111111111111" is two numbers.
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut g0 = s;
        for (i, c) in m.as_str().char_indices() {
            if c == ' ' || c == '-' {
                groups.push((g0, s + i));
                g0 = s + i + 1;
            }
        }
        groups.push((g0, e));
        let mut i = 0;
        while i < groups.len() {
            let mut taken = None;
            for j in (i..groups.len()).rev() {
                let (a, b) = (groups[i].0, groups[j].1);
                if let Some(tag) = classify(&text[a..b], j - i + 1) {
                    taken = Some((j, a, b, tag));
                    break;
                }
            }
            match taken {
                Some((j, mut a, b, tag)) if free(&spans, a, b) => {
                    match tag {
                        "[ID]" => counts.id_card += 1,
                        "[PHONE]" => counts.phone += 1,
                        _ => counts.bank_card += 1,
                    }
                    // A country code's + belongs to the number.
                    if tag == "[PHONE]" && text[..a].ends_with('+') {
                        a -= 1;
                    }
                    spans.push((a, b, tag));
                    i = j + 1;
                }
                _ => i += 1,
            }
        }
    }
    for re in [&p.intl_phone, &p.landline] {
        for m in re.find_iter(text) {
            let (s, e) = (m.start(), m.end());
            let digits = m.as_str().bytes().filter(u8::is_ascii_digit).count();
            if (7..=15).contains(&digits) && !digit_at(text, e, false) && free(&spans, s, e) {
                spans.push((s, e, "[PHONE]"));
                counts.phone += 1;
            }
        }
    }
    if spans.is_empty() {
        return (text.to_string(), counts);
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e, tag) in spans {
        out.push_str(&text[at..s]);
        out.push_str(tag);
        at = e;
    }
    out.push_str(&text[at..]);
    (out, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_data_is_masked() {
        let cases = [
            ("联系邮箱 zhang.san+shop@example.com.cn 谢谢", "联系邮箱 [EMAIL] 谢谢"),
            ("手机13812345678，备用 +86 138-1234-5678", "手机[PHONE]，备用 [PHONE]"),
            ("电话：010-62345678 或 (0755) 8888 888", "电话：[PHONE] 或 [PHONE]"),
            ("call +1 415 555 2671 or +44 20 7946 0958", "call [PHONE] or [PHONE]"),
            ("身份证号11010519491231002X已登记", "身份证号[ID]已登记"),
            ("卡号 6222 0202 0000 1234 562 和 4111111111111111", "卡号 [CARD] 和 [CARD]"),
            ("card 4111-1111-1111-1111 expires", "card [CARD] expires"),
        ];
        for (input, want) in cases {
            assert_eq!(mask(input).0, want, "{input}");
        }
    }

    #[test]
    fn ordinary_numbers_are_left_alone() {
        let keep = [
            "The budget was 1,000,000,000 dollars in 2017.",
            "订单号 20240501123456789 已发货",     // 17 digits, not an ID (no check), not Luhn
            "ISBN 978-7-111-40701-0 published 2013-05-01",
            "共有 12345678901 人",                  // starts 12: not a mobile
            "身份证号11010519491231002Y",
            "room 4111111111111112 is fake",         // fails Luhn
            "version 1.2.3, port 8080, 3.1415926535",
        ];
        for t in keep {
            let (out, c) = mask(t);
            assert_eq!((out.as_str(), c.total()), (t, 0), "{t}");
        }
    }

    #[test]
    fn counts_by_kind() {
        let (_, c) = mask("a@b.cn 13912345678 11010519491231002X 4111111111111111");
        assert_eq!(c, PiiCounts { email: 1, phone: 1, id_card: 1, bank_card: 1 });
    }
}
