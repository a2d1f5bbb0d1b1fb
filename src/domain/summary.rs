//! Extractive summaries: pick the sentences that carry the session's most frequent content words.
//!
//! Classic frequency scoring (Luhn): count content words (stop words and numbers excluded) over
//! the whole session, score each sentence by the normalised frequencies of its words divided by
//! the square root of its length (long sentences are not rewarded just for being long), and
//! return the best few in their original order. Pure CPU work with no I/O: the HTTP layer runs it
//! on a bounded blocking pool.

use std::collections::{HashMap, HashSet};

/// At most this many sentences are extracted.
pub const MAX_SENTENCES: usize = 5;
/// Sentences longer than this (in characters) are pasted logs or code, not prose: skipped.
const MAX_SENTENCE_CHARS: usize = 600;
const MIN_SENTENCE_WORDS: usize = 3;

const STOP_WORDS: &[&str] = &[
    "a", "about", "above", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as",
    "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by",
    "can", "could", "did", "do", "does", "doing", "don", "down", "during", "each", "few", "for",
    "from", "further", "get", "got", "had", "has", "have", "having", "he", "her", "here", "hers",
    "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "let",
    "like", "ll", "me", "more", "most", "my", "no", "nor", "not", "now", "of", "off", "ok", "on",
    "once", "one", "only", "or", "other", "our", "out", "over", "own", "re", "same", "she",
    "should", "so", "some", "such", "than", "that", "the", "their", "them", "then", "there",
    "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "us", "ve",
    "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "why", "will",
    "with", "would", "yes", "you", "your",
];

/// Splits `texts` into sentences and returns the most representative ones, in order.
pub fn summarize<S: AsRef<str>>(texts: &[S], max_sentences: usize) -> Vec<String> {
    let stop: HashSet<&str> = STOP_WORDS.iter().copied().collect();
    let sentences: Vec<&str> = texts
        .iter()
        .flat_map(|t| split_sentences(t.as_ref()))
        .filter(|s| {
            s.len() <= MAX_SENTENCE_CHARS && s.split_whitespace().count() >= MIN_SENTENCE_WORDS
        })
        .collect();
    if sentences.is_empty() || max_sentences == 0 {
        return Vec::new();
    }

    let words_of = |sentence: &str| -> Vec<String> {
        sentence
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.chars().count() >= 2 && !w.chars().all(|c| c.is_ascii_digit()))
            .map(str::to_lowercase)
            .filter(|w| !stop.contains(w.as_str()))
            .collect()
    };
    let sentence_words: Vec<Vec<String>> = sentences.iter().map(|s| words_of(s)).collect();

    let mut frequency: HashMap<&str, u32> = HashMap::new();
    for word in sentence_words.iter().flatten() {
        *frequency.entry(word.as_str()).or_default() += 1;
    }
    let max_frequency = frequency.values().copied().max().unwrap_or(1).max(1) as f64;

    let mut seen = HashSet::new();
    let mut scored: Vec<(usize, f64)> = Vec::new();
    for (index, words) in sentence_words.iter().enumerate() {
        if words.is_empty() || !seen.insert(words.join(" ")) {
            continue;
        }
        let total: f64 = words
            .iter()
            .map(|w| f64::from(frequency[w.as_str()]) / max_frequency)
            .sum();
        scored.push((index, total / (words.len() as f64).sqrt()));
    }

    let wanted = sentences.len().div_ceil(7).clamp(1, max_sentences);
    // Best first; ties go to the earlier sentence so output is deterministic.
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(wanted);
    scored.sort_by_key(|(index, _)| *index);
    scored
        .into_iter()
        .map(|(index, _)| sentences[index].to_owned())
        .collect()
}

/// Sentence boundaries: `.`, `!` or `?` followed by white space or the end, and line breaks.
fn split_sentences(text: &str) -> impl Iterator<Item = &str> {
    let mut sentences = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let boundary = match c {
            '\n' => Some(at),
            '.' | '!' | '?' => match chars.peek() {
                None => Some(at + 1),
                Some((_, next)) if next.is_whitespace() => Some(at + 1),
                _ => None,
            },
            _ => None,
        };
        if let Some(end) = boundary {
            sentences.push(&text[start..end]);
            start = end;
        }
    }
    sentences.push(&text[start..]);
    sentences
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_sentences_about_the_dominant_topic_in_order() {
        let texts = [
            "The database migration failed on the users table. It is sunny outside today.",
            "Run the database migration again with the users table locked.",
            "I had pasta for lunch, it was fine.",
            "The migration of the users table now succeeds after adding the index.",
            "Thanks!",
        ];
        let summary = summarize(&texts, 2);
        assert_eq!(summary.len(), 1, "{summary:?}");
        assert!(summary[0].contains("migration"), "{summary:?}");

        let summary = summarize(&texts, MAX_SENTENCES);
        assert!(
            summary
                .iter()
                .all(|s| !s.contains("pasta") && !s.contains("sunny"))
        );
    }

    #[test]
    fn returns_sentences_in_original_order_without_duplicates() {
        let texts = [
            "alpha beta gamma delta. alpha beta gamma delta.",
            "alpha beta epsilon zeta. gamma delta alpha beta.",
            "other words entirely here.",
        ];
        let summary = summarize(&texts, 5);
        let positions: Vec<usize> = summary
            .iter()
            .map(|s| texts.concat().find(s.as_str()).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{summary:?}");
        let unique: HashSet<_> = summary.iter().collect();
        assert_eq!(unique.len(), summary.len());
    }

    #[test]
    fn empty_or_wordless_input_gives_no_sentences() {
        assert!(summarize::<&str>(&[], 5).is_empty());
        assert!(summarize(&["", "ok", "1 2 3 4"], 5).is_empty());
    }
}
