//! Full-text search on PostgreSQL: a safe `tsquery` builder and the ranked, keyset-paged query.
//!
//! Every term of the user's query becomes one quoted lexeme of a `to_tsquery` expression, so
//! operators (`&`, `|`, `!`, `<->`), weights and grouping in user text are only ever text; the
//! text-search parser splits a quoted term into words itself (a phrase becomes `a <-> b`). A
//! prefix term gets `:*`, the only operator we emit besides `&`.
//!
//! Ranking is `ts_rank`, which depends only on the message and the query (not on the rest of
//! the corpus, unlike bm25), so later pages continue by `(score, seq)` exactly: no page skips or
//! repeats a hit, whichever instance serves it.

use super::reads::{Params, get, paginate};
use super::{Conn, db};
use crate::domain::{MessageId, Page, Role, SearchCursor, SearchHit, SearchTerms, SessionId, Term};
use crate::storage::{SearchQuery, StorageResult};
use anyhow::Context;

/// The `to_tsquery` text for `terms` (all required); `None` when there is nothing to match.
pub fn tsquery(terms: &SearchTerms) -> Option<String> {
    if terms.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(64);
    for term in terms.terms() {
        if !out.is_empty() {
            out.push_str(" & ");
        }
        out.push('\'');
        for c in term.text().chars() {
            match c {
                '\'' => out.push_str("''"),
                '\\' => out.push_str("\\\\"),
                // PostgreSQL's text cannot hold it; it separates words like a space.
                '\0' => out.push(' '),
                c => out.push(c),
            }
        }
        out.push('\'');
        if matches!(term, Term::Prefix(_)) {
            out.push_str(":*");
        }
    }
    Some(out)
}

const QUERY: &str = "to_tsquery('sessiond'::regconfig, $1)";
const SCORE: &str = "ts_rank(m.tsv, to_tsquery('sessiond'::regconfig, $1))::float8";

/// The parameters and filters every search statement shares: `$1` the query, `$2` the cap,
/// `$3` the floor, then the session or directory when filtered.
fn scope(query: &SearchQuery, expression: &str, cap: i64, floor: i64) -> (Params, String) {
    let mut params = Params::default();
    params.push(expression.to_owned());
    params.push(cap);
    params.push(floor);
    let mut filters = format!("m.tsv @@ {QUERY} AND m.seq <= $2 AND m.seq >= $3");
    if let Some(session) = &query.session_id {
        let p = params.push(session.as_str().to_owned());
        filters.push_str(&format!(" AND m.session_id = {p}"));
    }
    if let Some(directory) = &query.directory {
        let p = params.push(directory.clone());
        filters.push_str(&format!(
            " AND m.session_id IN (SELECT id FROM sessions WHERE directory = {p})"
        ));
    }
    (params, filters)
}

pub async fn search(
    client: &Conn,
    query: &SearchQuery,
) -> StorageResult<Page<SearchHit, SearchCursor>> {
    let Some(expression) = tsquery(&query.terms) else {
        return Ok(Page {
            items: Vec::new(),
            next: None,
        });
    };
    let (cap, floor) = match &query.after {
        Some(cursor) => (cursor.cap, cursor.floor.max(0)),
        None => {
            let cap: i64 = client
                .query_one("SELECT coalesce(max(seq), 0) FROM messages", &[])
                .await
                .map_err(db("reading the search cap"))?
                .get(0);
            (cap, window_floor(client, query, &expression, cap).await?)
        }
    };
    let (mut params, mut filters) = scope(query, &expression, cap, floor);
    if let Some(cursor) = &query.after {
        let rank = params.push(cursor.rank);
        let seq = params.push(cursor.seq);
        filters.push_str(&format!(
            " AND ({SCORE} < {rank} OR ({SCORE} = {rank} AND m.seq > {seq}))"
        ));
    }
    let limit = params.push(i64::from(query.limit.get()) + 1);
    let sql = format!(
        "SELECT m.seq, {SCORE} AS score FROM messages m WHERE {filters} \
         ORDER BY score DESC, m.seq LIMIT {limit}"
    );
    let statement = client
        .prepare_cached(&sql)
        .await
        .map_err(db("preparing a search"))?;
    let ranked: Vec<(i64, f64)> = client
        .query(&statement, &params.refs())
        .await
        .map_err(db("searching"))?
        .iter()
        .map(|row| Ok((get(row, 0)?, get(row, 1)?)))
        .collect::<StorageResult<_>>()?;
    let page = paginate(ranked, query.limit.get(), |&(seq, rank)| SearchCursor {
        rank,
        seq,
        cap,
        floor,
        token: 0,
        offset: 0,
    });
    let items = render(client, &expression, &page.items).await?;
    Ok(Page {
        items,
        next: page.next,
    })
}

