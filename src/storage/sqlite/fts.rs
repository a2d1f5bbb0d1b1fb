//! Renders parsed search terms as an FTS5 query in which every term is a quoted string.
//!
//! FTS5 reads the contents of a `"…"` string only as text to tokenize (with `""` standing for
//! one quote), so operators (`AND`, `NEAR`), column filters (`col:`), grouping and `*` inside
//! user text can never take effect. A prefix becomes `"stem" *`, the only construct we emit.

use crate::domain::{SearchTerms, Term};

/// The FTS5 expression for `terms` (all required); `None` when there is nothing to match.
pub fn match_expression(terms: &SearchTerms) -> Option<String> {
    if terms.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(64);
    for term in terms.terms() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push('"');
        for c in term.text().chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
        if matches!(term, Term::Prefix(_)) {
            out.push_str(" *");
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_term_is_quoted() {
        let terms = SearchTerms::parse(r#"NEAR(a col:b "x y" pre* say"what"#).unwrap();
        assert_eq!(
            match_expression(&terms).unwrap(),
            r#""NEAR(a" "col:b" "x y" "pre" * "say""what""#
        );
        assert_eq!(
            match_expression(&SearchTerms::parse("((( )))").unwrap()),
            None
        );
    }
}
