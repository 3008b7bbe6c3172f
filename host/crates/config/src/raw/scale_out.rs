//! Resolution of the scale-out tables: `[generation]` (the remote backend and its endpoints) and
//! `[serve]` (malt serve's limits and address).

use super::{Checker, RawGeneration, RawServe};
use crate::locate::Seg;
use crate::types::*;

/// `what` samples with adapters trained during the run: with the remote backend, every
/// endpoint must be able to load them at run time (malt serve, vLLM, SGLang; `auto` is checked
/// when the run identifies the engine).
pub(super) fn check_adapter_loading(g: &Generation, what: &str, c: &mut Checker<'_, '_>) {
    use Seg::{Index as I, Key as K};
    if g.backend != Backend::Remote {
        return;
    }
    for (i, e) in g.endpoints.iter().enumerate() {
        let engine = match e.engine {
            EngineKind::LlamaCpp => "llama.cpp",
            EngineKind::Openai => "openai",
            _ => continue,
        };
        {
            c.err(
                &[K("generation"), K("endpoints"), I(i), K("engine")],
                format!(
                    "{what} samples with the adapters it trains, which the endpoint {} \
                     (engine = \"{engine}\") cannot load at run time: serve the model with malt \
                     serve, vLLM (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) or SGLang, or set \
                     [generation] backend = \"embedded\"",
                    e.url
                ),
            );
        }
    }
}

pub(super) fn resolve_generation(
    raw: RawGeneration,
    agents: &[Agent],
    c: &mut Checker<'_, '_>,
) -> Generation {
    use Seg::{Index as I, Key as K};
    let dflt = Generation::default();
    let mut endpoints = Vec::new();
    for (i, e) in raw.endpoints.into_iter().enumerate() {
        let at = |k: &'static str| [K("generation"), K("endpoints"), I(i), K(k)];
        if e.api_key.is_some() {
            c.err(
                &at("api_key"),
                "generation.endpoints: API keys do not belong in config files (they end up in \
                 run manifests and version control); set `api_key_env = \"VAR\"` and export VAR",
            );
        }
        if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
            c.err(
                &at("url"),
                format!(
                    "generation.endpoints url {:?}: expected an http:// or https:// URL",
                    e.url
                ),
            );
        }
        if let Some(var) = &e.api_key_env {
            if var.is_empty() || var.contains(['=', '\0']) {
                c.err(
                    &at("api_key_env"),
                    format!("api_key_env {var:?} is not an environment variable name"),
                );
            }
        }
        let ep = Endpoint {
            url: e.url,
            api_key_env: e.api_key_env,
            max_concurrency: e.max_concurrency.unwrap_or(8),
            timeout_s: e.timeout_s.unwrap_or(120.0),
            connect_timeout_s: e.connect_timeout_s.unwrap_or(5.0),
            malt_seeds: e.malt_seeds,
            engine: e.engine.unwrap_or(EngineKind::Auto),
            adapter_root: e.adapter_root,
        };
        if ep
            .adapter_root
            .as_deref()
            .is_some_and(|r| r.trim().is_empty())
        {
            c.err(
                &at("adapter_root"),
                "adapter_root is empty: give the path under which the server sees the run \
                 directory, or leave it out when the server sees it at the same path",
            );
        }
        c.positive(
            &at("max_concurrency"),
            "max_concurrency",
            ep.max_concurrency,
        );
        for (key, v) in [
            ("timeout_s", ep.timeout_s),
            ("connect_timeout_s", ep.connect_timeout_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                c.err(&at(key), format!("{key} = {v} must be > 0 (seconds)"));
            }
        }
        endpoints.push(ep);
    }
    let g = Generation {
        backend: raw.backend.unwrap_or(dflt.backend),
        endpoints,
        model: raw.model.unwrap_or(dflt.model),
        models: raw.models,
        retries: raw.retries.unwrap_or(dflt.retries),
        backoff_ms: raw.backoff_ms.unwrap_or(dflt.backoff_ms),
        max_backoff_s: raw.max_backoff_s.unwrap_or(dflt.max_backoff_s),
        max_wait_s: raw.max_wait_s.unwrap_or(dflt.max_wait_s),
    };
    match g.backend {
        Backend::Remote if g.endpoints.is_empty() => c.err(
            &[K("generation"), K("backend")],
            "generation.backend = \"remote\" needs at least one [[generation.endpoints]] table \
             with a url",
        ),
        Backend::Embedded if !g.endpoints.is_empty() => c.warn(
            &[K("generation"), K("endpoints")],
            "generation.endpoints are ignored: generation.backend is \"embedded\" (set it to \
             \"remote\" to use them)",
        ),
        _ => {}
    }
    if g.model.is_empty() {
        c.err(
            &[K("generation"), K("model")],
            "generation.model must not be empty",
        );
    }
    for name in g.models.keys() {
        if !agents.iter().any(|a| &a.name == name) {
            c.err(
                &[K("generation"), K("models"), K(name)],
                format!("generation.models: no agent named `{name}` in [[agents]]"),
            );
        }
    }
    c.positive(
        &[K("generation"), K("backoff_ms")],
        "generation.backoff_ms",
        g.backoff_ms,
    );
    for (key, v) in [
        ("max_backoff_s", g.max_backoff_s),
        ("max_wait_s", g.max_wait_s),
    ] {
        if !(v.is_finite() && v > 0.0) {
            c.err(
                &[K("generation"), K(key)],
                format!("generation.{key} = {v} must be > 0 (seconds)"),
            );
        }
    }
    g
}

