//! `malt bench device`: what a GPU machine must show before the paper's configs are run on it.
//! Correctness of the device against the CPU on a tiny checkpoint ([`correctness`]), then speed
//! of a real shape in bf16 against the device's roofline ([`speed`]), in one JSON report that
//! is rewritten after every section.

pub mod compare;
pub mod correctness;
pub mod memory;
pub mod report;
pub mod roofline;
pub mod shape;
pub mod speed;
pub mod tree;

use std::time::Instant;

use candle_core::{Device, DeviceLocation};
use serde::Serialize;

pub use correctness::Correctness;
use malt_train::error::Result;
pub use roofline::Roofline;
pub use shape::Shape;
pub use speed::{Speed, SpeedSettings};

/// The H200's ceilings as this workplace measured them: a device-to-device copy moved about 4.3
/// TB/s against the datasheet's 4.8, and an 8192^3 bf16 matmul ran at 769-798 TFLOP/s. The
/// datasheet bandwidth is the default (the floor is then a little lower than reachable).
pub const H200_BANDWIDTH: f64 = 4.8e12;
pub const H200_BF16_FLOPS: f64 = 790e12;

pub struct Settings {
    pub device_spec: String,
    pub shape: Shape,
    pub roofline: Roofline,
    pub repeats: usize,
    pub seed: u64,
    pub skip_speed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub device: String,
    /// `nvidia-smi`'s name for a GPU, `/proc/cpuinfo`'s for the CPU.
    pub device_name: String,
    pub cpu_threads: usize,
    pub roofline: Roofline,
    pub formulas: Vec<(String, String)>,
    pub correctness: Option<Correctness>,
    pub speed: Option<Speed>,
    /// False until every section ran (a report left by a killed run says so).
    pub complete: bool,
    pub wall_s: f64,
}

/// Runs the check on `device`; `progress` sees the report after each section.
pub fn run(device: &Device, s: &Settings, progress: &mut dyn FnMut(&Report)) -> Result<Report> {
    let t = Instant::now();
    let mut report = Report {
        tool: "malt bench device".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        device: s.device_spec.clone(),
        device_name: device_name(device),
        cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        roofline: s.roofline,
        formulas: roofline::FORMULAS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        correctness: None,
        speed: None,
        complete: false,
        wall_s: 0.0,
    };
    tracing::info!("correctness: {} against the CPU", s.device_spec);
    report.correctness = Some(correctness::check(device, s.seed)?);
    report.wall_s = t.elapsed().as_secs_f64();
    progress(&report);
    if !s.skip_speed {
        tracing::info!("speed: shape {} in bf16", s.shape.name);
        let settings = SpeedSettings {
            roofline: s.roofline,
            repeats: s.repeats,
            seed: s.seed,
        };
        let speed = speed::measure(device, &s.shape, &settings, &mut |sp| {
            report.speed = Some(sp.clone());
            report.wall_s = t.elapsed().as_secs_f64();
            progress(&report);
        })?;
        report.speed = Some(speed);
    }
    report.complete = true;
    report.wall_s = t.elapsed().as_secs_f64();
    progress(&report);
    Ok(report)
}

fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cuda { gpu_id } => std::process::Command::new("nvidia-smi")
            .args(["--query-gpu=name", "--format=csv,noheader", "-i"])
            .arg(gpu_id.to_string())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("cuda:{gpu_id}")),
        DeviceLocation::Cpu => std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|n| n.trim().to_string())
            })
            .unwrap_or_else(|| "cpu".into()),
        other => format!("{other:?}"),
    }
}
