//! `malt bench generate`: prefill and decode throughput against candle-transformers' own Llama on
//! the same weights, and a 3-3-3 agent tree sampled with prefix sharing against the same 39
//! sequences sampled independently, in one run.

use crate::baseline::PlainCandle;
use anyhow::Context;
use malt_model::{
    branch_seed, fetch, parse_device, Branch, Cache, Message, Model, ModelConfig, NodeRequest,
    SamplingParams, TreeSampler,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The real model to measure; the default is skipped (with a message) when not cached.
    #[arg(long, default_value = fetch::DEFAULT_MODEL)]
    pub model: String,
    /// Download the default model if it is not cached.
    #[arg(long)]
    pub fetch: bool,
    /// Only the tiny random shape.
    #[arg(long)]
    pub skip_real: bool,
    /// Only the real model.
    #[arg(long)]
    pub skip_tiny: bool,
    /// New tokens per generated sequence (decode and tree).
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Approximate prompt tokens added per tree level.
    #[arg(long, default_value_t = 150)]
    pub prompt_tokens: usize,
    /// Branching factor of the tree (n-n-n).
    #[arg(long, default_value_t = 3)]
    pub n: usize,
    /// Only prefill and decode throughput, not the agent tree against independent sampling.
    #[arg(long)]
    pub skip_tree: bool,
    /// Skip the plain-candle baseline (quicker, and a profile then shows only malt's own path).
    #[arg(long)]
    pub skip_baseline: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The real model's tree case samples this run config's workload (its plugins' prompts for
    /// every agent, its sampling parameters and stop rules, the generation stage's sampler);
    /// `--workload none` measures the synthetic 3-3-3 tree instead.
    #[arg(long, default_value = "configs/quickstart.toml")]
    pub workload: String,
    /// Trees of the workload to sample.
    #[arg(long, default_value_t = 3)]
    pub trees: usize,
    /// How many of those trees to sample again with every sequence alone (the baseline).
    #[arg(long, default_value_t = 1)]
    pub independent_trees: usize,
    /// Dtypes to hold the weights in, comma-separated (`f32`, `bf16`, `f16`); each is measured
    /// in turn, and every one after the first is also printed as a ratio to the first.
    #[arg(long, value_delimiter = ',', default_values_t = ["f32".to_string()])]
    pub dtype: Vec<String>,
    /// A llama.cpp build directory (holding `llama-bench` and `llama-batched-bench`): the real
    /// model's three throughput figures are then also measured with llama.cpp in this run, with
    /// as many threads as malt uses. Needs --llama-cpp-model.
    #[arg(long, requires = "llama_cpp_model")]
    pub llama_cpp: Option<PathBuf>,
    /// The GGUF llama.cpp runs; for a like-for-like comparison the same weights in the dtype
    /// measured, e.g. `llama-quantize --allow-requantize SmolLM2-135M-Instruct.Q4_1.gguf
    /// smollm2-f32.gguf F32` (or `... smollm2-bf16.gguf BF16`). With several `--dtype`s, give one
    /// GGUF per dtype, in the same order.
    #[arg(long, requires = "llama_cpp", value_delimiter = ',')]
    pub llama_cpp_model: Vec<PathBuf>,
}

/// One model's three throughput figures (tokens/s).
#[derive(Clone, Copy)]
struct Rates {
    prefill: f64,
    decode_1: f64,
    decode_9: f64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let dtypes = args
        .dtype
        .iter()
        .map(|d| malt_model::parse_dtype(d))
        .collect::<malt_model::Result<Vec<_>>>()?;
    anyhow::ensure!(!dtypes.is_empty(), "--dtype: name at least one dtype");
    if args.llama_cpp.is_some() && args.llama_cpp_model.len() != dtypes.len() {
        anyhow::bail!(
            "--llama-cpp-model: give one GGUF per --dtype ({} dtypes, {} GGUFs)",
            dtypes.len(),
            args.llama_cpp_model.len()
        );
    }
    if !args.skip_real {
        let cached = args.model != fetch::DEFAULT_MODEL || fetch::smollm2_cached().is_some();
        if cached || args.fetch {
            let mut first: Option<(String, Rates)> = None;
            for (i, &dtype) in dtypes.iter().enumerate() {
                let t = Instant::now();
                let mut m = Model::load_as(&args.model, &device, Some(dtype))
                    .context("loading the model")?;
                let label = format!("real {}", args.dtype[i]);
                println!(
                    "[{label}] {} loaded in {:.1}s",
                    m.source,
                    t.elapsed().as_secs_f64()
                );
                let gguf = args.llama_cpp_model.get(i).map(PathBuf::as_path);
                let rates = bench_model(&label, &mut m, &args, true, gguf)?;
                compare(&mut first, &label, rates);
            }
        } else {
            println!(
                "[real] SKIPPED: {} is not cached at {} (pass --fetch to download it)",
                args.model,
                fetch::smollm2_path().display()
            );
        }
    }
    if !args.skip_tiny {
        let mut first: Option<(String, Rates)> = None;
        for (i, &dtype) in dtypes.iter().enumerate() {
            let cfg = tiny_shape();
            let mut m = Model::random_as(cfg, &device, dtype)?;
            let label = format!("tiny {}", args.dtype[i]);
            println!(
                "[{label}] random weights, 31M shape (h384, 8 layers, 6/2 heads, vocab 49152)"
            );
            let rates = bench_model(&label, &mut m, &args, false, None)?;
            compare(&mut first, &label, rates);
        }
    }
    Ok(())
}

/// Prints `rates` as a ratio to the first dtype's (remembered in `first`).
fn compare(first: &mut Option<(String, Rates)>, label: &str, rates: Rates) {
    match first {
        None => *first = Some((label.to_string(), rates)),
        Some((base, b)) => println!(
            "[{label}] / [{base}], same run: prefill {:.2}x, decode batch 1 {:.2}x, batch 9 {:.2}x",
            rates.prefill / b.prefill,
            rates.decode_1 / b.decode_1,
            rates.decode_9 / b.decode_9
        ),
    }
}

fn tiny_shape() -> ModelConfig {
    ModelConfig {
        max_position_embeddings: 8192,
        ..ModelConfig::llama(49152, 384, 1024, 8, 6, 2)
    }
}

const PREFILL_RUNS: usize = 5;
const DECODE_RUNS: usize = 3;

/// The median of `runs` timings.
fn median(runs: usize, mut f: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut v = (0..runs)
        .map(|_| f())
        .collect::<anyhow::Result<Vec<f64>>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

fn synthetic(n: usize, salt: u64, vocab: usize) -> Vec<u32> {
    let mut x = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (vocab as u64 - 1) + 1) as u32
        })
        .collect()
}

