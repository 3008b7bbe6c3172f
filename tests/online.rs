//! `malt online` on the tiny random model and the parity fixture plugin: a run killed (SIGKILL)
//! in the middle of its steps and started again ends with exactly the trees, metrics (timings
//! aside) and adapters of a run never interrupted; an agent left out of `[online] train` gets no
//! adapter and no update.

mod common;
mod pipeline_support;

use std::path::Path;
use std::process::Command;

use pipeline_support::{fixture, kill_when, lines, served_models, MALT};
use serde_json::Value;

const ONLINE: &str = r#"
[online]
steps = 4
questions_per_step = 2
lr = 0.01
epochs = 2
micro_batch = 4
kl_beta = 0.1
train = ["generator", "verifier"]
"#;

/// The evaluation of the online run: its row beside the single agent's.
const EVAL_ONLINE: &str = r#"systems = ["single", "online"]
"#;

fn online(config: &Path, cwd: &Path, log: &Path) -> std::process::Child {
    pipeline_support::spawn_command("online", config, cwd, log)
}

/// `malt eval CONFIG` in `dir`: its output.
fn eval(config: &Path, dir: &Path) -> std::process::Output {
    Command::new(MALT)
        .arg("eval")
        .arg(config)
        .current_dir(dir)
        .env("MALT_CACHE", common::repo().join("target/malt-cache"))
        .output()
        .unwrap()
}

fn to_end(config: &Path, cwd: &Path, log: &Path) {
    let status = online(config, cwd, log).wait().unwrap();
    assert!(
        status.success(),
        "malt online failed:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The metrics without their timings.
fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("online/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            for k in ["sample_s", "update_s", "checkpoint_s"] {
                v.as_object_mut().unwrap().remove(k);
            }
            for a in v["agents"].as_array_mut().unwrap() {
                for k in ["logprob_s", "train_s", "optimizer_s"] {
                    a.as_object_mut().unwrap().remove(k);
                }
            }
            v
        })
        .collect()
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn killed_and_resumed_equals_uninterrupted_and_frozen_agents_stay_base() {
    let f = fixture();
    let text = pipeline_support::config(&f.model, &f.plugin, 0.5, "even").replace(
        "majority_k = 3\n",
        &format!("majority_k = 3\n{EVAL_ONLINE}"),
    ) + ONLINE;
    let cfg = f.write_text("online", &text);

    let a = f.workdir("a");
    to_end(&cfg, &a, &a.join("log"));
    let run_a = a.join("runs/pipeline");

    let b = f.workdir("b");
    let run_b = b.join("runs/pipeline");
    let mut child = online(&cfg, &b, &b.join("log"));
    let m = run_b.join("online/metrics.jsonl");
    kill_when(&mut child, "the first online step", || lines(&m) >= 1);
    assert!(lines(&m) < 4, "the run finished before it was killed");
    to_end(&cfg, &b, &b.join("log"));

    let (ma, mb) = (metrics(&run_a), metrics(&run_b));
    assert_eq!(ma.len(), 4);
    assert_eq!(ma, mb, "metrics of the resumed run differ");
    for step in 1..=4 {
        let t = format!("online/trees/step-{step:08}.jsonl");
        assert!(
            bytes(&run_a.join(&t)) == bytes(&run_b.join(&t)),
            "{t} differs after the resume"
        );
    }
    for agent in ["generator", "verifier"] {
        let p = format!("online/adapters/{agent}/adapter_model.safetensors");
        assert!(
            bytes(&run_a.join(&p)) == bytes(&run_b.join(&p)),
            "{p} differs after the resume"
        );
    }
    let svg = std::fs::read_to_string(run_b.join("online/rewards.svg")).unwrap();
    assert!(svg.contains("generator (reward)") && svg.contains("verifier (value)"));
    // The refiner is frozen: no adapter, no update, and the metrics say so.
    assert!(!run_a.join("online/adapters/refiner").exists());
    for m in &ma {
        let agents = m["agents"].as_array().unwrap();
        let refiner = agents.iter().find(|a| a["agent"] == "refiner").unwrap();
        assert_eq!(refiner["trained"], false);
        assert_eq!(refiner["tokens_trained"], 0);
        let generator = agents.iter().find(|a| a["agent"] == "generator").unwrap();
        assert!(generator["tokens_sampled"].as_u64().unwrap() > 0, "{m}");
    }
    // A trained agent moved: its adapter is not the fresh one (B starts at zero).
    let st = malt_model::candle_core::safetensors::load(
        run_a.join("online/adapters/generator/adapter_model.safetensors"),
        &malt_model::candle_core::Device::Cpu,
    )
    .unwrap();
    let moved = st.iter().any(|(k, t)| {
        k.contains("lora_B")
            && t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
    });
    assert!(
        moved,
        "the generator's lora_B is still zero after 4 online steps"
    );
}

