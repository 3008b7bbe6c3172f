//! With the `cuda` feature, compiles `cuda/*.cu` to PTX (embedded by `src/cuda.rs`); without it,
//! does nothing, so the CPU build needs no CUDA toolkit.
//!
//! nvcc comes from `NVCC`, else `$CUDA_ROOT/bin`, else `PATH` (scripts/cuda-build installs it
//! from PyPI and sets them). The PTX targets `compute_$CUDA_COMPUTE_CAP` (default 90: H100 /
//! H200); the driver compiles it for the GPU it runs on, so it also runs on later GPUs.

use std::path::PathBuf;
use std::process::Command;

/// The kernels, each compiled to `$OUT_DIR/<name>.ptx`.
const KERNELS: &[&str] = &["dropout"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for k in KERNELS {
        println!("cargo:rerun-if-changed=cuda/{k}.cu");
    }
    for var in ["NVCC", "CUDA_ROOT", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CUDA_ROOT")
                .map(|r| PathBuf::from(r).join("bin/nvcc"))
                .filter(|p| p.exists())
        })
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap: String = std::env::var("CUDA_COMPUTE_CAP")
        .unwrap_or_else(|_| "90".into())
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for k in KERNELS {
        let out = out_dir.join(format!("{k}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("--gpu-architecture=compute_{cap}"))
            .arg("-o")
            .arg(&out)
            .arg(format!("cuda/{k}.cu"))
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "running {} failed ({e}): the `cuda` feature needs nvcc; scripts/cuda-build \
                     installs it from PyPI",
                    nvcc.display()
                )
            });
        assert!(status.success(), "nvcc failed on cuda/{k}.cu");
    }
}
