//! End-to-end tests of pg_trickle: each file under `tests/` exercises one area
//! against a real PostgreSQL 18 that `pgt_testkit` starts. Shared fixtures live
//! here.

pub use pgt_testkit::{assert_st_matches_query, sqlstate, TestDb};

/// Counts rows of `sql` (a relation name or a query in parentheses).
pub fn count(db: &mut TestDb, relation: &str) -> i64 {
    db.scalar::<i64>(&format!("SELECT count(*) FROM {relation}"), &[])
}

/// Number of pg_trickle change buffers in the database.
pub fn buffer_count(db: &mut TestDb) -> i64 {
    db.scalar::<i64>(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'pgtrickle_changes' AND c.relkind = 'r'",
        &[],
    )
}

/// Number of pg_trickle capture triggers in the database.
pub fn capture_trigger_count(db: &mut TestDb) -> i64 {
    db.scalar::<i64>("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgt\\_cdc\\_%'", &[])
}

/// Number of stream tables in the catalog.
pub fn stream_table_count(db: &mut TestDb) -> i64 {
    db.scalar::<i64>("SELECT count(*) FROM pgtrickle.pgt_stream_tables", &[])
}

/// A snapshot of everything pg_trickle may create, to assert that a failed call
/// changed nothing: (relations in public + pgtrickle_changes, triggers, catalog rows).
pub fn footprint(db: &mut TestDb) -> (i64, i64, i64, i64) {
    let relations = db.scalar::<i64>(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'pgtrickle')",
        &[],
    );
    let triggers = db.scalar::<i64>("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal", &[]);
    let functions = db.scalar::<i64>(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgtrickle_changes'",
        &[],
    );
    let catalog = db.scalar::<i64>(
        "SELECT (SELECT count(*) FROM pgtrickle.pgt_stream_tables) + (SELECT count(*) FROM pgtrickle.pgt_dependencies) \
              + (SELECT count(*) FROM pgtrickle.pgt_change_tracking) + (SELECT count(*) FROM pgtrickle.pgt_refresh_history)",
        &[],
    );
    (relations, triggers, functions, catalog)
}
