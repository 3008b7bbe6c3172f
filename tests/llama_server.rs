//! End to end against llama.cpp's OpenAI-compatible servers serving the embedded SmolLM2 GGUF:
//! `malt generate` with `backend = "remote"` and `engine = "auto"`.
//!
//! - llama.cpp's `llama-server` (`MALT_LLAMA_SERVER` = path of the binary; `scripts/llama-server.sh`
//!   builds it): identified from `GET /v1/models`, asked one choice per request; the server is
//!   killed (SIGKILL) and restarted mid-run and every tree is stored once, whole.
//! - llama-cpp-python's server (`MALT_LLAMA_CPP_PYTHON` = a Python with
//!   `llama-cpp-python[server]`; the same script installs it with `--python`), which ignores
//!   `n`: follow-up requests fill every node's choices.
//!
//! Each test is skipped, loudly, when its server or the SmolLM2 GGUF is absent; with
//! `MALT_REQUIRE_LLAMA_SERVER=1` (CI sets it) or `MALT_REQUIRE_LLAMA_CPP_PYTHON=1` a missing
//! server fails instead.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const MALT: &str = env!("CARGO_BIN_EXE_malt");

/// The path in `var`, or `None` after a loud skip message (a panic when `require` is set).
fn required(var: &str, require: &str, what: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(p.exists(), "{var}={} does not exist", p.display());
            Some(p)
        }
        _ if std::env::var_os(require).is_some() => {
            panic!("{require} is set but {var} is not: run scripts/llama-server.sh")
        }
        _ => {
            eprintln!(
                "\n!!!!!!!! SKIPPED: {what} is not available: run `scripts/llama-server.sh` \
                 (it builds llama.cpp and prints the variables to export), then set {var} \
                 !!!!!!!!\n"
            );
            None
        }
    }
}

