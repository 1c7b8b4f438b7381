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
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .expect("begin");
    let left = rows_as_text(&mut tx, &format!("SELECT ROW({columns})::text FROM {st}"));
    let right = rows_as_text(&mut tx, &format!("SELECT ROW(__pgt_q.*)::text FROM ({query}) __pgt_q"));
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

/// Asserts that stream table `st` (SQL name) holds exactly the multiset of rows
/// `query` returns now; on mismatch panics listing up to 20 differing rows each way.
pub fn assert_st_matches_query(client: &mut Client, st: &str, query: &str) {
    let (only_st, only_query) = multiset_difference(client, st, query);
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
