//! The property suite of nested SQL (issue 10): aggregates, DISTINCT and
//! UNION inside subqueries, views and CTEs; outer joins whose nullable side is
//! a view, a subquery or a keyless table; EXISTS / NOT EXISTS, IN / NOT IN,
//! ANY / ALL and scalar subqueries, correlated and not; INTERSECT / EXCEPT;
//! FULL JOIN. Every query must resolve to DIFFERENTIAL under AUTO, and after
//! every refresh of seeded random DML equal its query and its FULL twin.
//! Sources have int, bigint, text, numeric, composite and no keys. Replay a
//! failure with the printed seed: `PGT_SEED=...`.

use pg_trickle_e2e::{run_property_suite, Expect::*};

const CYCLES: usize = 20;

/// Aggregates, DISTINCT and UNION inside FROM: children with state tables,
/// groups that appear and vanish under their parents.
#[test]
fn aggregates_in_subqueries_views_and_ctes() {
    run_property_suite(
        "nest_from",
        &[
            (
                "n_agg_join",
                "SELECT c.region, s.total FROM customers c JOIN (SELECT cust, sum(amount) AS total FROM orders GROUP BY cust) s ON s.cust = c.id",
                Differential,
            ),
            (
                "n_agg_of_agg",
                "SELECT per_cust, count(*) AS customers FROM (SELECT cust, count(*) AS per_cust FROM orders GROUP BY cust) s GROUP BY per_cust",
                Differential,
            ),
            (
                "n_avg_of_max",
                "SELECT avg(m) AS avg_max, max(m) AS top, count(*) AS n FROM (SELECT cust, max(amount) AS m FROM orders GROUP BY cust) s",
                Differential,
            ),
            ("n_distinct_sub", "SELECT s.status, count(*) AS n FROM (SELECT DISTINCT cust, status FROM orders) s GROUP BY s.status", Differential),
            ("n_union_all_sub", "SELECT x, count(*) AS n FROM (SELECT cust AS x FROM orders UNION ALL SELECT id FROM customers) s GROUP BY x", Differential),
            ("n_union_sub", "SELECT s.x FROM (SELECT cust AS x FROM orders UNION SELECT id FROM customers WHERE vip) s WHERE s.x > 5", Differential),
            ("n_agg_view", "SELECT c.id, v.total FROM customers c JOIN cust_totals v ON v.cust = c.id WHERE v.n > 2", Differential),
            (
                "n_cte_twice",
                "WITH t AS (SELECT cust, sum(amount) AS s FROM orders GROUP BY cust) SELECT a.cust, a.s, b.s AS next_s FROM t a JOIN t b ON b.cust = a.cust + 1",
                Differential,
            ),
            (
                "n_two_aggs",
                "SELECT a.cust, a.n, b.lines FROM (SELECT cust, count(*) AS n FROM orders GROUP BY cust) a \
                 JOIN (SELECT o.cust, count(*) AS lines FROM items i JOIN orders o ON o.id = i.order_id GROUP BY o.cust) b ON b.cust = a.cust",
                Differential,
            ),
            ("n_keyless_sub", "SELECT s.kind, s.c FROM (SELECT kind, count(*) AS c FROM events GROUP BY kind) s WHERE s.c > 2", Differential),
            (
                "n_composite_sub",
                "SELECT o.status, s.lines FROM orders o JOIN (SELECT order_id, count(*) AS lines, sum(price) AS total FROM items GROUP BY order_id) s \
                 ON s.order_id = o.id WHERE s.total > 5",
                Differential,
            ),
            ("n_distinct_over_agg", "SELECT DISTINCT count(*) AS n FROM orders GROUP BY cust", Differential),
            (
                "n_bigint_sub",
                "SELECT a.tier, s.total FROM (SELECT cust, sum(balance) AS total FROM accounts GROUP BY cust) s JOIN accounts a ON a.cust = s.cust AND a.id % 3 = 0",
                Differential,
            ),
            ("n_numeric_sub", "SELECT s.factor, s.n FROM (SELECT factor, count(*) AS n, min(code) AS lo FROM rates GROUP BY factor) s WHERE s.lo < 5", Differential),
        ],
        CYCLES,
    );
}

