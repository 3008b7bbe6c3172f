//! `malt bench device`: the device check (correctness against the CPU on a tiny checkpoint, then
//! speed of a real shape in bf16 against the device's roofline), one JSON report and a table.
//! `scripts/gpu-check` runs it on a GPU machine beside PyTorch + PEFT.

use std::path::{Path, PathBuf};

use crate::device_check::{self, report, Roofline, Settings, Shape};
use anyhow::Context;
use malt_model::parse_device;

#[derive(clap::Args)]
pub struct Args {
    /// `cpu` or `cuda:N`. On the CPU the correctness checks compare the CPU with itself (the
    /// report says so).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `tiny` (seconds, a smoke test of every path) or `llama8b` (Llama-3.1-8B's shape and the
    /// paper's sizes: prefill 2048, decode 64 tokens at batch 1 and 27, a 3-3-3 tree, a LoRA SFT
    /// step of 8 x 1024 tokens).
    #[arg(long, default_value = "tiny")]
    shape: String,
    /// Where the JSON report goes; rewritten after every section.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only the correctness checks.
    #[arg(long)]
    skip_speed: bool,
    /// Memory bandwidth of the roofline, bytes/s (default: the H200's 4.8 TB/s).
    #[arg(long, default_value_t = device_check::H200_BANDWIDTH)]
    bandwidth: f64,
    /// Dense bf16 matrix rate of the roofline, FLOP/s (default: 790 TFLOP/s, what PyTorch
    /// measured on an H200 here).
    #[arg(long, default_value_t = device_check::H200_BF16_FLOPS)]
    peak_flops: f64,
    /// Timed repeats of prefill, decode and the SFT step (each after one warm-up).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let device = parse_device(&a.device).with_context(|| format!("--device {}", a.device))?;
    anyhow::ensure!(
        a.bandwidth > 0.0 && a.peak_flops > 0.0,
        "--bandwidth and --peak-flops must be positive"
    );
    let settings = Settings {
        device_spec: a.device.clone(),
        shape: Shape::named(&a.shape)?,
        roofline: Roofline {
            bandwidth_bytes_per_s: a.bandwidth,
            peak_flops: a.peak_flops,
        },
        repeats: a.repeats,
        seed: a.seed,
        skip_speed: a.skip_speed,
    };
    let mut write_error = None;
    let r = device_check::run(&device, &settings, &mut |r| {
        if let Some(out) = &a.out {
            if let Err(e) = write_json(out, r) {
                write_error.get_or_insert(e);
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(e);
    }
    print!("{}", report::table(&r));
    if let Some(out) = &a.out {
        println!("report: {}", out.display());
    }
    Ok(())
}

/// Written atomically, so a reader (or a kill) never sees half a report.
fn write_json(path: &Path, r: &device_check::Report) -> anyhow::Result<()> {
    malt_base::atomic::write_atomic(path, &serde_json::to_vec_pretty(r)?)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_sft_step_uses_the_paper_configs_lora() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/gsm8k-llama8b.toml");
        let cfg = malt_config::Config::load(&path).unwrap();
        assert!(!cfg.agents.is_empty());
        for agent in &cfg.agents {
            let l = &agent.train.lora;
            let lora = malt_train::lora_config(l.rank, l.alpha, l.dropout, &l.targets).unwrap();
            assert_eq!(
                lora,
                crate::device_check::shape::paper_lora(),
                "{}",
                agent.name
            );
        }
    }
}
