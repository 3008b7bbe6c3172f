//! The HTTP server: one thread per connection over a `std` listener (keep-alive, pipelining,
//! a deadline for each request to arrive), bearer-token authentication, routing, admission
//! control (in-flight requests capped by `max_queue`, then 429) and panic isolation.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::backend::{ChoiceOutput, ServeBackend};
use crate::error::ApiError;
use crate::http::{self, Conn, ReadError, Request};
use crate::limits::Limits;
use crate::protocol::*;
use crate::sse::{DeltaTracker, SseWriter};
use crate::validate::{
    map_backend_error, validate_chain, validate_chat, validate_load_adapter,
    validate_unload_adapter, ChatRequest,
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {msg}")]
    Bind { addr: String, msg: String },
    #[error("cannot start the server threads: {0}")]
    Thread(#[from] std::io::Error),
}

/// Open connections, so that stopping the server can wake the threads waiting on them.
type Registry = Mutex<HashMap<u64, TcpStream>>;

/// A running server; dropping it stops accepting, wakes idle connections and lets the requests
/// in progress finish.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    conns: Arc<Registry>,
}

struct Ctx {
    backend: Arc<dyn ServeBackend>,
    limits: Limits,
    in_flight: Arc<AtomicUsize>,
    next_id: AtomicU64,
    started: u64,
    stop: Arc<AtomicBool>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Server {
    /// Binds `addr` (`127.0.0.1:0` picks a free port) and starts accepting connections.
    pub fn start(
        addr: &str,
        backend: Arc<dyn ServeBackend>,
        limits: Limits,
    ) -> Result<Server, ServeError> {
        let listener = TcpListener::bind(addr).map_err(|e| ServeError::Bind {
            addr: addr.to_owned(),
            msg: e.to_string(),
        })?;
        let bound = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Registry> = Arc::new(Mutex::new(HashMap::new()));
        let ctx = Arc::new(Ctx {
            backend,
            limits,
            in_flight: Arc::new(AtomicUsize::new(0)),
            next_id: AtomicU64::new(1),
            started: unix_now(),
            stop: stop.clone(),
        });
        let (stop2, conns2) = (stop.clone(), conns.clone());
        let acceptor = std::thread::Builder::new()
            .name("serve-accept".into())
            .spawn(move || accept(listener, &stop2, &conns2, &ctx))?;
        Ok(Server {
            addr: bound,
            stop,
            acceptor: Some(acceptor),
            conns,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server is stopped (never, for `malt serve`).
    pub fn join(mut self) {
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor with a connection of our own.
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        // Idle keep-alive connections see end-of-stream; requests in progress still answer.
        for s in lock(&self.conns).values() {
            let _ = s.shutdown(std::net::Shutdown::Read);
        }
    }
}

fn lock(r: &Registry) -> std::sync::MutexGuard<'_, HashMap<u64, TcpStream>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept(listener: TcpListener, stop: &AtomicBool, conns: &Arc<Registry>, ctx: &Arc<Ctx>) {
    let mut next = 0u64;
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if lock(conns).len() >= ctx.limits.max_connections {
            let e = ApiError::unavailable(format!(
                "the server already holds {} connections ([serve] max_queue + 32); retry later",
                ctx.limits.max_connections
            ));
            let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
            let body = serde_json::to_vec(&e.body()).unwrap_or_default();
            let _ = http::write_response(
                &stream,
                e.status,
                "application/json",
                &body,
                &[("Retry-After", "1".into())],
                false,
            );
            continue;
        }
        next += 1;
        let id = next;
        if let Ok(clone) = stream.try_clone() {
            lock(conns).insert(id, clone);
        }
        let (conns, ctx) = (conns.clone(), ctx.clone());
        let spawned = std::thread::Builder::new()
            .name("serve-conn".into())
            .spawn(move || {
                connection(Conn::new(stream), &ctx);
                lock(&conns).remove(&id);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a connection thread: {e}");
        }
    }
}

/// Serves the requests of one connection until it closes, errs or is not kept alive.
fn connection(mut conn: Conn, ctx: &Ctx) {
    let l = &ctx.limits;
    loop {
        match conn.read_request(l.keep_alive, l.read_timeout, l.max_body_bytes) {
            Ok(req) => {
                let keep = req.keep_alive && !ctx.stop.load(Ordering::SeqCst);
                if !handle(req, conn.stream(), ctx, keep) || !keep {
                    return;
                }
            }
            Err(ReadError::Closed) => return,
            Err(ReadError::Io(e)) => {
                tracing::debug!("reading a request: {e}");
                return;
            }
            Err(ReadError::Timeout) => {
                let e = ApiError::read_timeout(l.read_timeout.as_secs_f64());
                tracing::info!("{e}");
                send_error(conn.stream(), &e, false);
                return;
            }
            Err(ReadError::Bad { status, message }) => {
                let e = ApiError::invalid(message).with_status(status);
                tracing::info!("{e}");
                send_error(conn.stream(), &e, false);
                return;
            }
        }
    }
}

/// What a handler produced: a complete response, or a validated streaming request (written
/// straight to the connection).
enum Reply {
    Json { status: u16, body: Vec<u8> },
    Error(ApiError),
    Stream(Box<ChatRequest>, Admission),
}

fn json_reply<T: Serialize>(status: u16, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => Reply::Json { status, body },
        Err(e) => Reply::Error(ApiError::internal(format!(
            "cannot serialise the reply: {e}"
        ))),
    }
}

/// Answers one request; `false` when the connection must close (a write failed).
fn handle(req: Request, out: &TcpStream, ctx: &Ctx, keep: bool) -> bool {
    let t0 = Instant::now();
    let (method, path) = (req.method.clone(), req.path.clone());
    let reply = catch_unwind(AssertUnwindSafe(|| dispatch(&req, ctx))).unwrap_or_else(|panic| {
        let msg = panic_message(&panic);
        tracing::error!("{method} {path}: handler panicked: {msg}");
        Reply::Error(ApiError::internal(format!(
            "the request handler failed: {msg}"
        )))
    });
    let (status, ok) = match reply {
        Reply::Json { status, body } => (
            status,
            http::write_response(out, status, "application/json", &body, &[], keep).is_ok(),
        ),
        Reply::Error(e) => {
            if e.status >= 500 {
                tracing::warn!("{method} {path}: {e}");
            } else {
                tracing::info!("{method} {path}: {e}");
            }
            (e.status, send_error(out, &e, keep))
        }
        Reply::Stream(chat, admission) => {
            let streamed = catch_unwind(AssertUnwindSafe(|| stream(out, *chat, ctx, keep)));
            drop(admission);
            let ok = streamed.unwrap_or_else(|panic| {
                tracing::error!(
                    "{method} {path}: stream panicked: {}",
                    panic_message(&panic)
                );
                false
            });
            (200, ok)
        }
    };
    tracing::debug!(
        "{method} {path} -> {status} in {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    ok
}

/// Writes an OpenAI-shaped error; `false` if the connection broke.
fn send_error(out: &TcpStream, e: &ApiError, keep: bool) -> bool {
    let mut headers = vec![];
    if let Some(s) = e.retry_after {
        headers.push(("Retry-After", s.to_string()));
    }
    if let Some(a) = e.allow {
        headers.push(("Allow", a.to_string()));
    }
    if e.status == 401 {
        headers.push(("WWW-Authenticate", "Bearer".to_string()));
    }
    let body = serde_json::to_vec(&e.body()).unwrap_or_default();
    http::write_response(out, e.status, "application/json", &body, &headers, keep).is_ok()
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Holds one of the `max_queue` slots while a generation or chain request runs.
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn admit(ctx: &Ctx) -> Result<Admission, ApiError> {
    let counter = &ctx.in_flight;
    if counter.fetch_add(1, Ordering::SeqCst) >= ctx.limits.max_queue {
        counter.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::queue_full(ctx.limits.max_queue));
    }
    Ok(Admission(counter.clone()))
}

/// Whether `req` carries the server's key (`Authorization: Bearer <key>`), compared in time
/// independent of where a wrong key differs.
fn authorised(req: &Request, key: &str) -> bool {
    let Some(value) = req.header("authorization") else {
        return false;
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let (a, b) = (token.trim().as_bytes(), key.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0)) as usize;
    }
    diff == 0
}

const ENDPOINTS: &str = "GET /health, GET /v1/models, POST /v1/chat/completions, POST \
     /v1/malt/chain, POST /v1/load_lora_adapter, POST /v1/unload_lora_adapter";

fn dispatch(req: &Request, ctx: &Ctx) -> Reply {
    let (method, path) = (req.method.as_str(), req.path.as_str());
    if let Some(key) = &ctx.limits.api_key {
        // `/health` stays open for load balancers and orchestrators.
        if path != "/health" && !authorised(req, key) {
            return Reply::Error(ApiError::unauthorised(
                req.header("authorization").is_some(),
            ));
        }
    }
    let result = match (path, method) {
        ("/health", "GET") => Ok(json_reply(
            200,
            &Health {
                status: "ok".into(),
                in_flight: ctx.in_flight.load(Ordering::SeqCst),
                max_queue: ctx.limits.max_queue,
                engine: ctx.backend.stats(),
            },
        )),
        ("/v1/models", "GET") => Ok(models(ctx)),
        ("/v1/chat/completions", "POST") => chat(req, ctx),
        ("/v1/malt/chain", "POST") => chain(req, ctx),
        ("/v1/load_lora_adapter", "POST") => load_adapter(req, ctx),
        ("/v1/unload_lora_adapter", "POST") => unload_adapter(req, ctx),
        ("/health" | "/v1/models", m) => Err(ApiError::method_not_allowed(m, path, "GET")),
        (
            "/v1/chat/completions"
            | "/v1/malt/chain"
            | "/v1/load_lora_adapter"
            | "/v1/unload_lora_adapter",
            m,
        ) => Err(ApiError::method_not_allowed(m, path, "POST")),
        _ => Err(ApiError::not_found(format!(
            "no endpoint {method} {path}; this server has {ENDPOINTS}"
        ))
        .with_code("unknown_path")),
    };
    result.unwrap_or_else(Reply::Error)
}

fn models(ctx: &Ctx) -> Reply {
    let served = ctx.backend.models();
    let max_model_len = ctx.backend.context_length();
    let card = |id: &str, parent: Option<&str>| ModelCard {
        id: id.to_owned(),
        object: "model".into(),
        created: ctx.started,
        owned_by: "malt".into(),
        parent: parent.map(str::to_owned),
        max_model_len,
    };
    let mut data = vec![card(&served.base, None)];
    for a in &served.adapters {
        data.push(card(a, Some(&served.base)));
    }
    json_reply(
        200,
        &ModelList {
            object: "list".into(),
            data,
        },
    )
}

fn chat(req: &Request, ctx: &Ctx) -> Result<Reply, ApiError> {
    let chat = validate_chat(&req.body, ctx.backend.as_ref(), &ctx.limits)?;
    let admission = admit(ctx)?;
    if chat.stream {
        return Ok(Reply::Stream(Box::new(chat), admission));
    }
    let prompt_tokens = chat.job.prompt.len();
    let outs = ctx
        .backend
        .generate(chat.job, &mut |_, _| true)
        .map_err(map_backend_error)?;
    drop(admission);
    let completion_tokens: usize = outs.iter().map(|o| o.completion_tokens).sum();
    let reply = ChatCompletion {
        id: format!("chatcmpl-{}", ctx.next_id.fetch_add(1, Ordering::Relaxed)),
        object: "chat.completion".into(),
        created: unix_now(),
        model: chat.model,
        malt_seeds: outs.iter().map(|o| o.seed).collect(),
        choices: outs
            .into_iter()
            .enumerate()
            .map(|(index, o)| CompletionChoice {
                index,
                message: Message::assistant(&o.text),
                finish_reason: o.finish.as_str().into(),
                logprobs: logprobs_json(&o),
                malt_finish: Some(o.finish.detail().into()),
                token_ids: Some(o.token_ids),
            })
            .collect(),
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        },
    };
    Ok(json_reply(200, &reply))
}

/// vLLM's runtime LoRA endpoints: the adapter is read from the server's disk and served under
/// its name at once; what was served before stays served if it cannot be read.
fn load_adapter(req: &Request, ctx: &Ctx) -> Result<Reply, ApiError> {
    let load = validate_load_adapter(&req.body, &ctx.backend.models())?;
    ctx.backend.load_adapter(&load).map_err(map_backend_error)?;
    tracing::info!("loaded adapter `{}` from {}", load.name, load.path);
    Ok(json_reply(
        200,
        &serde_json::json!({
            "object": "malt.adapter",
            "lora_name": load.name,
            "lora_path": load.path,
            "message": format!("Success: LoRA adapter '{}' added successfully.", load.name),
        }),
    ))
}

fn unload_adapter(req: &Request, ctx: &Ctx) -> Result<Reply, ApiError> {
    let name = validate_unload_adapter(&req.body)?;
    ctx.backend
        .unload_adapter(&name)
        .map_err(map_backend_error)?;
    tracing::info!("unloaded adapter `{name}`");
    Ok(json_reply(
        200,
        &serde_json::json!({
            "object": "malt.adapter",
            "lora_name": name,
            "message": format!("Success: LoRA adapter '{name}' removed successfully."),
        }),
    ))
}

/// OpenAI's `logprobs` of a choice: one entry per sampled token, named as vLLM names tokens
/// with `return_tokens_as_token_ids` (`"token_id:42"`), without alternatives.
fn logprobs_json(o: &ChoiceOutput) -> Option<serde_json::Value> {
    let lps = o.logprobs.as_ref()?;
    let content: Vec<serde_json::Value> = o
        .token_ids
        .iter()
        .zip(lps)
        .map(|(id, lp)| {
            serde_json::json!({
                "token": format!("token_id:{id}"),
                "logprob": lp,
                "bytes": null,
                "top_logprobs": [],
            })
        })
        .collect();
    Some(serde_json::json!({ "content": content }))
}

fn chain(req: &Request, ctx: &Ctx) -> Result<Reply, ApiError> {
    if !ctx.backend.models().chain {
        return Err(ApiError::not_found(
            "the chain endpoint needs the server started from a config: `malt serve CONFIG`",
        )
        .with_code("chain_unavailable"));
    }
    let query = validate_chain(&req.body, &ctx.limits)?;
    let _admission = admit(ctx)?;
    let out = ctx.backend.chain(query).map_err(map_backend_error)?;
    Ok(json_reply(200, &out))
}

fn chunk(
    id: &str,
    created: u64,
    model: &str,
    choices: Vec<ChunkChoice>,
    usage: Option<Usage>,
) -> String {
    serde_json::to_string(&ChatCompletionChunk {
        id: id.to_owned(),
        object: "chat.completion.chunk".into(),
        created,
        model: model.to_owned(),
        choices,
        usage,
    })
    .unwrap_or_default()
}

fn delta(
    index: usize,
    role: Option<&str>,
    content: Option<String>,
    finish: Option<&str>,
) -> ChunkChoice {
    ChunkChoice {
        index,
        delta: Delta {
            role: role.map(str::to_owned),
            content,
        },
        finish_reason: finish.map(str::to_owned),
        logprobs: None,
    }
}

/// Streams one completion as `chat.completion.chunk` events, then `data: [DONE]`. The deltas
/// of a choice concatenate to exactly the text the same request returns without streaming.
/// `false` when the connection cannot be reused (the client left, or an error mid-stream).
fn stream(out: &TcpStream, chat: ChatRequest, ctx: &Ctx, keep: bool) -> bool {
    let id = format!("chatcmpl-{}", ctx.next_id.fetch_add(1, Ordering::Relaxed));
    let created = unix_now();
    let model = chat.model.clone();
    let n = chat.job.n;
    let stop = chat.job.sampling.stop.clone();
    let prompt_tokens = chat.job.prompt.len();
    let Ok(writer) = out.try_clone() else {
        return false;
    };
    let Ok(mut sse) = SseWriter::start(Box::new(writer) as Box<dyn Write + Send>, keep) else {
        return false;
    };
    let ev = |choices, usage| chunk(&id, created, &model, choices, usage);
    for i in 0..n {
        if sse
            .event(&ev(
                vec![delta(i, Some("assistant"), Some(String::new()), None)],
                None,
            ))
            .is_err()
        {
            return false;
        }
    }
    let mut trackers: Vec<DeltaTracker> = (0..n).map(|_| DeltaTracker::default()).collect();
    let mut gone = false;
    let result = ctx.backend.generate(chat.job, &mut |i, text| {
        if gone {
            return false;
        }
        let Some(tracker) = trackers.get_mut(i) else {
            return true;
        };
        let d = tracker.step(text, &stop);
        if !d.is_empty()
            && sse
                .event(&ev(vec![delta(i, None, Some(d), None)], None))
                .is_err()
        {
            gone = true;
            return false;
        }
        true
    });
    if gone {
        return false;
    }
    let mut failed = false;
    let sent = match result {
        Ok(outs) => {
            let mut ok = Ok(());
            let completion_tokens: usize = outs.iter().map(|o| o.completion_tokens).sum();
            for (i, o) in outs.iter().enumerate() {
                let rest = trackers[i].finish(&o.text);
                if !rest.is_empty() {
                    ok = ok
                        .and_then(|_| sse.event(&ev(vec![delta(i, None, Some(rest), None)], None)));
                }
                ok = ok.and_then(|_| {
                    sse.event(&ev(
                        vec![delta(i, None, None, Some(o.finish.as_str()))],
                        None,
                    ))
                });
            }
            if chat.include_usage {
                let usage = Usage {
                    prompt_tokens,
                    completion_tokens,
                    total_tokens: prompt_tokens + completion_tokens,
                };
                ok = ok.and_then(|_| sse.event(&ev(vec![], Some(usage))));
            }
            ok
        }
        Err(e) => {
            let e = map_backend_error(e);
            tracing::warn!("stream {id}: {e}");
            failed = true;
            sse.event(&e.body().to_string())
        }
    };
    sent.is_ok() && sse.finish().is_ok() && !failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendError, ChainQuery, GenerationJob, ServedModels};

