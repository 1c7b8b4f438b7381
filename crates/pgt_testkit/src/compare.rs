use postgres::{Client, GenericClient};

/// Names of the visible (non-`__pgt_`) columns of relation `relation` (SQL text,
/// e.g. `public."My ST"`), in order, each double-quoted.
pub fn visible_columns(client: &mut Client, relation: &str) -> Vec<String> {
    client
        .query(
            "SELECT pg_catalog.quote_ident(attname::text) FROM pg_catalog.pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped \
               AND attname::text NOT LIKE '\\_\\_pgt\\_%' ORDER BY attnum",
            &[&relation],
        )
        .unwrap_or_else(|e| panic!("columns of {relation}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn rows_as_text(client: &mut impl GenericClient, sql: &str) -> Vec<String> {
    let mut rows: Vec<String> = client
        .query(sql, &[])
        .unwrap_or_else(|e| panic!("query failed: {e:?}\n{sql}"))
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_else(|| "<NULL row>".into()))
        .collect();
    rows.sort();
    rows
}

/// The multiset difference between stream table `st` (its visible columns) and the
/// result of `query`, each row rendered as record text: `(rows only in st, rows
/// only in the query)`. Both are read in one REPEATABLE READ transaction, so they
/// describe the same instant.
pub fn multiset_difference(client: &mut Client, st: &str, query: &str) -> (Vec<String>, Vec<String>) {
    let columns = visible_columns(client, st).join(", ");
    text_difference(client, &format!("SELECT ROW({columns})::text FROM {st}"), &format!("SELECT ROW(__pgt_q.*)::text FROM ({query}) __pgt_q"))
}

/// The multiset difference between the rows of two queries returning one text
/// column each, read in one REPEATABLE READ transaction.
fn text_difference(client: &mut Client, left_sql: &str, right_sql: &str) -> (Vec<String>, Vec<String>) {
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .expect("begin");
    let left = rows_as_text(&mut tx, left_sql);
    let right = rows_as_text(&mut tx, right_sql);
    tx.commit().expect("commit");
    // Sorted multiset difference in both directions.
    let (mut only_left, mut only_right) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < left.len() || j < right.len() {
        match (left.get(i), right.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                only_left.push(a.clone());
                i += 1;
            }
            (Some(_), Some(b)) => {
                only_right.push(b.clone());
                j += 1;
            }
            (Some(a), None) => {
                only_left.push(a.clone());
                i += 1;
            }
            (None, Some(b)) => {
                only_right.push(b.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (only_left, only_right)
}

/// A query ending in `ORDER BY <keys> LIMIT n [OFFSET m]` (TopK), split into
/// the query without its LIMIT / OFFSET and its sort keys' expressions
/// (without ASC / DESC / NULLS); `None` for any other query.
pub fn topk_parts(query: &str) -> Option<(String, Vec<String>)> {
    let upper = query.to_uppercase();
    let order = upper.rfind("ORDER BY")?;
    let limit = upper[order..].find("LIMIT").map(|i| i + order)?;
    if upper[order..].contains(')') {
        return None; // the ORDER BY of a subquery
    }
    let keys = query[order + "ORDER BY".len()..limit]
        .split(',')
        .map(|k| {
            let mut k = k.trim().to_string();
            for suffix in [" NULLS FIRST", " NULLS LAST", " DESC", " ASC"] {
                if k.to_uppercase().ends_with(suffix) {
                    k.truncate(k.len() - suffix.len());
                }
            }
            k.trim().to_string()
        })
        .collect();
    Some((query[..limit].to_string(), keys))
}

/// Like [`multiset_difference`], but for a TopK query (`ORDER BY ... LIMIT`,
/// see [`topk_parts`]) tolerant of which of the rows tied at the boundary the
/// stream table holds, as PostgreSQL itself picks any of them: the multisets
/// of sort keys must be equal, and every stored row must be a row of the query
/// without its LIMIT (no more copies than it has). Differences are reported
/// as sort keys, and as stored rows that the unlimited query lacks.
pub fn st_difference(client: &mut Client, st: &str, query: &str) -> (Vec<String>, Vec<String>) {
    let Some((unlimited, keys)) = topk_parts(query) else { return multiset_difference(client, st, query) };
    let keys = keys.join(", ");
    let (mut only_st, only_query) = text_difference(
        client,
        &format!("SELECT ROW({keys})::text FROM {st}"),
        &format!("SELECT ROW({keys})::text FROM ({query}) __pgt_t"),
    );
    let columns = visible_columns(client, st).join(", ");
    let extra = rows_as_text(
        client,
        &format!("SELECT ROW(x.*)::text FROM (SELECT {columns} FROM {st} EXCEPT ALL SELECT * FROM ({unlimited}) __pgt_u) x"),
    );
    only_st.extend(extra.into_iter().map(|r| format!("{r} (not a row of the query without LIMIT)")));
    (only_st, only_query)
}

/// The number of rows by which stream table `st` and `query` differ as
/// multisets (rows only in one side, counted with their copies), read in the
/// client's current transaction — unlike [`multiset_difference`], which runs
/// its own: for checking what a transaction sees before it commits (IMMEDIATE
/// mode). Not for TopK queries (no tolerance of ties).
pub fn difference_in_transaction(client: &mut Client, st: &str, query: &str) -> i64 {
    let columns = visible_columns(client, st).join(", ");
    client
        .query_one(
            &format!(
                "SELECT count(*) FROM ((SELECT ROW({columns})::text FROM {st} EXCEPT ALL SELECT ROW(q.*)::text FROM ({query}) q) \
                 UNION ALL (SELECT ROW(q.*)::text FROM ({query}) q EXCEPT ALL SELECT ROW({columns})::text FROM {st})) d"
            ),
            &[],
        )
        .unwrap_or_else(|e| panic!("comparing {st} with its query failed: {e:?}"))
        .get(0)
}

/// Asserts that stream table `st` (SQL name) holds exactly the multiset of rows
/// `query` returns now (for a TopK query, up to ties at the boundary:
/// [`st_difference`]); on mismatch panics listing up to 20 differing rows each way.
pub fn assert_st_matches_query(client: &mut Client, st: &str, query: &str) {
    let (only_st, only_query) = st_difference(client, st, query);
    if only_st.is_empty() && only_query.is_empty() {
        return;
    }
    let show = |v: &[String]| v.iter().take(20).map(|r| format!("    {r}")).collect::<Vec<_>>().join("\n");
    panic!(
        "stream table {st} differs from its query\n  {} rows only in the stream table:\n{}\n  {} rows only in the query result:\n{}\n  query: {query}",
        only_st.len(),
        show(&only_st),
        only_query.len(),
        show(&only_query)
    );
}
