//! The remote sampler's protocol edge cases against a small scripted HTTP responder on
//! 127.0.0.1: retries (5xx, 429, refused connections, timeouts), follow-ups for missing
//! choices, refused requests, fatal statuses, the retry budget, concurrency limits and
//! spreading over endpoints. End-to-end runs against the real `malt serve` are in `remote.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use malt_remote::{Endpoint, Engine, EngineChoice, RemoteSampler, RemoteSettings, RetryPolicy};
use malt_tree::{Message, SampleRequest, Sampler, SamplingParams};
use serde_json::{json, Value};

/// What the responder saw.
#[derive(Debug, Clone)]
struct Seen {
    /// `GET /v1/models`, `POST /v1/chat/completions`, ...
    line: String,
    headers: Vec<(String, String)>,
    body: Value,
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    fn ok(body: Value) -> Reply {
        Reply {
            status: 200,
            headers: vec![],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
    fn status(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }
}

type Handler = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

/// A one-request-per-connection HTTP/1.1 server. `handler` gets the request and the number of
/// requests before it.
struct Responder {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    max_concurrent: Arc<AtomicUsize>,
}

impl Responder {
    fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::serve(listener, Arc::new(handler))
    }

    fn start_on(
        port: u16,
        handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static,
    ) -> Responder {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        Self::serve(listener, Arc::new(handler))
    }

    fn serve(listener: TcpListener, handler: Arc<Handler>) -> Responder {
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let max_concurrent = Arc::new(AtomicUsize::new(0));
        let current = Arc::new(AtomicUsize::new(0));
        let (s, m) = (seen.clone(), max_concurrent.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (handler, seen, max, cur) =
                    (handler.clone(), s.clone(), m.clone(), current.clone());
                std::thread::spawn(move || {
                    let busy = Busy {
                        start: &|| {
                            let now = cur.fetch_add(1, Ordering::SeqCst) + 1;
                            max.fetch_max(now, Ordering::SeqCst);
                        },
                        end: &|| {
                            cur.fetch_sub(1, Ordering::SeqCst);
                        },
                    };
                    let _ = handle(conn, &*handler, &seen, &busy);
                });
            }
        });
        Responder {
            port,
            seen,
            max_concurrent,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Marks the span in which the server counts a request as in flight: from its whole body read
/// to just before the reply is written. That span lies inside the client's own (the client sends
/// only once it holds a slot and frees the slot only after the reply), so the concurrency the
/// server sees can never exceed the client's limit because of scheduling: counting up to the end
/// of the handler thread did, under load, when the next request was accepted before that thread
/// ran again.
struct Busy<'a> {
    start: &'a dyn Fn(),
    end: &'a dyn Fn(),
}

fn handle(
    conn: TcpStream,
    handler: &Handler,
    seen: &Mutex<Vec<Seen>>,
    busy: &Busy,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let request_line = line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
            if k == "content-length" {
                len = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    (busy.start)();
    let req = Seen {
        line: request_line,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let index = {
        let mut s = seen.lock().unwrap();
        s.push(req.clone());
        s.len() - 1
    };
    let reply = handler(&req, index);
    std::thread::sleep(reply.delay);
    (busy.end)();
    let mut out = conn;
    let mut head = format!(
        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(reply.body.as_bytes())?;
    out.flush()
}

/// A reply with one choice per `malt_seeds` entry: `"<model>|<seed>"`.
fn echo(req: &Seen) -> Reply {
    let model = req.body["model"].as_str().unwrap_or("?").to_owned();
    let choices: Vec<Value> = req.body["malt_seeds"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"index": i, "message": {"role": "assistant", "content": format!("{model}|{s}")}, "finish_reason": "stop"}))
        .collect();
    Reply::ok(json!({ "choices": choices }))
}

/// An endpoint known to be `malt serve` (no engine probe).
fn ep(url: &str) -> Endpoint {
    let mut e = Endpoint::new(url);
    e.engine = EngineChoice::Fixed(Engine::Malt);
    e
}

fn params() -> SamplingParams {
    SamplingParams {
        temperature: 0.5,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: 8,
        stop: vec![],
    }
}

fn fast_retry(retries: u32) -> RetryPolicy {
    RetryPolicy {
        retries,
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_wait: Duration::from_secs(30),
    }
}

fn sampler(endpoints: Vec<Endpoint>, retry: RetryPolicy) -> RemoteSampler {
    RemoteSampler::new(RemoteSettings {
        endpoints,
        model: "base".into(),
        models: [("verifier".to_owned(), "verifier-lora".to_owned())].into(),
        retry,
        logprobs: false,
    })
    .unwrap()
}

/// `k` prompts (`q0`, `q1`, ...) with `n` seeds each: seeds 100*i + j.
struct Batch {
    messages: Vec<Vec<Message>>,
    seeds: Vec<Vec<u64>>,
    params: SamplingParams,
}

impl Batch {
    fn new(k: usize, n: usize) -> Batch {
        Batch {
            messages: (0..k)
                .map(|i| vec![Message::new("user", format!("q{i}"))])
                .collect(),
            seeds: (0..k)
                .map(|i| (0..n).map(|j| (100 * i + j) as u64).collect())
                .collect(),
            params: params(),
        }
    }
    fn requests<'a>(&'a self, agent: &'a str) -> Vec<SampleRequest<'a>> {
        self.messages
            .iter()
            .zip(&self.seeds)
            .map(|(m, s)| SampleRequest {
                agent,
                messages: m,
                params: &self.params,
                seeds: s,
            })
            .collect()
    }
}

#[test]
fn completions_land_by_seed_with_the_agents_model_and_the_key() {
    let server = Responder::start(|r, _| echo(r));
    let e = ep(&server.url()).with_api_key(Some("sk-test-123".into()));
    let mut s = sampler(vec![e], fast_retry(2));
    let b = Batch::new(3, 3);
    let out = s.sample(&b.requests("verifier")).unwrap();
    for (i, r) in out.iter().enumerate() {
        let texts = &texts_of(r);
        let want: Vec<String> = (0..3)
            .map(|j| format!("verifier-lora|{}", 100 * i + j))
            .collect();
        assert_eq!(texts, &want);
    }
    let out = s.sample(&b.requests("generator")).unwrap();
    assert_eq!(texts_of(&out[0])[0], "base|0");
    let seen = server.requests();
    assert_eq!(seen.len(), 6, "one request per prompt, n choices each");
    for r in &seen {
        assert!(r
            .headers
            .contains(&("authorization".into(), "Bearer sk-test-123".into())));
        assert_eq!(r.body["n"], 3);
        assert_eq!(r.body["seed"], r.body["malt_seeds"][0]);
    }
    assert!(!format!("{s:?}").contains("sk-test-123"));
}

#[test]
fn server_errors_and_rate_limits_are_retried() {
    let server = Responder::start(|r, i| match i {
        0 => Reply::status(500, r#"{"error":{"message":"boom"}}"#),
        1 => Reply {
            headers: vec![("retry-after", "0".into())],
            ..Reply::status(429, "slow down")
        },
        2 => Reply::status(503, "warming up"),
        _ => echo(r),
    });
    let mut s = sampler(vec![ep(&server.url())], fast_retry(5));
    let b = Batch::new(1, 2);
    let out = s.sample(&b.requests("generator")).unwrap();
    assert_eq!(
        &texts_of(&out[0]),
        &vec!["base|0".to_owned(), "base|1".to_owned()]
    );
    assert_eq!(s.stats.retries, 3);
    assert_eq!(s.stats.attempts, 4);
}

#[test]
fn retry_after_is_honoured() {
    let server = Responder::start(|r, i| match i {
        0 => Reply {
            headers: vec![("retry-after", "1".into())],
            ..Reply::status(429, "slow down")
        },
        _ => echo(r),
    });
    let mut s = sampler(vec![ep(&server.url())], fast_retry(2));
    let t = std::time::Instant::now();
    s.sample(&Batch::new(1, 1).requests("g")).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
}

/// A port nothing listens on (yet).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn refused_connections_are_retried_until_the_server_is_back() {
    let port = free_port();
    let mut s = sampler(
        vec![ep(&format!("http://127.0.0.1:{port}/v1"))],
        RetryPolicy {
            retries: 20,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            max_wait: Duration::from_secs(30),
        },
    );
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        Responder::start_on(port, |r, _| echo(r))
    });
    let b = Batch::new(4, 2);
    let out = s.sample(&b.requests("g")).unwrap();
    let server = starter.join().unwrap();
    assert!(out.iter().all(|r| r.as_ref().unwrap().len() == 2));
    assert!(s.stats.retries >= 1, "{:?}", s.stats);
    assert_eq!(
        server.requests().len(),
        4,
        "every request answered exactly once"
    );
}