/// Outer joins whose nullable side is a subquery, a view, an aggregate or a
/// keyless table; outer joins inside subqueries and views.
#[test]
fn outer_joins_over_nested_inputs() {
    run_property_suite(
        "nest_outer",
        &[
            ("o_keyless_nullable", "SELECT o.id, e.kind FROM orders o LEFT JOIN events e ON e.n = o.amount % 4", Differential),
            ("o_view_nullable", "SELECT o.id, v.zone FROM orders o LEFT JOIN cust_regions v ON v.id = o.cust", Differential),
            ("o_left_in_view", "SELECT id, zone FROM (SELECT c.id, r.zone FROM customers c LEFT JOIN regions r ON r.name = c.region) v", Differential),
            (
                "o_sub_nullable",
                "SELECT c.id, s.amount FROM customers c LEFT JOIN (SELECT cust, amount FROM orders WHERE status = 'open') s ON s.cust = c.id",
                Differential,
            ),
            (
                "o_agg_nullable",
                "SELECT c.id, s.total FROM customers c LEFT JOIN (SELECT cust, sum(amount) AS total FROM orders GROUP BY cust) s ON s.cust = c.id",
                Differential,
            ),
            (
                "o_right_sub",
                "SELECT o.id, s.region FROM (SELECT id, region FROM customers WHERE vip) s RIGHT JOIN orders o ON o.cust = s.id",
                Differential,
            ),
            (
                "o_inside_agg",
                "SELECT zone, count(*) AS n FROM (SELECT c.id, r.zone FROM customers c LEFT JOIN regions r ON r.name = c.region) v GROUP BY zone",
                Differential,
            ),
            (
                "o_join_nullable",
                "SELECT o.id, c.region, r.zone FROM orders o LEFT JOIN (customers c JOIN regions r ON r.name = c.region) ON c.id = o.cust",
                Differential,
            ),
            (
                "o_right_join_nullable",
                "SELECT o.id, c.vip, r.zone FROM (customers c JOIN regions r ON r.name = c.region) RIGHT JOIN orders o ON o.cust = c.id AND r.zone > 0",
                Differential,
            ),
            (
                "o_left_in_nullable_join",
                "SELECT o.id, c.score, r.zone FROM orders o LEFT JOIN (customers c LEFT JOIN regions r ON r.name = c.region) ON c.id = o.cust WHERE o.amount > 20",
                Differential,
            ),
            (
                "o_numeric_nullable",
                "SELECT a.id, r.factor FROM accounts a LEFT JOIN rates r ON r.code = round(a.balance / 16, 0)",
                Differential,
            ),
        ],
        CYCLES,
    );
}

/// EXISTS and NOT EXISTS, correlated (equalities and other conditions) and
/// not, nested, under OR / NOT, inside aggregates' input.
#[test]
fn exists_and_not_exists() {
    run_property_suite(
        "nest_exists",
        &[
            ("x_exists", "SELECT c.id, c.region FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.cust = c.id AND o.amount > 40)", Differential),
            ("x_not_exists", "SELECT c.id FROM customers c WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.cust = c.id AND o.status = 'held')", Differential),
            ("x_exists_nonequi", "SELECT c.id FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.cust = c.id AND o.amount > c.score)", Differential),
            ("x_or", "SELECT c.id FROM customers c WHERE c.vip OR EXISTS (SELECT 1 FROM orders o WHERE o.cust = c.id AND o.amount > 55)", Differential),
            ("x_uncorrelated", "SELECT id FROM customers WHERE EXISTS (SELECT 1 FROM orders WHERE status = 'new')", Differential),
            (
                "x_nested",
                "SELECT c.id FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.cust = c.id \
                 AND NOT EXISTS (SELECT 1 FROM items i WHERE i.order_id = o.id AND i.price > 8))",
                Differential,
            ),
            (
                "x_join_inside",
                "SELECT r.name FROM regions r WHERE EXISTS (SELECT 1 FROM customers c JOIN orders o ON o.cust = c.id WHERE c.region = r.name AND o.amount > 50)",
                Differential,
            ),
            ("x_in_aggregate", "SELECT c.region, count(*) AS n FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.cust = c.id) GROUP BY c.region", Differential),
            ("x_keyless_outer", "SELECT kind, n FROM events e WHERE EXISTS (SELECT 1 FROM orders o WHERE o.amount = e.n * 10)", Differential),
            ("x_keyless_inner", "SELECT id FROM orders o WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.n = o.amount % 4 AND e.kind = 'a')", Differential),
            ("x_bigint", "SELECT c.id FROM customers c WHERE EXISTS (SELECT 1 FROM accounts a WHERE a.cust = c.id AND a.tier = 'gold')", Differential),
            ("x_in_select", "SELECT c.id, EXISTS (SELECT 1 FROM orders o WHERE o.cust = c.id AND o.status = 'open') AS has_open FROM customers c", Differential),
        ],
        CYCLES,
    );
}

