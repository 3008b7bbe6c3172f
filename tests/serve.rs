//! `malt serve`: the real server on 127.0.0.1 over a tiny random model the test writes (plus a
//! tiny PEFT adapter under a run directory, so an agent model exists), in-process and as the
//! `malt` binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod serve_support;

use malt_engine::serve_backend::Batching;
use malt_engine::ModelSampler;
use malt_serve::Limits;
use serde_json::{json, Value};
use serve_support::*;

#[test]
fn models_and_a_completion_with_n() {
    let f = start(Limits::default(), Batching::Continuous);
    let (s, models) = get(&format!("{}/v1/models", f.url));
    assert_eq!(s, 200);
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tiny", "generator"]);
    assert_eq!(models["data"][1]["parent"], "tiny");
    let (s, h) = get(&format!("{}/health", f.url));
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")));

    let (s, v) = chat(&f.url, request("base", 3, 1));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "base");
    let t = texts(&v);
    assert_eq!(t.len(), 3);
    assert!(t.iter().all(|x| !x.is_empty()));
    assert!(
        t[0] != t[1] || t[1] != t[2],
        "three samples all equal: {t:?}"
    );
    for (i, c) in v["choices"].as_array().unwrap().iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["finish_reason"], "length");
        assert_eq!(c["message"]["role"], "assistant");
    }
    let usage = &v["usage"];
    assert_eq!(usage["completion_tokens"], 36);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + 36
    );
    assert_eq!(v["malt_seeds"].as_array().unwrap().len(), 3);
}

#[test]
fn seeds_reproduce_and_malt_seeds_match_the_embedded_sampler() {
    let f = start(Limits::default(), Batching::Continuous);
    let (_, a) = chat(&f.url, request("tiny", 3, 42));
    let (_, b) = chat(&f.url, request("tiny", 3, 42));
    let (_, c) = chat(&f.url, request("tiny", 3, 43));
    assert_eq!(texts(&a), texts(&b));
    assert_ne!(texts(&a), texts(&c));
    // The seeds a response reports reproduce it.
    let mut again = request("tiny", 3, 0);
    again["malt_seeds"] = a["malt_seeds"].clone();
    assert_eq!(texts(&chat(&f.url, again).1), texts(&a));

    // Choice j with malt_seeds[j] is what ModelSampler gives that seed, base and adapter.
    let (model, adapter) = load(&f.model_dir, &f.run_dir);
    let seeds = [7u64, 1 << 40, 12345];
    let mut sampler = ModelSampler::new(&model).with_adapter("generator", adapter);
    for agent in ["base-agent", "generator"] {
        let expected = embedded(&mut sampler, agent, 0.95, 5, &seeds);
        let served = if agent == "generator" {
            "generator"
        } else {
            "base"
        };
        let mut body = request(served, 3, 0);
        body["malt_seeds"] = json!(seeds);
        body["top_k"] = json!(5);
        let (s, v) = chat(&f.url, body);
        assert_eq!(s, 200, "{v}");
        let want: Vec<String> = expected.iter().map(|c| c.text.clone()).collect();
        assert_eq!(texts(&v), want, "model {served}");
        // The sampled ids come back too (the remote backend trains on them), the same ones.
        for (c, e) in v["choices"].as_array().unwrap().iter().zip(&expected) {
            let ids: Vec<u32> = serde_json::from_value(c["token_ids"].clone()).expect("token_ids");
            assert_eq!(Some(ids), e.token_ids, "model {served}");
            assert!(c["malt_finish"].is_string(), "{c}");
        }
    }
}

#[test]
fn the_adapter_answers_differently_from_the_base() {
    let f = start(Limits::default(), Batching::Continuous);
    let greedy = |model: &str| {
        let mut body = request(model, 1, 0);
        body["temperature"] = json!(0.0);
        let (s, v) = chat(&f.url, body);
        assert_eq!(s, 200, "{v}");
        texts(&v)
    };
    let base = greedy("base");
    assert_eq!(base, greedy("tiny"));
    assert_ne!(base, greedy("generator"));
}

