//! `malt bench serve`: a load test of `malt serve` from a second process. Spawns the server as a
//! child on loopback, sends the same chat completions first one at a time (the baseline) and
//! then from `--concurrency` client threads, each phase bounded by a request count and a time
//! limit, and prints requests/s, completion tokens/s and latency percentiles of both, and
//! their ratio.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::bail;
use malt_model::candle_core::Device;
use malt_model::{Model, ModelConfig};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Serve this config's model and adapters (e.g. configs/quickstart.toml); without it a tiny
    /// random model is written to a temporary directory, so the benchmark runs in seconds.
    pub config: Option<PathBuf>,
    /// Requests per phase.
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    /// Time limit of each phase, in seconds (requests not started by then are skipped).
    #[arg(long, default_value_t = 120.0)]
    pub time_limit_s: f64,
    /// Client threads of the concurrent phase.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// `max_tokens` of every request.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Choices per request.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Start the server with `--no-batch` (one request at a time on the engine).
    #[arg(long)]
    pub no_batch: bool,
}

fn tiny_shape() -> ModelConfig {
    ModelConfig::llama(4096, 128, 384, 4, 4, 2)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

fn body(i: usize, args: &Args) -> Value {
    json!({
        "model": "base",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer with a number."},
            {"role": "user", "content": format!("Question {i}: what is {} + {}?", i * 7 % 23, i % 11)},
        ],
        "n": args.n,
        "seed": i,
        "temperature": 0.7,
        "max_tokens": args.max_tokens,
    })
}

/// One finished request: latency and completion tokens (`None` on an error status).
type Sample = (Duration, Option<u64>);

fn send(agent: &ureq::Agent, url: &str, body: &Value) -> Sample {
    let t = Instant::now();
    let tokens = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .ok()
        .filter(|r| r.status().as_u16() == 200)
        .and_then(|r| r.into_body().read_to_string().ok())
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v["usage"]["completion_tokens"].as_u64());
    (t.elapsed(), tokens)
}

struct Phase {
    wall: Duration,
    samples: Vec<Sample>,
}

/// Sends `bodies` from `threads` client threads until all are sent or the time is up.
fn run_phase(url: &str, bodies: &[Value], threads: usize, limit: Duration) -> Phase {
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let agent = agent();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= bodies.len() || start.elapsed() >= limit {
                        break;
                    }
                    let sample = send(&agent, url, &bodies[i]);
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(sample);
                }
            });
        }
    });
    Phase {
        wall: start.elapsed(),
        samples: samples.into_inner().unwrap_or_else(|p| p.into_inner()),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

/// Prints one phase and returns its requests/s.
fn report(label: &str, p: &Phase) -> f64 {
    let ok: Vec<&Sample> = p.samples.iter().filter(|s| s.1.is_some()).collect();
    let errors = p.samples.len() - ok.len();
    let mut lat: Vec<Duration> = ok.iter().map(|s| s.0).collect();
    lat.sort();
    let secs = p.wall.as_secs_f64();
    let tokens: u64 = ok.iter().filter_map(|s| s.1).sum();
    let rps = ok.len() as f64 / secs;
    println!(
        "{label:<16} {:>4} ok {:>3} err in {secs:>7.2} s: {rps:>7.2} req/s, {:>8.1} tok/s, \
         latency ms p50 {:.0} p90 {:.0} p99 {:.0} max {:.0}",
        ok.len(),
        errors,
        tokens as f64 / secs,
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
        lat.last()
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(f64::NAN),
    );
    rps
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let _tmp;
    let mut server_args: Vec<String> = Vec::new();
    match &args.config {
        Some(config) => {
            server_args.push(config.display().to_string());
            println!("model: the model of {}", config.display());
        }
        None => {
            let tmp = tempfile::tempdir()?;
            let dir = tmp.path().join("tiny");
            Model::random(tiny_shape(), &Device::Cpu)?.export_merged(&dir, None)?;
            println!(
                "model: tiny random (h128, 4 layers, vocab 4096) in {}",
                dir.display()
            );
            server_args.extend(["--model".to_owned(), dir.display().to_string()]);
            _tmp = tmp;
        }
    }
    if args.no_batch {
        server_args.push("--no-batch".into());
    }
    let t = Instant::now();
    let (_server, base) = super::serve_child::spawn(&server_args)?;
    println!(
        "malt serve ready at {base} in {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        if args.no_batch {
            "one request at a time"
        } else {
            "batching waiting requests"
        }
    );
    let url = format!("{base}/v1/chat/completions");
    let bodies: Vec<Value> = (0..args.requests).map(|i| body(i, &args)).collect();
    // Warm-up (first-touch allocations, page faults), not measured.
    let warm = send(&agent(), &url, &bodies[0]);
    if warm.1.is_none() {
        bail!("the warm-up request to {url} failed");
    }
    let limit = Duration::from_secs_f64(args.time_limit_s);
    println!(
        "{} requests per phase (n = {}, max_tokens = {}), time limit {} s per phase",
        args.requests, args.n, args.max_tokens, args.time_limit_s
    );
    let sequential = run_phase(&url, &bodies, 1, limit);
    let base_rps = report("sequential (1)", &sequential);
    let concurrent = run_phase(&url, &bodies, args.concurrency, limit);
    let rps = report(&format!("concurrent ({})", args.concurrency), &concurrent);
    println!(
        "ratio: concurrent / sequential requests/s = {:.2}x",
        rps / base_rps
    );
    let health: Value = agent()
        .get(format!("{base}/health"))
        .call()
        .ok()
        .and_then(|r| r.into_body().read_to_string().ok())
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    println!("engine: {}", health["engine"]);
    Ok(())
}
