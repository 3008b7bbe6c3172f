//! `malt generate CONFIG`: sample one tree per training question into the run directory
//! (resumable). `malt generate --model M --prompt P`: one completion on stdout, throughput on
//! stderr.

use anyhow::{bail, Context};
use malt_model::{parse_device, Message, Model, SamplingParams};
use std::io::Write;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// A run config: generate its trees, as `malt run` does (the other flags do not apply).
    #[arg(conflicts_with_all = ["model", "prompt"])]
    pub config: Option<std::path::PathBuf>,
    /// With a config: the round of `[rounds]` (default 1; round K samples with round K-1's
    /// adapters).
    #[arg(long, requires = "config")]
    pub round: Option<u32>,
    /// Model: `smollm2-135m-instruct` (fetched on first use), a Hugging Face directory or a .gguf file.
    #[arg(long)]
    pub model: Option<String>,
    /// The user message.
    #[arg(long)]
    pub prompt: Option<String>,
    /// An optional system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Send the prompt as-is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// A PEFT LoRA adapter directory to apply.
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: u32,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this string appears (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// cpu, cuda:N or metal (default: cpu; with a config, its `[model] device`).
    #[arg(long)]
    pub device: Option<String>,
    /// The weights' dtype (auto, f32, bf16, f16); with a config, instead of its `[model] dtype`.
    /// auto: f32 on the CPU, the checkpoint's own on a GPU.
    #[arg(long)]
    pub dtype: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(config) = &args.config {
        super::ModelFlags {
            device: args.device.clone(),
            dtype: args.dtype.clone(),
        }
        .install()?;
        let mut session = malt_pipeline::session::Session::open(config)?;
        let round = super::round_arg(&session.config, args.round)?;
        // The model loads only for the embedded backend; the remote one samples over HTTP.
        let mut models = malt_pipeline::stage::Models::for_config(&session.config);
        malt_pipeline::stage::run_stage::<malt_pipeline::stage::generate::Generate>(
            &mut session,
            &mut models,
            &round,
        )?;
        return Ok(());
    }
    let Some(model_src) = args.model.as_deref() else {
        bail!(
            "nothing to generate: pass a run config (`malt generate CONFIG`) or a model and a \
             prompt (`malt generate --model smollm2-135m-instruct --prompt \"...\"`)"
        );
    };
    let Some(prompt) = args.prompt.as_deref() else {
        bail!("--prompt is required with --model");
    };
    let device = parse_device(args.device.as_deref().unwrap_or("cpu"))?;
    let t0 = Instant::now();
    let dtype = super::dtype_arg(args.dtype.as_deref())?;
    let model = Model::load_as(model_src, &device, dtype)
        .with_context(|| format!("loading model {model_src}"))?;
    tracing::info!(
        "loaded {} in {:.2}s, weights in {:?}",
        model.source,
        t0.elapsed().as_secs_f64(),
        model.decoder.dtype()
    );
    let adapter = match &args.adapter {
        Some(dir) => Some(
            model
                .load_adapter(dir, "cli")
                .with_context(|| format!("loading adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let ids = if args.raw {
        model.tokenizer.encode(prompt, true)?
    } else {
        let mut msgs = vec![];
        if let Some(s) = &args.system {
            msgs.push(Message::system(s));
        }
        msgs.push(Message::user(prompt));
        model.encode_chat(&msgs, true)?
    };
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        max_new_tokens: args.max_new_tokens,
        stop: args.stop.clone(),
    };
    let t1 = Instant::now();
    let cache = model.prefill(&ids, adapter.as_ref())?;
    let prefill_s = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let out = model
        .generate(
            vec![malt_model::Branch {
                cache,
                seed: malt_model::branch_seed(args.seed, &[0]),
            }],
            &params,
            adapter.as_ref(),
        )?
        .pop()
        .context("no completion")?;
    let decode_s = t2.elapsed().as_secs_f64();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", out.text)?;
    stdout.flush()?;
    eprintln!(
        "prefill {} tokens in {:.2}s ({:.1} tok/s); generated {} tokens in {:.2}s ({:.1} tok/s); finish: {:?}",
        ids.len(),
        prefill_s,
        ids.len() as f64 / prefill_s.max(1e-9),
        out.tokens.len(),
        decode_s,
        out.tokens.len() as f64 / decode_s.max(1e-9),
        out.finish
    );
    Ok(())
}
