//! `malt bench serve`: a load test of `malt serve` from a second process, comparing servers in
//! one run on the same request mix. Each server is a child process on loopback: `malt serve`
//! with the engine batching only requests that wait while it is busy (`--no-continuous`, the
//! server before continuous batching: the baseline), `malt serve` with continuous batching (the
//! default), and, with `--llama-server`, llama.cpp's server on the same weights. Clients keep
//! their connections alive; every phase is bounded by a request count and a time limit.
//! Printed per server: requests/s, completion tokens/s and latency percentiles, then the
//! ratios.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use malt_model::candle_core::Device;
use malt_model::{Model, ModelConfig};
use serde_json::{json, Value};

use super::serve_child::ServeChild;

#[derive(clap::Args)]
pub struct Args {
    /// Serve this config's model and adapters (e.g. configs/quickstart.toml).
    #[arg(conflicts_with = "model")]
    pub config: Option<PathBuf>,
    /// Serve this model (a name such as smollm2-135m-instruct, a HF directory or a .gguf file).
    /// Without it or a config, a tiny random model is written to a temporary directory, so the
    /// benchmark runs in seconds.
    #[arg(long)]
    pub model: Option<String>,
    /// Requests per server.
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    /// Time limit per server, in seconds (requests not started by then are skipped).
    #[arg(long, default_value_t = 120.0)]
    pub time_limit_s: f64,
    /// Concurrent clients, each on one kept-alive connection.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Largest `max_tokens`. Requests cycle through this, 1/4, 1/2 and 1/8 of it (with
    /// `--same-length`, all ask for this).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    #[arg(long)]
    pub same_length: bool,
    /// Choices per request.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Servers to measure: `old` (malt serve --no-continuous), `new` (continuous batching),
    /// `sequential` (malt serve --no-batch).
    #[arg(long, value_delimiter = ',', default_value = "old,new")]
    pub servers: Vec<String>,
    /// llama.cpp's `llama-server` binary: also measure it on --llama-server-model with the same
    /// requests, as many threads as malt uses and one slot per client.
    #[arg(long, requires = "llama_server_model")]
    pub llama_server: Option<PathBuf>,
    /// The GGUF llama-server loads; for a like-for-like comparison the weights malt serves, in
    /// f32 (malt computes in f32): `llama-quantize --allow-requantize SmolLM2-135M-Instruct.Q4_1.gguf
    /// smollm2-f32.gguf F32`.
    #[arg(long, requires = "llama_server")]
    pub llama_server_model: Option<PathBuf>,
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

/// Request `i` of the mix: prompts of different lengths, lengths cycling through the mix.
fn body(i: usize, args: &Args) -> Value {
    let fraction = if args.same_length {
        1
    } else {
        [1, 4, 2, 8][i % 4]
    };
    let context = "Numbers: ".to_owned() + &vec!["7 3 9"; i % 5].join(" ");
    json!({
        "model": "base",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer with a number."},
            {"role": "user", "content": format!("{context}\nQuestion {i}: what is {} + {}?", i * 7 % 23, i % 11)},
        ],
        "n": args.n,
        "seed": i,
        "temperature": 0.7,
        // Pinned so that llama.cpp samples as malt does (its defaults are top_k 40, min_p 0.05).
        "top_k": 0,
        "min_p": 0.0,
        "max_tokens": (args.max_tokens / fraction).max(1),
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

/// Sends `bodies` from `threads` clients (each with its own kept-alive connection) until all
/// are sent or the time is up.
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

/// A phase's figures.
struct Figures {
    rps: f64,
    tps: f64,
    p50: f64,
    p99: f64,
}

fn report(label: &str, p: &Phase) -> Figures {
    let ok: Vec<&Sample> = p.samples.iter().filter(|s| s.1.is_some()).collect();
    let errors = p.samples.len() - ok.len();
    let mut lat: Vec<Duration> = ok.iter().map(|s| s.0).collect();
    lat.sort();
    let secs = p.wall.as_secs_f64();
    let tokens: u64 = ok.iter().filter_map(|s| s.1).sum();
    let f = Figures {
        rps: ok.len() as f64 / secs,
        tps: tokens as f64 / secs,
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
    };
    println!(
        "{label:<34} {:>4} ok {:>3} err in {secs:>7.2} s: {:>7.2} req/s, {:>8.1} tok/s, \
         latency ms p50 {:.0} p90 {:.0} p99 {:.0} max {:.0}",
        ok.len(),
        errors,
        f.rps,
        f.tps,
        f.p50,
        percentile(&lat, 90.0),
        f.p99,
        lat.last()
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(f64::NAN),
    );
    f
}

/// Warms a server up (first-touch allocations, page faults; not measured), then measures it.
fn measure(label: &str, base: &str, bodies: &[Value], args: &Args) -> anyhow::Result<Figures> {
    let url = format!("{base}/v1/chat/completions");
    let warm = send(&agent(), &url, &bodies[0]);
    if warm.1.is_none() {
        bail!("the warm-up request to {url} failed");
    }
    let phase = run_phase(
        &url,
        bodies,
        args.concurrency,
        Duration::from_secs_f64(args.time_limit_s),
    );
    Ok(report(label, &phase))
}

/// `llama-server` on a free loopback port, killed when dropped.
fn start_llama_server(
    bin: &PathBuf,
    gguf: &PathBuf,
    args: &Args,
) -> anyhow::Result<(ServeChild, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let threads = malt_model::process::threads().to_string();
    let slots = args.concurrency.max(1);
    // One context shared by the slots: each needs its prompt (under 100 tokens) and reply.
    let ctx = (slots * (args.max_tokens * args.n + 160))
        .max(2048)
        .to_string();
    let child = Command::new(bin)
        .arg("-m")
        .arg(gguf)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-t", &threads, "-np", &slots.to_string(), "-c", &ctx])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let child = ServeChild::new(child);
    let base = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    loop {
        let ok = agent()
            .get(format!("{base}/health"))
            .call()
            .is_ok_and(|r| r.status().as_u16() == 200);
        if ok {
            return Ok((child, base));
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("{} did not become healthy within 300 s", bin.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let _tmp;
    let mut server_args: Vec<String> = Vec::new();
    match (&args.config, &args.model) {
        (Some(config), _) => {
            server_args.push(config.display().to_string());
            println!("model: the model of {}", config.display());
        }
        (None, Some(model)) => {
            server_args.extend(["--model".to_owned(), model.clone()]);
            println!("model: {model}");
        }
        (None, None) => {
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
    // The queue must admit every client, or some would measure 429s.
    server_args.extend([
        "--max-queue".to_owned(),
        args.concurrency.max(1).to_string(),
    ]);
    let bodies: Vec<Value> = (0..args.requests.max(1)).map(|i| body(i, &args)).collect();
    println!(
        "{} requests per server from {} kept-alive clients (n = {}, max_tokens {}), time limit \
         {} s per server",
        bodies.len(),
        args.concurrency,
        args.n,
        if args.same_length {
            format!("{}", args.max_tokens)
        } else {
            format!(
                "cycling {}, {}, {}, {}",
                args.max_tokens,
                (args.max_tokens / 4).max(1),
                (args.max_tokens / 2).max(1),
                (args.max_tokens / 8).max(1)
            )
        },
        args.time_limit_s
    );
    let mut results: Vec<(String, Figures)> = Vec::new();
    for which in &args.servers {
        let (flag, label) = match which.as_str() {
            "old" => (Some("--no-continuous"), "malt serve, waiting batches (old)"),
            "new" => (None, "malt serve, continuous (new)"),
            "sequential" => (Some("--no-batch"), "malt serve, one at a time"),
            other => bail!("--servers: unknown server {other:?}; expected old, new or sequential"),
        };
        let mut a = server_args.clone();
        a.extend(flag.map(str::to_owned));
        let t = Instant::now();
        let (server, base) = super::serve_child::spawn(&a)?;
        println!("{label}: ready in {:.1} s", t.elapsed().as_secs_f64());
        let f = measure(label, &base, &bodies, &args)?;
        let health: Value = agent()
            .get(format!("{base}/health"))
            .call()
            .ok()
            .and_then(|r| r.into_body().read_to_string().ok())
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        println!("{:<34} engine: {}", "", health["engine"]);
        drop(server);
        results.push((which.clone(), f));
    }
    if let (Some(bin), Some(gguf)) = (&args.llama_server, &args.llama_server_model) {
        let t = Instant::now();
        let (server, base) = start_llama_server(bin, gguf, &args)?;
        println!(
            "llama.cpp llama-server ({}): ready in {:.1} s",
            gguf.display(),
            t.elapsed().as_secs_f64()
        );
        let f = measure("llama.cpp llama-server", &base, &bodies, &args)?;
        drop(server);
        results.push(("llama.cpp".into(), f));
    }
    let get = |k: &str| results.iter().find(|(n, _)| n == k).map(|(_, f)| f);
    if let (Some(old), Some(new)) = (get("old"), get("new")) {
        println!(
            "ratio new / old: {:.2}x requests/s, {:.2}x tokens/s, p50 latency {:.2}x, p99 {:.2}x",
            new.rps / old.rps,
            new.tps / old.tps,
            new.p50 / old.p50,
            new.p99 / old.p99
        );
    }
    if let (Some(new), Some(peer)) = (get("new").or(get("old")), get("llama.cpp")) {
        println!(
            "ratio malt / llama.cpp: {:.2}x requests/s, {:.2}x tokens/s, p50 latency {:.2}x, \
             p99 {:.2}x",
            new.rps / peer.rps,
            new.tps / peer.tps,
            new.p50 / peer.p50,
            new.p99 / peer.p99
        );
    }
    Ok(())
}
