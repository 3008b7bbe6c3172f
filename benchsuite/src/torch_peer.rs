//! The PyTorch peer of `malt bench train --torch PYTHON`: `scripts/torch_peer.py` (transformers +
//! PEFT for SFT, TRL's log-prob head and sigmoid loss for DPO), run as a child process on the
//! batch malt's bench measured, written to a JSON file ([`PeerBatch`]), and its JSON-lines
//! report read back into a [`BenchRow`] beside malt's.
//!
//! The script and the module it shares with the GPU check (`scripts/torch_lora.py`) are built into
//! the binary and written to a scratch folder, so the bench runs from any directory.
//!
//! Before a malt/peer ratio counts, the peer must reproduce on this machine the step time it had on
//! the 2-core reference machine ([`REFERENCE_SECS`], [`reference_check`]): otherwise the machine is
//! busy or another kind, and both figures move in ways the ratio does not cancel.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::train::{synthetic_batch, BenchRow, BenchSettings};
use malt_train::optim::AdamWParams;
use malt_train::settings::DpoSettings;

/// The implementation name of the peer's rows.
pub const IMPLEMENTATION: &str = "torch-peft";
/// The script that installs the peer into a cache venv and prints the python to pass.
pub const VENV_SCRIPT: &str = "scripts/torch-peer-venv.sh";

const SCRIPT: &str = include_str!("../../scripts/torch_peer.py");
const SHARED: &str = include_str!("../../scripts/torch_lora.py");

