//! Messages read for the tail but not yet given to its index, and the cheap test that tells a
//! search whether it needs them there.
//!
//! Bringing the in-memory tail index up to a search's snapshot costs a tantivy commit, a few
//! milliseconds whatever it holds (a new segment writer is allocated for every commit). Under
//! writes nearly every search finds a few new messages, yet most of them cannot match it: a
//! search that none of the waiting messages can match answers exactly without them, so the
//! commit is left to the first search that needs it. The test is conservative (a phrase only
//! needs all its words, a prefix any word that starts with it), so it may feed the tail for
//! nothing but never answers without a message that matches.
//!
//! Waiting messages still count in the statistics a search scores under (documents, tokens
//! per field, documents per term, each from the same analyzers the index uses), so a score
//! does not depend on whether the tail was fed: what the tail lacks cannot match, and
//! everything else scores as if it had been fed.

use super::analysis::{
    QueryWords, analyzer, gram, indexed_part, pair_analyzer, prefix_analyzer, tokens,
};
use super::{Doc, Request};

/// A message read from the database, with the distinct terms its text is indexed under.
#[derive(Debug)]
pub struct Waiting {
    pub doc: Doc,
    /// Sorted, distinct: the text field's tokens, and the pair field's.
    words: Vec<String>,
    pairs: Vec<String>,
    /// Tokens indexed into the text, prefix and pair fields.
    pub counts: Counts,
}

/// Tokens a message puts into each analysed field (what tantivy's `total_num_tokens` sums).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub text: u64,
    pub prefix: u64,
    pub pairs: u64,
}

fn distinct(mut terms: Vec<String>) -> Vec<String> {
    terms.sort_unstable();
    terms.dedup();
    terms
}

fn texts(analyzer: &mut tantivy::tokenizer::TextAnalyzer, text: &str) -> Vec<String> {
    tokens(analyzer, text).into_iter().map(|t| t.text).collect()
}

impl Waiting {
    pub fn new(doc: Doc) -> Waiting {
        let text = indexed_part(&doc.text);
        let words = texts(&mut analyzer(), text);
        let pairs = texts(&mut pair_analyzer(), text);
        let counts = Counts {
            text: words.len() as u64,
            prefix: tokens(&mut prefix_analyzer(), text).len() as u64,
            pairs: pairs.len() as u64,
        };
        Waiting {
            words: distinct(words),
            pairs: distinct(pairs),
            counts,
            doc,
        }
    }

    pub fn has(&self, word: &str) -> bool {
        self.words
            .binary_search_by(|w| w.as_str().cmp(word))
            .is_ok()
    }

    /// Whether a token starts with `prefix` (for a gram of at most the longest edge gram, the
    /// same as holding that prefix field term).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        let at = self.words.partition_point(|w| w.as_str() < prefix);
        self.words.get(at).is_some_and(|w| w.starts_with(prefix))
    }

    pub fn has_pair(&self, pair: &str) -> bool {
        self.pairs
            .binary_search_by(|p| p.as_str().cmp(pair))
            .is_ok()
    }
}

/// What a message must hold to be able to match a request.
pub struct Needs<'a> {
    words: Vec<String>,
    prefixes: Vec<String>,
    session_id: Option<&'a str>,
    directory: Option<&'a str>,
    /// A term without any token: the request matches nothing.
    nothing: bool,
}

impl<'a> Needs<'a> {
    pub fn of(request: &Request<'a>) -> Needs<'a> {
        let words = QueryWords::of(request.terms);
        Needs {
            // A prefix query looks up the stem's edge gram, which may be shorter than the stem
            // (conservative: a longer stem is matched exactly by the index).
            prefixes: words.prefixes.iter().map(|p| gram(p).to_owned()).collect(),
            words: words.words,
            session_id: request.session_id,
            directory: request.directory,
            nothing: words.empty_term,
        }
    }

    /// False only when `message` cannot match (a match needs every word and every prefix).
    pub fn may_match(&self, message: &Waiting) -> bool {
        !self.nothing
            && self.session_id.is_none_or(|s| s == message.doc.session_id)
            && self.directory.is_none_or(|d| d == message.doc.directory)
            && self.words.iter().all(|w| message.has(w))
            && self.prefixes.iter().all(|p| message.has_prefix(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SearchTerms;

    fn message(text: &str) -> Waiting {
        Waiting::new(Doc {
            seq: 1,
            session_id: "s1".into(),
            directory: "/d".into(),
            role: "user".into(),
            created_at: 0,
            text: text.into(),
        })
    }

    fn may(query: &str, text: &str) -> bool {
        let terms = SearchTerms::parse(query).unwrap();
        let request = Request {
            terms: &terms,
            session_id: None,
            directory: None,
        };
        Needs::of(&request).may_match(&message(text))
    }

    #[test]
    fn a_message_may_match_only_when_it_holds_every_word_and_prefix() {
        assert!(may("Déjà", "deja vu"));
        assert!(may("vu deja", "deja vu"));
        assert!(!may("deja jamais", "deja vu"));
        // A phrase needs its words, in any order: conservative, never wrong.
        assert!(may("\"vu deja\"", "deja vu"));
        assert!(may("user_id", "the user id"));
        assert!(may("dep*", "we deployed it"));
        assert!(!may("dep*", "a pod"));
        assert!(!may("xyz*", "we deployed it"));
        assert!(may("user_de*", "deployed by user"));
        assert!(!may("user_de*", "deployed"));
        let long = "q".repeat(30);
        assert!(may(&format!("{long}*"), &"q".repeat(25)));
        assert!(!may("ok", ""));
    }

    #[test]
    fn counts_and_terms_are_the_indexed_ones() {
        let waiting = message("Déjà vu, user_id déjà");
        assert_eq!(waiting.counts.text, 5);
        // d, de, dej, deja; v, vu; u, us, use, user; i, id; d, de, dej, deja
        assert_eq!(waiting.counts.prefix, 16);
        assert_eq!(waiting.counts.pairs, 4);
        assert!(waiting.has("deja") && !waiting.has("dej"));
        assert!(waiting.has_prefix("dej") && !waiting.has_prefix("x"));
        assert!(waiting.has_pair("vu user") && waiting.has_pair("id deja"));
        assert!(!waiting.has_pair("deja user"));
    }

    #[test]
    fn filters_rule_out_other_sessions_and_directories() {
        let terms = SearchTerms::parse("vu").unwrap();
        let other = Request {
            terms: &terms,
            session_id: Some("s2"),
            directory: None,
        };
        assert!(!Needs::of(&other).may_match(&message("deja vu")));
        let here = Request {
            terms: &terms,
            session_id: Some("s1"),
            directory: Some("/d"),
        };
        assert!(Needs::of(&here).may_match(&message("deja vu")));
        let elsewhere = Request {
            directory: Some("/e"),
            ..here
        };
        assert!(!Needs::of(&elsewhere).may_match(&message("deja vu")));
    }
}
