//! `malt bench dtype`: LoRA SFT with the base weights in bf16 (or f16) against f32, on the
//! same checkpoint, data, adapter initialisation, dropout masks and optimiser steps, in one
//! run: trained tokens/s of each and how far their loss curves drift apart.

use std::path::PathBuf;

use anyhow::Context;
use malt_model::{parse_device, parse_dtype, LoraConfig, Model};
use malt_train::curve::{max_relative_gap, sft_curve, CurveSettings};
use malt_train::data::{load_sft, tokenize_sft};
use malt_train::{ChatTokenizer, MaltTokenizer};

#[derive(clap::Args)]
pub struct Args {
    /// Model (a name, HF directory or .gguf).
    #[arg(long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// The dtypes to compare; the first is the reference.
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    dtypes: Vec<String>,
    /// An SFT dataset as malt writes it (`<run>/datasets/<agent>/sft.jsonl`); the default is
    /// the quickstart's generator data, there after `malt run configs/quickstart.toml`.
    #[arg(long, default_value = "runs/quickstart/datasets/generator/sft.jsonl")]
    data: PathBuf,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    micro_batch: usize,
    #[arg(long, default_value_t = 512)]
    max_seq_len: usize,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the curves as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.dtypes.len() >= 2,
        "--dtypes takes at least two, e.g. f32,bf16"
    );
    let records = load_sft(&args.data).with_context(|| {
        format!(
            "{}: no SFT dataset (run `malt run configs/quickstart.toml` first, or pass --data)",
            args.data.display()
        )
    })?;
    let settings = CurveSettings {
        steps: args.steps,
        micro_batch: args.micro_batch,
        lr: args.lr,
        lora: LoraConfig::default(),
        seed: args.seed,
    };
    let device = parse_device("cpu")?;
    let mut curves = Vec::new();
    for name in &args.dtypes {
        let dtype = parse_dtype(name)?;
        let model = Model::load_as(&args.model, &device, Some(dtype))
            .with_context(|| format!("loading {} as {name}", args.model))?;
        let tok = MaltTokenizer::new(&model)?;
        let data: Vec<_> = tokenize_sft(&tok, &records.records, args.max_seq_len)?
            .into_iter()
            .map(|i| i.seq)
            .collect();
        eprintln!(
            "{name}: {} steps of {} sequences from {} ({} examples)",
            args.steps,
            args.micro_batch,
            args.data.display(),
            data.len()
        );
        let curve = sft_curve(&model, &data, &settings, tok.eos_id())?;
        curves.push((name.clone(), curve));
    }
    let (ref_name, reference) = &curves[0];
    println!(
        "step  {}",
        curves
            .iter()
            .map(|(n, _)| format!("{n:>9}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for step in 0..args.steps {
        if step % 5 == 0 || step + 1 == args.steps {
            let row: Vec<String> = curves
                .iter()
                .map(|(_, c)| format!("{:>9.4}", c.losses[step]))
                .collect();
            println!("{:>4}  {}", step + 1, row.join(" "));
        }
    }
    let ref_tps = reference.tokens_per_s(args.steps);
    println!("{ref_name}: {ref_tps:.0} trained tokens/s");
    for (name, c) in &curves[1..] {
        let tps = c.tokens_per_s(args.steps);
        println!(
            "{name}: {tps:.0} trained tokens/s = {:.2}x {ref_name}; loss curve within {:.3} % of \
             {ref_name}'s at every step (largest relative gap over {} steps)",
            tps / ref_tps.max(1e-12),
            100.0 * max_relative_gap(&reference.losses, &c.losses),
            args.steps
        );
    }
    if let Some(out) = &args.out {
        let json: serde_json::Map<String, serde_json::Value> = curves
            .iter()
            .map(|(n, c)| Ok((n.clone(), serde_json::to_value(c)?)))
            .collect::<anyhow::Result<_>>()?;
        std::fs::write(out, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
