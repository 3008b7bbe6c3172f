//! One module per subcommand; each parses its own arguments and calls into the libraries.

pub mod check;
pub mod compare;
pub mod credit;
pub mod eval;
pub mod export;
pub mod generate;
pub mod online;
pub mod plugin;
pub mod run;
pub mod score;
pub mod serve;
pub mod tokenize;
pub mod train;

/// `--device` / `--dtype`: replace the config's `[model] device` / `dtype` for this command
/// (and every reload of the config it makes), e.g. the quickstart on a GPU:
/// `malt run configs/quickstart.toml --device cuda:0 --dtype bf16`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ModelFlags {
    /// Device for the model instead of the config's: cpu, cuda, cuda:N or metal.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Dtype of the weights instead of the config's: auto, f32, bf16 or f16.
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<String>,
}

impl ModelFlags {
    /// Makes the flags apply to every config this process loads.
    pub fn install(&self) -> anyhow::Result<()> {
        malt_config::ModelOverrides {
            device: self.device.clone(),
            dtype: self.dtype.clone(),
        }
        .install()
        .map_err(anyhow::Error::msg)
    }
}

/// `--round K` of a standalone stage command: round K of the config's `[rounds]` (default 1).
pub fn round_arg(
    cfg: &malt_config::Config,
    round: Option<u32>,
) -> anyhow::Result<malt_layout::RoundLayout> {
    let k = round.unwrap_or(1);
    if k < 1 || k > cfg.rounds.count {
        anyhow::bail!(
            "{}: --round {k}: the config has rounds 1 to {} ([rounds] count)",
            cfg.source.display(),
            cfg.rounds.count
        );
    }
    Ok(malt_layout::RunLayout::new(&cfg.run.dir).round(k))
}

/// `--dtype` of a command that loads a model without a config: `None` (or "auto") lets the
/// model layer pick (f32 on the CPU, the checkpoint's own on a GPU).
pub fn dtype_arg(dtype: Option<&str>) -> anyhow::Result<Option<malt_model::candle_core::DType>> {
    malt_model::parse_dtype_or_auto(dtype).map_err(|e| anyhow::anyhow!("--dtype: {e}"))
}

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