/// IN, NOT IN (one NULL in the subquery empties it), = ANY, <> ALL, >= ALL,
/// correlated and not, on several key types.
#[test]
fn in_not_in_any_all() {
    run_property_suite(
        "nest_in",
        &[
            ("i_in", "SELECT id, amount FROM orders WHERE cust IN (SELECT id FROM customers WHERE vip)", Differential),
            ("i_not_in_nulls", "SELECT id FROM orders WHERE amount NOT IN (SELECT score FROM customers WHERE vip)", Differential),
            ("i_not_in_null_outer", "SELECT id, score FROM customers WHERE score NOT IN (SELECT amount FROM orders WHERE status = 'held')", Differential),
            (
                "i_in_correlated",
                "SELECT o.id FROM orders o WHERE o.status IN (SELECT o2.status FROM orders o2 WHERE o2.cust = o.cust AND o2.id <> o.id AND o2.amount > 50)",
                Differential,
            ),
            ("i_any", "SELECT id FROM orders WHERE amount > ANY (SELECT score FROM customers WHERE region = 'r1')", Differential),
            ("i_ge_all", "SELECT c.id FROM customers c WHERE c.score >= ALL (SELECT o.amount FROM orders o WHERE o.cust = c.id)", Differential),
            ("i_ne_all_keyless", "SELECT kind, n FROM events WHERE n <> ALL (SELECT amount % 4 FROM orders WHERE status = 'held')", Differential),
            ("i_not_or", "SELECT o.id FROM orders o WHERE NOT (o.amount < 10 OR o.cust IN (SELECT id FROM customers WHERE score > 40))", Differential),
            ("i_text", "SELECT name, zone FROM regions WHERE name IN (SELECT region FROM customers WHERE vip)", Differential),
            ("i_row", "SELECT order_id, line FROM items WHERE (order_id, line) IN (SELECT id, 1 FROM orders WHERE status = 'open')", Differential),
            ("i_numeric", "SELECT code FROM rates WHERE factor NOT IN (SELECT amount % 7 FROM orders WHERE status = 'done' AND amount < 20)", Differential),
            ("i_bigint", "SELECT id, balance FROM accounts WHERE cust IN (SELECT id FROM customers WHERE score > 30)", Differential),
            ("i_union_in", "SELECT id FROM customers WHERE id IN (SELECT cust FROM orders WHERE amount > 50 UNION SELECT cust FROM accounts WHERE tier = 'gold')", Differential),
        ],
        CYCLES,
    );
}

