//! End to end: `malt generate` through the remote backend against the real `malt serve` binary
//! on 127.0.0.1, on a tiny random model and the bundled `arith` plugin.
//!
//! - The server is killed (SIGKILL) while trees are being generated and restarted on the same
//!   port: with a generous retry budget the run bridges the gap; with a tight one it stops with
//!   an error naming the endpoint and a second `malt generate` resumes. Either way every
//!   training question's tree is stored exactly once.
//! - The trees equal, node for node, those of an embedded-backend run of the same config
//!   (`malt_seeds` makes the server sample each choice with the embedded sampler's seed).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use malt_model::candle_core::Device;
use malt_model::{Model, ModelConfig};
use serde_json::Value;

const MALT: &str = env!("CARGO_BIN_EXE_malt");
const TRAIN: usize = 24;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn tiny_model(dir: &Path) {
    let cfg = ModelConfig {
        max_position_embeddings: 512,
        eos_token_ids: vec![1],
        ..ModelConfig::llama(256, 32, 64, 2, 4, 2)
    };
    let m = Model::random(cfg, &Device::Cpu).expect("random model");
    m.export_merged(dir, None).expect("export tiny model");
}

/// A config generating `TRAIN` trees of 2 + 4 + 8 samples into `run_dir`; `generation` is
/// the `[generation]` part (empty: embedded).
fn config(model: &Path, run_dir: &str, generation: &str) -> String {
    format!(
        r#"[run]
seed = 5
dir = "{run_dir}"

[model]
source = "{model}"

[dataset]
plugin = "arith"
generate = {{ seed = 2, count = 40 }}
train = {TRAIN}
test = 4

[plugins.arith]

[[agents]]
name = "generator"
branches = 2
max_new_tokens = 24
temperature = 1.0

[[agents]]
name = "verifier"
branches = 2
max_new_tokens = 24
temperature = 0.7
top_k = 20

[[agents]]
name = "refiner"
branches = 2
max_new_tokens = 24
temperature = 1.0
top_p = 0.9

{generation}
"#,
        model = model.display(),
    )
}

