//! `malt bench credit`: credit assignment leaves/s on synthetic trees (one core, plugin calls
//! excluded) against a naive recursive baseline measured in the same run, plus the time to
//! re-credit a stored run of `--stored` trees from disk (parse + credit + write datasets).

use std::time::Duration;

use crate::credit::{run_credit_bench, CreditBenchOptions};
use malt_tree::Pooling;

#[derive(clap::Args)]
pub struct Args {
    /// Branching per level of the synthetic trees.
    #[arg(long, value_delimiter = ',', default_value = "3,3,3")]
    branches: Vec<u32>,
    /// Distinct synthetic trees (iterated for at least --min-ms).
    #[arg(long, default_value_t = 20_000)]
    trees: usize,
    /// Minimum measuring time per implementation, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    min_ms: u64,
    /// Trees in the stored run re-credited from disk (0 skips it).
    #[arg(long, default_value_t = 1000)]
    stored: usize,
    /// Characters of padding per fake completion in the stored run.
    #[arg(long, default_value_t = 1500)]
    pad: usize,
    /// Use local pooling instead of global.
    #[arg(long)]
    local: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let report = run_credit_bench(&CreditBenchOptions {
        branches: args.branches,
        trees: args.trees,
        min_time: Duration::from_millis(args.min_ms),
        stored_trees: args.stored,
        pad: args.pad,
        dir: None,
        pooling: if args.local {
            Pooling::Local
        } else {
            Pooling::Global
        },
    })?;
    print!("{report}");
    Ok(())
}
