//! `malt bench <what>`: each benchmark measures its baseline in the same run and prints the ratio.

use clap::Subcommand;

mod credit;
mod generate;
mod plugins;
mod train;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand)]
enum Which {
    /// Reward calls/s through a WASM plugin against the same function compiled natively.
    Plugins(plugins::Args),
    /// Credit assignment leaves/s on synthetic trees against a naive recursive baseline.
    Credit(credit::Args),
    /// Training tokens/s and peak memory, SFT and DPO, against plain candle autograd.
    Train(train::Args),
    /// Decode/prefill tokens/s and tree sampling against independent sampling.
    Generate(generate::Args),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.which {
        Which::Plugins(a) => plugins::run(a),
        Which::Generate(a) => generate::run(a),
        Which::Credit(a) => credit::run(a),
        Which::Train(a) => train::run(a),
    }
}
