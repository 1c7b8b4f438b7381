//! TPC-H for the tests, the demo and the benchmark: the schema with its keys and
//! foreign-key indexes, data from the `tpchgen` crate, the 22 queries
//! (`crates/pgt_testkit/tpch/qNN.sql`, written from the TPC-H specification
//! with its validation substitution parameters) and mutation cycles modelled on
//! the specification's refresh functions.
//!
//! Adaptations of the queries to PostgreSQL (the only ones):
//! - `interval 'n' day (3)` and friends are written `interval 'n days'`;
//! - Q15's view `revenue0` is a CTE (a defining query cannot create a view);
//! - Q13's derived column list `c_orders (c_custkey, c_count)` is kept (PostgreSQL
//!   accepts it as written).
//!
//! Queries are derived from the TPC-H Benchmark specification; results are not
//! comparable to published TPC results. TPC Benchmark is a trademark of the TPC.

use postgres::Client;
use rand::Rng;
use std::fmt::Display;
use std::io::Write;
use tpchgen::csv::{CustomerCsv, LineItemCsv, NationCsv, OrderCsv, PartCsv, PartSuppCsv, RegionCsv, SupplierCsv};
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator, PartSuppGenerator,
    RegionGenerator, SupplierGenerator,
};

/// The 22 queries as `(name, SQL)`, `q01` .. `q22`.
pub const QUERIES: [(&str, &str); 22] = [
    ("q01", include_str!("../tpch/q01.sql")),
    ("q02", include_str!("../tpch/q02.sql")),
    ("q03", include_str!("../tpch/q03.sql")),
    ("q04", include_str!("../tpch/q04.sql")),
    ("q05", include_str!("../tpch/q05.sql")),
    ("q06", include_str!("../tpch/q06.sql")),
    ("q07", include_str!("../tpch/q07.sql")),
    ("q08", include_str!("../tpch/q08.sql")),
    ("q09", include_str!("../tpch/q09.sql")),
    ("q10", include_str!("../tpch/q10.sql")),
    ("q11", include_str!("../tpch/q11.sql")),
    ("q12", include_str!("../tpch/q12.sql")),
    ("q13", include_str!("../tpch/q13.sql")),
    ("q14", include_str!("../tpch/q14.sql")),
    ("q15", include_str!("../tpch/q15.sql")),
    ("q16", include_str!("../tpch/q16.sql")),
    ("q17", include_str!("../tpch/q17.sql")),
    ("q18", include_str!("../tpch/q18.sql")),
    ("q19", include_str!("../tpch/q19.sql")),
    ("q20", include_str!("../tpch/q20.sql")),
    ("q21", include_str!("../tpch/q21.sql")),
    ("q22", include_str!("../tpch/q22.sql")),
];

/// The query's SQL without its leading comment lines.
pub fn query_text(sql: &str) -> String {
    sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n")
}