/// `malt eval` with the online system: its row runs the online adapters (the frozen refiner on
/// the base model) and its budget counts what the online run sampled and trained.
#[test]
fn the_report_has_the_online_system_and_its_budget() {
    let f = fixture();
    let text = pipeline_support::config(&f.model, &f.plugin, 0.5, "even").replace(
        "majority_k = 3\n",
        &format!("majority_k = 3\n{EVAL_ONLINE}"),
    ) + ONLINE;
    let cfg = f.write_text("online-eval", &text);
    let dir = f.workdir("e");
    let out = eval(&cfg, &dir);
    // Before `malt online`, the online row cannot run and the report says why.
    let text_before =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text_before.contains("run `malt online CONFIG` first"),
        "{text_before}"
    );
    to_end(&cfg, &dir, &dir.join("log"));
    let out = eval(&cfg, &dir);
    assert!(
        out.status.success(),
        "malt eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = dir.join("runs/pipeline");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval/report.json")).unwrap())
            .unwrap();
    let budgets = report["budgets"].as_array().unwrap();
    let online = budgets.iter().find(|b| b["system"] == "online").unwrap();
    let sampled: u64 = metrics(&run)
        .iter()
        .flat_map(|m| m["agents"].as_array().unwrap().clone())
        .map(|a| a["tokens_sampled"].as_u64().unwrap())
        .sum();
    assert_eq!(online["sampled_tokens"].as_u64().unwrap(), sampled);
    assert!(online["trained_tokens"].as_u64().unwrap() > 0, "{online}");
    // 4 steps x 2 epochs x 2 trained agents.
    assert_eq!(online["optimizer_steps"], 16, "{online}");
    let systems = report["systems"].as_array().unwrap();
    assert!(systems.iter().any(|s| s["id"] == "online"), "{report}");
    // Its training curve: every agent at every step, the x the sampled tokens so far, which
    // end at the budget's figure.
    let curve = &report["training"][0];
    assert_eq!(curve["system"], "online", "{report}");
    let settings = curve["settings"].as_str().unwrap();
    assert!(settings.starts_with("advantage "), "{settings}");
    let steps = metrics(&run).len();
    for a in curve["agents"].as_array().unwrap() {
        let points = a["points"].as_array().unwrap();
        assert_eq!(points.len(), steps, "{a}");
        assert_eq!(
            points.last().unwrap()["sampled_tokens"].as_u64(),
            Some(sampled)
        );
    }
    let md = std::fs::read_to_string(run.join("eval/report.md")).unwrap();
    assert!(md.contains("## Online training"), "{md}");
    assert!(run.join("eval/training.svg").is_file());
}

