//! The `malt` command line: a thin layer over the workspace's libraries.

use clap::{Parser, Subcommand};

#[cfg(all(unix, not(target_env = "musl")))]
mod alloc;
mod cmd;

#[derive(Parser)]
#[command(
    name = "malt",
    version,
    about = "MALT multi-agent LLM training with WASM plugins"
)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info`, `malt_plugins=debug`.
    #[arg(long, global = true, env = "MALT_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole pipeline: generate -> credit -> train -> eval, resumable at every stage.
    Run(cmd::run::Args),
    /// Validate a config, load every plugin it names and run the conformance battery.
    Check(cmd::check::Args),
    /// Grade completions of any model with a plugin.
    Score(cmd::score::Args),
    /// Build, test or scaffold plugins.
    Plugin(cmd::plugin::Args),
    /// Sample the trees of a config (`malt generate CONFIG`), or one completion (`--model M --prompt P`).
    Generate(cmd::generate::Args),
    /// Recompute rewards, values, labels and per-agent datasets from stored trees.
    Credit(cmd::credit::Args),
    /// Train each agent's LoRA adapter on the run's datasets (SFT, DPO or SFT then DPO).
    Train(cmd::train::Args),
    /// Train the chain's adapters on-policy on trees sampled with them (`[online]`), resumable.
    Online(cmd::online::Args),
    /// Evaluate single agent, untrained and trained chains (with majority voting) on held-out questions.
    Eval(cmd::eval::Args),
    /// One report from several runs' reports on the same questions, every row compared with one reference.
    Compare(cmd::compare::Args),
    /// The model and every agent's adapter behind an OpenAI-compatible HTTP server.
    Serve(cmd::serve::Args),
    /// A run's adapters and datasets in one folder, with a README for TRL and vLLM (--merge: merged models).
    Export(cmd::export::Args),
    /// Benchmarks that print a ratio against a baseline measured in the same run.
    Bench(malt_bench::Args),
    /// The token ids of a text (or of a chat turn with --chat) under a model's tokenizer.
    Tokenize(cmd::tokenize::Args),
}

#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

fn main() -> std::process::ExitCode {
    malt_model::process::prefer_rayon_only();
    #[cfg(all(unix, not(target_env = "musl")))]
    malt_model::process::set_release_freed(alloc::release_freed);
    let cli = Cli::parse();
    cmd::init_logging(&cli.log);
    let result = match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Check(args) => cmd::check::run(args),
        Command::Score(args) => cmd::score::run(args),
        Command::Plugin(args) => cmd::plugin::run(args),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Credit(args) => cmd::credit::run(args),
        Command::Train(args) => cmd::train::run(args),
        Command::Online(args) => cmd::online::run(args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Compare(args) => cmd::compare::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Export(args) => cmd::export::run(args),
        Command::Bench(args) => malt_bench::run(args),
        Command::Tokenize(args) => cmd::tokenize::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