/// The schema: TPC-H's eight tables with the specification's column types
/// (text for its fixed and variable character columns).
pub const SCHEMA: &str = "
    CREATE TABLE region (r_regionkey int NOT NULL, r_name text NOT NULL, r_comment text);
    CREATE TABLE nation (n_nationkey int NOT NULL, n_name text NOT NULL, n_regionkey int NOT NULL, n_comment text);
    CREATE TABLE part (p_partkey int NOT NULL, p_name text NOT NULL, p_mfgr text NOT NULL, p_brand text NOT NULL,
                       p_type text NOT NULL, p_size int NOT NULL, p_container text NOT NULL,
                       p_retailprice numeric(15,2) NOT NULL, p_comment text NOT NULL);
    CREATE TABLE supplier (s_suppkey int NOT NULL, s_name text NOT NULL, s_address text NOT NULL,
                           s_nationkey int NOT NULL, s_phone text NOT NULL, s_acctbal numeric(15,2) NOT NULL,
                           s_comment text NOT NULL);
    CREATE TABLE partsupp (ps_partkey int NOT NULL, ps_suppkey int NOT NULL, ps_availqty int NOT NULL,
                           ps_supplycost numeric(15,2) NOT NULL, ps_comment text NOT NULL);
    CREATE TABLE customer (c_custkey int NOT NULL, c_name text NOT NULL, c_address text NOT NULL,
                           c_nationkey int NOT NULL, c_phone text NOT NULL, c_acctbal numeric(15,2) NOT NULL,
                           c_mktsegment text NOT NULL, c_comment text NOT NULL);
    CREATE TABLE orders (o_orderkey bigint NOT NULL, o_custkey int NOT NULL, o_orderstatus char(1) NOT NULL,
                         o_totalprice numeric(15,2) NOT NULL, o_orderdate date NOT NULL, o_orderpriority text NOT NULL,
                         o_clerk text NOT NULL, o_shippriority int NOT NULL, o_comment text NOT NULL);
    CREATE TABLE lineitem (l_orderkey bigint NOT NULL, l_partkey int NOT NULL, l_suppkey int NOT NULL,
                           l_linenumber int NOT NULL, l_quantity numeric(15,2) NOT NULL,
                           l_extendedprice numeric(15,2) NOT NULL, l_discount numeric(15,2) NOT NULL,
                           l_tax numeric(15,2) NOT NULL, l_returnflag char(1) NOT NULL, l_linestatus char(1) NOT NULL,
                           l_shipdate date NOT NULL, l_commitdate date NOT NULL, l_receiptdate date NOT NULL,
                           l_shipinstruct text NOT NULL, l_shipmode text NOT NULL, l_comment text NOT NULL);";

/// Primary keys, and indexes on the foreign keys the specification's schema
/// implies (those a primary key does not lead with).
pub const KEYS: &str = "
    ALTER TABLE region ADD PRIMARY KEY (r_regionkey);
    ALTER TABLE nation ADD PRIMARY KEY (n_nationkey);
    ALTER TABLE part ADD PRIMARY KEY (p_partkey);
    ALTER TABLE supplier ADD PRIMARY KEY (s_suppkey);
    ALTER TABLE partsupp ADD PRIMARY KEY (ps_partkey, ps_suppkey);
    ALTER TABLE customer ADD PRIMARY KEY (c_custkey);
    ALTER TABLE orders ADD PRIMARY KEY (o_orderkey);
    ALTER TABLE lineitem ADD PRIMARY KEY (l_orderkey, l_linenumber);
    CREATE INDEX ON nation (n_regionkey);
    CREATE INDEX ON supplier (s_nationkey);
    CREATE INDEX ON customer (c_nationkey);
    CREATE INDEX ON partsupp (ps_suppkey);
    CREATE INDEX ON orders (o_custkey);
    CREATE INDEX ON lineitem (l_partkey, l_suppkey);
    CREATE INDEX ON lineitem (l_suppkey);";

/// The tables, parents first.
pub const TABLES: [&str; 8] = ["region", "nation", "part", "supplier", "partsupp", "customer", "orders", "lineitem"];

/// Creates the tables and loads them at scale factor `scale` (`tpchgen`), adds
/// keys and indexes, and ANALYZEs. Prints one line per table when `verbose`.
///
/// # Errors
/// The server's error if a statement fails (e.g. the tables exist), or the
/// I/O error of a COPY whose connection broke.
pub fn load(client: &mut Client, scale: f64, verbose: bool) -> Result<(), Box<dyn std::error::Error>> {
    client.batch_execute(SCHEMA)?;
    copy_rows(client, "region", RegionGenerator::new(scale, 1, 1).iter().map(RegionCsv::new), verbose)?;
    copy_rows(client, "nation", NationGenerator::new(scale, 1, 1).iter().map(NationCsv::new), verbose)?;
    copy_rows(client, "part", PartGenerator::new(scale, 1, 1).iter().map(PartCsv::new), verbose)?;
    copy_rows(client, "supplier", SupplierGenerator::new(scale, 1, 1).iter().map(SupplierCsv::new), verbose)?;
    copy_rows(client, "partsupp", PartSuppGenerator::new(scale, 1, 1).iter().map(PartSuppCsv::new), verbose)?;
    copy_rows(client, "customer", CustomerGenerator::new(scale, 1, 1).iter().map(CustomerCsv::new), verbose)?;
    copy_rows(client, "orders", OrderGenerator::new(scale, 1, 1).iter().map(OrderCsv::new), verbose)?;
    copy_rows(client, "lineitem", LineItemGenerator::new(scale, 1, 1).iter().map(LineItemCsv::new), verbose)?;
    client.batch_execute(KEYS)?;
    client.batch_execute("ANALYZE")?;
    Ok(())
}

