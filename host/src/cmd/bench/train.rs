//! `malt bench train`: training tokens/s and peak memory for one SFT and one DPO step, malt's
//! trainer against plain candle autograd (both-operand matmul backward, composed cross-entropy)
//! on the same model, in one run. Each (phase, implementation) runs in a fresh child process
//! (this binary re-executed with `--child`) so every peak-memory figure is that phase's own.

use std::process::Command;

use anyhow::Context;
use malt_model::{parse_device, Model};
use malt_train::{BenchRow, BenchSettings};

#[derive(clap::Args)]
pub struct Args {
    /// Model to measure (a name, HF directory or .gguf).
    #[arg(long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// Sequences per step (DPO: pairs per step).
    #[arg(long, default_value_t = 1)]
    micro_batch: usize,
    #[arg(long, default_value_t = 192)]
    prompt_len: usize,
    #[arg(long, default_value_t = 64)]
    completion_len: usize,
    /// Timed steps per phase.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Internal: measure one `PHASE:IMPLEMENTATION` in this process and print it as JSON.
    #[arg(long, hide = true)]
    child: Option<String>,
}

fn settings(a: &Args) -> BenchSettings {
    BenchSettings {
        micro_batch: a.micro_batch,
        prompt_len: a.prompt_len,
        completion_len: a.completion_len,
        steps: a.steps,
        ..BenchSettings::default()
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(which) = &args.child {
        let (phase, imp) = which
            .split_once(':')
            .context("--child takes PHASE:IMPLEMENTATION")?;
        let model = Model::load(&args.model, &parse_device("cpu")?)?;
        let row = malt_train::bench_phase(&model, &settings(&args), phase, imp)?;
        println!("BENCHROW {}", serde_json::to_string(&row)?);
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find the malt executable")?;
    println!(
        "model {}, {} x ({} prompt + {} completion) tokens per step, LoRA r=8 on all 7 projections, {} steps",
        args.model, args.micro_batch, args.prompt_len, args.completion_len, args.steps
    );
    let mut rows: Vec<BenchRow> = Vec::new();
    for phase in ["sft", "dpo"] {
        for imp in ["malt", "plain-candle"] {
            let out = Command::new(&exe)
                .args(["bench", "train", "--model", &args.model])
                .args(["--micro-batch", &args.micro_batch.to_string()])
                .args(["--prompt-len", &args.prompt_len.to_string()])
                .args(["--completion-len", &args.completion_len.to_string()])
                .args(["--steps", &args.steps.to_string()])
                .args(["--child", &format!("{phase}:{imp}")])
                .output()
                .context("cannot run the benchmark child process")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let row = text
                .lines()
                .find_map(|l| l.strip_prefix("BENCHROW "))
                .filter(|_| out.status.success())
                .with_context(|| {
                    format!(
                        "{phase}/{imp} failed:\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?;
            let row: BenchRow = serde_json::from_str(row)?;
            println!(
                "{:<4} {:<13} {:>7.2} s/step {:>8.1} tokens/s  peak RSS {:>7.0} MiB  first loss {:.5}",
                row.phase,
                row.implementation,
                row.secs_per_step,
                row.tokens_per_s,
                row.peak_rss_mib.unwrap_or(f64::NAN),
                row.first_loss
            );
            rows.push(row);
        }
    }
    for phase in ["sft", "dpo"] {
        let get = |imp: &str| {
            rows.iter()
                .find(|r| r.phase == phase && r.implementation == imp)
        };
        if let (Some(m), Some(p)) = (get("malt"), get("plain-candle")) {
            println!(
                "{phase}: malt / plain candle = {:.2}x tokens/s, {:.2}x peak memory",
                m.tokens_per_s / p.tokens_per_s,
                m.peak_rss_mib.unwrap_or(f64::NAN) / p.peak_rss_mib.unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}