pub(super) fn resolve_serve(raw: RawServe, c: &mut Checker<'_, '_>) -> Serve {
    use Seg::Key as K;
    let d = Serve::default();
    let serve = Serve {
        addr: raw.addr.unwrap_or(d.addr),
        allow_remote: raw.allow_remote.unwrap_or(d.allow_remote),
        max_n: raw.max_n.unwrap_or(d.max_n),
        max_tokens: raw.max_tokens.unwrap_or(d.max_tokens),
        max_body_bytes: raw.max_body_bytes.unwrap_or(d.max_body_bytes),
        max_queue: raw.max_queue.unwrap_or(d.max_queue),
        request_timeout_s: raw.request_timeout_s.unwrap_or(d.request_timeout_s),
        batch: raw.batch.unwrap_or(d.batch),
        api_key_env: raw.api_key_env,
        continuous: raw.continuous.unwrap_or(d.continuous),
        max_batch: raw.max_batch.unwrap_or(d.max_batch),
        read_timeout_s: raw.read_timeout_s.unwrap_or(d.read_timeout_s),
        keep_alive_s: raw.keep_alive_s.unwrap_or(d.keep_alive_s),
    };
    match serve.addr.parse::<std::net::SocketAddr>() {
        Err(_) => c.err(
            &[K("serve"), K("addr")],
            format!(
                "serve.addr = {:?} is not an IP address and port, e.g. \"127.0.0.1:8080\"",
                serve.addr
            ),
        ),
        Ok(a) if !a.ip().is_loopback() && !serve.allow_remote => c.err(
            &[K("serve"), K("addr")],
            format!(
                "serve.addr = {:?} is reachable from other machines; use a loopback address \
                 (127.0.0.1) or set serve.allow_remote = true (and serve.api_key_env, so that \
                 clients need a key)",
                serve.addr
            ),
        ),
        Ok(_) => {}
    }
    if let Some(var) = &serve.api_key_env {
        if var.is_empty() || var.contains(['=', '\0']) {
            c.err(
                &[K("serve"), K("api_key_env")],
                format!("serve.api_key_env {var:?} is not an environment variable name"),
            );
        }
    }
    if serve.continuous && !serve.batch {
        c.warn(
            &[K("serve"), K("continuous")],
            "serve.continuous has no effect with serve.batch = false (one request at a time)",
        );
    }
    c.positive(
        &[K("serve"), K("max_batch")],
        "serve.max_batch",
        serve.max_batch,
    );
    for (key, v) in [
        ("read_timeout_s", serve.read_timeout_s),
        ("keep_alive_s", serve.keep_alive_s),
    ] {
        if !(v.is_finite() && v > 0.0) {
            c.err(
                &[K("serve"), K(key)],
                format!("serve.{key} = {v} must be a positive number of seconds"),
            );
        }
    }
    c.positive(&[K("serve"), K("max_n")], "serve.max_n", serve.max_n);
    c.positive(
        &[K("serve"), K("max_tokens")],
        "serve.max_tokens",
        serve.max_tokens,
    );
    if !(1..=1024).contains(&serve.max_queue) {
        c.err(
            &[K("serve"), K("max_queue")],
            format!(
                "serve.max_queue = {} is out of range: expected 1..=1024 (one handler thread each)",
                serve.max_queue
            ),
        );
    }
    if serve.max_body_bytes < 1024 {
        c.err(
            &[K("serve"), K("max_body_bytes")],
            format!(
                "serve.max_body_bytes = {} is too small: expected at least 1024",
                serve.max_body_bytes
            ),
        );
    }
    if !(serve.request_timeout_s.is_finite() && serve.request_timeout_s > 0.0) {
        c.err(
            &[K("serve"), K("request_timeout_s")],
            format!(
                "serve.request_timeout_s = {} must be a positive number of seconds",
                serve.request_timeout_s
            ),
        );
    }
    serve
}