    /// Fault injection: a backend whose generation panics (the model engine cannot be made to
    /// panic on demand). Everything else about the server is real.
    struct PanickingBackend;

    impl ServeBackend for PanickingBackend {
        fn models(&self) -> ServedModels {
            ServedModels {
                base: "m".into(),
                adapters: vec![],
                chain: false,
            }
        }
        fn context_length(&self) -> usize {
            64
        }
        fn tokenize_chat(&self, messages: &[Message]) -> Result<Vec<u32>, BackendError> {
            Ok(messages.iter().map(|m| m.content.len() as u32).collect())
        }
        fn generate(
            &self,
            _job: GenerationJob,
            _on_step: &mut crate::backend::StepSink<'_>,
        ) -> Result<Vec<ChoiceOutput>, BackendError> {
            panic!("injected fault")
        }
        fn chain(&self, _query: ChainQuery) -> Result<ChainResponse, BackendError> {
            Err(BackendError::NotAvailable("no chain".into()))
        }
    }

    #[test]
    fn a_panicking_handler_gets_500_and_the_server_keeps_serving() {
        let server = Server::start(
            "127.0.0.1:0",
            Arc::new(PanickingBackend),
            Limits {
                max_queue: 2,
                ..Limits::default()
            },
        )
        .expect("server");
        let base = format!("http://{}", server.addr());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let body = r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#;
        // More panics than handler slots: the admission slot must be released each time.
        for _ in 0..4 {
            let resp = agent
                .post(format!("{base}/v1/chat/completions"))
                .send(body)
                .expect("request");
            assert_eq!(resp.status().as_u16(), 500);
            let text = resp.into_body().read_to_string().expect("body");
            assert!(text.contains("injected fault"), "{text}");
        }
        let resp = agent.get(format!("{base}/health")).call().expect("health");
        assert_eq!(resp.status().as_u16(), 200);
        let text = resp.into_body().read_to_string().expect("body");
        assert!(text.contains("\"in_flight\":0"), "{text}");
    }
}
