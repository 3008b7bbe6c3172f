//! `malt serve`: the embedded model with every agent's trained adapter behind an
//! OpenAI-compatible HTTP server (protocol in the `malt-serve` crate, engine in
//! `backend::serve_backend`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use malt_serve::{Limits, Server};

use malt_engine::serve_backend::{Batching, ChainSetup, EngineSettings, ModelServeBackend};
use malt_pipeline::session::{load_model, Session};

#[derive(clap::Args)]
pub struct Args {
    /// A run config: its `[model]`, the trained adapters of its agents (served under the agent
    /// names), its plugins (for `POST /v1/malt/chain`) and its `[serve]` settings.
    #[arg(required_unless_present = "model")]
    pub config: Option<PathBuf>,
    /// Serve a model without a config (a name, a HF directory or a .gguf file): base model
    /// only, no chain endpoint, default `[serve]` settings.
    #[arg(long, conflicts_with = "config")]
    pub model: Option<String>,
    /// Listen address, overriding `[serve] addr`; port 0 picks a free port. The bound address
    /// is printed as `listening on http://ADDR`.
    #[arg(long)]
    pub addr: Option<String>,
    /// Allow a non-loopback address (`[serve] allow_remote`); set `[serve] api_key_env` too.
    #[arg(long)]
    pub allow_remote: bool,
    /// Serve one request at a time instead of batching them (`[serve] batch = false`).
    #[arg(long)]
    pub no_batch: bool,
    /// Batch only requests that wait while the engine is busy, decoding each batch to its end,
    /// instead of letting requests join a running batch (`[serve] continuous = false`).
    #[arg(long, conflicts_with = "no_batch")]
    pub no_continuous: bool,
    /// Override `[serve] max_queue`.
    #[arg(long)]
    pub max_queue: Option<usize>,
    #[command(flatten)]
    pub model_flags: super::ModelFlags,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Check the address before the slow part (plugins, model).
    let settings = match &args.config {
        Some(path) => malt_config::Config::load(path)?.serve,
        None => malt_config::Serve::default(),
    };
    let addr = args.addr.clone().unwrap_or(settings.addr.clone());
    let parsed: SocketAddr = addr
        .parse()
        .with_context(|| format!("--addr {addr:?}: expected IP:PORT, e.g. 127.0.0.1:8080"))?;
    let api_key = match &settings.api_key_env {
        Some(var) => match std::env::var(var) {
            Ok(k) if !k.is_empty() => Some(k),
            _ => anyhow::bail!(
                "[serve] api_key_env names the environment variable {var}, which is not set or \
                 empty: export {var}=<key> (clients send it as `Authorization: Bearer <key>`)"
            ),
        },
        None => None,
    };
    if !parsed.ip().is_loopback() {
        if !(args.allow_remote || settings.allow_remote) {
            anyhow::bail!(
                "{addr} is reachable from other machines; use 127.0.0.1 or pass --allow-remote \
                 (or set [serve] allow_remote = true), with [serve] api_key_env so that clients \
                 need a key"
            );
        }
        if api_key.is_none() {
            tracing::warn!(
                "listening on non-loopback {addr} without [serve] api_key_env: anyone who can \
                 reach it can use it"
            );
        }
    }
    let (model, base_id, adapters, chain) = match (&args.config, &args.model) {
        (Some(path), _) => {
            args.model_flags.install()?;
            let session = Session::open(path)?;
            let (model, id) = load_model(&session.config)?;
            let run_dir = session.config.run.dir.clone();
            // With `[rounds]`, the last trained round's adapters.
            let round = malt_layout::RunLayout::new(&run_dir).latest_trained_round();
            let agents = session.config.agents.iter().map(|a| a.name.as_str());
            let adapters = malt_train::load_final_adapters(&model, round.dir(), agents)?;
            if adapters.is_empty() {
                tracing::info!(
                    "no trained adapters in {} yet: serving the base model only",
                    round.adapters().display()
                );
            }
            let chain = ChainSetup {
                majority_k: session.config.eval.majority_k,
                dataset_plugin: session.config.dataset.plugin.clone(),
                chain: session.chain.clone(),
                run_dir,
                scorer: session.scorer,
            };
            (model, id, adapters, Some(chain))
        }
        (None, Some(source)) => {
            let device =
                malt_model::parse_device(args.model_flags.device.as_deref().unwrap_or("cpu"))?;
            let dtype = super::dtype_arg(args.model_flags.dtype.as_deref())?;
            let model = malt_model::Model::load_as(source, &device, dtype)
                .with_context(|| format!("loading model {source}"))?;
            (model, source.clone(), Vec::new(), None)
        }
        (None, None) => anyhow::bail!("give a CONFIG or --model"),
    };
    let max_queue = args.max_queue.unwrap_or(settings.max_queue).max(1);
    let limits = Limits {
        max_n: settings.max_n,
        max_tokens: settings.max_tokens,
        max_body_bytes: settings.max_body_bytes,
        max_queue,
        request_timeout: Duration::from_secs_f64(settings.request_timeout_s),
        read_timeout: Duration::from_secs_f64(settings.read_timeout_s),
        keep_alive: Duration::from_secs_f64(settings.keep_alive_s),
        max_connections: Limits::connections_for(max_queue),
        api_key,
    };
    let batching = if !settings.batch || args.no_batch {
        Batching::Off
    } else if !settings.continuous || args.no_continuous {
        Batching::Waiting
    } else {
        Batching::Continuous
    };
    let names: Vec<String> = adapters.iter().map(|(n, _)| n.clone()).collect();
    let backend = ModelServeBackend::start(
        model,
        &base_id,
        adapters,
        chain,
        EngineSettings {
            batching,
            max_batch: settings.max_batch,
            timeout_s: settings.request_timeout_s,
        },
    )?;
    let limits_have_key = limits.api_key.is_some();
    let server = Server::start(&addr, std::sync::Arc::new(backend), limits)?;
    tracing::info!(
        "serving {base_id} (also as \"base\"){}; batching: {batching:?}{}",
        if names.is_empty() {
            String::new()
        } else {
            format!(" and adapters {}", names.join(", "))
        },
        if limits_have_key {
            "; API key required"
        } else {
            ""
        }
    );
    // The one line a parent process waits for (tests, `malt bench serve`).
    let mut out = std::io::stdout();
    writeln!(out, "listening on http://{}", server.addr())?;
    out.flush()?;
    server.join();
    Ok(())
}