/// Scalar subqueries in the SELECT list and WHERE, correlated (with
/// aggregates over empty groups, COUNT's 0) and not (a change moves many
/// rows at once).
#[test]
fn scalar_subqueries() {
    run_property_suite(
        "nest_scalar",
        &[
            ("s_max", "SELECT c.id, (SELECT max(o.amount) FROM orders o WHERE o.cust = c.id) AS top FROM customers c", Differential),
            ("s_count", "SELECT c.id, (SELECT count(*) FROM orders o WHERE o.cust = c.id) AS n FROM customers c", Differential),
            ("s_highest", "SELECT o.id, o.amount FROM orders o WHERE o.amount = (SELECT max(o2.amount) FROM orders o2 WHERE o2.cust = o.cust)", Differential),
            ("s_above_avg", "SELECT id, amount FROM orders WHERE amount > (SELECT avg(amount) FROM orders)", Differential),
            ("s_minus_min", "SELECT id, amount - (SELECT min(amount) FROM orders) AS above_min FROM orders WHERE amount > 50", Differential),
            ("s_lookup", "SELECT o.id, (SELECT c.region FROM customers c WHERE c.id = o.cust) AS region FROM orders o", Differential),
            (
                "s_coalesce",
                "SELECT c.id, coalesce((SELECT sum(o.amount) FROM orders o WHERE o.cust = c.id AND o.status = 'open'), 0) AS open_total FROM customers c",
                Differential,
            ),
            (
                "s_expression",
                "SELECT c.id, (SELECT count(*) * 10 + coalesce(max(o.amount), -1) FROM orders o WHERE o.cust = c.id) AS v FROM customers c",
                Differential,
            ),
            ("s_text", "SELECT r.name, (SELECT count(*) FROM customers c WHERE c.region = r.name) AS n FROM regions r", Differential),
            ("s_bigint", "SELECT c.id, (SELECT sum(a.balance) FROM accounts a WHERE a.cust = c.id) AS balance FROM customers c WHERE c.id < 30", Differential),
            ("s_keyless", "SELECT e.kind, e.n, (SELECT count(*) FROM orders o WHERE o.amount % 4 = e.n) AS n_orders FROM events e", Differential),
            ("s_in_aggregate_input", "SELECT c.region, sum((SELECT count(*) FROM orders o WHERE o.cust = c.id)) AS orders FROM customers c GROUP BY c.region", Full),
            ("s_having", "SELECT cust, count(*) AS n FROM orders GROUP BY cust HAVING count(*) > (SELECT count(*) / 50 FROM orders)", Differential),
            (
                "s_having_correlated",
                "SELECT c.region, count(*) AS n FROM customers c GROUP BY c.region \
                 HAVING count(*) > (SELECT count(*) FROM customers c2 WHERE c2.region = c.region AND c2.vip)",
                Differential,
            ),
            (
                "s_select_of_aggregate",
                "SELECT o.cust, sum(o.amount) AS total, (SELECT c.score FROM customers c WHERE c.id = o.cust) AS score FROM orders o GROUP BY o.cust",
                Differential,
            ),
            ("x_having_exists", "SELECT status, max(amount) AS top FROM orders o GROUP BY status HAVING EXISTS (SELECT 1 FROM customers c WHERE c.region = 'r' || max(o.amount) % 6)", Full),
        ],
        CYCLES,
    );
}

/// INTERSECT, EXCEPT and their ALL forms (multiplicities min(a, b) and
/// max(a − b, 0)), nested set operations, UNION below UNION ALL.
#[test]
fn intersect_and_except() {
    run_property_suite(
        "nest_setop",
        &[
            ("t_intersect", "SELECT cust FROM orders INTERSECT SELECT id FROM customers WHERE vip", Differential),
            ("t_except", "SELECT id FROM customers EXCEPT SELECT cust FROM orders WHERE status = 'open'", Differential),
            ("t_intersect_all", "SELECT status, amount % 3 AS r FROM orders WHERE cust < 20 INTERSECT ALL SELECT status, amount % 3 FROM orders WHERE cust >= 20", Differential),
            ("t_except_all", "SELECT kind FROM events EXCEPT ALL SELECT status FROM orders WHERE amount > 50", Differential),
            ("t_except_all_keyless", "SELECT kind, n FROM events EXCEPT ALL SELECT 'a', amount % 4 FROM orders WHERE status = 'held'", Differential),
            ("t_nested", "SELECT region FROM customers EXCEPT (SELECT name FROM regions INTERSECT SELECT region FROM customers WHERE vip)", Differential),
            ("t_union_under_all", "SELECT cust FROM orders WHERE amount > 55 UNION ALL (SELECT id FROM customers WHERE vip UNION SELECT cust FROM accounts)", Differential),
            ("t_intersect_text", "SELECT name FROM regions INTERSECT SELECT region FROM customers", Differential),
            ("t_except_numeric", "SELECT code FROM rates EXCEPT SELECT balance FROM accounts", Differential),
            ("t_intersect_over_agg", "SELECT cust FROM orders GROUP BY cust HAVING count(*) > 6 INTERSECT SELECT id FROM customers WHERE score > 10", Differential),
        ],
        CYCLES,
    );
}

