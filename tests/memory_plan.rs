//! `malt check` predicts each stage's peak memory from a model's config.json alone, and a run
//! refuses a model that cannot fit instead of running out of memory. The fixture is
//! Llama-3.1-8B-Instruct's published config.json (no weights): the paper's own setting.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn malt(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_malt"))
        .args(["--log", "warn"])
        .args(args)
        .current_dir(cwd)
        .env("MALT_CACHE", repo().join("target/malt-cache"))
        .env_remove("MALT_MEMORY_CHECK")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// configs/gsm8k-llama8b.toml with its model pointed at the fixture.
fn llama8b_config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("configs/gsm8k-llama8b.toml")).unwrap();
    let model = repo().join("tests/fixtures/llama-3.1-8b-instruct");
    let text = text.replace(
        "source = \"../models/llama-3.1-8b-instruct\"",
        &format!("source = {:?}", model.display().to_string()),
    );
    assert!(
        text.contains("fixtures"),
        "the shipped config's source moved"
    );
    let path = dir.join("gsm8k-llama8b.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_reports_device_dtype_and_each_stage_of_the_paper_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama8b_config(dir.path());
    let (_, out, err) = malt(
        &["check", "--no-battery", cfg.to_str().unwrap()],
        dir.path(),
    );
    // 8,030,261,248 parameters in bf16 = 14.96 GiB.
    assert!(
        out.contains("memory on cuda: 8.03 B parameters, weights bf16, activations bf16"),
        "{out}\n{err}"
    );
    for stage in [
        "load",
        "generate",
        "train generator sft",
        "train verifier dpo",
        "train refiner sft",
        "eval",
    ] {
        assert!(out.contains(&format!("  {stage} ")), "{stage}: {out}");
    }
    assert!(out.contains("weights 14.96 GiB"), "{out}");
    if !cfg!(feature = "cuda") {
        assert!(out.contains("built without CUDA"), "{out}");
    }
}

/// MemTotal of this machine, to know whether it can hold what a test asks for.
fn total_ram_gib() -> f64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib / (1u64 << 20) as f64
}

#[test]
fn an_8b_model_on_a_24_gib_cpu_is_refused_with_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = llama8b_config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let (ok, out, _) = malt(
        &[
            "check",
            "--no-battery",
            cfg,
            "--device",
            "cpu",
            "--memory",
            "24",
        ],
        dir.path(),
    );
    assert!(!ok, "{out}");
    assert!(out.contains("memory on cpu"), "{out}");
    // The config asks for bf16 weights; on the CPU activations are f32.
    assert!(out.contains("weights bf16, activations f32"), "{out}");
    assert!(out.contains("does not fit on a 24 GiB device"), "{out}");
    assert!(out.contains("--device cuda:0"), "{out}");
    // The paper's setting fits an 80 GB GPU with gradient checkpointing (the config's).
    let (ok, out, _) = malt(
        &["check", "--no-battery", cfg, "--memory", "80"],
        dir.path(),
    );
    assert!(ok, "{out}");
    assert!(out.contains("(checkpointed)"), "{out}");
    // A run stops before reading a single weight (there are none to read in the fixture),
    // wherever this machine has less memory than f32 weights and their generation need.
    if total_ram_gib() < 45.0 {
        let (ok, _, err) = malt(
            &["train", cfg, "--device", "cpu", "--dtype", "f32"],
            dir.path(),
        );
        assert!(!ok);
        assert!(err.contains("predicted peak memory"), "{err}");
        assert!(err.contains("it has in all"), "{err}");
    }
}

#[test]
fn a_bad_override_names_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = repo().join("configs/quickstart.toml");
    let (ok, _, err) = malt(
        &[
            "check",
            "--no-battery",
            cfg.to_str().unwrap(),
            "--dtype",
            "fp8",
        ],
        dir.path(),
    );
    assert!(!ok);
    assert!(err.contains("--dtype \"fp8\""), "{err}");
}