/// The embedded model's GGUF, fetched when the servers are required.
fn gguf() -> Option<PathBuf> {
    match malt_model::fetch::smollm2_cached() {
        Some(p) => Some(p),
        None if std::env::var_os("MALT_REQUIRE_LLAMA_SERVER").is_some() => {
            Some(malt_model::fetch::ensure_smollm2().expect("fetching SmolLM2"))
        }
        None => {
            eprintln!(
                "\n!!!!!!!! SKIPPED: SmolLM2-135M-Instruct is not cached at {} (run `malt \
                 generate` on configs/quickstart.toml once) !!!!!!!!\n",
                malt_model::fetch::smollm2_path().display()
            );
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` (which listens on `port`) and waits until `GET /v1/models` answers 200.
fn start(mut cmd: Command, port: u16) -> Server {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let mut server = Server { child };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let t = Instant::now();
    loop {
        let ready = agent
            .get(format!("http://127.0.0.1:{port}/v1/models"))
            .call()
            .is_ok_and(|r| r.status().as_u16() == 200);
        if ready {
            return server;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("the server exited before it was ready: {status}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "the server on port {port} was not ready within 180 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn llama_server(bin: &Path, model: &Path, port: u16) -> Server {
    let mut c = Command::new(bin);
    c.arg("-m")
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-t", "2", "-np", "4", "-c", "4096"]);
    start(c, port)
}

fn llama_cpp_python(python: &Path, model: &Path, port: u16) -> Server {
    let mut c = Command::new(python);
    c.args(["-m", "llama_cpp.server", "--model"])
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--n_threads", "2", "--n_ctx", "4096"]);
    start(c, port)
}

/// `train` trees of 2 + 4 + 8 samples through the endpoint on `port`.
fn config(dir: &Path, port: u16, train: usize) -> PathBuf {
    let text = format!(
        r#"[run]
seed = 3
dir = "run"

[model]
source = "smollm2-135m-instruct"

[dataset]
plugin = "arith"
generate = {{ seed = 2, count = 40 }}
train = {train}
test = 4

[plugins.arith]
options = {{ difficulty = "0" }}

[[agents]]
name = "generator"
branches = 2
max_new_tokens = 32
temperature = 0.7

[[agents]]
name = "verifier"
branches = 2
max_new_tokens = 24
temperature = 0.7

[[agents]]
name = "refiner"
branches = 2
max_new_tokens = 24
temperature = 0.7

[generation]
backend = "remote"
retries = 60
backoff_ms = 200
max_backoff_s = 2.0
max_wait_s = 180.0

[[generation.endpoints]]
url = "http://127.0.0.1:{port}/v1"
max_concurrency = 4
timeout_s = 120
"#
    );
    let path = dir.join("llama.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn malt(dir: &Path) -> Command {
    let mut c = Command::new(MALT);
    c.current_dir(dir).args(["--log", "info"]);
    c
}

fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Every stored tree: each question once, every node sampled (none errored, all 14 present).
/// With `tokenizer`, every node also stores the ids llama.cpp sampled (which spell its output
/// under malt's tokenizer of the same GGUF) and why it stopped.
fn check_trees(run: &Path, train: usize, tokenizer: Option<&malt_model::Tokenizer>) {
    let text = std::fs::read_to_string(run.join("trees.jsonl")).unwrap();
    let mut ids = BTreeSet::new();
    for line in text.lines() {
        let tree = &serde_json::from_str::<Value>(line).unwrap()["tree"];
        let id = tree["question_id"].as_str().unwrap().to_owned();
        assert!(ids.insert(id.clone()), "question {id} stored twice");
        let nodes = tree["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2 + 4 + 8, "question {id}");
        for n in nodes {
            assert!(n.get("error").is_none(), "question {id}: errored node {n}");
            let Some(tok) = tokenizer else { continue };
            let ids: Vec<u32> = serde_json::from_value(n["token_ids"].clone())
                .unwrap_or_else(|_| panic!("question {id}: no token ids in {n}"));
            let spelled = tok.decode(&ids, true).unwrap();
            let output = n["output"].as_str().unwrap();
            assert!(
                spelled.starts_with(output),
                "question {id}: ids {ids:?} spell {spelled:?}, not the output {output:?}"
            );
            let finish = n["finish"].as_str().unwrap_or_default();
            assert!(
                ["end_of_turn", "length"].contains(&finish),
                "question {id}: finish {finish:?} in {n}"
            );
            // llama.cpp returns the end-of-turn token with the others, as malt stores it.
            assert_eq!(
                finish == "end_of_turn",
                ids.last() == Some(&2),
                "question {id}: {n}"
            );
        }
        let outputs: BTreeSet<&str> = nodes.iter().filter_map(|n| n["output"].as_str()).collect();
        assert!(
            outputs.len() >= 5,
            "question {id}: the choices are mostly identical"
        );
    }
    assert_eq!(ids.len(), train);
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn llama_server_generation_survives_a_restart() {
    let Some(bin) = required(
        "MALT_LLAMA_SERVER",
        "MALT_REQUIRE_LLAMA_SERVER",
        "llama.cpp's llama-server",
    ) else {
        return;
    };
    let Some(model) = gguf() else { return };
    const TRAIN: usize = 8;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let port = free_port();
    let server = llama_server(&bin, &model, port);
    let cfg = config(root, port, TRAIN);
    let t = Instant::now();
    let gen = malt(root)
        .arg("generate")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let trees = root.join("run/trees.jsonl");
    while lines_in(&trees) < 2 {
        assert!(t.elapsed() < Duration::from_secs(600), "no trees appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    let at_kill = lines_in(&trees);
    assert!(
        at_kill < TRAIN,
        "finished before the kill: make the workload larger"
    );
    std::thread::sleep(Duration::from_secs(2));
    let _server = llama_server(&bin, &model, port);
    let out = gen.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "generate failed:\n{err}");
    eprintln!(
        "llama-server: {TRAIN} trees of 14 samples in {:.1} s ({at_kill} stored before the kill)",
        t.elapsed().as_secs_f64()
    );
    assert!(err.contains("llama.cpp (identified by GET"), "{err}");
    assert!(
        err.contains("per-choice seeds (malt_seeds) are not honoured"),
        "{err}"
    );
    assert!(
        err.contains("retrying in"),
        "no retry across the restart:\n{err}"
    );
    let (tokenizer, _) = malt_model::Model::load_tokenizer(model.to_str().unwrap()).unwrap();
    check_trees(&root.join("run"), TRAIN, Some(&tokenizer));
    // Every completion's ids came from llama.cpp (none re-encoded).
    assert!(
        err.contains(
            " 0 re-encoded locally because the engine returned none, 0 re-encoded because"
        ),
        "{err}"
    );
}

/// The reference corpus of `tests/fixtures/reference/smollm2_tokenizer.json` (raw texts and chat
/// renderings, written by `scripts/reference_golden.py`), each with its expected ids:
/// llama.cpp's reading of the GGUF where transformers' differs (`ids_llamacpp`), else
/// transformers'.
fn reference_corpus() -> Vec<(String, String, Vec<u32>)> {
    let path = common::repo().join("tests/fixtures/reference/smollm2_tokenizer.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let ids = |v: &Value| -> Vec<u32> { serde_json::from_value(v.clone()).unwrap() };
    let mut out = Vec::new();
    for kind in ["raw", "chat"] {
        for e in fx[kind].as_array().unwrap() {
            out.push((
                format!("{kind}[{}]", e["name"].as_str().unwrap()),
                e["text"].as_str().unwrap().to_owned(),
                ids(e.get("ids_llamacpp").unwrap_or(&e["ids"])),
            ));
        }
    }
    out
}

/// malt's ids for a text equal llama.cpp's `/tokenize` on the same GGUF (special tokens
/// parsed, none added), and both equal the reference fixture's, for every entry of the
/// reference corpus (raw texts, chat prompts rendered by the model's template) and for chat
/// prompts rendered by malt's template.
#[test]
fn malt_tokenizes_like_llama_server() {
    let Some(bin) = required(
        "MALT_LLAMA_SERVER",
        "MALT_REQUIRE_LLAMA_SERVER",
        "llama.cpp's llama-server",
    ) else {
        return;
    };
    let Some(model) = gguf() else { return };
    let port = free_port();
    let _server = llama_server(&bin, &model, port);
    let (tok, chat) = malt_model::Model::load_tokenizer(model.to_str().unwrap()).unwrap();
    let mut corpus: Vec<(String, String, Option<Vec<u32>>)> = reference_corpus()
        .into_iter()
        .map(|(name, text, ids)| (name, text, Some(ids)))
        .collect();
    use malt_model::Message;
    for (i, msgs) in [
        vec![Message::user(
            "What is the capital of France? Answer in one word.",
        )],
        vec![
            Message::system("You solve arithmetic."),
            Message::user("Tom has 3 apples and eats 1. How many are left?"),
            Message::assistant("3 - 1 = 2. Final Answer: 2"),
            Message::user("Check it."),
        ],
    ]
    .iter()
    .enumerate()
    {
        corpus.push((
            format!("malt chat {i}"),
            chat.render(msgs, true).unwrap(),
            None,
        ));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut fails = Vec::new();
    for (name, text, fixture) in &corpus {
        let body =
            serde_json::json!({"content": text, "add_special": false, "parse_special": true});
        let mut resp = agent
            .post(format!("http://127.0.0.1:{port}/tokenize"))
            .send_json(&body)
            .unwrap();
        let v: Value = resp.body_mut().read_json().unwrap();
        let theirs: Vec<u32> = serde_json::from_value(v["tokens"].clone()).unwrap();
        let ours = tok.encode(text, false).unwrap();
        if ours != theirs {
            fails.push(format!("{name}: malt {ours:?}, llama.cpp {theirs:?}"));
        }
        if fixture.as_ref().is_some_and(|f| f != &theirs) {
            fails.push(format!("{name}: llama.cpp {theirs:?}, fixture {fixture:?}"));
        }
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
    eprintln!(
        "{} texts tokenized alike by malt, llama.cpp and the fixture",
        corpus.len()
    );
}

#[test]
fn a_server_that_ignores_n_gets_follow_up_requests() {
    let Some(python) = required(
        "MALT_LLAMA_CPP_PYTHON",
        "MALT_REQUIRE_LLAMA_CPP_PYTHON",
        "a Python with llama-cpp-python[server]",
    ) else {
        return;
    };
    let Some(model) = gguf() else { return };
    const TRAIN: usize = 3;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let port = free_port();
    let _server = llama_cpp_python(&python, &model, port);
    let cfg = config(root, port, TRAIN);
    let out = malt(root).arg("generate").arg(&cfg).output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "generate failed:\n{err}");
    assert!(
        err.contains("treated as a generic OpenAI-compatible API"),
        "{err}"
    );
    // Every node asks for 2 choices and gets 1: one follow-up each (3 * 7 sibling groups).
    let follow_ups: usize = err
        .lines()
        .find_map(|l| {
            let (before, _) = l.split_once(" follow-ups for missing choices")?;
            before.rsplit(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no follow-up count in:\n{err}"));
    assert_eq!(follow_ups, TRAIN * 7, "{err}");
    check_trees(&root.join("run"), TRAIN, None);
}