/// FULL JOIN: both sides' unmatched rows appear and vanish; under
/// aggregates, with USING, with subqueries and keyless sides.
#[test]
fn full_joins() {
    run_property_suite(
        "nest_full",
        &[
            ("f_full", "SELECT c.id, o.id AS oid, o.amount FROM customers c FULL JOIN orders o ON o.cust = c.id", Differential),
            ("f_full_filter", "SELECT c.id, o.id AS oid FROM customers c FULL JOIN orders o ON o.cust = c.id AND o.status = 'open' WHERE c.vip IS NOT TRUE", Differential),
            ("f_full_agg", "SELECT c.region, count(o.id) AS n, count(*) AS rows FROM customers c FULL JOIN orders o ON o.cust = c.id GROUP BY c.region", Differential),
            ("f_full_using", "SELECT name, r.zone, c.id FROM regions r FULL JOIN (SELECT id, region AS name FROM customers) c USING (name)", Differential),
            ("f_full_keyless", "SELECT e.kind, e.n, r.code FROM events e FULL JOIN rates r ON r.factor = e.n", Differential),
            ("f_full_then_inner", "SELECT c.id, o.id AS oid, r.zone FROM customers c FULL JOIN orders o ON o.cust = c.id JOIN regions r ON r.name = c.region", Differential),
            ("f_full_agg_side", "SELECT c.id, s.n FROM customers c FULL JOIN (SELECT cust, count(*) AS n FROM orders GROUP BY cust) s ON s.cust = c.id", Differential),
        ],
        CYCLES,
    );
}

/// Each construct over a stream table that is itself maintained
/// differentially.
#[test]
fn nested_constructs_over_stream_tables() {
    run_property_suite(
        "nest_chain",
        &[
            ("b_orders", "SELECT id, cust, amount, status FROM orders WHERE amount > 5", Differential),
            ("b_totals", "SELECT cust, sum(amount) AS total, count(*) AS n FROM b_orders GROUP BY cust", Differential),
            ("b_exists", "SELECT c.id FROM customers c WHERE EXISTS (SELECT 1 FROM b_orders o WHERE o.cust = c.id AND o.status = 'open')", Differential),
            ("b_not_in", "SELECT id FROM customers WHERE id NOT IN (SELECT cust FROM b_totals WHERE n > 5 AND cust IS NOT NULL)", Differential),
            ("b_scalar", "SELECT c.id, (SELECT t.total FROM b_totals t WHERE t.cust = c.id) AS total FROM customers c", Differential),
            ("b_agg_of_agg", "SELECT n, count(*) AS k FROM (SELECT cust, count(*) AS n FROM b_orders GROUP BY cust) s GROUP BY n", Differential),
            ("b_left_agg", "SELECT c.id, s.m FROM customers c LEFT JOIN (SELECT cust, max(amount) AS m FROM b_orders GROUP BY cust) s ON s.cust = c.id", Differential),
            ("b_intersect", "SELECT cust FROM b_orders INTERSECT SELECT cust FROM b_totals WHERE n > 3", Differential),
            ("b_full_join", "SELECT t.cust, c.id FROM b_totals t FULL JOIN customers c ON c.id = t.cust", Differential),
            ("b_in", "SELECT id, amount FROM b_orders WHERE cust IN (SELECT cust FROM b_totals WHERE total > 200)", Differential),
        ],
        CYCLES,
    );
}

