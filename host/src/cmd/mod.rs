//! One module per subcommand; each parses its own arguments and calls into the libraries.

pub mod bench;
pub mod check;
pub mod credit;
pub mod eval;
pub mod export;
pub mod generate;
pub mod plugin;
pub mod run;
pub mod score;
pub mod serve;
pub mod train;

/// Logs go to stderr so that commands printing JSON on stdout stay machine-readable.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