/// COPYs CSV `rows` into `table`.
fn copy_rows<R: Display>(client: &mut Client, table: &str, rows: impl Iterator<Item = R>, verbose: bool) -> Result<(), Box<dyn std::error::Error>> {
    let start = std::time::Instant::now();
    let mut writer = client.copy_in(&format!("COPY {table} FROM STDIN WITH (FORMAT csv)"))?;
    let mut n = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    for row in rows {
        writeln!(buf, "{row}")?;
        n += 1;
        if buf.len() > (1 << 20) {
            writer.write_all(&buf)?;
            buf.clear();
        }
    }
    writer.write_all(&buf)?;
    writer.finish()?;
    if verbose {
        println!("    {table:<10} {n:>9} rows  {:>6.2} s", start.elapsed().as_secs_f64());
    }
    Ok(())
}

/// How much one mutation cycle changes.
#[derive(Debug, Clone, Copy)]
pub struct CycleSize {
    /// Orders inserted by RF1 and deleted by RF2, and rows of each other table
    /// updated: this fraction of the table's rows, at least one.
    pub fraction: f64,
    /// Only the specification's refresh functions RF1 and RF2, no updates.
    pub refresh_functions_only: bool,
}

impl CycleSize {
    /// RF1, RF2 and the updates, each of `fraction` of its table.
    pub fn all(fraction: f64) -> CycleSize {
        CycleSize { fraction, refresh_functions_only: false }
    }
}