/// Reads an SSE response: per choice the concatenated content, the finish reasons, whether
/// `[DONE]` ended it and the usage chunk.
fn read_stream(url: &str, body: &Value) -> (Vec<String>, Vec<String>, bool, Option<Value>) {
    let resp = agent()
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let reader = BufReader::new(resp.into_body().into_reader());
    let mut content = vec![String::new(); 8];
    let mut finish = vec![String::new(); 8];
    let (mut done, mut usage) = (false, None);
    for line in reader.lines() {
        let line = line.expect("line");
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        assert!(!done, "event after [DONE]");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).expect("chunk JSON");
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        if !v["usage"].is_null() {
            usage = Some(v["usage"].clone());
        }
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            if let Some(t) = c["delta"]["content"].as_str() {
                content[i].push_str(t);
            }
            if let Some(r) = c["finish_reason"].as_str() {
                finish[i] = r.to_owned();
            }
        }
    }
    (content, finish, done, usage)
}

#[test]
fn streamed_deltas_concatenate_to_the_non_streamed_text() {
    let f = start(Limits::default(), Batching::Continuous);
    for stop in [json!(null), json!("t4")] {
        let mut body = request("generator", 2, 9);
        body["max_tokens"] = json!(24);
        body["stop"] = stop.clone();
        let (s, plain) = chat(&f.url, body.clone());
        assert_eq!(s, 200, "{plain}");
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let (content, finish, done, usage) =
            read_stream(&format!("{}/v1/chat/completions", f.url), &body);
        assert!(done, "no [DONE]");
        assert_eq!(content[..2].to_vec(), texts(&plain), "stop = {stop}");
        for i in 0..2 {
            assert_eq!(
                finish[i],
                plain["choices"][i]["finish_reason"].as_str().unwrap()
            );
        }
        assert_eq!(usage.expect("usage chunk"), plain["usage"]);
    }
}

#[test]
fn bad_requests_get_a_clear_4xx_and_the_server_keeps_serving() {
    let limits = Limits {
        max_body_bytes: 4096,
        max_n: 4,
        max_tokens: 64,
        ..Limits::default()
    };
    let f = start(limits, Batching::Continuous);
    let chat_url = format!("{}/v1/chat/completions", f.url);
    let long_prompt = vec!["t9"; 300].join(" ");
    let cases: Vec<(&str, String, u16, &str, Option<&str>)> = vec![
        ("malformed JSON", "{\"model\": \"tiny\", ".into(), 400, "invalid_request_error", Some("invalid_json")),
        ("unknown model", request("gpt-9", 1, 0).to_string(), 404, "not_found_error", Some("model_not_found")),
        ("huge n", request("tiny", 1000, 0).to_string(), 400, "invalid_request_error", None),
        (
            "prompt over the context",
            json!({"model": "tiny", "messages": [{"role": "user", "content": long_prompt}], "max_tokens": 8}).to_string(),
            400, "invalid_request_error", Some("context_length_exceeded"),
        ),
        ("body too large", format!("{{\"model\": \"tiny\", \"pad\": \"{}\"}}", "x".repeat(8000)), 413, "invalid_request_error", Some("request_too_large")),
        ("max_tokens over the limit", json!({"model": "tiny", "messages": [{"role": "user", "content": "t1"}], "max_tokens": 100000}).to_string(), 400, "invalid_request_error", None),
        ("malt_seeds length", json!({"model": "tiny", "n": 2, "malt_seeds": [1], "messages": [{"role": "user", "content": "t1"}]}).to_string(), 400, "invalid_request_error", None),
        ("no messages", json!({"model": "tiny", "messages": []}).to_string(), 400, "invalid_request_error", None),
        ("wrong role", json!({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}).to_string(), 400, "invalid_request_error", None),
        ("n not a number", json!({"model": "tiny", "n": "three", "messages": [{"role": "user", "content": "x"}]}).to_string(), 400, "invalid_request_error", None),
    ];
    for (what, body, status, kind, code) in cases {
        let (s, v, _) = post(&chat_url, &body);
        assert_eq!(s, status, "{what}: {v}");
        let e = &v["error"];
        assert_eq!(e["type"], kind, "{what}: {v}");
        assert!(
            e["message"].as_str().is_some_and(|m| m.len() > 10),
            "{what}: {v}"
        );
        if let Some(code) = code {
            assert_eq!(e["code"], code, "{what}: {v}");
        }
        // The server keeps serving: a good request right after succeeds.
        let (s, ok) = chat(&f.url, request("tiny", 2, 1));
        assert_eq!(s, 200, "after {what}: {ok}");
        assert_eq!(texts(&ok).len(), 2);
    }
    // Messages name the limit or the field.
    let (_, v, _) = post(&chat_url, &request("tiny", 1000, 0).to_string());
    assert_eq!(v["error"]["param"], "n");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("max_n"),
        "{v}"
    );
    let (_, v, _) = post(
        &chat_url,
        &json!({"model": "tiny", "messages": [{"role": "user", "content": vec!["t9"; 300].join(" ")}]}).to_string(),
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&CONTEXT.to_string()),
        "{v}"
    );
    let (_, v, _) = post(&chat_url, &request("gpt-9", 1, 0).to_string());
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("generator"),
        "{v}"
    );

    // Wrong method, unknown path, chain without a config.
    let resp = agent().get(&chat_url).call().expect("request");
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(
        resp.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let (s, v) = get(&format!("{}/v2/nothing", f.url));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("unknown_path"))
    );
    let (s, v, _) = post(
        &format!("{}/v1/malt/chain", f.url),
        "{\"question\": \"1+1\"}",
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("chain_unavailable"))
    );
    let (s, _) = chat(&f.url, request("generator", 1, 1));
    assert_eq!(s, 200);
}