const QUESTION: &str = "A farmer has a rectangular field that is 120 meters long and 80 meters wide. He wants to plant apple trees along the whole border of the field, one tree every 4 meters, starting at a corner. Each tree costs 15 dollars and needs 20 liters of water per week during the first summer, which lasts 13 weeks. Water costs 2 dollars per 1000 liters. He also has to pay a worker 12 dollars per hour, and the worker plants 5 trees per hour. How much money does the farmer spend in total on trees, planting and water during the first summer? ";
const VERIFY: &str = "Please check the solution above carefully, step by step. Verify every intermediate quantity: the perimeter, the number of trees, the cost of the trees, the hours of work and their cost, and the water volume and its cost. Point out any arithmetic mistake or wrong assumption, for example about the corners of the field or about counting trees on a closed loop. Do not solve the problem again from scratch; give a concise critique that a colleague could use to fix the solution, and say clearly whether the final answer is correct. ";
const REFINE: &str = "Using the critique above, write a corrected and complete solution. Keep the correct parts of the original solution, fix every mistake the critique found, and recompute all the quantities that depend on a fixed step. Explain each step briefly and end your answer with a line of the form 'Final Answer: X' where X is the total cost in dollars as a number. If the critique is wrong about something, ignore that part and say why in one sentence. ";

/// Repeats `base` until it is at least `tokens` tokens long.
fn text_of(m: &Model, base: &str, tokens: usize) -> anyhow::Result<String> {
    let mut s = base.to_string();
    while m.tokenizer.encode(&s, false)?.len() < tokens {
        s.push_str(base);
    }
    Ok(s)
}

