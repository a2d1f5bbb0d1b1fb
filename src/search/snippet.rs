//! Snippets: a window of the message text around its first match, each matching token wrapped
//! in `<mark>`…`</mark>`, built from the stored text with the index's own analyzer (the index
//! stores no text).

use super::analysis::{QueryWords, analyzer, indexed_part, tokens};
use crate::domain::SearchTerms;

/// Tokens in a snippet (as FTS5's `snippet(…, 24)` gave).
const WINDOW: usize = 24;
/// Tokens shown before the first match.
const LEAD: usize = 4;

pub fn snippet(text: &str, terms: &SearchTerms) -> String {
    let QueryWords {
        words: exact,
        prefixes,
        ..
    } = QueryWords::of(terms);
    let mut analyzer = analyzer();
    let text = indexed_part(text);
    let all = tokens(&mut analyzer, text);
    let matches = |t: &str| {
        exact.iter().any(|e| e == t) || prefixes.iter().any(|p| t.starts_with(p.as_str()))
    };
    let first = all.iter().position(|t| matches(&t.text)).unwrap_or(0);
    let start = first.saturating_sub(LEAD);
    let end = (start + WINDOW).min(all.len());
    if all.is_empty() {
        return String::new();
    }
    let from = if start == 0 {
        0
    } else {
        all[start].offset_from
    };
    let to = if end == all.len() {
        text.len()
    } else {
        all[end - 1].offset_to
    };
    let mut out = String::with_capacity(to - from + 32);
    if start > 0 {
        out.push('…');
    }
    let mut at = from;
    for token in &all[start..end] {
        if matches(&token.text) {
            out.push_str(&text[at..token.offset_from]);
            out.push_str("<mark>");
            out.push_str(&text[token.offset_from..token.offset_to]);
            out.push_str("</mark>");
            at = token.offset_to;
        }
    }
    out.push_str(&text[at..to]);
    if end < all.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_words_and_prefixes_in_a_window() {
        let terms = SearchTerms::parse("token rot*").unwrap();
        assert_eq!(
            snippet("The refresh Token rotation is broken.", &terms),
            "The refresh <mark>Token</mark> <mark>rotation</mark> is broken."
        );
        let long = format!("{} needle {}", "a ".repeat(50), "b ".repeat(50));
        let cut = snippet(&long, &SearchTerms::parse("needle").unwrap());
        assert!(cut.starts_with('…') && cut.ends_with('…'), "{cut}");
        assert!(cut.contains("a  <mark>needle</mark> b"), "{cut}");
        assert_eq!(snippet("", &terms), "");
    }
}
