//! `malt bench train` end to end on a tiny random model: every (batch, phase, implementation)
//! row is measured in its own child process, malt and plain candle agree on the first loss, and
//! the ratio lines are printed for each batch size.

use std::process::Command;

use malt_model::candle_core::Device;
use malt_model::{Model, ModelConfig};

const MALT: &str = env!("CARGO_BIN_EXE_malt");

fn write_tiny_model(dir: &std::path::Path) {
    let cfg = ModelConfig {
        max_position_embeddings: 128,
        eos_token_ids: vec![1],
        ..ModelConfig::llama(64, 16, 32, 2, 4, 2)
    };
    Model::random(cfg, &Device::Cpu)
        .unwrap()
        .export_merged(dir, None)
        .unwrap();
}

/// `(batch, phase, implementation, first loss)` of each measured row.
fn rows(stdout: &str) -> Vec<(usize, String, String, f64)> {
    stdout
        .lines()
        .filter(|l| l.starts_with("b=") && l.contains("s/step"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let b = f[0].trim_start_matches("b=").parse().unwrap();
            let loss = f.last().unwrap().parse().unwrap();
            (b, f[1].to_string(), f[2].to_string(), loss)
        })
        .collect()
}

#[test]
fn bench_train_measures_each_batch_and_both_implementations_agree() {
    let md = tempfile::tempdir().unwrap();
    write_tiny_model(md.path());
    let out = Command::new(MALT)
        .args(["bench", "train", "--model", md.path().to_str().unwrap()])
        .args([
            "--batch-sizes",
            "1,3",
            "--prompt-len",
            "10",
            "--completion-len",
            "5",
        ])
        .args(["--steps", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = rows(&stdout);
    assert_eq!(rows.len(), 8, "{stdout}");
    for b in [1, 3] {
        for phase in ["sft", "dpo"] {
            let l: Vec<f64> = rows
                .iter()
                .filter(|r| r.0 == b && r.1 == phase)
                .map(|r| r.3)
                .collect();
            assert_eq!(l.len(), 2, "{stdout}");
            assert!(
                l[0].is_finite() && (l[0] - l[1]).abs() < 1e-4,
                "b={b} {phase}: {l:?}"
            );
            assert!(
                stdout.contains(&format!("b={b} {phase}: malt / plain candle = ")),
                "{stdout}"
            );
        }
    }
}

/// A stand-in for the peer's python that speaks `scripts/torch_peer.py`'s protocol without
/// torch: it logs each call and keeps each batch file in `log`, and fails unless the bench wrote
/// the peer and its shared module beside each other. Step `k` takes `0.5 + k` s.
fn stub_python(dir: &std::path::Path, log: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("python");
    let script = format!(
        r#"#!/usr/bin/env python3
import json, os, shutil, sys
log = {log:?}
script, args = sys.argv[1], sys.argv[2:]
if not (os.path.isfile(script) and os.path.isfile(os.path.join(os.path.dirname(script), "torch_lora.py"))):
    sys.exit(5)
with open(os.path.join(log, "calls.txt"), "a") as f:
    f.write(" ".join(args) + "\n")
if "--check" in args:
    print(json.dumps({{"kind": "check", "versions": {{"torch": "stub"}}}}))
    sys.exit(0)
batch = args[args.index("--batch") + 1]
with open(batch) as f:
    b = json.load(f)
calls = sum(1 for _ in open(os.path.join(log, "calls.txt")))
shutil.copy(batch, os.path.join(log, "batch-%d-%s.json" % (calls, b["phase"])))
steps, warm = int(args[args.index("--steps") + 1]), int(args[args.index("--warmup") + 1])
tokens = sum(len(s) for s in b["sequences"])
print("a library's stray line")
print(json.dumps({{"kind": "setup", "threads": 2}}))
for k in range(warm + steps):
    print(json.dumps({{"kind": "step", "step": k, "warmup": k < warm, "seconds": 0.5 + k,
                      "cpu_seconds": 1.0, "tokens": tokens, "loss": 4.0}}))
print(json.dumps({{"kind": "done", "peak_rss_mib": 100.0, "peak_delta_mib": 10.0,
                  "memory_method": "stub"}}))
"#,
        log = log.to_str().unwrap()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `--torch`: the peer is checked first, then measured after malt at each repetition, on the
/// batch malt trains on (same ids, same model path), with a warm-up step and the bench's dtype,
/// and the summary pools both sides' steps.
#[test]
fn bench_train_alternates_with_the_torch_peer_on_the_same_batch() {
    let md = tempfile::tempdir().unwrap();
    write_tiny_model(md.path());
    let stub = tempfile::tempdir().unwrap();
    let log = stub.path().join("log");
    std::fs::create_dir(&log).unwrap();
    let python = stub_python(stub.path(), &log);
    let model = md.path().to_str().unwrap();
    let out = Command::new(MALT)
        .args(["bench", "train", "--model", model, "--workload", "none"])
        .args([
            "--batch-sizes",
            "2",
            "--prompt-len",
            "6",
            "--completion-len",
            "3",
        ])
        .args(["--steps", "2", "--repeats", "2", "--no-baseline"])
        .arg("--torch")
        .arg(&python)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let order: Vec<(String, String)> = rows(&stdout).into_iter().map(|r| (r.1, r.2)).collect();
    let mut want = vec![];
    for phase in ["sft", "dpo"] {
        for _ in 0..2 {
            want.push((phase.to_string(), "malt".to_string()));
            want.push((phase.to_string(), "torch-peft".to_string()));
        }
    }
    assert_eq!(order, want, "{stdout}");
    assert!(
        stdout.contains("2 steps after 1 warm-up, 2 repeat(s)"),
        "{stdout}"
    );

    let calls = std::fs::read_to_string(log.join("calls.txt")).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 5, "{calls:?}");
    assert_eq!(calls[0], "--check");
    for c in &calls[1..] {
        assert!(c.ends_with("--steps 2 --warmup 1 --dtype f32"), "{c}");
    }
    // The ids malt's rows train on, from the same function and settings.
    let settings = malt_bench::train::BenchSettings {
        micro_batch: 2,
        prompt_len: 6,
        completion_len: 3,
        ..Default::default()
    };
    for (call, phase) in [(2, "sft"), (3, "sft"), (4, "dpo"), (5, "dpo")] {
        let text = std::fs::read_to_string(log.join(format!("batch-{call}-{phase}.json"))).unwrap();
        let b: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(b["model"], model);
        assert_eq!(
            (b["prompt_len"].as_u64(), b["micro_batch"].as_u64()),
            (Some(6), Some(2))
        );
        let ids: Vec<Vec<u32>> = malt_bench::train::synthetic_batch(&settings, 64, phase)
            .into_iter()
            .map(|s| s.ids)
            .collect();
        assert_eq!(ids.len(), if phase == "sft" { 2 } else { 4 });
        assert_eq!(
            serde_json::to_value(&ids).unwrap(),
            b["sequences"],
            "{phase}"
        );
    }
    // The stub's timed steps take 1.5 and 2.5 s: the median of both repeats' is 2.
    for phase in ["sft", "dpo"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("b=2 {phase}: malt / PyTorch peer = ")))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(line.contains("vs 2.00 s over 4 and 4 steps"), "{line}");
        assert!(line.contains("peak RSS"), "{line}");
    }
    assert!(
        stdout.contains("b=2 sft: no reference time for the peer"),
        "{stdout}"
    );
}

/// A python without the peer's packages, or none at all, stops the bench before any
/// measurement with a message naming the venv script.
#[test]
fn bench_train_refuses_a_python_without_torch() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("python");
    std::fs::write(
        &bare,
        "#!/bin/sh\necho \"torch_peer: $0 cannot import torch (No module named 'torch')\" >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&bare, std::fs::Permissions::from_mode(0o755)).unwrap();
    let missing = dir.path().join("no-such-python");
    for (python, says) in [
        (&bare, "No module named 'torch'"),
        (&missing, "cannot run it"),
    ] {
        let out = Command::new(MALT)
            .args(["bench", "train", "--model", "unused", "--workload", "none"])
            .arg("--torch")
            .arg(python)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stdout}");
        assert!(
            stderr.contains("scripts/torch-peer-venv.sh") && stderr.contains(says),
            "{stderr}"
        );
        assert!(!stdout.contains("s/step"), "{stdout}");
    }
}