/// `malt bench online` on the tiny model: it splits the steps, re-samples the last step's trees
/// alone with the adapters of the checkpoint before it (identical trees: the checkpoint holds
/// exactly what the loop sampled with) and prints both ratios for each trained agent.
#[test]
fn bench_online_splits_a_step_and_prints_its_ratios() {
    let f = fixture();
    let text = pipeline_support::config(&f.model, &f.plugin, 0.5, "even") + ONLINE;
    let cfg = f.write_text("online-bench", &text);
    let dir = f.workdir("bench");
    let out = Command::new(MALT)
        .args(["bench", "online", "--steps", "2", "--workload"])
        .arg(&cfg)
        .current_dir(&dir)
        .env("MALT_CACHE", common::repo().join("target/malt-cache"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let same = stdout
        .lines()
        .find(|l| l.contains("trees alone with its adapters"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let counts = same.rsplit("; ").next().unwrap();
    let (a, b) = counts
        .split_once(" nodes")
        .unwrap()
        .0
        .split_once('/')
        .unwrap();
    assert_eq!(a, b, "{same}");
    for agent in ["generator", "verifier"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("[online] {agent}: ")) && l.contains("goal >= 0.9")),
            "{stdout}"
        );
    }
    assert!(
        !dir.join("runs").exists(),
        "the bench wrote into the workload's run"
    );
}

/// `[generation]` sending the trees to `url`, the server seeing the run directory under `root`.
fn remote_generation(url: &str, root: Option<&str>) -> String {
    format!(
        r#"
[generation]
backend = "remote"
retries = 1
backoff_ms = 50

[[generation.endpoints]]
url = "{url}"
max_concurrency = 4
{}
"#,
        root.map(|r| format!("adapter_root = \"{r}\""))
            .unwrap_or_default()
    )
}

/// Online training with the remote backend against `malt serve` on loopback: every step loads
/// the adapters into the server as new versions and samples through it. The trees equal the
/// embedded run's node for node (the server's log-probs within 1e-4 of the embedded
/// sampler's), hence the same updates and adapters. A version the server cannot read stops
/// the run with an error naming the endpoint and the path, the server serving on.
#[test]
fn remote_online_training_through_malt_serve_equals_the_embedded_run() {
    let f = fixture();
    let text = pipeline_support::config(&f.model, &f.plugin, 0.5, "even")
        + &ONLINE.replace("steps = 4", "steps = 3");
    let embedded = f.write_text("online-embedded", &text);
    let a = f.workdir("embedded");
    to_end(&embedded, &a, &a.join("log"));

    let (_server, url) = pipeline_support::serve_in_process(&f.model);

    // The server does not see the run directory where `adapter_root` says.
    let b = f.workdir("remote");
    let bad = f.write_text(
        "online-remote-bad",
        &(text.clone() + &remote_generation(&url, Some("/nowhere/run"))),
    );
    let status = online(&bad, &b, &b.join("log-bad")).wait().unwrap();
    assert!(!status.success(), "a version the server cannot read");
    let log = std::fs::read_to_string(b.join("log-bad")).unwrap();
    assert!(
        log.contains(&format!("{url}/chat/completions"))
            && log.contains("/nowhere/run/")
            && log.contains("adapter_root"),
        "{log}"
    );
    assert_eq!(served_models(&url), ["tiny"], "nothing half-loaded");

    let good = f.write_text("online-remote", &(text + &remote_generation(&url, None)));
    to_end(&good, &b, &b.join("log"));
    let (run_a, run_b) = (a.join("runs/pipeline"), b.join("runs/pipeline"));
    let mut logprobs = 0;
    for step in 1..=3 {
        let t = format!("online/trees/step-{step:08}.jsonl");
        let read = |run: &Path| -> Vec<Value> {
            std::fs::read_to_string(run.join(&t))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let (ta, tb) = (read(&run_a), read(&run_b));
        assert_eq!(ta.len(), tb.len());
        for (x, y) in ta.iter().zip(&tb) {
            let (nx, ny) = (
                x["nodes"].as_array().unwrap(),
                y["nodes"].as_array().unwrap(),
            );
            assert_eq!(nx.len(), ny.len());
            for (i, (p, q)) in nx.iter().zip(ny).enumerate() {
                let (mut p, mut q) = (p.clone(), q.clone());
                let lp = |v: &mut Value| -> Option<Vec<f64>> {
                    serde_json::from_value(v.as_object_mut().unwrap().remove("logprobs")?).ok()
                };
                let (lp_a, lp_b) = (lp(&mut p), lp(&mut q));
                assert_eq!(p, q, "step {step}, {}, node {i}", x["question_id"]);
                assert_eq!(lp_a.is_some(), lp_b.is_some(), "step {step}, node {i}");
                if let (Some(u), Some(w)) = (lp_a, lp_b) {
                    assert_eq!(u.len(), w.len());
                    for (s, r) in u.iter().zip(&w) {
                        assert!((s - r).abs() < 1e-4, "step {step}, node {i}: {s} vs {r}");
                    }
                    logprobs += 1;
                }
            }
        }
    }
    assert!(logprobs > 0, "the server returned no log-probs");
    for agent in ["generator", "verifier"] {
        let p = format!("online/adapters/{agent}/adapter_model.safetensors");
        assert!(
            bytes(&run_a.join(&p)) == bytes(&run_b.join(&p)),
            "{p}: the remote run trained other weights"
        );
    }
    let strip = |ms: Vec<Value>| -> Vec<Value> {
        ms.into_iter()
            .map(|mut m| {
                m.as_object_mut().unwrap().remove("sync_s");
                for a in m["agents"].as_array_mut().unwrap() {
                    a.as_object_mut().unwrap().remove("logprob_mismatch");
                }
                m
            })
            .collect()
    };
    assert_eq!(strip(metrics(&run_a)), strip(metrics(&run_b)));
    // Each step served new versions; the run unloaded them when it finished.
    assert_eq!(served_models(&url), ["tiny"]);
    let log = std::fs::read_to_string(b.join("log")).unwrap();
    assert!(!log.contains("could not unload"), "{log}");
}
