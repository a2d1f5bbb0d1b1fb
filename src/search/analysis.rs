//! Text analysis shared by indexing, querying and snippets, so the three always agree on what a
//! token is: runs of letters and digits, lowercased and folded to ASCII (the case- and
//! accent-insensitivity FTS5's `unicode61 remove_diacritics 2` gave).

use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer, Token,
};

/// The tokenizer's name in the index.
pub const TOKENIZER: &str = "sessiond_folded";

/// Longer tokens (base64 blobs and the like) are not indexed.
const MAX_TOKEN_BYTES: usize = 100;

/// The longest prefix a `prefix*` query matches as one term; longer stems match by their first
/// this-many characters.
pub const MAX_GRAM_CHARS: usize = 20;

/// Only the start of a very long text is indexed (the same on both backends).
pub const MAX_INDEXED_BYTES: usize = 256 * 1024;

pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// The first [`MAX_INDEXED_BYTES`] of `text`, cut at a character boundary.
pub fn indexed_part(text: &str) -> &str {
    if text.len() <= MAX_INDEXED_BYTES {
        return text;
    }
    let mut end = MAX_INDEXED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

pub fn tokens(analyzer: &mut TextAnalyzer, text: &str) -> Vec<Token> {
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().clone());
    }
    out
}

/// The edge gram a prefix query looks up: the stem itself, or its first characters.
pub fn gram(stem: &str) -> &str {
    match stem.char_indices().nth(MAX_GRAM_CHARS) {
        Some((end, _)) => &stem[..end],
        None => stem,
    }
}

/// Every leading part (1..=[`MAX_GRAM_CHARS`] characters) of every token: what the prefix
/// field indexes, so `stem*` is a single scored term.
pub fn edge_grams(tokens: &[Token]) -> Vec<Token> {
    let mut out = Vec::with_capacity(tokens.len() * 4);
    for token in tokens {
        for (count, (start, c)) in token.text.char_indices().enumerate() {
            if count >= MAX_GRAM_CHARS {
                break;
            }
            out.push(Token {
                offset_from: token.offset_from,
                offset_to: token.offset_to,
                position: token.position,
                text: token.text[..start + c.len_utf8()].to_owned(),
                position_length: 1,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<String> {
        tokens(&mut analyzer(), text)
            .into_iter()
            .map(|t| t.text)
            .collect()
    }

    #[test]
    fn splits_on_anything_but_letters_and_digits_and_folds() {
        assert_eq!(
            texts("LÚNCH user_id=42 col:x 日本語"),
            ["lunch", "user", "id", "42", "col", "x", "日本語"]
        );
    }

    #[test]
    fn grams_cover_every_prefix_up_to_the_limit() {
        let grams: Vec<String> = edge_grams(&tokens(&mut analyzer(), "Ab é"))
            .into_iter()
            .map(|t| t.text)
            .collect();
        assert_eq!(grams, ["a", "ab", "e"]);
        assert_eq!(gram(&"x".repeat(30)), "x".repeat(MAX_GRAM_CHARS));
        assert_eq!(gram("ab"), "ab");
    }
}