/// Seconds an SFT step of 8 x (192 + 64) tokens took the peer on the 2-core AMD EPYC reference
/// machine (PyTorch 2.15, transformers 5.25, PEFT 0.21, SmolLM2-135M from its GGUF in f32, LoRA
/// r 8 / alpha 16 on all 7 projections, AdamW, 2 threads): the lowest and highest median of 3
/// steps after a warm-up.
pub const REFERENCE_SECS: (f64, f64) = (11.3, 11.8);
/// How far outside [`REFERENCE_SECS`] the peer may be for a ratio to count (relative).
pub const REFERENCE_TOLERANCE: f64 = 0.10;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(
        "--torch {python}: cannot run it ({source}); run {VENV_SCRIPT} and pass the python it prints"
    )]
    Spawn {
        python: String,
        source: std::io::Error,
    },
    #[error(
        "--torch {python}: it lacks the peer's packages ({detail}); run {VENV_SCRIPT} and pass \
         the python it prints"
    )]
    Missing { python: String, detail: String },
    #[error("writing the peer's {what} to {path}: {source}")]
    Write {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the PyTorch peer failed ({status}):\n{stderr}")]
    Failed { status: String, stderr: String },
    #[error("the PyTorch peer's output, line {line}: {msg}")]
    Protocol { line: usize, msg: String },
    #[error("the PyTorch peer's output has {0}")]
    Incomplete(&'static str),
}

/// What the peer reads: the bench's batch and settings for one (batch size, phase).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerBatch {
    /// 1 (the script refuses others).
    pub format: u32,
    /// `sft` or `dpo` (the first `micro_batch` sequences chosen, the rest rejected).
    pub phase: String,
    /// The weights malt loaded: a `.gguf` file or a Hugging Face directory.
    pub model: PathBuf,
    pub prompt_len: usize,
    pub completion_len: usize,
    pub micro_batch: usize,
    pub sequences: Vec<Vec<u32>>,
    pub lora: PeerLora,
    pub adamw: PeerAdamW,
    pub dpo_beta: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerLora {
    pub rank: usize,
    pub alpha: f64,
    /// PEFT's module names (`q_proj`, ...).
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerAdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl PeerBatch {
    /// The batch malt's [`crate::train::bench_phase`] trains on for `phase` (the same ids, from
    /// the same seed), with its LoRA, AdamW (`lr`: the bench's) and DPO settings.
    pub fn new(s: &BenchSettings, model: &Path, vocab: usize, phase: &str, lr: f64) -> Self {
        let opt = AdamWParams::default();
        PeerBatch {
            format: 1,
            phase: phase.into(),
            model: model.to_path_buf(),
            prompt_len: s.prompt_len,
            completion_len: s.completion_len,
            micro_batch: s.micro_batch,
            sequences: synthetic_batch(s, vocab, phase)
                .into_iter()
                .map(|q| q.ids)
                .collect(),
            lora: PeerLora {
                rank: s.lora.r,
                alpha: s.lora.alpha,
                targets: s.lora.targets.iter().map(|p| p.hf_name().into()).collect(),
            },
            adamw: PeerAdamW {
                lr,
                beta1: opt.beta1,
                beta2: opt.beta2,
                eps: opt.eps,
                weight_decay: opt.weight_decay,
            },
            dpo_beta: DpoSettings::default().beta,
        }
    }
}

/// The peer, written into a scratch folder, with the python that runs it.
pub struct Peer {
    python: String,
    dir: tempfile::TempDir,
    /// `torch`, `transformers`, ... and their versions, as the python reported them.
    pub versions: serde_json::Map<String, serde_json::Value>,
}

impl Peer {
    /// Writes the scripts and checks that `python` imports what the peer needs.
    pub fn new(python: &str) -> Result<Self, PeerError> {
        let dir = tempfile::tempdir().map_err(|source| PeerError::Write {
            what: "scratch folder",
            path: std::env::temp_dir(),
            source,
        })?;
        for (name, text) in [("torch_peer.py", SCRIPT), ("torch_lora.py", SHARED)] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).map_err(|source| PeerError::Write {
                what: "script",
                path,
                source,
            })?;
        }
        let mut peer = Peer {
            python: python.into(),
            dir,
            versions: Default::default(),
        };
        let out = peer.command().arg("--check").output();
        let out = out.map_err(|source| PeerError::Spawn {
            python: python.into(),
            source,
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let check = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["kind"] == "check");
        match (out.status.success(), check) {
            (true, Some(v)) => {
                peer.versions = v["versions"].as_object().cloned().unwrap_or_default();
                Ok(peer)
            }
            _ => Err(PeerError::Missing {
                python: python.into(),
                detail: last_lines(&stderr, 3)
                    .unwrap_or_else(|| format!("`--check` exited with {}", out.status)),
            }),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(self.dir.path().join("torch_peer.py"));
        cmd
    }

    /// Writes `batch` into the scratch folder under `name` and returns its path.
    pub fn write_batch(&self, name: &str, batch: &PeerBatch) -> Result<PathBuf, PeerError> {
        let path = self.dir.path().join(name);
        let text = serde_json::to_string(batch).map_err(|e| PeerError::Write {
            what: "batch",
            path: path.clone(),
            source: e.into(),
        })?;
        std::fs::write(&path, text).map_err(|source| PeerError::Write {
            what: "batch",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// One measurement in a fresh python process: `warmup` untimed steps, then `steps` timed
    /// ones of the batch at `batch`, the base weights in `dtype` (`f32`, `bf16`, `f16`).
    pub fn run(
        &self,
        batch: &Path,
        phase: &str,
        steps: usize,
        warmup: usize,
        dtype: &str,
    ) -> Result<BenchRow, PeerError> {
        let out = self
            .command()
            .arg("--batch")
            .arg(batch)
            .args(["--steps", &steps.to_string()])
            .args(["--warmup", &warmup.to_string()])
            .args(["--dtype", dtype])
            .output()
            .map_err(|source| PeerError::Spawn {
                python: self.python.clone(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(PeerError::Failed {
                status: out.status.to_string(),
                stderr: last_lines(&stderr, 20).unwrap_or_default(),
            });
        }
        parse_output(&String::from_utf8_lossy(&out.stdout), phase)
    }
}

fn last_lines(text: &str, n: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    (!lines.is_empty()).then(|| lines[lines.len().saturating_sub(n)..].join("\n"))
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Line {
    Setup {},
    Step {
        step: usize,
        warmup: bool,
        seconds: f64,
        cpu_seconds: Option<f64>,
        tokens: usize,
        loss: f64,
    },
    Done {
        peak_rss_mib: Option<f64>,
        peak_delta_mib: Option<f64>,
        memory_method: String,
    },
    Check {},
}

/// The peer's JSON lines (see `scripts/torch_peer.py`) as a [`BenchRow`]: its timed steps' mean
/// and each, the loss of its first step (warm-up or not, as malt's rows), its peak memory. Lines
/// that are not JSON objects (a library's stray print) are skipped.
pub fn parse_output(stdout: &str, phase: &str) -> Result<BenchRow, PeerError> {
    let mut first_loss = None;
    let (mut secs, mut cpu) = (Vec::new(), Some(0f64));
    let mut tokens = None;
    let mut done = None;
    for (i, text) in stdout.lines().enumerate() {
        let line = i + 1;
        if !text.trim_start().starts_with('{') {
            continue;
        }
        let parsed: Line = serde_json::from_str(text).map_err(|e| PeerError::Protocol {
            line,
            msg: format!("{e}: {text}"),
        })?;
        match parsed {
            Line::Step {
                step,
                warmup,
                seconds,
                cpu_seconds,
                tokens: n,
                loss,
            } => {
                if step == 0 {
                    first_loss = Some(loss);
                }
                if *tokens.get_or_insert(n) != n {
                    return Err(PeerError::Protocol {
                        line,
                        msg: format!("step {step} has {n} tokens, earlier steps {tokens:?}"),
                    });
                }
                if !warmup {
                    secs.push(seconds);
                    cpu = cpu.zip(cpu_seconds).map(|(a, b)| a + b);
                }
            }
            Line::Done {
                peak_rss_mib,
                peak_delta_mib,
                memory_method,
            } => done = Some((peak_rss_mib, peak_delta_mib, memory_method)),
            Line::Setup {} | Line::Check {} => {}
        }
    }
    let first_loss = first_loss.ok_or(PeerError::Incomplete("no step 0"))?;
    let tokens = tokens.unwrap_or(0);
    if secs.is_empty() {
        return Err(PeerError::Incomplete("no timed step"));
    }
    let (peak, delta, method) = done.ok_or(PeerError::Incomplete("no `done` line"))?;
    let n = secs.len();
    let spp = secs.iter().sum::<f64>() / n as f64;
    Ok(BenchRow {
        phase: phase.into(),
        implementation: IMPLEMENTATION.into(),
        steps: n,
        tokens_per_step: tokens,
        secs_per_step: spp,
        step_secs: secs,
        cpu_secs_per_step: cpu.map(|c| c / n as f64),
        tokens_per_s: tokens as f64 / spp.max(1e-12),
        peak_rss_mib: peak,
        peak_delta_mib: delta,
        memory_method: method,
        first_loss,
    })
}

/// How the peer's measured step compares with the reference machine's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reference {
    /// Not the reference shape (SFT, 8 x (192 + 64) tokens, f32 weights, the default model):
    /// there is no figure to check against.
    None,
    /// Within [`REFERENCE_TOLERANCE`] of [`REFERENCE_SECS`]: the ratio counts.
    Within,
    /// Outside: the machine is busy or not the reference kind; the ratio does not count.
    Outside { low: f64, high: f64 },
}

/// The shape of a measurement, for [`reference_check`].
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub phase: &'static str,
    pub micro_batch: usize,
    pub prompt_len: usize,
    pub completion_len: usize,
    pub f32_weights: bool,
    pub default_model: bool,
}

/// Whether the peer's median step `secs` reproduces the reference machine's figure.
pub fn reference_check(shape: Shape, secs: f64) -> Reference {
    let reference = shape.phase == "sft"
        && shape.micro_batch == 8
        && shape.prompt_len == 192
        && shape.completion_len == 64
        && shape.f32_weights
        && shape.default_model;
    if !reference {
        return Reference::None;
    }
    let low = REFERENCE_SECS.0 * (1.0 - REFERENCE_TOLERANCE);
    let high = REFERENCE_SECS.1 * (1.0 + REFERENCE_TOLERANCE);
    if (low..=high).contains(&secs) {
        Reference::Within
    } else {
        Reference::Outside { low, high }
    }
}

/// The median of `xs` (NaN when empty).
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = r#"Converting and de-quantizing GGUF tensors...
{"kind": "setup", "versions": {"torch": "2.15.0"}, "threads": 2, "dtype": "float32"}
{"kind": "step", "step": 0, "warmup": true, "seconds": 9.0, "cpu_seconds": 17.0, "tokens": 2048, "loss": 10.5}
{"kind": "step", "step": 1, "warmup": false, "seconds": 11.0, "cpu_seconds": 21.0, "tokens": 2048, "loss": 10.4}
{"kind": "step", "step": 2, "warmup": false, "seconds": 12.0, "cpu_seconds": 23.0, "tokens": 2048, "loss": 10.3}
{"kind": "done", "peak_rss_mib": 7900.0, "peak_delta_mib": 6000.0, "memory_method": "clear_refs-reset", "process_peak_rss_mib": 8000.0}
"#;

    #[test]
    fn parses_the_peers_lines_into_a_row() {
        let r = parse_output(OUT, "sft").unwrap();
        assert_eq!(r.implementation, "torch-peft");
        assert_eq!((r.steps, r.tokens_per_step), (2, 2048));
        assert_eq!(r.step_secs, [11.0, 12.0]);
        assert!((r.secs_per_step - 11.5).abs() < 1e-12);
        assert!((r.cpu_secs_per_step.unwrap() - 22.0).abs() < 1e-12);
        assert!((r.tokens_per_s - 2048.0 / 11.5).abs() < 1e-9);
        // The warm-up step's loss: malt's rows report their step 0 too.
        assert_eq!(r.first_loss, 10.5);
        assert_eq!(r.peak_rss_mib, Some(7900.0));
        assert_eq!(r.memory_method, "clear_refs-reset");
    }

    #[test]
    fn an_incomplete_or_garbled_report_is_an_error() {
        let no_done: String = OUT
            .lines()
            .filter(|l| !l.contains("done"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(matches!(
            parse_output(&no_done, "sft"),
            Err(PeerError::Incomplete(_))
        ));
        let warm_only: String = OUT
            .lines()
            .filter(|l| !l.contains("\"warmup\": false"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(matches!(
            parse_output(&warm_only, "sft"),
            Err(PeerError::Incomplete("no timed step"))
        ));
        let bad = OUT.replace("\"seconds\": 11.0", "\"seconds\": \"eleven\"");
        match parse_output(&bad, "sft") {
            Err(PeerError::Protocol { line, .. }) => assert_eq!(line, 4),
            other => panic!("{other:?}"),
        }
        let uneven = OUT.replace(
            "\"tokens\": 2048, \"loss\": 10.3",
            "\"tokens\": 4, \"loss\": 10.3",
        );
        assert!(matches!(
            parse_output(&uneven, "sft"),
            Err(PeerError::Protocol { line: 5, .. })
        ));
    }

    #[test]
    fn null_memory_figures_stay_unknown() {
        let out = OUT.replace("\"peak_rss_mib\": 7900.0", "\"peak_rss_mib\": null");
        assert_eq!(parse_output(&out, "dpo").unwrap().peak_rss_mib, None);
    }

    fn shape() -> Shape {
        Shape {
            phase: "sft",
            micro_batch: 8,
            prompt_len: 192,
            completion_len: 64,
            f32_weights: true,
            default_model: true,
        }
    }

    #[test]
    fn the_reference_band_is_ten_percent_around_the_measured_range() {
        assert_eq!(reference_check(shape(), 11.5), Reference::Within);
        assert_eq!(reference_check(shape(), 10.2), Reference::Within);
        assert_eq!(reference_check(shape(), 12.9), Reference::Within);
        for secs in [10.1, 13.0, 24.0] {
            match reference_check(shape(), secs) {
                Reference::Outside { low, high } => {
                    assert!((low - 10.17).abs() < 1e-9 && (high - 12.98).abs() < 1e-9)
                }
                other => panic!("{secs}: {other:?}"),
            }
        }
        // Only the shape it was measured at has a reference.
        let other = [
            Shape {
                phase: "dpo",
                ..shape()
            },
            Shape {
                micro_batch: 1,
                ..shape()
            },
            Shape {
                prompt_len: 10,
                ..shape()
            },
            Shape {
                completion_len: 5,
                ..shape()
            },
            Shape {
                f32_weights: false,
                ..shape()
            },
            Shape {
                default_model: false,
                ..shape()
            },
        ];
        for s in other {
            assert_eq!(reference_check(s, 11.5), Reference::None, "{s:?}");
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn the_batch_carries_the_benchs_ids_and_settings() {
        let s = BenchSettings {
            micro_batch: 2,
            prompt_len: 5,
            completion_len: 3,
            ..BenchSettings::default()
        };
        let b = PeerBatch::new(&s, Path::new("/m.gguf"), 100, "dpo", 1e-4);
        assert_eq!(b.sequences.len(), 4);
        assert!(b
            .sequences
            .iter()
            .all(|q| q.len() == 8 && q.iter().all(|&t| t < 100)));
        let ids: Vec<Vec<u32>> = synthetic_batch(&s, 100, "dpo")
            .into_iter()
            .map(|q| q.ids)
            .collect();
        assert_eq!(b.sequences, ids);
        assert_eq!(
            PeerBatch::new(&s, Path::new("/m.gguf"), 100, "sft", 1e-4)
                .sequences
                .len(),
            2
        );
        assert_eq!((b.lora.rank, b.lora.alpha), (8, 16.0));
        assert_eq!(b.lora.targets.len(), 7);
        assert_eq!(b.lora.targets[0], "q_proj");
        assert_eq!(b.adamw.weight_decay, 0.0);
        assert_eq!(b.dpo_beta, 0.1);
    }
}