#[test]
fn timeouts_exhaust_the_budget_into_an_error_naming_the_endpoint() {
    let server = Responder::start(|r, _| Reply {
        delay: Duration::from_millis(1500),
        ..echo(r)
    });
    let mut e = ep(&server.url());
    e.timeout = Duration::from_millis(200);
    let mut s = sampler(vec![e], fast_retry(2));
    let err = s.sample(&Batch::new(1, 1).requests("g")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{}/v1/chat/completions", server.url())),
        "{msg}"
    );
    assert!(msg.contains("after 3 attempts"), "{msg}");
    assert!(
        msg.to_lowercase().contains("timeout") || msg.contains("timed out"),
        "{msg}"
    );
}

#[test]
fn the_wait_budget_stops_retries_before_the_attempt_budget() {
    let server = Responder::start(|_, _| Reply::status(502, "bad gateway"));
    let mut s = sampler(
        vec![ep(&server.url())],
        RetryPolicy {
            retries: 100,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(100),
            max_wait: Duration::from_millis(300),
        },
    );
    let err = s
        .sample(&Batch::new(1, 1).requests("g"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("HTTP 502: bad gateway"), "{err}");
    assert!(server.requests().len() < 10, "{}", server.requests().len());
}

/// llama-cpp-python's server (and older llama.cpp builds) ignore `n` and return one choice,
/// seeded by `seed`.
#[test]
fn fewer_choices_than_n_get_follow_up_requests() {
    let server = Responder::start(|r, _| {
        assert!(r.body.get("malt_seeds").is_none());
        let seed = r.body["seed"].as_u64().unwrap();
        Reply::ok(json!({"choices": [{"index": 0, "message": {"content": format!("s{seed}")}}]}))
    });
    let mut e = Endpoint::new(&server.url());
    e.engine = EngineChoice::Fixed(Engine::Openai);
    let mut s = sampler(vec![e], fast_retry(1));
    let b = Batch::new(2, 3);
    let out = s.sample(&b.requests("g")).unwrap();
    assert_eq!(
        &texts_of(&out[1]),
        &vec!["s100".to_owned(), "s101".into(), "s102".into()]
    );
    assert_eq!(s.stats.follow_ups, 4);
    assert_eq!(server.requests().len(), 6);
    assert_eq!(s.stats.retries, 0);
}

#[test]
fn client_errors_fail_only_their_request() {
    let server = Responder::start(|r, _| {
        if r.body["messages"][0]["content"] == "q1" {
            Reply::status(400, r#"{"error":{"message":"prompt is too long"}}"#)
        } else {
            echo(r)
        }
    });
    let mut s = sampler(vec![ep(&server.url())], fast_retry(3));
    let out = s.sample(&Batch::new(3, 2).requests("g")).unwrap();
    assert!(out[0].is_ok() && out[2].is_ok());
    let e = out[1].as_ref().unwrap_err();
    assert!(e.contains("HTTP 400: prompt is too long"), "{e}");
    assert_eq!(s.stats.retries, 0);
}

#[test]
fn a_rejected_key_stops_the_batch_without_showing_the_key() {
    let server =
        Responder::start(|_, _| Reply::status(401, r#"{"error":{"message":"invalid api key"}}"#));
    let e = ep(&server.url()).with_api_key(Some("sk-secret-999".into()));
    let mut s = sampler(vec![e], fast_retry(5));
    let err = s
        .sample(&Batch::new(2, 1).requests("g"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HTTP 401: invalid api key") && err.contains("api_key_env"),
        "{err}"
    );
    assert!(!err.contains("sk-secret-999"));
    assert!(server.requests().len() <= 2, "not retried");
}

#[test]
fn concurrency_is_limited_per_endpoint_and_work_spreads() {
    let slow = |r: &Seen, _| Reply {
        delay: Duration::from_millis(150),
        ..echo(r)
    };
    let (a, b) = (Responder::start(slow), Responder::start(slow));
    let mut ea = ep(&a.url());
    ea.max_concurrency = 2;
    let mut eb = ep(&b.url());
    eb.max_concurrency = 3;
    let mut s = sampler(vec![ea, eb], fast_retry(0));
    let batch = Batch::new(10, 2);
    let out = s.sample(&batch.requests("g")).unwrap();
    assert!(out.iter().all(Result::is_ok));
    assert!(a.max_concurrent.load(Ordering::SeqCst) <= 2);
    assert!(b.max_concurrent.load(Ordering::SeqCst) <= 3);
    let (na, nb) = (a.requests().len(), b.requests().len());
    assert_eq!(na + nb, 10);
    assert!(na >= 2 && nb >= 3, "{na} {nb}");
}

#[test]
fn a_dead_endpoint_is_bypassed() {
    let live = Responder::start(|r, _| echo(r));
    let dead = ep(&format!("http://127.0.0.1:{}", free_port()));
    let mut s = sampler(vec![dead, ep(&live.url())], fast_retry(3));
    for _ in 0..3 {
        let out = s.sample(&Batch::new(4, 2).requests("g")).unwrap();
        assert!(out.iter().all(Result::is_ok));
    }
    assert_eq!(live.requests().len(), 12);
}

/// A server whose model list says vLLM: the engine is identified once, before the first
/// completion, and a node's choices are asked one per request with the choice's own seed
/// (vLLM has no per-choice seeds) and vLLM's defaults pinned.
#[test]
fn an_auto_endpoint_is_identified_and_asked_one_choice_per_request() {
    let server = Responder::start(|r, _| {
        if r.line == "GET /v1/models" {
            return Reply::ok(
                json!({"object": "list", "data": [{"id": "base", "object": "model", "owned_by": "vllm"}]}),
            );
        }
        assert!(r.body.get("malt_seeds").is_none(), "{}", r.body);
        assert_eq!(r.body["n"], 1);
        assert_eq!(
            (r.body["top_k"].clone(), r.body["min_p"].clone()),
            (json!(-1), json!(0.0))
        );
        let seed = r.body["seed"].as_u64().unwrap();
        Reply::ok(json!({"choices": [{"index": 0, "message": {"content": format!("s{seed}")}}]}))
    });
    let mut s = sampler(vec![Endpoint::new(&server.url())], fast_retry(1));
    let reports = s.resolve_engines(false).unwrap();
    assert_eq!(reports[0].engine, Engine::Vllm);
    assert!(reports[0].caveats.iter().any(|c| c.contains("malt_seeds")));
    let b = Batch::new(2, 3);
    let out = s.sample(&b.requests("g")).unwrap();
    assert_eq!(
        &texts_of(&out[1]),
        &vec!["s100".to_owned(), "s101".into(), "s102".into()]
    );
    let seen = server.requests();
    assert_eq!(
        seen.iter().filter(|r| r.line == "GET /v1/models").count(),
        1
    );
    assert_eq!(seen.len(), 1 + 6, "one probe, then one request per choice");
    assert_eq!(s.stats.follow_ups, 0);
}

/// llama-server refuses `n` beyond its `--parallel` slots with a 400: a generic endpoint then
/// asks one choice per request instead of erroring the nodes.
#[test]
fn a_refused_multi_choice_request_is_asked_one_choice_at_a_time() {
    let server = Responder::start(|r, _| {
        if r.body["n"].as_u64() != Some(1) {
            return Reply::status(
                400,
                r#"{"error":{"code":400,"message":"Field 'n': Value must be between 1 <= value <= 1, but got 3","type":"invalid_request_error"}}"#,
            );
        }
        let seed = r.body["seed"].as_u64().unwrap();
        Reply::ok(json!({"choices": [{"index": 0, "message": {"content": format!("s{seed}")}}]}))
    });
    let mut e = Endpoint::new(&server.url());
    e.engine = EngineChoice::Fixed(Engine::Openai);
    let mut s = sampler(vec![e], fast_retry(1));
    let out = s.sample(&Batch::new(2, 3).requests("g")).unwrap();
    assert_eq!(
        &texts_of(&out[0]),
        &vec!["s0".to_owned(), "s1".into(), "s2".into()]
    );
    assert_eq!(s.stats.refused, 0);
    assert_eq!(server.requests().len(), 2 + 6);
}

/// An endpoint whose model list names no known engine is used as a generic OpenAI API, and a
/// refused key while identifying it stops the run with a pointer to `api_key_env`.
#[test]
fn unknown_and_unauthorised_model_lists() {
    let server = Responder::start(|r, _| {
        if r.line == "GET /v1/models" {
            return Reply::ok(json!({"data": [{"id": "gpt-x", "owned_by": "someone"}]}));
        }
        echo(r)
    });
    let mut s = sampler(vec![Endpoint::new(&server.url())], fast_retry(1));
    let r = s.resolve_engines(true).unwrap();
    assert_eq!(r[0].engine, Engine::Openai);
    assert!(r[0].source.contains("someone"), "{}", r[0].source);
    assert!(r[0].caveats.iter().any(|c| c.contains("top_k")));

    let locked = Responder::start(|_, _| Reply::status(401, r#"{"error":{"message":"no key"}}"#));
    let mut s = sampler(vec![Endpoint::new(&locked.url())], fast_retry(3));
    let e = s.resolve_engines(false).unwrap_err().to_string();
    assert!(e.contains("HTTP 401") && e.contains("api_key_env"), "{e}");
    assert_eq!(locked.requests().len(), 1);
}

/// The texts of one request's completions.
fn texts_of(r: &malt_tree::RequestResult) -> Vec<String> {
    r.as_ref()
        .expect("the request succeeded")
        .iter()
        .map(|c| c.text.clone())
        .collect()
}

/// A scripted vLLM (or SGLang, by `owned_by`) with runtime LoRA loading: it keeps the set of
/// loaded names, refuses a path outside `/srv/run`, and answers completions with the model name
/// and one log-prob per token.
fn lora_engine(owner: &'static str) -> Responder {
    let loaded = Arc::new(Mutex::new(vec!["base".to_owned()]));
    Responder::start(move |r, _| {
        let mut loaded = loaded.lock().unwrap();
        let name = r.body["lora_name"].as_str().unwrap_or_default().to_owned();
        let path = r.line.split_whitespace().nth(1).unwrap_or_default();
        match (r.line.split(' ').next().unwrap(), path) {
            ("GET", "/v1/models") => {
                let data: Vec<Value> = loaded
                    .iter()
                    .map(|id| json!({"id": id, "object": "model", "owned_by": owner}))
                    .collect();
                Reply::ok(json!({"object": "list", "data": data}))
            }
            ("POST", "/v1/load_lora_adapter" | "/load_lora_adapter") => {
                let p = r.body["lora_path"].as_str().unwrap_or_default();
                if !p.starts_with("/srv/run/") {
                    return Reply::status(
                        404,
                        &format!(r#"{{"error":{{"message":"No adapter found for {p}"}}}}"#),
                    );
                }
                loaded.push(name);
                Reply::ok(json!("Success"))
            }
            ("POST", "/v1/unload_lora_adapter" | "/unload_lora_adapter") => {
                loaded.retain(|n| n != &name);
                Reply::ok(json!("Success"))
            }
            ("POST", "/reset_prefix_cache" | "/flush_cache") => Reply::ok(json!({})),
            ("POST", "/v1/chat/completions") => {
                let model = r.body["model"].as_str().unwrap().to_owned();
                if !loaded.contains(&model) {
                    return Reply::status(404, r#"{"error":{"message":"no such model"}}"#);
                }
                Reply::ok(
                    json!({"choices": [{"index": 0, "message": {"content": model},
                    "logprobs": {"content": [{"token": "token_id:7", "logprob": -0.25}]}}]}),
                )
            }
            _ => Reply::status(404, "{}"),
        }
    })
}

fn version(agent: &str, step: u32) -> malt_remote::AdapterVersion {
    let in_run = std::path::PathBuf::from(format!("online/checkpoints/step-{step}/{agent}"));
    malt_remote::AdapterVersion {
        agent: agent.into(),
        name: format!("{agent}-v{step}"),
        local: std::path::Path::new("/local/run").join(&in_run),
        in_run,
    }
}

/// The swap as vLLM and SGLang take it: each engine's load route with the path under the
/// endpoint's `adapter_root`, its prefix-cache reset, the agent's requests on the new name,
/// the replaced version unloaded, log-probs asked for and read back; a path the server cannot
/// read is an error naming the endpoint, the path and what to set, and changes nothing.
#[test]
fn adapter_versions_are_swapped_into_vllm_and_sglang() {
    for (owner, load, reset) in [
        (
            "vllm",
            "POST /v1/load_lora_adapter",
            "POST /reset_prefix_cache",
        ),
        ("sglang", "POST /load_lora_adapter", "POST /flush_cache"),
    ] {
        let server = lora_engine(owner);
        let mut e = Endpoint::new(&server.url());
        e.adapter_root = Some("/srv/run".into());
        let mut s = RemoteSampler::new(RemoteSettings {
            endpoints: vec![e],
            model: "base".into(),
            models: Default::default(),
            retry: fast_retry(1),
            logprobs: true,
        })
        .unwrap();
        let b = Batch::new(1, 1);
        s.swap_adapters(&[version("generator", 1)]).unwrap();
        let out = s.sample(&b.requests("generator")).unwrap();
        let c = &out[0].as_ref().unwrap()[0];
        assert_eq!(c.text, "generator-v1", "{owner}");
        assert_eq!(c.logprobs, Some(vec![-0.25]), "{owner}");
        s.swap_adapters(&[version("generator", 2)]).unwrap();
        assert_eq!(
            texts_of(&s.sample(&b.requests("generator")).unwrap()[0]),
            ["generator-v2"]
        );
        // Frozen agents keep the base model.
        assert_eq!(
            texts_of(&s.sample(&b.requests("refiner")).unwrap()[0]),
            ["base"]
        );
        let seen = server.requests();
        let loads: Vec<&Seen> = seen.iter().filter(|r| r.line == load).collect();
        assert_eq!(loads.len(), 2, "{owner}");
        assert_eq!(
            loads[1].body,
            json!({"lora_name": "generator-v2",
                   "lora_path": "/srv/run/online/checkpoints/step-2/generator"}),
            "{owner}"
        );
        assert_eq!(
            seen.iter().filter(|r| r.line == reset).count(),
            2,
            "{owner}"
        );
        let unloads: Vec<&Value> = seen
            .iter()
            .filter(|r| r.line.contains("unload_lora_adapter"))
            .map(|r| &r.body["lora_name"])
            .collect();
        assert_eq!(unloads, [&json!("generator-v1")], "{owner}");
        for r in seen
            .iter()
            .filter(|r| r.line == "POST /v1/chat/completions")
        {
            assert_eq!(r.body["logprobs"], true, "{owner}");
        }

        // A path the server cannot read: the run's error says where and what to do; the
        // agent stays on the version it had.
        let mut bad = version("generator", 3);
        bad.in_run = "../elsewhere/generator".into();
        let mut e = Endpoint::new(&server.url());
        e.adapter_root = Some("/mnt".into());
        let mut other = RemoteSampler::new(RemoteSettings {
            endpoints: vec![e],
            model: "base".into(),
            models: [("generator".to_owned(), "generator-v2".to_owned())].into(),
            retry: fast_retry(1),
            logprobs: true,
        })
        .unwrap();
        let err = other.swap_adapters(&[bad]).unwrap_err().0;
        assert!(
            err.contains(&server.url())
                && err.contains("/mnt/../elsewhere/generator")
                && err.contains("HTTP 404")
                && err.contains("adapter_root")
                && err.contains("keeps serving the previous version"),
            "{err}"
        );
        assert_eq!(
            texts_of(&other.sample(&b.requests("generator")).unwrap()[0]),
            ["generator-v2"]
        );
        s.release_adapters();
        let last = server.requests().pop().unwrap();
        assert!(last.line.contains("unload_lora_adapter"), "{owner}");
        assert_eq!(last.body["lora_name"], "generator-v2", "{owner}");
    }
}

/// Engines that cannot load adapters at run time are named when a version is to be served.
#[test]
fn llama_cpp_cannot_serve_trained_adapters() {
    let server = Responder::start(|_, _| Reply::status(500, "{}"));
    let mut e = Endpoint::new(&server.url());
    e.engine = EngineChoice::Fixed(Engine::LlamaCpp);
    let mut s = sampler(vec![e], fast_retry(0));
    let err = s.swap_adapters(&[version("generator", 1)]).unwrap_err().0;
    assert!(
        err.contains("llama.cpp cannot load LoRA adapters at run time")
            && err.contains(&server.url()),
        "{err}"
    );
    assert!(server.requests().is_empty());
}
