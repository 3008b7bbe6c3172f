//! `malt bench train`: training tokens/s and peak memory for one SFT and one DPO step, malt's
//! trainer against plain candle autograd (both-operand matmul backward, composed cross-entropy)
//! on the same model, in one run, for each batch size (default 1 and 8 sequences of 256 tokens:
//! 8 x 256 is the PyTorch + PEFT peer's shape). Each (batch, phase, implementation) runs in a
//! fresh child process (this binary re-executed with `--child`) so every peak-memory figure is
//! that measurement's own. A row whose peak, extrapolated from the same implementation at a
//! smaller batch, would not fit in the available memory is skipped and says so (plain candle
//! needs several GiB per sequence). With `--gradient-checkpointing`, malt with gradient
//! checkpointing runs beside malt and the bench prints their time and peak-memory ratios.
//!
//! With `--torch PYTHON`, the PyTorch + PEFT peer (`scripts/torch_peer.py`, see
//! [`crate::torch_peer`]) trains on the same ids from the same model file in the same run,
//! alternating with malt (malt, peer, malt, peer ... for `--repeats`), each after one untimed
//! warm-up step; the bench prints both median step times, the speed ratio and both peaks, and
//! whether the peer reproduced the reference machine's step time (the ratio counts only then).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::torch_peer::{self, Peer, PeerBatch, Reference};
use crate::train::{BenchRow, BenchSettings};
use anyhow::Context;
use candle_core::DType;
use malt_model::{parse_device, Model};

#[derive(clap::Args)]
pub struct Args {
    /// Model to measure (a name, HF directory or .gguf).
    #[arg(long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// Batch sizes to measure, comma-separated: sequences per SFT step, pairs per DPO step.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8])]
    batch_sizes: Vec<usize>,
    /// Phases to measure, comma-separated: `sft`, `dpo`.
    #[arg(long, value_delimiter = ',', default_values_t = ["sft".to_string(), "dpo".to_string()])]
    phases: Vec<String>,
    /// Internal: the batch size of a `--child` measurement.
    #[arg(long, hide = true, default_value_t = 1)]
    micro_batch: usize,
    #[arg(long, default_value_t = 192)]
    prompt_len: usize,
    #[arg(long, default_value_t = 64)]
    completion_len: usize,
    /// Timed steps per phase.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Untimed steps before them (default 1 with --torch, else 0).
    #[arg(long)]
    warmup: Option<usize>,
    /// Measurements of each (batch, phase, implementation), taken in turn (malt, peer, malt,
    /// peer, ...); the summary lines give medians over all their steps.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// A python with torch, transformers, peft, trl and gguf (`scripts/torch-peer-venv.sh`
    /// installs them and prints one): the PyTorch + PEFT peer trains on the same batch from the
    /// same model file, alternating with malt.
    #[arg(long, value_name = "PYTHON")]
    torch: Option<String>,
    /// A run config whose generation stage has run (e.g. `configs/quickstart.toml` after
    /// `malt generate configs/quickstart.toml`): its training is run on a copy of its datasets
    /// and every phase's parts (setup, reference pass, first step, later steps, evaluation,
    /// checkpoints, adapter) are timed, after the synthetic steps. `none` skips it.
    #[arg(long, default_value = "configs/quickstart.toml")]
    workload: String,
    /// Only the workload's phases, not the synthetic steps.
    #[arg(long)]
    workload_only: bool,
    /// Also measure malt with gradient checkpointing (each layer recomputed in the backward)
    /// and print its step time and peak memory against malt's.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Leave out the plain-candle baseline (it needs several GiB per sequence).
    #[arg(long)]
    no_baseline: bool,
    /// The dtype the base weights are held in (auto, f32, bf16, f16; auto is f32 on the CPU).
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Internal: measure one `PHASE:IMPLEMENTATION` in this process and print it as JSON.
    #[arg(long, hide = true)]
    child: Option<String>,
}

fn settings(a: &Args, micro_batch: usize) -> BenchSettings {
    BenchSettings {
        micro_batch,
        prompt_len: a.prompt_len,
        completion_len: a.completion_len,
        steps: a.steps,
        warmup: warmup(a),
        ..BenchSettings::default()
    }
}