/// The real peer (`MALT_TEST_TORCH=~/.cache/malt/torch-venv/bin/python`, from
/// scripts/torch-peer-venv.sh; skipped without it unless MALT_REQUIRE_TORCH=1) on SmolLM2's GGUF,
/// one short step of each phase: with the adapter's B at zero both trainers compute the base
/// model's loss on the same ids, so their first losses agree.
#[test]
fn the_real_torch_peer_agrees_with_malt_on_the_first_loss() {
    let Some(python) = std::env::var_os("MALT_TEST_TORCH") else {
        let msg = "skipped: MALT_TEST_TORCH is not set (a python from scripts/torch-peer-venv.sh)";
        if std::env::var("MALT_REQUIRE_TORCH").is_ok_and(|v| v == "1") {
            panic!("{msg}; MALT_REQUIRE_TORCH=1 requires it");
        }
        eprintln!("{msg}");
        return;
    };
    let out = Command::new(MALT)
        .args(["bench", "train", "--workload", "none", "--no-baseline"])
        .args([
            "--batch-sizes",
            "1",
            "--prompt-len",
            "12",
            "--completion-len",
            "4",
        ])
        .args(["--steps", "1"])
        .arg("--torch")
        .arg(&python)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = rows(&stdout);
    for phase in ["sft", "dpo"] {
        let loss = |imp: &str| {
            rows.iter()
                .find(|r| r.1 == phase && r.2 == imp)
                .unwrap_or_else(|| panic!("{phase} {imp}: {stdout}"))
                .3
        };
        let (m, t) = (loss("malt"), loss("torch-peft"));
        assert!(
            m.is_finite() && (m - t).abs() <= 1e-3 * m.abs().max(1.0),
            "{phase}: malt {m} vs torch {t}\n{stdout}"
        );
    }
}
