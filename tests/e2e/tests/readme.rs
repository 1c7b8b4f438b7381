//! The README's first example, verbatim in effect, so the README stays true.

use pg_trickle_e2e::*;

#[test]
fn readme_first_stream_table() {
    let mut db = TestDb::new("readme");
    db.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric);
         INSERT INTO orders VALUES (1, 'ada', 10), (2, 'ada', 5), (3, 'bob', 7);
         SELECT pgtrickle.create_stream_table(
             'customer_totals',
             'SELECT customer, sum(amount) AS total, count(*) AS orders FROM orders GROUP BY customer');",
    );
    let rows = |db: &mut TestDb| -> Vec<String> {
        db.column("SELECT format('%s %s %s', customer, total, orders) FROM customer_totals ORDER BY customer", &[])
    };
    assert_eq!(rows(&mut db), vec!["ada 15 2", "bob 7 1"]);
    db.exec("INSERT INTO orders VALUES (4, 'cyd', 1)");
    db.exec("UPDATE orders SET amount = 0 WHERE id = 2");
    db.exec("SELECT pgtrickle.refresh_stream_table('customer_totals')");
    assert_eq!(rows(&mut db), vec!["ada 10 2", "bob 7 1", "cyd 1 1"]);
    assert_st_matches_query(
        &mut db.client,
        "customer_totals",
        "SELECT customer, sum(amount) AS total, count(*) AS orders FROM orders GROUP BY customer",
    );
    let err = db.expect_error("DROP TABLE orders", "2BP01");
    assert!(err.contains("customer_totals"), "{err}");
    db.exec("SELECT pgtrickle.drop_stream_table('customer_totals'); DROP TABLE orders;");
}