fn warmup(a: &Args) -> usize {
    a.warmup.unwrap_or(usize::from(a.torch.is_some()))
}

/// The bench's `--dtype` as the weights' dtype on the CPU (`auto` is f32 there).
fn cpu_dtype(a: &Args) -> anyhow::Result<DType> {
    let dtype = malt_model::parse_dtype_or_auto(Some(&a.dtype))
        .map_err(|e| anyhow::anyhow!("--dtype: {e}"))?;
    Ok(dtype.unwrap_or(DType::F32))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(which) = &args.child {
        let (phase, imp) = which
            .split_once(':')
            .context("--child takes PHASE:IMPLEMENTATION")?;
        let dtype = malt_model::parse_dtype_or_auto(Some(&args.dtype))
            .map_err(|e| anyhow::anyhow!("--dtype: {e}"))?;
        let model = Model::load_as(&args.model, &parse_device("cpu")?, dtype)?;
        let row =
            crate::train::bench_phase(&model, &settings(&args, args.micro_batch), phase, imp)?;
        println!("BENCHROW {}", serde_json::to_string(&row)?);
        return Ok(());
    }
    if !args.workload_only {
        synthetic(&args)?;
    }
    if args.workload != "none" {
        workload(Path::new(&args.workload))?;
    }
    Ok(())
}

/// The workload config's own training, on a copy of its run directory's datasets.
fn workload(config: &Path) -> anyhow::Result<()> {
    if !config.exists() {
        println!(
            "workload {} not found (run from the repository root, or pass --workload CONFIG|none)",
            config.display()
        );
        return Ok(());
    }
    let session = malt_pipeline::session::Session::open(config)?;
    let mut cfg = session.config.clone();
    let datasets = cfg.run.dir.join("datasets");
    if !datasets.is_dir() {
        println!(
            "workload {}: no datasets in {} yet; run `malt generate {0}` (or `malt run {0}`) first",
            config.display(),
            cfg.run.dir.display()
        );
        return Ok(());
    }
    let tmp = tempfile::tempdir().context("creating a scratch run directory")?;
    copy_dir(&datasets, &tmp.path().join("datasets"))?;
    cfg.run.dir = tmp.path().to_path_buf();
    let t = std::time::Instant::now();
    let (model, id) = malt_pipeline::session::load_model(&cfg)?;
    println!(
        "workload {}: training as configured on a copy of {} (model loaded in {:.1}s)",
        config.display(),
        datasets.display(),
        t.elapsed().as_secs_f64()
    );
    let t = std::time::Instant::now();
    let mut provenance = malt_pipeline::stage::Provenance::of(&session);
    provenance.run_dir = tmp.path().to_path_buf();
    let reports = malt_pipeline::train::train_agents(
        &malt_pipeline::train::AgentTraining::of(&cfg),
        cfg.run.seed,
        tmp.path(),
        &model,
        &id,
        None,
        false,
        &provenance,
    )?;
    let wall = t.elapsed().as_secs_f64();
    for r in &reports {
        println!(
            "workload {} {}: {} train / {} eval examples, {} steps in {}",
            r.agent,
            r.phase.name(),
            r.train_examples,
            r.eval_examples,
            r.steps,
            r.timings.summary()
        );
    }
    let steps: u64 = reports.iter().map(|r| r.steps).sum();
    let part = |f: fn(&malt_train::PhaseTimings) -> f64| -> f64 {
        reports.iter().map(|r| f(&r.timings)).sum()
    };
    println!(
        "workload training: {wall:.1}s for {} phases and {steps} steps: steps {:.1}s (first steps {:.1}s), reference passes {:.1}s, evals {:.1}s, checkpoints {:.1}s, setup {:.1}s, adapters {:.1}s",
        reports.len(),
        part(|t| t.first_step_s + t.later_steps_s),
        part(|t| t.first_step_s),
        part(|t| t.reference_s),
        part(|t| t.eval_s),
        part(|t| t.checkpoint_s),
        part(|t| t.setup_s),
        part(|t| t.finish_s),
    );
    Ok(())
}

