//! The search query language: plain words, `"quoted phrases"` and `prefix*`, all required.
//!
//! Parsing turns the user's text into [`Term`]s; each backend renders terms into its own engine's
//! syntax with every term quoted as a literal, so no character of user text is ever read as
//! operator, column filter or grouping by the engine.

use super::{Invalid, MessageId, SessionId};
use serde::Serialize;
use utoipa::ToSchema;

pub const MAX_QUERY_CHARS: usize = 256;

/// One required term of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Term {
    /// A single word (it may still split into several tokens, e.g. `user_id`).
    Word(String),
    /// Words that must appear next to each other, in order.
    Phrase(String),
    /// A word (or phrase) whose last token may be any word beginning with it.
    Prefix(String),
}

impl Term {
    pub fn text(&self) -> &str {
        match self {
            Term::Word(t) | Term::Phrase(t) | Term::Prefix(t) => t,
        }
    }
}

/// A parsed search query: every term must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchTerms(Vec<Term>);

impl SearchTerms {
    /// Parses `q`. Terms that hold no letter or digit could never match a token, so they are
    /// dropped; a query left with no term simply matches nothing.
    pub fn parse(q: &str) -> Result<SearchTerms, Invalid> {
        let chars = q.chars().count();
        if chars == 0 {
            return Err(Invalid::new("q must not be empty"));
        }
        if chars > MAX_QUERY_CHARS {
            return Err(Invalid::new(format!(
                "q is {chars} characters long; the maximum is {MAX_QUERY_CHARS}"
            )));
        }
        // A NUL separates words, as a space does (no engine reads one inside a term).
        let spaced;
        let q = if q.contains('\0') {
            spaced = q.replace('\0', " ");
            spaced.as_str()
        } else {
            q
        };
        let mut terms = Vec::new();
        let mut rest = q;
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                break;
            }
            let term = if let Some(after_quote) = rest.strip_prefix('"') {
                let (phrase, tail) = match after_quote.find('"') {
                    Some(end) => (&after_quote[..end], &after_quote[end + 1..]),
                    None => (after_quote, ""),
                };
                rest = tail;
                Term::Phrase(phrase.trim().to_owned())
            } else {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                let word = &rest[..end];
                rest = &rest[end..];
                let stem = word.trim_end_matches('*');
                if stem.len() < word.len() && !stem.is_empty() {
                    Term::Prefix(stem.to_owned())
                } else {
                    Term::Word(word.to_owned())
                }
            };
            if term.text().chars().any(char::is_alphanumeric) {
                terms.push(term);
            }
        }
        Ok(SearchTerms(terms))
    }

    pub fn terms(&self) -> &[Term] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One search result.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SearchHit {
    #[schema(value_type = String)]
    pub message_id: MessageId,
    #[schema(value_type = String)]
    pub session_id: SessionId,
    pub role: super::Role,
    pub created_at: i64,
    /// A fragment of the message text around the matches, each match wrapped in `<mark>` and
    /// `</mark>`. The text itself is not HTML-escaped: escape it before rendering as HTML.
    pub snippet: String,
    /// Relevance, higher is better (negated bm25).
    pub score: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(q: &str) -> Vec<Term> {
        SearchTerms::parse(q).unwrap().0
    }

    #[test]
    fn words_phrases_and_prefixes() {
        assert_eq!(
            terms(r#"login "token expired" auth* x"#),
            vec![
                Term::Word("login".into()),
                Term::Phrase("token expired".into()),
                Term::Prefix("auth".into()),
                Term::Word("x".into()),
            ]
        );
    }

    #[test]
    fn syntax_characters_stay_literal_and_empty_terms_vanish() {
        assert_eq!(
            terms(r#"NEAR(a b) col:x * "" ( ) -- '; DROP"#),
            vec![
                Term::Word("NEAR(a".into()),
                Term::Word("b)".into()),
                Term::Word("col:x".into()),
                Term::Word("--".into()).clone(),
                Term::Word("';".into()),
                Term::Word("DROP".into()),
            ]
            .into_iter()
            .filter(|t| t.text().chars().any(char::is_alphanumeric))
            .collect::<Vec<_>>()
        );
        assert_eq!(
            terms(r#""unterminated phrase"#),
            vec![Term::Phrase("unterminated phrase".into())]
        );
        assert!(SearchTerms::parse("   ").unwrap().is_empty());
    }

    #[test]
    fn length_is_bounded() {
        assert!(SearchTerms::parse("").is_err());
        assert!(SearchTerms::parse(&"a".repeat(MAX_QUERY_CHARS)).is_ok());
        assert!(SearchTerms::parse(&"é".repeat(MAX_QUERY_CHARS + 1)).is_err());
    }
}