/// The hits of one page, in ranking order, with highlighted snippets.
async fn render(
    client: &Conn,
    expression: &str,
    page: &[(i64, f64)],
) -> StorageResult<Vec<SearchHit>> {
    if page.is_empty() {
        return Ok(Vec::new());
    }
    let seqs: Vec<i64> = page.iter().map(|(seq, _)| *seq).collect();
    let statement = client
        .prepare_cached(&format!(
            "SELECT seq, id, session_id, role, created_at, ts_headline('sessiond'::regconfig, \
             text, {QUERY}, 'StartSel=<mark>, StopSel=</mark>, MaxWords=24, MinWords=8, \
             ShortWord=0, MaxFragments=1, FragmentDelimiter=…') \
             FROM messages WHERE seq = ANY($2)"
        ))
        .await
        .map_err(db("preparing the search rows"))?;
    let rows = client
        .query(&statement, &[&expression, &seqs])
        .await
        .map_err(db("rendering hits"))?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let role: String = get(row, 3)?;
        let role = Role::parse(&role)
            .with_context(|| format!("a stored message has the unknown role {role:?}"))?;
        let hit: (String, String, Role, i64, String) =
            (get(row, 1)?, get(row, 2)?, role, get(row, 4)?, get(row, 5)?);
        found.insert(get::<i64>(row, 0)?, hit);
    }
    // Deleted since it was ranked: skipped (it no longer exists, nothing to show).
    Ok(page
        .iter()
        .filter_map(|(seq, score)| {
            found
                .remove(seq)
                .map(|(id, session, role, created_at, snippet)| SearchHit {
                    message_id: MessageId::from_trusted(id),
                    session_id: SessionId::from_trusted(session),
                    role,
                    created_at,
                    snippet,
                    score: *score,
                })
        })
        .collect())
}

/// The floor of the ranking window (see [`SearchQuery::window`]): 0 unless the query has more
/// matches than the window holds.
async fn window_floor(
    client: &Conn,
    query: &SearchQuery,
    expression: &str,
    cap: i64,
) -> StorageResult<i64> {
    let Some(window) = query.window.filter(|w| *w > 0) else {
        return Ok(0);
    };
    if query.session_id.is_some() {
        return Ok(0);
    }
    let (mut params, filters) = scope(query, expression, cap, 0);
    let offset = params.push(i64::from(window) - 1);
    let sql = format!(
        "SELECT m.seq FROM messages m WHERE {filters} ORDER BY m.seq DESC LIMIT 1 OFFSET {offset}"
    );
    let statement = client
        .prepare_cached(&sql)
        .await
        .map_err(db("preparing the search window"))?;
    Ok(client
        .query_opt(&statement, &params.refs())
        .await
        .map_err(db("finding the search window"))?
        .map(|row| row.get(0))
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_term_is_one_quoted_lexeme() {
        let terms = SearchTerms::parse(r#"a&b !c "x y" pre* it's back\slash"#).unwrap();
        assert_eq!(
            tsquery(&terms).unwrap(),
            r#"'a&b' & '!c' & 'x y' & 'pre':* & 'it''s' & 'back\\slash'"#
        );
        assert_eq!(tsquery(&SearchTerms::parse("((( )))").unwrap()), None);
    }
}