fn remote_section(port: u16, retries: u32, max_wait_s: f64) -> String {
    format!(
        r#"[generation]
backend = "remote"
retries = {retries}
backoff_ms = 100
max_backoff_s = 1.0
max_wait_s = {max_wait_s}

[[generation.endpoints]]
url = "http://127.0.0.1:{port}/v1"
max_concurrency = 4
timeout_s = 60
"#
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn malt(cwd: &Path) -> Command {
    let mut c = Command::new(MALT);
    c.current_dir(cwd)
        .env("MALT_CACHE", repo().join("target/malt-cache"))
        .args(["--log", "warn"]);
    c
}

/// `malt serve CONFIG --addr 127.0.0.1:PORT`, returned once it prints its `listening on` line.
fn serve(cwd: &Path, config: &Path, port: u16) -> Child {
    let mut child = malt(cwd)
        .args(["serve"])
        .arg(config)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn malt serve");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let want = format!("listening on http://127.0.0.1:{port}");
    loop {
        match lines.next() {
            Some(Ok(l)) if l.trim() == want => break,
            Some(Ok(_)) => continue,
            _ => panic!("malt serve exited before listening: {:?}", child.wait()),
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// question id -> tree (the stored record's `tree`), asserting each id appears once.
fn trees(run: &Path) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(run.join("trees.jsonl")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let rec: Value = serde_json::from_str(line).unwrap();
        let tree = rec["tree"].clone();
        let id = tree["question_id"].as_str().unwrap().to_owned();
        assert!(
            out.insert(id.clone(), tree).is_none(),
            "question {id} stored twice"
        );
    }
    out
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `malt generate` on `config` while killing the server once some (not all) trees are
/// stored, then restarting it after `down`. Returns the generate output and the restarted
/// server.
fn generate_through_a_crash(
    root: &Path,
    config: &Path,
    server_config: &Path,
    port: u16,
    run: &Path,
    down: Duration,
) -> (Output, Child) {
    let mut server = serve(root, server_config, port);
    let gen = malt(root)
        .arg("generate")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let trees_file = run.join("trees.jsonl");
    let t = Instant::now();
    while lines_in(&trees_file) < 2 {
        assert!(t.elapsed() < Duration::from_secs(300), "no trees appear");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let at_kill = lines_in(&trees_file);
    assert!(
        at_kill < TRAIN,
        "generation finished before the server was killed: make the workload larger"
    );
    std::thread::sleep(down);
    let server = serve(root, server_config, port);
    let out = gen.wait_with_output().unwrap();
    (out, server)
}

#[test]
fn remote_generation_survives_a_server_crash_and_equals_the_embedded_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = root.join("model");
    tiny_model(&model);
    let port = free_port();

    // The reference: the embedded backend.
    let embedded = root.join("embedded.toml");
    std::fs::write(&embedded, config(&model, "runs/embedded", "")).unwrap();
    ok(
        &malt(root).arg("generate").arg(&embedded).output().unwrap(),
        "embedded generate",
    );
    let reference = trees(&root.join("runs/embedded"));
    assert_eq!(reference.len(), TRAIN);

    // A: retries bridge a 2 s outage.
    let bridged = root.join("bridged.toml");
    std::fs::write(
        &bridged,
        config(&model, "runs/bridged", &remote_section(port, 60, 120.0)),
    )
    .unwrap();
    let run_a = root.join("runs/bridged");
    let (out, mut server) = generate_through_a_crash(
        root,
        &bridged,
        &embedded,
        port,
        &run_a,
        Duration::from_secs(2),
    );
    ok(&out, "generate across a server restart");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("retrying in"), "no retry was logged:\n{err}");
    let a = trees(&run_a);
    assert_eq!(a.len(), TRAIN, "every tree stored once");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(run_a.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["model"], model.display().to_string());
    assert_same_trees(&reference, &a);
    server.kill().unwrap();
    server.wait().unwrap();

    // B: a tight budget gives up during a 3 s outage; the rerun resumes.
    let tight = root.join("tight.toml");
    std::fs::write(
        &tight,
        config(&model, "runs/tight", &remote_section(port, 2, 0.5)),
    )
    .unwrap();
    let run_b = root.join("runs/tight");
    let (out, mut server) = generate_through_a_crash(
        root,
        &tight,
        &embedded,
        port,
        &run_b,
        Duration::from_secs(3),
    );
    assert!(
        !out.status.success(),
        "the tight budget should have run out"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("http://127.0.0.1:{port}/v1/chat/completions"))
            && err.contains("rerun to resume"),
        "{err}"
    );
    let stored = trees(&run_b).len();
    assert!(stored > 0 && stored < TRAIN, "{stored}");
    ok(
        &malt(root).arg("generate").arg(&tight).output().unwrap(),
        "resumed generate",
    );
    let b = trees(&run_b);
    assert_eq!(b.len(), TRAIN, "every tree stored once");
    assert_same_trees(&reference, &b);
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Trees equal node for node, apart from the sampling log-probs, which the embedded sampler
/// records and the remote backend does not ask its engines for yet.
fn assert_same_trees(reference: &BTreeMap<String, Value>, got: &BTreeMap<String, Value>) {
    assert_eq!(
        reference.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    let strip = |t: &Value| {
        let mut t = t.clone();
        for n in t["nodes"].as_array_mut().unwrap() {
            n.as_object_mut().unwrap().remove("logprobs");
        }
        t
    };
    for (id, want) in reference {
        let (want, have) = (&strip(want), &strip(&got[id]));
        let (wn, hn) = (
            want["nodes"].as_array().unwrap(),
            have["nodes"].as_array().unwrap(),
        );
        assert_eq!(wn.len(), hn.len());
        for (i, (w, h)) in wn.iter().zip(hn).enumerate() {
            assert_eq!(
                w, h,
                "question {id}, node {i}: the remote backend differs from the embedded one"
            );
        }
        assert_eq!(want, have, "question {id}");
    }
}

/// API keys come from the environment: an unset variable is named, a set key never reaches
/// the logs (even at debug level, where the endpoint settings are printed).
#[test]
fn api_keys_come_from_the_environment_and_stay_out_of_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = root.join("model");
    tiny_model(&model);
    let section = format!(
        "{}api_key_env = \"MALT_TEST_REMOTE_KEY\"\nengine = \"malt\"\n",
        remote_section(free_port(), 0, 0.1)
    );
    let cfg = root.join("keyed.toml");
    std::fs::write(&cfg, config(&model, "runs/keyed", &section)).unwrap();

    let out = malt(root)
        .arg("generate")
        .arg(&cfg)
        .env_remove("MALT_TEST_REMOTE_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("environment variable MALT_TEST_REMOTE_KEY, which is not set"),
        "{err}"
    );

    let key = "sk-malt-test-0123456789";
    let out = Command::new(MALT)
        .current_dir(root)
        .env("MALT_CACHE", repo().join("target/malt-cache"))
        .args(["--log", "debug", "generate"])
        .arg(&cfg)
        .env("MALT_TEST_REMOTE_KEY", key)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nothing listens on the endpoint");
    assert!(
        err.contains("<redacted>") && err.contains("gave up"),
        "{err}"
    );
    assert!(!err.contains(key), "the API key was logged:\n{err}");
}