/// A scalar subquery returning more than one row fails the refresh with
/// PostgreSQL's own error, as the query itself does.
#[test]
fn a_scalar_subquery_with_several_rows_fails_like_postgresql() {
    let mut db = pg_trickle_e2e::TestDb::new("scalar_rows");
    db.exec(
        "CREATE TABLE p (id int PRIMARY KEY, k int); CREATE TABLE c (id int PRIMARY KEY, k int, v text);
         INSERT INTO p VALUES (1, 1), (2, 2); INSERT INTO c VALUES (1, 1, 'a'), (2, 2, 'b');
         SELECT pgtrickle.create_stream_table('s', 'SELECT p.id, (SELECT c.v FROM c WHERE c.k = p.k) AS v FROM p');",
    );
    let mode: String = db.scalar("SELECT effective_refresh_mode FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = 's'::regclass", &[]);
    assert_eq!(mode, "DIFFERENTIAL");
    // Two rows with the same value, then two different values: both are an error.
    for dml in ["INSERT INTO c VALUES (3, 1, 'a')", "UPDATE c SET v = 'z' WHERE id = 3"] {
        db.exec(dml);
        let direct = db.client.simple_query("SELECT p.id, (SELECT c.v FROM c WHERE c.k = p.k) AS v FROM p").unwrap_err();
        let refresh = db.client.simple_query("SELECT pgtrickle.refresh_stream_table('s')").unwrap_err();
        assert_eq!(pg_trickle_e2e::sqlstate(&direct).as_deref(), Some("21000"));
        assert_eq!(pg_trickle_e2e::sqlstate(&refresh).as_deref(), Some("21000"), "{refresh:?}");
        let message = refresh.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
        assert_eq!(message, "more than one row returned by a subquery used as an expression");
    }
    db.exec("DELETE FROM c WHERE id = 3; SELECT pgtrickle.refresh_stream_table('s')");
    pg_trickle_e2e::assert_st_matches_query(&mut db.client, "s", "SELECT p.id, (SELECT c.v FROM c WHERE c.k = p.k) AS v FROM p");
}

