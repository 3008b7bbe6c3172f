//! `malt serve` under real clients, over loopback sockets: many keep-alive connections at once,
//! pipelined and streamed requests on one connection, slow senders, bearer-token
//! authentication, and requests joining a decode batch that is already running.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use malt_engine::serve_backend::Batching;
use malt_model::candle_core::Device;
use malt_model::{Model, ModelConfig};
use malt_serve::{Limits, Server};
use serde_json::{json, Value};

mod serve_support;

struct Fixture {
    _dir: tempfile::TempDir,
    server: Server,
}

impl Fixture {
    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
}

/// A tiny random model (exported and loaded back, for its tokenizer and chat template) behind
/// a server with `limits`.
fn start(limits: Limits, batching: Batching) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = ModelConfig {
        max_position_embeddings: 512,
        ..ModelConfig::llama(96, 64, 128, 2, 4, 2)
    };
    let path = dir.path().join("model");
    Model::random(cfg, &Device::Cpu)
        .expect("random model")
        .export_merged(&path, None)
        .expect("export");
    let model = Model::load_hf_dir(&path, &Device::Cpu, None).expect("load");
    let server = serve_support::server_over(model, vec![], limits, batching);
    Fixture { _dir: dir, server }
}

/// One HTTP response read off a kept-alive connection.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

/// A client holding one connection for all its requests.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    fn send(&mut self, method: &str, path: &str, body: Option<&Value>, extra: &str) {
        let body = body.map(Value::to_string).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        );
        self.writer.write_all(req.as_bytes()).expect("send");
    }

    /// Reads one response: `Content-Length` bodies, or a chunked stream to its last chunk.
    fn read(&mut self) -> Response {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("no status in {line:?}"))
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("header");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').expect("header line");
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let body = if get("transfer-encoding").as_deref() == Some("chunked") {
            let mut out = Vec::new();
            loop {
                line.clear();
                self.reader.read_line(&mut line).expect("chunk size");
                let n = usize::from_str_radix(line.trim(), 16).expect("hex size");
                let mut chunk = vec![0u8; n + 2];
                self.reader.read_exact(&mut chunk).expect("chunk");
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
            String::from_utf8(out).unwrap()
        } else {
            let n: usize = get("content-length").expect("length").parse().unwrap();
            let mut b = vec![0u8; n];
            self.reader.read_exact(&mut b).expect("body");
            String::from_utf8(b).unwrap()
        };
        Response {
            status,
            headers,
            body,
        }
    }

    fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> Response {
        self.send(method, path, body, "");
        self.read()
    }
}

fn chat_body(i: usize, n: usize, max_tokens: usize) -> Value {
    json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": format!("t{} t{}", 3 + i % 7, 10 + i % 5)}],
        "n": n, "seed": i, "temperature": 0.9, "max_tokens": max_tokens,
    })
}

/// 16 clients each keep one connection open for 6 requests (completions, streamed completions
/// and GETs, some pipelined): every request is answered on its own connection, none stalls, and
/// the whole load is bounded in time.
#[test]
fn sixteen_keep_alive_clients_are_served_without_stalls() {
    let f = start(Limits::default(), Batching::Continuous);
    let addr = f.addr();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..16)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut slowest = Duration::ZERO;
                let mut timed =
                    |client: &mut Client, method: &str, path: &str, body: Option<Value>| {
                        let t = Instant::now();
                        let r = client.call(method, path, body.as_ref());
                        slowest = slowest.max(t.elapsed());
                        r
                    };
                for k in 0..3 {
                    let r = timed(
                        &mut client,
                        "POST",
                        "/v1/chat/completions",
                        Some(chat_body(c * 10 + k, 2, 8)),
                    );
                    assert_eq!(r.status, 200, "{}", r.body);
                    assert_eq!(r.header("connection"), Some("keep-alive"));
                    assert_eq!(r.json()["choices"].as_array().unwrap().len(), 2);
                }
                let r = timed(&mut client, "GET", "/v1/models", None);
                assert_eq!(r.status, 200);
                let mut streamed = chat_body(c, 1, 6);
                streamed["stream"] = json!(true);
                let r = timed(&mut client, "POST", "/v1/chat/completions", Some(streamed));
                assert_eq!(r.status, 200);
                assert!(r.body.ends_with("data: [DONE]\n\n"), "{}", r.body);
                // Two requests written back to back before reading either (pipelining).
                client.send("GET", "/health", None, "");
                client.send(
                    "POST",
                    "/v1/chat/completions",
                    Some(&chat_body(c, 1, 4)),
                    "",
                );
                assert_eq!(client.read().status, 200);
                assert_eq!(client.read().status, 200);
                slowest
            })
        })
        .collect();
    let slowest = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .max()
        .unwrap();
    let total = t0.elapsed();
    assert!(
        slowest < Duration::from_secs(30) && total < Duration::from_secs(60),
        "slowest request {slowest:?}, all {total:?}"
    );
}

