//! `malt bench plugins`: reward calls/s through the gsm8k WASM plugin (batches of `--batch`
//! and batches of 1) against the same grading function compiled natively (malt-graders), in
//! one run, on one thread, with the ratio. Goals: plugin (batched) within 3x of native and at
//! least 300,000 calls/s on one core.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use malt_graders::gsm8k::{self, Mode};
use malt_plugins::{GradeRequest, Runtime, Sandbox};

#[derive(clap::Args)]
pub struct Args {
    /// Plugin to grade with: a name under plugins/, a crate directory or a .wasm file.
    #[arg(long, default_value = "gsm8k")]
    plugin: String,
    /// Plugin options, `key=value` (repeatable).
    #[arg(long = "options", value_name = "KEY=VALUE", num_args = 1..)]
    options: Vec<String>,
    /// Items per call in the batched run.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Distinct requests generated (cycled).
    #[arg(long, default_value_t = 100_000)]
    items: usize,
    /// Measuring time per variant, in milliseconds (split over the rounds).
    #[arg(long, default_value_t = 2000)]
    min_ms: u64,
    /// Interleaved rounds (native, batched, single); the best rate of each is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// Short numeric answers and golds, about half of them equal.
fn requests(n: usize) -> Vec<GradeRequest> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let gold = (x % 10_000) as i64 - 500;
            let answer = match i % 6 {
                0..=2 => gold.to_string(),
                3 => format!("{gold}.0"),
                4 => format!("{}", gold + 1),
                _ => format!("{},{:03}", gold.abs() / 1000, gold.abs() % 1000),
            };
            GradeRequest {
                answer: Some(answer),
                gold: gold.to_string(),
            }
        })
        .collect()
}

/// Run `f` (which grades `per_iter` items) until `min` has passed; returns items/s.
fn measure(min: Duration, per_iter: usize, mut f: impl FnMut(usize)) -> f64 {
    // warm-up
    f(0);
    let start = Instant::now();
    let mut iters = 0usize;
    while start.elapsed() < min {
        f(iters);
        iters += 1;
    }
    (iters * per_iter) as f64 / start.elapsed().as_secs_f64()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let options = malt_plugins::parse_cli_options(&args.options).map_err(anyhow::Error::msg)?;
    let runtime = Runtime::shared()?;
    // Generous limits: this measures throughput, not the sandbox.
    let limits = Sandbox {
        timeout_ms: 10_000,
        ..Sandbox::default()
    };
    let plugin = malt_plugins::load_named(&runtime, &args.plugin, &options, &limits)
        .with_context(|| format!("loading plugin {}", args.plugin))?;
    let reqs = requests(args.items.max(args.batch));
    let min = Duration::from_millis(args.min_ms);

    // Same answers both ways?
    let wasm: Vec<f64> = plugin
        .grade(&reqs[..args.batch])
        .into_iter()
        .map(|r| r.map(|g| g.reward))
        .collect::<Result<_, _>>()?;
    let native: Vec<f64> = reqs[..args.batch]
        .iter()
        .map(|r| gsm8k::grade(r.answer.as_deref(), &r.gold, Mode::Numeric).reward)
        .collect();
    let agree = wasm.iter().zip(&native).filter(|(a, b)| a == b).count();
    ensure!(
        agree == args.batch,
        "the plugin and the native grader disagree on {} of {} items (is the plugin in numeric mode?)",
        args.batch - agree,
        args.batch
    );

    let n = reqs.len();
    let chunk = 1000.min(n);
    let batch = args.batch.max(1);
    // Interleaved rounds, best of each: robust against other load on the machine.
    let rounds = args.rounds.max(1);
    let per_round = min / rounds as u32;
    let (mut native_rate, mut batched_rate, mut single_rate) = (0f64, 0f64, 0f64);
    for _ in 0..rounds {
        native_rate = native_rate.max(measure(per_round, chunk, |i| {
            let start = (i * chunk) % (n - chunk + 1);
            for r in &reqs[start..start + chunk] {
                black_box(gsm8k::grade(
                    black_box(r.answer.as_deref()),
                    black_box(&r.gold),
                    Mode::Numeric,
                ));
            }
        }));
        batched_rate = batched_rate.max(measure(per_round, batch, |i| {
            let start = (i * batch) % (n - batch + 1);
            black_box(plugin.grade(&reqs[start..start + batch]));
        }));
        single_rate = single_rate.max(measure(per_round, 100, |i| {
            for k in 0..100 {
                let j = (i * 100 + k) % n;
                black_box(plugin.grade(&reqs[j..j + 1]));
            }
        }));
    }

    println!(
        "reward calls/s, single thread, gsm8k numeric grading of short answers \
         ({n} distinct items, best of {rounds} interleaved rounds)"
    );
    println!(
        "  {:<34} {:>14}",
        "native (malt-graders)",
        format!("{native_rate:.0}")
    );
    println!(
        "  {:<34} {:>14}   native/plugin = {:.2}x",
        format!("plugin {} (batch {batch})", plugin.name()),
        format!("{batched_rate:.0}"),
        native_rate / batched_rate
    );
    println!(
        "  {:<34} {:>14}   native/plugin = {:.2}x",
        format!("plugin {} (batch 1)", plugin.name()),
        format!("{single_rate:.0}"),
        native_rate / single_rate
    );
    let ratio = native_rate / batched_rate;
    println!(
        "goals: batched <= 3x native: {}; >= 300,000 calls/s: {}",
        if ratio <= 3.0 { "met" } else { "NOT met" },
        if batched_rate >= 300_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    let s = plugin.stats();
    println!(
        "plugin stats: {} calls, {} items, {} item errors",
        s.calls, s.items, s.item_errors
    );
    Ok(())
}