/// The statements of one mutation cycle, each string one transaction (several
/// statements separated by `;`): RF1 inserts new orders with 1..7 lineitems
/// each (dates in TPC-H's range, parts with their real suppliers); RF2 deletes
/// orders with their lineitems; then updates of lineitem prices, discounts and
/// quantities, of ship/commit/receipt dates, of order status and priority, of
/// supplier balances, of customer segments, nations and balances, of part
/// brands, containers and sizes, and of partsupp costs and stock. Rows move
/// between groups, join partners, filters and the top-k boundaries of the
/// queries. Random choices come from `rng` (and `setseed` for the server's
/// `random()`), so a seed replays a cycle on the same data.
pub fn cycle_statements(client: &mut Client, rng: &mut impl Rng, size: CycleSize) -> Result<Vec<String>, postgres::Error> {
    let counts = client.query_one(
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM lineitem), (SELECT count(*) FROM customer), \
                (SELECT count(*) FROM supplier), (SELECT count(*) FROM part), (SELECT count(*) FROM partsupp), \
                (SELECT coalesce(max(o_orderkey), 0) FROM orders), (SELECT max(c_custkey) FROM customer), \
                (SELECT max(p_partkey) FROM part)",
        &[],
    )?;
    let rows = |i: usize| -> i64 { counts.get(i) };
    let n = |i: usize| -> i64 { ((rows(i) as f64 * size.fraction).round() as i64).max(1) };
    let (orders, lineitems, customers, suppliers, parts, partsupps) = (n(0), n(1), n(2), n(3), n(4), n(5));
    let next_order: i64 = counts.get::<_, i64>(6) + 1;
    let max_cust: i32 = counts.get(7);
    let max_part: i32 = counts.get(8);
    let mut seed = || format!("SELECT setseed({:.6})", rng.random_range(-1.0..1.0f64));
    // A sample of `k` rows of `table` (its key columns `key`), by the server's
    // seeded random().
    let sample = |table: &str, key: &str, k: i64| format!("SELECT {key} FROM {table} ORDER BY random() LIMIT {k}");
    let mut out = Vec::new();
    // RF1: new orders and their lineitems.
    out.push(format!(
        "{seed};
         INSERT INTO orders
         SELECT {next_order} + g, 1 + floor(random() * {max_cust})::int, 'O', 0,
                date '1992-01-01' + floor(random() * 2400)::int,
                (ARRAY['1-URGENT','2-HIGH','3-MEDIUM','4-NOT SPECIFIED','5-LOW'])[1 + floor(random() * 5)::int],
                'Clerk#' || lpad((1 + floor(random() * 1000)::int)::text, 9, '0'), 0, 'rf1 order'
         FROM generate_series(0, {last}) g;
         INSERT INTO lineitem
         SELECT o.o_orderkey, ps.ps_partkey, ps.ps_suppkey, l.line, q.qty, q.qty * p.p_retailprice,
                round((random() * 0.1)::numeric, 2), round((random() * 0.08)::numeric, 2),
                CASE WHEN d.receipt <= date '1995-06-17' THEN (ARRAY['R','A'])[1 + floor(random() * 2)::int] ELSE 'N' END,
                CASE WHEN d.ship > date '1995-06-17' THEN 'O' ELSE 'F' END,
                d.ship, d.commit, d.receipt,
                (ARRAY['DELIVER IN PERSON','COLLECT COD','NONE','TAKE BACK RETURN'])[1 + floor(random() * 4)::int],
                (ARRAY['REG AIR','AIR','RAIL','SHIP','TRUCK','MAIL','FOB'])[1 + floor(random() * 7)::int],
                'rf1 lineitem'
         FROM orders o
         CROSS JOIN LATERAL generate_series(1, 1 + (o.o_orderkey % 7)::int) l(line)
         CROSS JOIN LATERAL (SELECT 1 + ((o.o_orderkey * 7919 + l.line * 104729) % {max_part})::int AS partkey) k
         JOIN part p ON p.p_partkey = k.partkey
         CROSS JOIN LATERAL (SELECT * FROM partsupp WHERE ps_partkey = k.partkey ORDER BY ps_suppkey
                             OFFSET l.line % 4 LIMIT 1) ps
         CROSS JOIN LATERAL (SELECT (1 + floor(random() * 50))::numeric(15,2) AS qty) q
         CROSS JOIN LATERAL (SELECT o.o_orderdate + 1 + floor(random() * 121)::int AS ship,
                                    o.o_orderdate + 30 + floor(random() * 61)::int AS commit) s
         CROSS JOIN LATERAL (SELECT s.ship, s.commit, s.ship + 1 + floor(random() * 30)::int AS receipt) d
         WHERE o.o_orderkey >= {next_order};
         UPDATE orders o SET o_totalprice = t.total,
                o_orderstatus = CASE WHEN t.open = 0 THEN 'F' WHEN t.open = t.n THEN 'O' ELSE 'P' END
         FROM (SELECT l_orderkey, sum(l_extendedprice * (1 + l_tax) * (1 - l_discount))::numeric(15,2) AS total,
                      count(*) FILTER (WHERE l_linestatus = 'O') AS open, count(*) AS n
               FROM lineitem WHERE l_orderkey >= {next_order} GROUP BY l_orderkey) t
         WHERE o.o_orderkey = t.l_orderkey",
        seed = seed(),
        last = orders - 1,
    ));
    // RF2: delete orders with their lineitems (one statement changing both).
    out.push(format!(
        "{seed};
         WITH gone AS MATERIALIZED ({sample}),
              lines AS (DELETE FROM lineitem WHERE l_orderkey IN (SELECT o_orderkey FROM gone))
         DELETE FROM orders WHERE o_orderkey IN (SELECT o_orderkey FROM gone)",
        seed = seed(),
        sample = sample("orders", "o_orderkey", orders),
    ));
    if size.refresh_functions_only {
        return Ok(out);
    }
    // Prices, discounts and quantities; then ship, commit and receipt dates.
    out.push(format!(
        "{seed};
         UPDATE lineitem l SET l_extendedprice = round(l_extendedprice * (0.8 + random() * 0.4)::numeric, 2),
                l_discount = round((random() * 0.1)::numeric, 2),
                l_quantity = greatest(1, l_quantity + floor(random() * 21)::int - 10)
         FROM ({sample}) x WHERE (l.l_orderkey, l.l_linenumber) = (x.l_orderkey, x.l_linenumber)",
        seed = seed(),
        sample = sample("lineitem", "l_orderkey, l_linenumber", lineitems),
    ));
    out.push(format!(
        "{seed};
         UPDATE lineitem l SET l_shipdate = l_shipdate + floor(random() * 61)::int - 30,
                l_commitdate = l_commitdate + floor(random() * 41)::int - 20,
                l_receiptdate = l_receiptdate + floor(random() * 41)::int - 20
         FROM ({sample}) x WHERE (l.l_orderkey, l.l_linenumber) = (x.l_orderkey, x.l_linenumber)",
        seed = seed(),
        sample = sample("lineitem", "l_orderkey, l_linenumber", lineitems),
    ));
    // Order status and priority.
    out.push(format!(
        "{seed};
         UPDATE orders o SET o_orderstatus = CASE o_orderstatus WHEN 'F' THEN 'O' ELSE 'F' END,
                o_orderpriority = (ARRAY['1-URGENT','2-HIGH','3-MEDIUM','4-NOT SPECIFIED','5-LOW'])[1 + floor(random() * 5)::int],
                o_comment = CASE WHEN random() < 0.3 THEN 'special packages requests' ELSE o_comment END
         FROM ({sample}) x WHERE o.o_orderkey = x.o_orderkey",
        seed = seed(),
        sample = sample("orders", "o_orderkey", orders),
    ));
    // Supplier balances; customer segments, nations and balances.
    out.push(format!(
        "{seed};
         UPDATE supplier s SET s_acctbal = round((random() * 10999.99 - 999.99)::numeric, 2)
         FROM ({ss}) x WHERE s.s_suppkey = x.s_suppkey;
         UPDATE customer c SET c_mktsegment = (ARRAY['AUTOMOBILE','BUILDING','FURNITURE','MACHINERY','HOUSEHOLD'])[1 + floor(random() * 5)::int],
                c_nationkey = floor(random() * 25)::int,
                c_acctbal = round((random() * 10999.99 - 999.99)::numeric, 2)
         FROM ({cs}) x WHERE c.c_custkey = x.c_custkey",
        seed = seed(),
        ss = sample("supplier", "s_suppkey", suppliers),
        cs = sample("customer", "c_custkey", customers),
    ));
    // Part brands, containers and sizes; partsupp costs and stock.
    out.push(format!(
        "{seed};
         UPDATE part p SET p_brand = 'Brand#' || (1 + floor(random() * 5)::int) || (1 + floor(random() * 5)::int),
                p_container = (ARRAY['SM','MED','LG','JUMBO','WRAP'])[1 + floor(random() * 5)::int] || ' ' ||
                              (ARRAY['CASE','BOX','BAG','JAR','PKG','PACK','CAN','DRUM'])[1 + floor(random() * 8)::int],
                p_size = 1 + floor(random() * 50)::int
         FROM ({ps}) x WHERE p.p_partkey = x.p_partkey;
         UPDATE partsupp ps SET ps_supplycost = round((1 + random() * 999)::numeric, 2),
                ps_availqty = floor(random() * 9999)::int + 1
         FROM ({pss}) x WHERE (ps.ps_partkey, ps.ps_suppkey) = (x.ps_partkey, x.ps_suppkey)",
        seed = seed(),
        ps = sample("part", "p_partkey", parts),
        pss = sample("partsupp", "ps_partkey, ps_suppkey", partsupps),
    ));
    Ok(out)
}

/// Runs one mutation cycle ([`cycle_statements`]), each entry in its own
/// transaction; with `rollback`, all of them in one transaction that is then
/// rolled back.
///
/// # Errors
/// The server's error if a statement fails.
pub fn run_cycle(client: &mut Client, rng: &mut impl Rng, size: CycleSize, rollback: bool) -> Result<(), postgres::Error> {
    let statements = cycle_statements(client, rng, size)?;
    if rollback {
        let mut tx = client.transaction()?;
        for s in &statements {
            tx.batch_execute(s)?;
        }
        tx.rollback()?;
    } else {
        for s in &statements {
            client.batch_execute(&format!("BEGIN; {s}; COMMIT"))?;
        }
    }
    Ok(())
}