/// A client that sends half a request and stalls gets 408 after the read timeout and its
/// connection is closed; others are served meanwhile. An idle keep-alive connection is closed
/// after `keep_alive`.
#[test]
fn slow_senders_time_out_without_blocking_others() {
    let limits = Limits {
        read_timeout: Duration::from_millis(400),
        keep_alive: Duration::from_millis(600),
        ..Limits::default()
    };
    let f = start(limits, Batching::Continuous);
    let mut slow = TcpStream::connect(f.addr()).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 500\r\n\r\n{\"mod")
        .unwrap();
    let t = Instant::now();
    let mut other = Client::connect(f.addr());
    let r = other.call("GET", "/health", None);
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "blocked by the slow sender"
    );
    let mut reply = String::new();
    slow.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("read_timeout_s"), "{reply}");
    assert!(
        t.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t.elapsed()
    );

    // The kept-alive connection of `other` is closed once idle for longer than keep_alive.
    std::thread::sleep(Duration::from_millis(900));
    let mut rest = Vec::new();
    let n = other.reader.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "the idle connection was not closed");
}

/// With an API key every endpoint but `/health` needs `Authorization: Bearer <key>`.
#[test]
fn bearer_tokens_are_required_when_a_key_is_set() {
    let limits = Limits {
        api_key: Some("sk-serve-test".into()),
        ..Limits::default()
    };
    let f = start(limits, Batching::Continuous);
    let mut c = Client::connect(f.addr());
    let r = c.call("GET", "/health", None);
    assert_eq!(r.status, 200);
    let r = c.call("GET", "/v1/models", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("api_key_env"));
    c.send(
        "POST",
        "/v1/chat/completions",
        Some(&chat_body(1, 1, 4)),
        "Authorization: Bearer sk-wrong\r\n",
    );
    let r = c.read();
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("incorrect"));
    assert!(!r.body.contains("sk-serve-test"));
    c.send(
        "POST",
        "/v1/chat/completions",
        Some(&chat_body(1, 1, 4)),
        "Authorization: bearer sk-serve-test\r\n",
    );
    let r = c.read();
    assert_eq!(r.status, 200, "{}", r.body);
    // The key never shows in the limits' debug output.
    let limits = Limits {
        api_key: Some("sk-serve-test".into()),
        ..Limits::default()
    };
    assert!(!format!("{limits:?}").contains("sk-serve-test"));
}

/// Short requests sent while a long one decodes join its batch and finish long before it; each
/// gets as many choices as served alone.
#[test]
fn requests_join_a_batch_that_is_already_decoding() {
    let running = start(Limits::default(), Batching::Continuous);
    let alone = start(Limits::default(), Batching::Off);
    let shorts: Vec<Value> = (0..3).map(|i| chat_body(100 + i, 2, 6)).collect();
    let mut reference = Client::connect(alone.addr());
    let want: Vec<Value> = shorts
        .iter()
        .map(|b| {
            reference
                .call("POST", "/v1/chat/completions", Some(b))
                .json()["choices"]
                .clone()
        })
        .collect();

    let addr = running.addr();
    let long = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        let t = Instant::now();
        let r = c.call("POST", "/v1/chat/completions", Some(&chat_body(7, 4, 400)));
        (r.status, t.elapsed())
    });
    // Wait until the long request is decoding.
    let mut probe = Client::connect(addr);
    let t = Instant::now();
    loop {
        let h = probe.call("GET", "/health", None).json();
        if h["engine"]["generated_tokens"].as_u64() == Some(0) && h["in_flight"] == 1 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the long request never started: {h}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let started = Instant::now();
    let mut c = Client::connect(addr);
    for (b, w) in shorts.iter().zip(&want) {
        let r = c.call("POST", "/v1/chat/completions", Some(b));
        assert_eq!(r.status, 200);
        // Not compared token for token with `w`: the decode kernels depend on the batch's row
        // count, so a choice decoded beside others may round differently from one decoded
        // alone (seen on the tiny random model, whose logits are nearly flat).
        let got = &r.json()["choices"];
        assert_eq!(got.as_array().map(Vec::len), w.as_array().map(Vec::len));
        for c in got.as_array().unwrap() {
            assert_eq!(c["finish_reason"], "length", "{c}");
        }
    }
    let shorts_took = started.elapsed();
    let (status, long_took) = long.join().unwrap();
    assert_eq!(status, 200);
    let h = probe.call("GET", "/health", None).json();
    assert!(h["engine"]["joined_running"].as_u64().unwrap() >= 3, "{h}");
    assert!(
        shorts_took < long_took,
        "the short requests ({shorts_took:?}) waited for the long one ({long_took:?})"
    );
}

/// `malt serve` with `[serve] api_key_env` refuses to start without the variable, naming it.
#[test]
fn the_binary_needs_the_key_variable_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[dataset]\nplugin = \"arith\"\ngenerate = { seed = 1, count = 300 }\n[plugins.arith]\n\
         [[agents]]\nname = \"generator\"\n[serve]\napi_key_env = \"MALT_TEST_SERVE_KEY_UNSET\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_malt"))
        .current_dir(dir.path())
        .env_remove("MALT_TEST_SERVE_KEY_UNSET")
        .args(["serve"])
        .arg(Path::new(&cfg))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MALT_TEST_SERVE_KEY_UNSET") && err.contains("Authorization: Bearer"),
        "{err}"
    );
}

/// `malt bench serve` on a tiny model: both engines measured in one run, with the ratio.
#[test]
fn bench_serve_compares_the_engines_in_one_run() {
    let out = Command::new(env!("CARGO_BIN_EXE_malt"))
        .args(["bench", "serve", "--requests", "12", "--concurrency", "4"])
        .args(["--max-tokens", "16", "--time-limit-s", "60"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "malt serve, waiting batches (old)",
        "malt serve, continuous (new)",
        "12 ok   0 err",
        "ratio new / old:",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
}