#[derive(Clone)]
struct Node {
    path: Vec<usize>,
    /// Text mode: the conversation so far. Token mode: the prompt tokens.
    msgs: Vec<Message>,
    prompt: Vec<u32>,
    parent: Option<Cache>,
}

struct Seq {
    prompt: Vec<u32>,
    seed: u64,
    tokens: Vec<u32>,
}

fn bench_model(
    label: &str,
    m: &mut Model,
    a: &Args,
    text: bool,
    llama_gguf: Option<&Path>,
) -> anyhow::Result<Rates> {
    // Fixed-length generations, so both sides of each comparison do the same work (the
    // workload tree below restores the model's own stop tokens).
    let stop_ids = std::mem::take(&mut m.stop_ids);
    let vocab = m.config().vocab_size;
    let nt = a.new_tokens;
    let params = SamplingParams {
        temperature: 0.3,
        max_new_tokens: nt as u32,
        ..Default::default()
    };
    // Warm-up (allocations, page faults).
    let c = m.prefill(&synthetic(16, 9, vocab), None)?;
    m.generate(
        vec![Branch { cache: c, seed: 0 }],
        &SamplingParams {
            max_new_tokens: 2,
            ..params.clone()
        },
        None,
    )?;

    // Medians of repeated runs (the peers' figures are medians of three), each beside the
    // plain-candle baseline (candle-transformers' Llama on the same weights) measured here.
    let plain = match a.skip_baseline {
        true => None,
        false => PlainCandle::new(m)
            .inspect_err(|e| println!("[{label}] plain-candle baseline skipped: {e}"))
            .ok(),
    };
    let ratio = |ours: f64, base: Option<f64>| match base {
        Some(b) => format!("; plain candle {b:.1} = {:.2}x", ours / b),
        None => String::new(),
    };
    let p128 = synthetic(128, 1, vocab);
    let mut c = m.prefill(&p128, None)?;
    let s = median(PREFILL_RUNS, || {
        let t = Instant::now();
        c = m.prefill(&p128, None)?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    let base = match &plain {
        Some(p) => Some(128.0 / median(PREFILL_RUNS, || Ok(p.prefill_secs(&p128)?))?),
        None => None,
    };
    let mut ours = (128.0 / s, 0.0, 0.0);
    println!(
        "[{label}] prefill 128 tokens: median of {PREFILL_RUNS} {s:.3}s = {:.1} tok/s{} (llama.cpp reference 500)",
        128.0 / s,
        ratio(128.0 / s, base)
    );

    let s = median(DECODE_RUNS, || {
        let t = Instant::now();
        m.generate(
            vec![Branch {
                cache: c.clone(),
                seed: 1,
            }],
            &params,
            None,
        )?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    let base = match &plain {
        Some(p) => Some(nt as f64 / median(DECODE_RUNS, || Ok(p.decode_secs(&p128, 1, nt)?))?),
        None => None,
    };
    ours.1 = nt as f64 / s;
    println!(
        "[{label}] decode batch 1: {nt} tokens, median of {DECODE_RUNS} {s:.2}s = {:.1} tok/s{} (llama.cpp reference 45)",
        nt as f64 / s,
        ratio(nt as f64 / s, base)
    );
    // The ceiling of batch-1 decode: every weight read once a token.
    let roof = (m.device().is_cpu() && text).then(|| {
        let bytes = malt_model::footprint::weight_bytes(
            m.config(),
            m.decoder.dtype(),
            m.decoder.activation_dtype(),
        );
        let rate = malt_model::kernels::stream::read_rate(bytes as usize, 5);
        println!(
            "[{label}] memory read rate, same run: {:.1} GB/s; the weights ({:.0} MB) read once a token cap batch-1 decode at {:.1} tok/s: malt is at {:.0}% of it",
            rate / 1e9,
            bytes as f64 / 1e6,
            rate / bytes as f64,
            100.0 * ours.1 * bytes as f64 / rate
        );
        rate / bytes as f64
    });

    let s = median(DECODE_RUNS, || {
        let branches: Vec<Branch> = c
            .fork(9)
            .into_iter()
            .enumerate()
            .map(|(i, cache)| Branch {
                cache,
                seed: i as u64,
            })
            .collect();
        let t = Instant::now();
        m.generate(branches, &params, None)?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    let base = match &plain {
        Some(p) => {
            Some((9 * nt) as f64 / median(DECODE_RUNS, || Ok(p.decode_secs(&p128, 9, nt)?))?)
        }
        None => None,
    };
    drop(plain);
    ours.2 = (9 * nt) as f64 / s;
    println!(
        "[{label}] decode batch 9: {} tokens, median of {DECODE_RUNS} {s:.2}s = {:.1} tok/s total{} (llama.cpp reference 200)",
        9 * nt,
        (9 * nt) as f64 / s,
        ratio((9 * nt) as f64 / s, base)
    );

    let rates = Rates {
        prefill: ours.0,
        decode_1: ours.1,
        decode_9: ours.2,
    };
    if let (true, Some(dir), Some(gguf)) = (text, &a.llama_cpp, llama_gguf) {
        let peer = llama_cpp(dir, gguf, nt)?;
        println!(
            "[{label}] llama.cpp, same run ({} threads): prefill 128 {:.1} tok/s, decode batch 1 {:.1}, batch 9 {:.1} total; malt / llama.cpp = {:.2}x, {:.2}x, {:.2}x",
            malt_model::process::threads(),
            peer.prefill,
            peer.decode_1,
            peer.decode_9,
            ours.0 / peer.prefill,
            ours.1 / peer.decode_1,
            ours.2 / peer.decode_9
        );
        if let Some(cap) = roof {
            println!(
                "[{label}] batch-1 decode as a share of the read-rate cap ({cap:.1} tok/s): malt {:.0}%, llama.cpp {:.0}%",
                100.0 * ours.1 / cap,
                100.0 * peer.decode_1 / cap
            );
        }
    }
    if a.skip_tree {
        return Ok(rates);
    }
    let workload = Path::new(&a.workload);
    if text && a.workload != "none" {
        if workload.exists() {
            m.stop_ids = stop_ids;
            super::workload::run(label, m, &a.model, workload, a.trees, a.independent_trees)?;
            return Ok(rates);
        }
        println!(
            "[{label}] workload {} not found (run from the repository root, or pass --workload): the synthetic tree instead",
            workload.display()
        );
    }
    // The agent tree: each level's prompt continues the conversation of its parent.
    let n = a.n;
    let (q, v_instr, r_instr) = if text {
        (
            text_of(m, QUESTION, a.prompt_tokens)?,
            text_of(m, VERIFY, a.prompt_tokens)?,
            text_of(m, REFINE, a.prompt_tokens)?,
        )
    } else {
        Default::default()
    };
    let sys = "You are an expert problem solver. Think step by step.";
    let mut seqs: Vec<Seq> = vec![];
    let t = Instant::now();
    let mut tree = TreeSampler::new(m, 1);
    let root_msgs = vec![Message::system(sys), Message::user(&q)];
    let root_prompt = if text {
        m.encode_chat(&root_msgs, true)?
    } else {
        synthetic(a.prompt_tokens, 100, vocab)
    };
    let mut level = vec![Node {
        path: vec![],
        msgs: root_msgs,
        prompt: root_prompt,
        parent: None,
    }];
    for depth in 0..3 {
        // One agent level at a time: all its nodes' children decode as one batch.
        let reqs: Vec<NodeRequest> = level
            .iter()
            .map(|node| NodeRequest {
                parent: node.parent.as_ref(),
                prompt: &node.prompt,
                n,
                path: &node.path,
            })
            .collect();
        let outs_per_node = tree.sample_level(&reqs, None, &params)?;
        let mut next = vec![];
        for (node, outs) in level.iter().zip(outs_per_node) {
            for (i, o) in outs.into_iter().enumerate() {
                let mut path = node.path.clone();
                path.push(i);
                seqs.push(Seq {
                    prompt: node.prompt.clone(),
                    seed: branch_seed(1, &path),
                    tokens: o.tokens.clone(),
                });
                if depth == 2 {
                    continue;
                }
                let (msgs, prompt) = if text {
                    let mut msgs = node.msgs.clone();
                    msgs.push(Message::assistant(&o.text));
                    msgs.push(Message::user(if depth == 0 { &v_instr } else { &r_instr }));
                    let p = m.encode_chat(&msgs, true)?;
                    (msgs, p)
                } else {
                    let mut p = node.prompt.clone();
                    p.extend(&o.tokens);
                    p.extend(synthetic(a.prompt_tokens, 200 + seqs.len() as u64, vocab));
                    (vec![], p)
                };
                next.push(Node {
                    path,
                    msgs,
                    prompt,
                    parent: Some(o.cache),
                });
            }
        }
        level = next;
    }
    let tree_s = t.elapsed().as_secs_f64();
    let st = tree.stats.clone();
    let independent_prefill: usize = seqs.iter().map(|s| s.prompt.len()).sum();

    let t = Instant::now();
    let mut same = 0usize;
    for s in &seqs {
        let cache = m.prefill(&s.prompt, None)?;
        let out = m.generate(
            vec![Branch {
                cache,
                seed: s.seed,
            }],
            &params,
            None,
        )?;
        same += usize::from(out.first().map(|o| o.tokens == s.tokens).unwrap_or(false));
    }
    let indep_s = t.elapsed().as_secs_f64();
    println!(
        "[{label}] tree {n}-{n}-{n} ({} sequences, {nt} new tokens each, ~{} prompt tokens per level): prefill computed {} vs unique-prefix minimum {} = {:.3}x (goal <= 1.05); independent sampling prefills {} = {:.1}x the tree",
        seqs.len(),
        a.prompt_tokens,
        st.prefill_computed,
        st.prefill_minimum,
        st.prefill_computed as f64 / st.prefill_minimum.max(1) as f64,
        independent_prefill,
        independent_prefill as f64 / st.prefill_computed.max(1) as f64
    );
    println!(
        "[{label}] tree wall {tree_s:.2}s vs independent {indep_s:.2}s = {:.2}x faster (goal >= 2x); identical outputs: {same}/{}{}",
        indep_s / tree_s,
        seqs.len(),
        if same < seqs.len() {
            " (batched vs single-row matmuls round differently; near-uniform logits amplify it)"
        } else {
            ""
        }
    );
    Ok(rates)
}

/// llama.cpp's figures for the shapes `bench_model` measures.
struct Peer {
    prefill: f64,
    decode_1: f64,
    decode_9: f64,
}

/// Runs llama.cpp's own benchmarks from `dir` on `gguf`: `llama-bench` (prefill of 128 tokens and
/// decode of `nt` at batch 1, mean of 3 repetitions) and `llama-batched-bench` (9 sequences
/// sharing a 128-token prompt, `nt` tokens each, as the batch-9 line above).
fn llama_cpp(dir: &Path, gguf: &Path, nt: usize) -> anyhow::Result<Peer> {
    let threads = malt_model::process::threads().to_string();
    let run = |tool: &str, args: &[&str]| -> anyhow::Result<String> {
        let bin = dir.join(tool);
        let out = Command::new(&bin)
            .arg("-m")
            .arg(gguf)
            .args(["-t", &threads])
            .args(args)
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "{} failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let nts = nt.to_string();
    let bench = run(
        "llama-bench",
        &["-p", "128", "-n", &nts, "-r", "3", "-o", "json"],
    )?;
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&bench).context("reading llama-bench's JSON output")?;
    let rate = |prompt: u64, gen: u64| -> anyhow::Result<f64> {
        rows.iter()
            .find(|r| r["n_prompt"] == prompt && r["n_gen"] == gen)
            .and_then(|r| r["avg_ts"].as_f64())
            .with_context(|| {
                format!("llama-bench printed no row for n_prompt {prompt}, n_gen {gen}")
            })
    };
    let batched = run(
        "llama-batched-bench",
        &[
            "-c",
            "2048",
            "-b",
            "512",
            "-ub",
            "512",
            "-npp",
            "128",
            "-ntg",
            &nts,
            "-npl",
            "9",
            "-pps",
            "--output-format",
            "jsonl",
        ],
    )?;
    let decode_9 = batched
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|r| r["speed_tg"].as_f64())
        .context("llama-batched-bench printed no speed_tg")?;
    Ok(Peer {
        prefill: rate(128, 0)?,
        decode_1: rate(0, nt as u64)?,
        decode_9,
    })
}