/// Joins of many inputs: a 30-input chain stays DIFFERENTIAL and exact under
/// changes at either end and in the middle; a delta the planner estimates far
/// above a full recomputation recomputes in full instead (NOTICE), then the
/// next refresh is DIFFERENTIAL again.
#[test]
fn joins_of_many_inputs() {
    let mut db = pg_trickle_e2e::TestDb::new("many_inputs");
    let n = 30;
    let mut setup = String::new();
    for i in 1..=n {
        setup.push_str(&format!(
            "CREATE TABLE t{i} (id int PRIMARY KEY, nxt int, v int); \
             INSERT INTO t{i} SELECT g, (g * 7) % 200 + 1, g FROM generate_series(1, 200) g;"
        ));
    }
    db.exec(&setup);
    let mut query = "SELECT t1.id, t1.v AS v1".to_string();
    query.push_str(&format!(", t{n}.v AS v{n} FROM t1"));
    for i in 2..=n {
        query.push_str(&format!(" JOIN t{i} ON t{i}.id = t{}.nxt", i - 1));
    }
    db.exec(&format!("SELECT pgtrickle.create_stream_table('chain', $q${query}$q$)"));
    let mode: String = db.scalar("SELECT effective_refresh_mode FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = 'chain'::regclass", &[]);
    assert_eq!(mode, "DIFFERENTIAL");
    let (mut refresher, notices) = db.connect_collecting_notices();
    for (round, table) in [1, 15, 30, 2, 29].into_iter().enumerate() {
        refresher
            .batch_execute(&format!(
                "UPDATE t{table} SET v = v + 1, nxt = (nxt * 3) % 200 + 1 WHERE id % 50 = {round}; \
                 DELETE FROM t{table} WHERE id = {}; INSERT INTO t{table} VALUES ({}, 3, 0) ON CONFLICT DO NOTHING; \
                 SELECT pgtrickle.refresh_stream_table('chain')",
                10 + round,
                300 + round
            ))
            .expect("refresh");
        let action: String = db.scalar("SELECT action FROM pgtrickle.refresh_history('chain', 1)", &[]);
        assert_eq!(action, "DIFFERENTIAL", "round {round}: {:?}", notices.lock().map(|n| n.clone()).unwrap_or_default());
        pg_trickle_e2e::assert_st_matches_query(&mut db.client, "chain", &query);
    }

    // Several inputs changed at once: one delta term each (the terms reading
    // old states cost more than recomputing 30 tables of 200 rows, so the
    // cost guard is off for this one).
    refresher
        .batch_execute("SET pg_trickle.max_delta_cost_ratio = 0; UPDATE t3 SET v = v - 1 WHERE id % 7 = 0; UPDATE t17 SET nxt = (nxt * 5) % 200 + 1 WHERE id % 9 = 1; \
                        DELETE FROM t28 WHERE id = 40; SELECT pgtrickle.refresh_stream_table('chain'); \
                        RESET pg_trickle.max_delta_cost_ratio")
        .expect("refresh");
    let action: String = db.scalar("SELECT action FROM pgtrickle.refresh_history('chain', 1)", &[]);
    assert_eq!(action, "DIFFERENTIAL", "{:?}", notices.lock().map(|n| n.clone()).unwrap_or_default());
    pg_trickle_e2e::assert_st_matches_query(&mut db.client, "chain", &query);

    // A wide star (beyond geqo_threshold, so ordered by pg_trickle's greedy
    // search during refresh) with outer joins among its inner joins: the
    // search may only form the pairs PostgreSQL deems legal.
    let dims = 14;
    let mut setup = "CREATE TABLE fact (id int PRIMARY KEY".to_string();
    for d in 1..=dims {
        setup.push_str(&format!(", d{d} int"));
    }
    setup.push_str("); INSERT INTO fact SELECT g");
    for d in 1..=dims {
        setup.push_str(&format!(", (g * {}) % 60", d + 2));
    }
    setup.push_str(" FROM generate_series(1, 600) g;");
    for d in 1..=dims {
        setup.push_str(&format!(
            "CREATE TABLE dim{d} (k int PRIMARY KEY, label text); INSERT INTO dim{d} SELECT g, 'd{d}-' || g FROM generate_series(0, 54) g;"
        ));
    }
    db.exec(&setup);
    let mut wide = "SELECT fact.id".to_string();
    for d in 1..=dims {
        wide.push_str(&format!(", dim{d}.label AS l{d}"));
    }
    wide.push_str(" FROM fact");
    for d in 1..=dims {
        let kind = if d % 5 == 0 { "LEFT JOIN" } else { "JOIN" };
        wide.push_str(&format!(" {kind} dim{d} ON dim{d}.k = fact.d{d}"));
    }
    db.exec(&format!("SELECT pgtrickle.create_stream_table('wide', $q${wide}$q$)"));
    for round in 0..4 {
        refresher
            .batch_execute(&format!(
                "UPDATE fact SET d{a} = (d{a} + 7) % 60 WHERE id % 13 = {round}; \
                 DELETE FROM dim{b} WHERE k = {k}; INSERT INTO dim{c} VALUES (55 + {round}, 'new') ON CONFLICT DO NOTHING; \
                 UPDATE dim5 SET label = label || '!' WHERE k % 11 = {round}; \
                 SELECT pgtrickle.refresh_stream_table('wide')",
                a = 1 + round * 3,
                b = 2 + round * 3,
                c = 5 + round * 2,
                k = 10 + round
            ))
            .expect("refresh");
        let action: String = db.scalar("SELECT action FROM pgtrickle.refresh_history('wide', 1)", &[]);
        assert_eq!(action, "DIFFERENTIAL", "round {round}");
        pg_trickle_e2e::assert_st_matches_query(&mut db.client, "wide", &wide);
    }

    // A star of four inputs joined on columns without indexes.
    db.exec(
        "CREATE TABLE f (id int PRIMARY KEY, a int, b int, c int);
         INSERT INTO f SELECT g, g % 500, g % 300, g % 200 FROM generate_series(1, 20000) g;
         CREATE TABLE da (k int, x int); INSERT INTO da SELECT g, g FROM generate_series(0, 499) g;
         CREATE TABLE db (k int, y int); INSERT INTO db SELECT g, g FROM generate_series(0, 299) g;
         CREATE TABLE dc (k int, z int); INSERT INTO dc SELECT g, g FROM generate_series(0, 199) g;
         ANALYZE;",
    );
    let star = "SELECT f.id, da.x, db.y, dc.z FROM f JOIN da ON da.k = f.a JOIN db ON db.k = f.b JOIN dc ON dc.k = f.c";
    db.exec(&format!("SELECT pgtrickle.create_stream_table('star', $q${star}$q$)"));
    db.exec("UPDATE f SET a = (a + 1) % 500 WHERE id % 400 = 0; UPDATE da SET x = x + 1 WHERE k < 3");
    let (mut client, notices) = db.connect_collecting_notices();
    client
        .batch_execute("SET pg_trickle.max_delta_cost_ratio = 0.0001; SELECT pgtrickle.refresh_stream_table('star')")
        .expect("refresh");
    let notices = notices.lock().map(|n| n.clone()).unwrap_or_default();
    assert!(
        notices.iter().any(|(_, n)| n.contains("recomputes in full this time: the planner estimates applying its changes at cost")),
        "{notices:?}"
    );
    let action: String = db.scalar("SELECT action FROM pgtrickle.refresh_history('star', 1)", &[]);
    assert_eq!(action, "FULL");
    pg_trickle_e2e::assert_st_matches_query(&mut db.client, "star", star);
    db.exec("UPDATE dc SET z = z - 1 WHERE k = 7; SELECT pgtrickle.refresh_stream_table('star')");
    let action: String = db.scalar("SELECT action FROM pgtrickle.refresh_history('star', 1)", &[]);
    assert_eq!(action, "DIFFERENTIAL");
    pg_trickle_e2e::assert_st_matches_query(&mut db.client, "star", star);
}