/// Copies a datasets directory, without its DPO reference caches.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let dest = to.join(e.file_name());
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else if name.contains(".ref-") {
            // DPO reference log-prob caches: left behind, so the reference pass is measured.
            continue;
        } else {
            std::fs::copy(e.path(), &dest)
                .with_context(|| format!("copying {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// The PyTorch peer of a `--torch` run, with what it needs to write each batch.
struct Torch {
    peer: Peer,
    /// The model file (or directory) malt loads, which the peer loads too.
    model: PathBuf,
    vocab: usize,
    /// The peer's `--dtype`.
    dtype: &'static str,
}

impl Torch {
    fn open(args: &Args, python: &str) -> anyhow::Result<Self> {
        let dtype = match cpu_dtype(args)? {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            other => anyhow::bail!("--dtype: the PyTorch peer has no {other:?}"),
        };
        let peer = Peer::new(python)?;
        let model = if args
            .model
            .eq_ignore_ascii_case(malt_model::fetch::DEFAULT_MODEL)
        {
            malt_model::fetch::ensure_smollm2()?
        } else {
            PathBuf::from(&args.model)
        };
        let source = model.to_string_lossy();
        let (cfg, _) = Model::inspect(&source)?
            .with_context(|| format!("--model {}: cannot read its config", args.model))?;
        let versions: Vec<String> = peer
            .versions
            .iter()
            .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?")))
            .collect();
        println!(
            "PyTorch peer: {python} ({}), {} weights, 2 threads, sdpa attention, no gradient \
             checkpointing, PEFT LoRA without dropout, AdamW; the model from {}",
            versions.join(", "),
            dtype,
            model.display()
        );
        Ok(Torch {
            peer,
            model,
            vocab: cfg.vocab_size,
            dtype,
        })
    }

    fn measure(&self, args: &Args, mb: usize, phase: &str) -> anyhow::Result<BenchRow> {
        let batch = PeerBatch::new(
            &settings(args, mb),
            &self.model,
            self.vocab,
            phase,
            crate::train::LR,
        );
        let path = self
            .peer
            .write_batch(&format!("batch-{mb}-{phase}.json"), &batch)?;
        let row = self
            .peer
            .run(&path, phase, args.steps, warmup(args), self.dtype)
            .with_context(|| format!("b={mb} {phase}/{}", torch_peer::IMPLEMENTATION))?;
        Ok(row)
    }

    fn is_default_model(&self) -> bool {
        malt_model::fetch::smollm2_cached().is_some_and(|p| p == self.model)
    }
}

/// One SFT and one DPO step of synthetic sequences per batch size, malt against plain candle
/// (and the PyTorch peer with `--torch`).
fn synthetic(args: &Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the malt executable")?;
    if let Some(bad) = args
        .phases
        .iter()
        .find(|p| !matches!(p.as_str(), "sft" | "dpo"))
    {
        anyhow::bail!("--phases: unknown phase `{bad}` (sft, dpo)");
    }
    anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
    cpu_dtype(args)?;
    // Before any measurement: a python without torch fails here, not after malt's rows.
    let torch = args
        .torch
        .as_deref()
        .map(|py| Torch::open(args, py))
        .transpose()?;
    println!(
        "model {}, batch sizes {:?} x ({} prompt + {} completion) tokens (DPO: pairs), \
         LoRA r=8 on all 7 projections, {} steps after {} warm-up, {} repeat(s)",
        args.model,
        args.batch_sizes,
        args.prompt_len,
        args.completion_len,
        args.steps,
        warmup(args),
        args.repeats
    );
    let mut implementations = vec!["malt"];
    if args.gradient_checkpointing {
        implementations.push("malt-checkpointed");
    }
    if !args.no_baseline {
        implementations.push("plain-candle");
    }
    if torch.is_some() {
        implementations.push(torch_peer::IMPLEMENTATION);
    }
    let mut rows: Vec<(usize, BenchRow)> = Vec::new();
    for &mb in &args.batch_sizes {
        for phase in args.phases.iter().map(String::as_str) {
            for _ in 0..args.repeats {
                for &imp in &implementations {
                    if let Some(why) = too_big(&rows, mb, phase, imp) {
                        println!("b={mb:<2} {phase:<4} {imp:<17} skipped: {why}");
                        continue;
                    }
                    let row = match &torch {
                        Some(t) if imp == torch_peer::IMPLEMENTATION => {
                            t.measure(args, mb, phase)?
                        }
                        _ => child(&exe, args, mb, phase, imp)?,
                    };
                    print_row(mb, &row);
                    rows.push((mb, row));
                }
            }
        }
    }
    for &mb in &args.batch_sizes {
        for phase in args.phases.iter().map(String::as_str) {
            let get = |imp: &str| -> Vec<&BenchRow> {
                rows.iter()
                    .filter(|(b, r)| *b == mb && r.phase == phase && r.implementation == imp)
                    .map(|(_, r)| r)
                    .collect()
            };
            let (malt, checkpointed, plain) =
                (get("malt"), get("malt-checkpointed"), get("plain-candle"));
            if let (Some(m), Some(c)) = (malt.first(), checkpointed.first()) {
                println!(
                    "b={mb} {phase}: checkpointed / malt = {:.2}x step time ({:.2}x by CPU time), \
                     {:.2}x peak memory ({:.2}x growth over the loaded model), first loss {:+.1e}",
                    c.secs_per_step / m.secs_per_step,
                    c.cpu_secs_per_step.unwrap_or(f64::NAN)
                        / m.cpu_secs_per_step.unwrap_or(f64::NAN),
                    c.peak_rss_mib.unwrap_or(f64::NAN) / m.peak_rss_mib.unwrap_or(f64::NAN),
                    c.peak_delta_mib.unwrap_or(f64::NAN) / m.peak_delta_mib.unwrap_or(f64::NAN),
                    c.first_loss - m.first_loss
                );
            }
            if let (Some(m), Some(p)) = (malt.first(), plain.first()) {
                println!(
                    "b={mb} {phase}: malt / plain candle = {:.2}x tokens/s ({:.2}x by CPU time), \
                     {:.2}x peak memory",
                    m.tokens_per_s / p.tokens_per_s,
                    p.cpu_secs_per_step.unwrap_or(f64::NAN)
                        / m.cpu_secs_per_step.unwrap_or(f64::NAN),
                    m.peak_rss_mib.unwrap_or(f64::NAN) / p.peak_rss_mib.unwrap_or(f64::NAN)
                );
            }
            if let Some(t) = &torch {
                let peer = get(torch_peer::IMPLEMENTATION);
                if !malt.is_empty() && !peer.is_empty() {
                    compare_with_peer(args, t, mb, phase, &malt, &peer);
                }
            }
        }
    }
    Ok(())
}

fn print_row(mb: usize, row: &BenchRow) {
    println!(
        "b={mb:<2} {:<4} {:<17} {:>7.2} s/step ({:>6.2} CPU s) {:>7.1} tokens/s  \
         peak RSS {:>6.0} MiB (+{:.0} over the loaded model)  first loss {:.5}",
        row.phase,
        row.implementation,
        row.secs_per_step,
        row.cpu_secs_per_step.unwrap_or(f64::NAN),
        row.tokens_per_s,
        row.peak_rss_mib.unwrap_or(f64::NAN),
        row.peak_delta_mib.unwrap_or(f64::NAN),
        row.first_loss
    );
}

/// The medians of all timed steps of `rows` (each row's own steps, else its mean), and the
/// largest peak.
fn pooled(rows: &[&BenchRow]) -> (f64, usize, f64, f64) {
    let steps: Vec<f64> = rows
        .iter()
        .flat_map(|r| {
            if r.step_secs.is_empty() {
                vec![r.secs_per_step]
            } else {
                r.step_secs.clone()
            }
        })
        .collect();
    let cpu: Vec<f64> = rows.iter().filter_map(|r| r.cpu_secs_per_step).collect();
    let peak = rows
        .iter()
        .filter_map(|r| r.peak_rss_mib)
        .fold(f64::NAN, f64::max);
    (
        torch_peer::median(&steps),
        steps.len(),
        torch_peer::median(&cpu),
        peak,
    )
}

/// The malt / peer line of one (batch, phase), and whether the peer reproduced the reference.
fn compare_with_peer(
    args: &Args,
    t: &Torch,
    mb: usize,
    phase: &str,
    malt: &[&BenchRow],
    peer: &[&BenchRow],
) {
    let (ms, mn, mc, mp) = pooled(malt);
    let (ps, pn, pc, pp) = pooled(peer);
    println!(
        "b={mb} {phase}: malt / PyTorch peer = {:.2}x tokens/s (median step {ms:.2} s vs {ps:.2} s \
         over {mn} and {pn} steps; CPU {mc:.2} s vs {pc:.2} s), peak RSS {:.2} GiB vs {:.2} GiB, \
         first loss {:.5} vs {:.5}",
        ps / ms,
        mp / 1024.0,
        pp / 1024.0,
        malt[0].first_loss,
        peer[0].first_loss
    );
    let shape = torch_peer::Shape {
        phase: if phase == "sft" { "sft" } else { "dpo" },
        micro_batch: mb,
        prompt_len: args.prompt_len,
        completion_len: args.completion_len,
        f32_weights: t.dtype == "f32",
        default_model: t.is_default_model(),
    };
    let (lo, hi) = torch_peer::REFERENCE_SECS;
    match torch_peer::reference_check(shape, ps) {
        Reference::Within => println!(
            "b={mb} {phase}: the peer's {ps:.2} s a step is within 10 % of the reference \
             machine's {lo}-{hi} s, so the ratio counts"
        ),
        Reference::Outside { low, high } => {
            // The peer's two threads both busy (CPU time near twice the wall time) while it runs
            // faster than the reference: a faster host, not a busy one.
            let why = if ps < low && pc >= 1.8 * ps {
                format!(
                    "it ran faster with both its threads busy ({pc:.2} CPU s a step), so this \
                     machine is faster than the reference one, not busy"
                )
            } else {
                "this machine is busy or of another kind".to_owned()
            };
            println!(
                "warning: b={mb} {phase}: the peer's {ps:.2} s a step is outside \
                 {low:.2}-{high:.2} s (the reference machine's {lo}-{hi} s, within 10 %): {why}; \
                 the ratio above is a same-run one and does not count against the reference"
            )
        }
        Reference::None => println!(
            "b={mb} {phase}: no reference time for the peer at this shape (it has one for SFT, \
             8 x (192 + 64) tokens, f32, smollm2-135m-instruct): the ratio is not checked"
        ),
    }
}

fn child(exe: &Path, args: &Args, mb: usize, phase: &str, imp: &str) -> anyhow::Result<BenchRow> {
    let mut cmd = Command::new(exe);
    if imp == "plain-candle"
        && std::env::var_os(malt_model::process::CANDLE_THREADS_DEFAULTED).is_some()
    {
        // The baseline keeps candle's own default (elementwise ops on its thread pool, one
        // thread per core) rather than malt's `prefer_rayon_only`.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cmd.env("CANDLE_NUM_THREADS", cores.to_string());
    }
    let out = cmd
        .args([
            "bench",
            "train",
            "--model",
            &args.model,
            "--dtype",
            &args.dtype,
        ])
        .args(["--micro-batch", &mb.to_string()])
        .args(["--prompt-len", &args.prompt_len.to_string()])
        .args(["--completion-len", &args.completion_len.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--warmup", &warmup(args).to_string()])
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
                "b={mb} {phase}/{imp} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    Ok(serde_json::from_str(row)?)
}

/// Why a (batch, phase, implementation) should not run: its peak, extrapolated linearly in the
/// batch from the largest smaller batch measured for the same phase and implementation, exceeds
/// 90 % of `MemAvailable` (other processes share the machine; an OOM kill could hit them).
fn too_big(rows: &[(usize, BenchRow)], mb: usize, phase: &str, imp: &str) -> Option<String> {
    let (b0, r0) = rows
        .iter()
        .filter(|(b, r)| *b < mb && r.phase == phase && r.implementation == imp)
        .max_by_key(|(b, _)| *b)?;
    let (peak, delta) = (r0.peak_rss_mib?, r0.peak_delta_mib?);
    let predicted = peak + delta * (mb as f64 / *b0 as f64 - 1.0);
    let available = mem_available_mib()?;
    (predicted > 0.9 * available).then(|| {
        format!(
            "predicted peak {:.1} GiB (b={b0} measured {:.1} GiB) exceeds 90 % of the {:.1} GiB available",
            predicted / 1024.0,
            peak / 1024.0,
            available / 1024.0
        )
    })
}

fn mem_available_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = s
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}
