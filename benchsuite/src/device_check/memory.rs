//! Peak memory of one measured section. On a GPU: the device's used memory as `nvidia-smi`
//! reports it, polled every 100 ms by a child process (the whole device: weights, activations,
//! the CUDA context and whatever the allocator keeps; no other process runs during a check). On
//! the CPU: the process's resident high-water mark (`VmHWM`), reset at the section's start
//! through `/proc/self/clear_refs`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{Device, DeviceLocation};

/// One section's memory: the high-water mark and the level at its start, MiB.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Peak {
    pub peak_mib: f64,
    pub start_mib: f64,
}

pub struct MemoryProbe {
    source: Source,
}

enum Source {
    /// Sampled MiB (`u64::MAX` = no sample yet), the latest sample, and the poller.
    Smi {
        max: Arc<AtomicU64>,
        last: Arc<AtomicU64>,
        child: Child,
    },
    Rss,
    Unavailable(String),
}

impl MemoryProbe {
    pub fn for_device(device: &Device) -> MemoryProbe {
        let source = match device.location() {
            DeviceLocation::Cpu => Source::Rss,
            DeviceLocation::Cuda { gpu_id } => {
                Self::smi(gpu_id).unwrap_or_else(Source::Unavailable)
            }
            other => Source::Unavailable(format!("no memory probe for {other:?}")),
        };
        MemoryProbe { source }
    }

    fn smi(gpu: usize) -> Result<Source, String> {
        let mut child = Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "100",
                "-i",
                &gpu.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run nvidia-smi: {e}"))?;
        let out = child.stdout.take().ok_or("nvidia-smi: no stdout")?;
        let max = Arc::new(AtomicU64::new(0));
        let last = Arc::new(AtomicU64::new(u64::MAX));
        let (m, l) = (max.clone(), last.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if let Ok(mib) = line.trim().parse::<u64>() {
                    l.store(mib, Ordering::Relaxed);
                    m.fetch_max(mib, Ordering::Relaxed);
                }
            }
        });
        Ok(Source::Smi { max, last, child })
    }

    /// How the figures are taken, for the report.
    pub fn method(&self) -> String {
        match &self.source {
            Source::Smi { .. } => {
                "nvidia-smi memory.used, whole device, polled every 100 ms".into()
            }
            Source::Rss => "process VmHWM (resident high-water mark), reset per section".into(),
            Source::Unavailable(why) => format!("unavailable: {why}"),
        }
    }

    /// Starts a section: the high-water mark restarts from the current level.
    pub fn start(&self) -> f64 {
        match &self.source {
            Source::Smi { max, last, .. } => {
                // Wait for a first sample (nvidia-smi takes a moment to start).
                for _ in 0..50 {
                    if last.load(Ordering::Relaxed) != u64::MAX {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                let now = last.load(Ordering::Relaxed);
                let now = if now == u64::MAX { 0 } else { now };
                max.store(now, Ordering::Relaxed);
                now as f64
            }
            Source::Rss => {
                let _ = std::fs::write("/proc/self/clear_refs", "5");
                status_kib("VmRSS:").map_or(f64::NAN, |k| k / 1024.0)
            }
            Source::Unavailable(_) => f64::NAN,
        }
    }

    /// The high-water mark since [`Self::start`] returned `start_mib`.
    pub fn peak(&self, start_mib: f64) -> Peak {
        let peak_mib = match &self.source {
            Source::Smi { max, .. } => {
                // One more sample after the section's last kernels.
                std::thread::sleep(std::time::Duration::from_millis(250));
                max.load(Ordering::Relaxed) as f64
            }
            Source::Rss => status_kib("VmHWM:").map_or(f64::NAN, |k| k / 1024.0),
            Source::Unavailable(_) => f64::NAN,
        };
        Peak {
            peak_mib,
            start_mib,
        }
    }
}

impl Drop for MemoryProbe {
    fn drop(&mut self) {
        if let Source::Smi { child, .. } = &mut self.source {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn status_kib(field: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_peak_sees_an_allocation_made_inside_the_section() {
        let probe = MemoryProbe::for_device(&Device::Cpu);
        let start = probe.start();
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        let p = probe.peak(start);
        drop(big);
        assert!(p.peak_mib >= p.start_mib + 60.0, "{p:?}");
        assert!(probe.method().contains("VmHWM"));
    }
}
