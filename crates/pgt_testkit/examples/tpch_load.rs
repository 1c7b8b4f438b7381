//! TPC-H by hand, for looking at plans (see docs/DEVELOPMENT.md):
//!
//! - `cargo run --release -p pgt_testkit --example tpch_load -- '<conninfo>' load <scale>`
//!   creates and loads the tables (which must not exist);
//! - `... '<conninfo>' cycle <fraction> [rf]` runs one mutation cycle of that
//!   fraction of each table (`rf`: only the refresh functions RF1 and RF2).

use rand::SeedableRng;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = args.get(3).and_then(|s| s.parse::<f64>().ok());
    let (Some(conninfo), Some(command), Some(number)) = (args.get(1), args.get(2), number) else {
        eprintln!("usage: tpch_load '<conninfo>' load <scale factor> | cycle <fraction> [rf]");
        std::process::exit(2);
    };
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        let mut client = pgt_testkit::postgres::Client::connect(conninfo, pgt_testkit::postgres::NoTls)?;
        if command == "load" {
            pgt_testkit::tpch::load(&mut client, number, true)
        } else {
            let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
            let size = pgt_testkit::tpch::CycleSize { fraction: number, refresh_functions_only: args.get(4).is_some_and(|a| a == "rf") };
            Ok(pgt_testkit::tpch::run_cycle(&mut client, &mut rng, size, false)?)
        }
    };
    let result = run();
    if let Err(e) = result {
        eprintln!("{command}: {e}");
        std::process::exit(1);
    }
}