/// A delta statement that writes more temporary files than
/// `pg_trickle.delta_temp_file_limit` allows is undone and the stream table
/// recomputed in full (NOTICE); within the bound it stays DIFFERENTIAL. The
/// default bound (the sources' size) lets ordinary deltas of a non-superuser
/// owner through.
#[test]
fn a_delta_past_its_temporary_file_bound_recomputes_in_full() {
    let mut db = pg_trickle_e2e::TestDb::new("temp_bound");
    let owner = db.create_role("owner", "NOSUPERUSER");
    db.exec(&format!(
        "CREATE TABLE big (id int PRIMARY KEY, g int, v int);
         INSERT INTO big SELECT x, x % 20000, x FROM generate_series(1, 100000) x;
         ANALYZE big;
         GRANT SELECT, TRIGGER ON big TO \"{owner}\"; GRANT CREATE ON SCHEMA public TO \"{owner}\";
         SET ROLE \"{owner}\";
         SELECT pgtrickle.create_stream_table('sums', 'SELECT g, sum(v) AS s, count(*) AS n FROM big GROUP BY g');
         RESET ROLE;"
    ));
    let query = "SELECT g, sum(v) AS s, count(*) AS n FROM big GROUP BY g";
    let mode: String = db.scalar("SELECT effective_refresh_mode FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = 'sums'::regclass", &[]);
    assert_eq!(mode, "DIFFERENTIAL");
    let (mut client, notices) = db.connect_collecting_notices();
    // 64 kB of work_mem: the delta's 10,000 changed rows are sorted or hashed on disk.
    client
        .batch_execute(
            "SET work_mem = '64kB'; SET pg_trickle.delta_temp_file_limit = 1;
             UPDATE big SET v = v + 1 WHERE id % 10 = 0; SELECT pgtrickle.refresh_stream_table('sums')",
        )
        .expect("refresh");
    let action: String = db.scalar("SELECT action FROM pgtrickle.refresh_history('sums', 1)", &[]);
    let seen = notices.lock().map(|n| n.clone()).unwrap_or_default();
    assert_eq!(action, "FULL", "notices: {seen:?}");
    assert!(seen.iter().any(|(_, n)| n.contains("kB of temporary files (pg_trickle.delta_temp_file_limit)")), "{seen:?}");
    pg_trickle_e2e::assert_st_matches_query(&mut db.client, "sums", query);
    // In the session that refreshed: the bound does not outlive the refresh.
    let temp_file_limit: String = client.query_one("SHOW temp_file_limit", &[]).expect("SHOW").get(0);
    assert_eq!(temp_file_limit, "-1", "the bound does not outlive the refresh");

    // The default bound, as the non-superuser owner: DIFFERENTIAL.
    client
        .batch_execute(
            &format!(
                "RESET pg_trickle.delta_temp_file_limit; UPDATE big SET v = v - 1 WHERE id % 10 = 0;
                 SET ROLE \"{owner}\"; SELECT pgtrickle.refresh_stream_table('sums'); RESET ROLE"
            ),
        )
        .expect("refresh");
    let action: String = db.scalar("SELECT action FROM pgtrickle.refresh_history('sums', 1)", &[]);
    assert_eq!(action, "DIFFERENTIAL");
    pg_trickle_e2e::assert_st_matches_query(&mut db.client, "sums", query);
}