#[test]
fn a_full_queue_gets_429_with_retry_after() {
    let limits = Limits {
        max_queue: 1,
        max_tokens: 4096,
        max_n: 16,
        ..Limits::default()
    };
    let f = start(limits, Batching::Continuous);
    // The tiny model's context is 256 tokens; a long request is many of them in parallel.
    let mut long = request("tiny", 16, 5);
    long["max_tokens"] = json!(200);
    long["messages"] = json!([{"role": "user", "content": "t1"}]);
    let url = f.url.clone();
    let body = long.clone();
    let slow = std::thread::spawn(move || chat(&url, body));
    let mut saw_429 = false;
    for _ in 0..200 {
        let (_, h) = get(&format!("{}/health", f.url));
        if h["in_flight"] == 1 {
            let (s, v, retry) = post(
                &format!("{}/v1/chat/completions", f.url),
                &request("tiny", 1, 1).to_string(),
            );
            if s == 429 {
                assert_eq!(v["error"]["code"], "queue_full", "{v}");
                assert_eq!(retry.as_deref(), Some("1"));
                saw_429 = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (s, v) = slow.join().expect("slow request");
    assert!(saw_429, "never saw 429 while a request was in flight");
    assert_eq!(s, 200, "{v}");
    let (s, _) = chat(&f.url, request("tiny", 1, 1));
    assert_eq!(s, 200);
}

#[test]
fn concurrent_requests_in_a_batch_match_requests_served_alone() {
    for batching in [Batching::Waiting, Batching::Continuous] {
        concurrent_requests_match(batching);
    }
}

/// Batched decoding pads and masks shorter prompts (and, continuously batched, joins a batch
/// mid-decode); each request must still get what it gets when served alone.
fn concurrent_requests_match(batching: Batching) {
    let batched = start(Limits::default(), batching);
    let alone = start_like(&batched, Limits::default(), Batching::Off);
    let bodies: Vec<Value> = (0..4)
        .map(|i| {
            let mut b = request("tiny", 2, 100 + i);
            b["messages"] =
                json!([{"role": "user", "content": vec!["t8"; 1 + 3 * i as usize].join(" ")}]);
            b
        })
        .collect();
    let expected: Vec<Vec<String>> = bodies
        .iter()
        .map(|b| texts(&chat(&alone.url, b.clone()).1))
        .collect();
    // Occupy the engine so that the four requests queue up and decode together.
    let mut long = request("tiny", 16, 5);
    long["max_tokens"] = json!(200);
    let url = batched.url.clone();
    let busy = std::thread::spawn(move || chat(&url, long).0);
    std::thread::sleep(Duration::from_millis(50));
    let url = batched.url.clone();
    let handles: Vec<_> = bodies
        .into_iter()
        .map(|b| {
            let url = url.clone();
            std::thread::spawn(move || texts(&chat(&url, b).1))
        })
        .collect();
    let got: Vec<Vec<String>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(busy.join().unwrap(), 200);
    assert_eq!(got, expected);
    let (_, h) = get(&format!("{}/health", batched.url));
    let largest = h["engine"]["largest_batch"].as_u64().unwrap();
    assert!(largest >= 2, "the requests were not batched: {h}");
    if batching == Batching::Continuous {
        let joined = h["engine"]["joined_running"].as_u64().unwrap();
        assert!(joined >= 1, "no request joined the running batch: {h}");
    }
}

#[test]
fn a_request_past_its_deadline_gets_503_timeout() {
    let limits = Limits {
        request_timeout: Duration::from_millis(1),
        ..Limits::default()
    };
    let f = start(limits, Batching::Continuous);
    for stream in [false, true] {
        let mut body = request("tiny", 4, 1);
        body["max_tokens"] = json!(200);
        if stream {
            // A streamed request has already sent its 200 head: the error is an SSE event.
            body["stream"] = json!(true);
            let resp = agent()
                .post(&format!("{}/v1/chat/completions", f.url))
                .send(body.to_string())
                .expect("request");
            let text = resp.into_body().read_to_string().expect("body");
            assert!(text.contains("\"code\":\"timeout\""), "{text}");
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        } else {
            let (s, v) = chat(&f.url, body);
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (503, Some("timeout")),
                "{v}"
            );
        }
    }
    let (s, _) = get(&format!("{}/health", f.url));
    assert_eq!(s, 200);
}

/// The `malt serve` binary as a child process, killed on drop.
struct Child_(Child);

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `malt serve ARGS --addr 127.0.0.1:0` and returns it with its base URL.
fn spawn_serve(args: &[&str]) -> (Child_, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_malt"))
        .arg("serve")
        .args(args)
        .args(["--addr", "127.0.0.1:0"])
        .env("MALT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn malt serve");
    let stdout = child.stdout.take().expect("stdout");
    let child = Child_(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    // Building the arith plugin on a cold cache takes a while.
    let url = rx
        .recv_timeout(Duration::from_secs(600))
        .expect("malt serve printed no `listening on` line");
    (child, url)
}

#[test]
fn the_malt_serve_binary_serves_a_config_and_runs_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (model_dir, run_dir) = write_fixture(dir.path());
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[run]
dir = "{run}"

[model]
source = "{model}"

[dataset]
plugin = "arith"
generate = {{ seed = 1, count = 10 }}
train = 2
test = 2

[plugins.arith]

[[agents]]
name = "generator"
max_new_tokens = 8

[[agents]]
name = "verifier"
max_new_tokens = 8

[[agents]]
name = "refiner"
max_new_tokens = 8

[eval]
majority_k = 3
"#,
            run = run_dir.display(),
            model = model_dir.display()
        ),
    )
    .expect("config");
    let (_child, url) = spawn_serve(&[config.to_str().unwrap()]);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (s, models) = get(&format!("{url}/v1/models"));
    assert_eq!(s, 200);
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [model_dir.to_str().unwrap(), "generator"]);
    let (s, v) = chat(&url, request("generator", 2, 3));
    assert_eq!((s, texts(&v).len()), (200, 2), "{v}");

    let chain_url = format!("{url}/v1/malt/chain");
    let (s, v, _) = post(
        &chain_url,
        &json!({"question": "What is 2 + 3?", "seed": 1}).to_string(),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["system"], "trained-chain");
    assert_eq!(v["k"], 3);
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    for a in attempts {
        let agents: Vec<&str> = a["turns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["agent"].as_str().unwrap())
            .collect();
        assert_eq!(agents, ["generator", "verifier", "refiner"], "{a}");
        assert_eq!(a["turns"][0]["adapter"], true);
        assert_eq!(a["turns"][1]["adapter"], false);
    }
    assert!(v["correct"].is_null());
    // Same seed, same answer; a record carries its gold answer.
    let (_, again, _) = post(
        &chain_url,
        &json!({"question": "What is 2 + 3?", "seed": 1}).to_string(),
    );
    assert_eq!(again["attempts"], v["attempts"]);
    let (s, v, _) = post(
        &chain_url,
        &json!({"record": {"question": "What is 2 + 3?", "answer": "5"}, "k": 2}).to_string(),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["gold"].as_str(), v["k"].as_u64()), (Some("5"), Some(2)));
    assert!(v["correct"].is_boolean());
    let (s, v, _) = post(&chain_url, &json!({"record": {"nothing": 1}}).to_string());
    assert_eq!(s, 400, "{v}");
    let (s, v, _) = post(
        &chain_url,
        &json!({"question": "1+1", "k": 100}).to_string(),
    );
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("k")));
    let (s, _) = get(&format!("{url}/health"));
    assert_eq!(s, 200);
}

#[test]
fn malt_serve_refuses_a_public_address_without_allow_remote() {
    let out = Command::new(env!("CARGO_BIN_EXE_malt"))
        .args([
            "serve",
            "--model",
            "/nonexistent-model",
            "--addr",
            "0.0.0.0:0",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-remote"), "{err}");
}
