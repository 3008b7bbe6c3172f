//! The HTTP server: a fixed pool of handler threads over one `tiny_http` listener, routing,
//! admission control (in-flight requests capped by `max_queue`, then 429) and panic isolation.

use std::io::{Cursor, Read};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tiny_http::{Header, Method, Request, Response};

use crate::backend::ServeBackend;
use crate::error::ApiError;
use crate::limits::Limits;
use crate::protocol::*;
use crate::sse::{DeltaTracker, SseWriter};
use crate::validate::{map_backend_error, validate_chain, validate_chat, ChatRequest};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {msg}")]
    Bind { addr: String, msg: String },
    #[error("cannot start handler threads: {0}")]
    Thread(#[from] std::io::Error),
}

/// A running server; dropping it stops the handler threads (requests in progress finish).
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

struct Ctx {
    backend: Arc<dyn ServeBackend>,
    limits: Limits,
    in_flight: Arc<AtomicUsize>,
    next_id: AtomicU64,
    started: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Server {
    /// Binds `addr` (`127.0.0.1:0` picks a free port) and starts the handler threads.
    pub fn start(
        addr: &str,
        backend: Arc<dyn ServeBackend>,
        limits: Limits,
    ) -> Result<Server, ServeError> {
        let http = tiny_http::Server::http(addr).map_err(|e| ServeError::Bind {
            addr: addr.to_owned(),
            msg: e.to_string(),
        })?;
        let bound = http.server_addr().to_ip().ok_or_else(|| ServeError::Bind {
            addr: addr.to_owned(),
            msg: "not an IP address".into(),
        })?;
        let http = Arc::new(http);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = limits.handler_threads();
        let ctx = Arc::new(Ctx {
            backend,
            limits,
            in_flight: Arc::new(AtomicUsize::new(0)),
            next_id: AtomicU64::new(1),
            started: unix_now(),
        });
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let (http, stop, ctx) = (http.clone(), stop.clone(), ctx.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("serve-{i}"))
                    .spawn(move || worker(&http, &stop, &ctx))?,
            );
        }
        Ok(Server {
            http,
            addr: bound,
            stop,
            workers,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server is stopped (never, for `malt serve`).
    pub fn join(mut self) {
        for w in std::mem::take(&mut self.workers) {
            let _ = w.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for _ in 0..self.workers.len() {
            self.http.unblock();
        }
        for w in std::mem::take(&mut self.workers) {
            let _ = w.join();
        }
    }
}

fn worker(http: &tiny_http::Server, stop: &AtomicBool, ctx: &Ctx) {
    loop {
        match http.recv() {
            Ok(req) => handle(req, ctx),
            // An accept error is the client's problem; an unblock is our stop signal.
            Err(e) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                tracing::debug!("accept: {e}");
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

fn handle(mut req: Request, ctx: &Ctx) {
    let t0 = Instant::now();
    let method = req.method().clone();
    let path = req.url().split('?').next().unwrap_or("").to_owned();
    let reply = catch_unwind(AssertUnwindSafe(|| dispatch(&mut req, &method, &path, ctx)))
        .unwrap_or_else(|panic| {
            let msg = panic_message(&panic);
            tracing::error!("{method} {path}: handler panicked: {msg}");
            Reply::Error(ApiError::internal(format!(
                "the request handler failed: {msg}"
            )))
        });
    let status = match reply {
        Reply::Json { status, body } => {
            respond(req, status, body, &[]);
            status
        }
        Reply::Error(e) => {
            let status = e.status;
            let mut headers = vec![];
            if let Some(s) = e.retry_after {
                headers.push(("Retry-After", s.to_string()));
            }
            if let Some(a) = e.allow {
                headers.push(("Allow", a.to_string()));
            }
            let body = serde_json::to_vec(&e.body()).unwrap_or_default();
            if status >= 500 {
                tracing::warn!("{method} {path}: {e}");
            } else {
                tracing::info!("{method} {path}: {e}");
            }
            respond(req, status, body, &headers);
            status
        }
        Reply::Stream(chat, admission) => {
            let streamed = catch_unwind(AssertUnwindSafe(|| stream(req, *chat, ctx)));
            drop(admission);
            if let Err(panic) = streamed {
                tracing::error!(
                    "{method} {path}: stream panicked: {}",
                    panic_message(&panic)
                );
            }
            200
        }
    };
    tracing::debug!(
        "{method} {path} -> {status} in {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn respond(req: Request, status: u16, body: Vec<u8>, extra: &[(&str, String)]) {
    let mut resp = Response::new(
        status.into(),
        vec![],
        Cursor::new(body.clone()),
        Some(body.len()),
        None,
    );
    if let Some(h) = header("Content-Type", "application/json") {
        resp.add_header(h);
    }
    // tiny_http stalled requests that arrived on reused keep-alive connections once about
    // eight clients held one open (seen from malt's remote backend); a fresh connection per
    // request costs nothing measurable next to a generation.
    if let Some(h) = header("Connection", "close") {
        resp.add_header(h);
    }
    for (k, v) in extra {
        if let Some(h) = header(k, v) {
            resp.add_header(h);
        }
    }
    if let Err(e) = req.respond(resp) {
        tracing::debug!("writing a response: {e}");
    }
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

fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    if req.body_length().is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::invalid(format!("cannot read the request body: {e}")))?;
    if body.len() > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(body)
}

const ENDPOINTS: &str =
    "GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/malt/chain";

fn dispatch(req: &mut Request, method: &Method, path: &str, ctx: &Ctx) -> Reply {
    let result = match (path, method) {
        ("/health", Method::Get) => Ok(json_reply(
            200,
            &Health {
                status: "ok".into(),
                in_flight: ctx.in_flight.load(Ordering::SeqCst),
                max_queue: ctx.limits.max_queue,
                engine: ctx.backend.stats(),
            },
        )),
        ("/v1/models", Method::Get) => Ok(models(ctx)),
        ("/v1/chat/completions", Method::Post) => chat(req, ctx),
        ("/v1/malt/chain", Method::Post) => chain(req, ctx),
        ("/health" | "/v1/models", m) => Err(ApiError::method_not_allowed(m.as_str(), path, "GET")),
        ("/v1/chat/completions" | "/v1/malt/chain", m) => {
            Err(ApiError::method_not_allowed(m.as_str(), path, "POST"))
        }
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

fn chat(req: &mut Request, ctx: &Ctx) -> Result<Reply, ApiError> {
    let body = read_body(req, ctx.limits.max_body_bytes)?;
    let chat = validate_chat(&body, ctx.backend.as_ref(), &ctx.limits)?;
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
                message: ChatMessage::new("assistant", &o.text),
                finish_reason: o.finish.as_str().into(),
                logprobs: None,
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

fn chain(req: &mut Request, ctx: &Ctx) -> Result<Reply, ApiError> {
    if !ctx.backend.models().chain {
        return Err(ApiError::not_found(
            "the chain endpoint needs the server started from a config: `malt serve CONFIG`",
        )
        .with_code("chain_unavailable"));
    }
    let body = read_body(req, ctx.limits.max_body_bytes)?;
    let query = validate_chain(&body, &ctx.limits)?;
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
fn stream(req: Request, chat: ChatRequest, ctx: &Ctx) {
    let id = format!("chatcmpl-{}", ctx.next_id.fetch_add(1, Ordering::Relaxed));
    let created = unix_now();
    let model = chat.model.clone();
    let n = chat.job.n;
    let stop = chat.job.sampling.stop.clone();
    let prompt_tokens = chat.job.prompt.len();
    let Ok(mut sse) = SseWriter::start(req.into_writer()) else {
        return;
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
            return;
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
        return;
    }
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
            sse.event(&e.body().to_string())
        }
    };
    if sent.is_ok() {
        let _ = sse.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendError, ChainQuery, ChoiceOutput, GenerationJob, ServedModels};

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
        fn tokenize_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, BackendError> {
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
