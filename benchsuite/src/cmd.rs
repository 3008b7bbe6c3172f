//! `malt bench <what>`: each benchmark measures its baseline in the same run and prints the ratio.

use clap::Subcommand;

mod credit;
mod device;
mod dtype;
mod generate;
mod online;
mod plugins;
mod remote;
mod serve;
mod serve_child;
mod train;
mod workload;

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
    /// LoRA training on bf16 (or f16) base weights against f32: tokens/s and the loss curves.
    Dtype(dtype::Args),
    /// Decode/prefill tokens/s and tree sampling against independent sampling.
    Generate(generate::Args),
    /// The device check: device against CPU on a tiny checkpoint, then prefill, decode, tree and
    /// LoRA SFT speed of a real shape in bf16 against the roofline, as one JSON report.
    Device(device::Args),
    /// An online training step split into sampling, log-prob passes, forward + backward and
    /// optimiser, each against the same work done alone (plain sampler, plain token-NLL pass).
    Online(online::Args),
    /// Tree generation through the remote backend against `malt serve`, against the embedded backend.
    Remote(remote::Args),
    /// Load test of `malt serve` from a second process: requests/s and latency percentiles of
    /// continuous batching against the previous engine (and llama.cpp's server), same requests.
    Serve(serve::Args),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.which {
        Which::Plugins(a) => plugins::run(a),
        Which::Generate(a) => generate::run(a),
        Which::Device(a) => device::run(a),
        Which::Credit(a) => credit::run(a),
        Which::Train(a) => train::run(a),
        Which::Dtype(a) => dtype::run(a),
        Which::Online(a) => online::run(a),
        Which::Remote(a) => remote::run(a),
        Which::Serve(a) => serve::run(a),
    }
}
