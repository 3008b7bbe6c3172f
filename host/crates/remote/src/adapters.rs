//! The adapters a run trains, served by its endpoints: after each update every endpoint loads
//! the new version under a versioned name (`generator-v12`), drops its prefix cache where it
//! has one, and the agent's requests switch to that name; the previous version is unloaded
//! once every endpoint serves the new one (the run samples and trains in turn, so no request
//! of the run still uses it).
//!
//! Engines read adapters from their own disk: an endpoint's `adapter_root` says where the
//! server sees the run directory (the same path as here when unset). A version an endpoint
//! cannot load fails the swap with an error naming the endpoint and the path it was given;
//! the server keeps serving the previous version and the run stops before sampling with a
//! mixture.

use std::path::{Path, PathBuf};
use std::time::Duration;

use malt_tree::SamplerError;
use serde_json::{json, Value};

use crate::call::Client;
use crate::engine::{AdapterRoutes, Engine};
use crate::protocol::error_message;
use crate::retry::{classify_status, Outcome, RetryPolicy, StatusClass};
use crate::sampler::RemoteSampler;

/// One agent's adapter to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterVersion {
    pub agent: String,
    /// The served name, unique per version (`generator-v12`).
    pub name: String,
    /// The PEFT directory as this machine sees it.
    pub local: PathBuf,
    /// The same directory relative to the run directory, for endpoints with `adapter_root`.
    pub in_run: PathBuf,
}

impl AdapterVersion {
    /// The directory as `client`'s server sees it.
    fn server_path(&self, client: &Client) -> String {
        match &client.endpoint.adapter_root {
            Some(root) => Path::new(root).join(&self.in_run).display().to_string(),
            None => std::path::absolute(&self.local)
                .unwrap_or_else(|_| self.local.clone())
                .display()
                .to_string(),
        }
    }
}

impl RemoteSampler {
    /// Serves `versions` on every endpoint and sends each agent's later requests to its new
    /// name; then unloads the versions they replace. See the module documentation.
    pub fn swap_adapters(&mut self, versions: &[AdapterVersion]) -> Result<(), SamplerError> {
        if versions.is_empty() {
            return Ok(());
        }
        if self.engines.iter().any(Option::is_none) {
            for r in self.resolve_engines(false)? {
                r.log();
            }
        }
        for (i, client) in self.clients.iter().enumerate() {
            let engine = self.engines[i].unwrap_or(Engine::Openai);
            let routes = engine.adapter_routes().ok_or_else(|| {
                SamplerError(format!(
                    "endpoint {}: {engine} cannot load LoRA adapters at run time, which online \
                     training and [rounds] need to sample with the adapters they train; serve \
                     the model with malt serve, vLLM or SGLang, or set [generation] backend = \
                     \"embedded\"",
                    client.endpoint
                ))
            })?;
            let root = client.endpoint.root_url();
            let served = served_names(client, &self.retry)?;
            let loaded = load_on(client, &self.retry, &routes, &served, versions);
            if let Err(e) = loaded {
                // Nothing half-swapped stays behind: the versions loaded before the failure go.
                let done: Vec<String> = versions
                    .iter()
                    .filter(|v| !served.contains(&v.name))
                    .map(|v| v.name.clone())
                    .collect();
                let url = format!("{root}{}", routes.unload);
                for name in &done {
                    let _ = admin(client, &self.retry, &url, &json!({ "lora_name": name }));
                }
                return Err(e);
            }
            if let Some(reset) = routes.reset_cache {
                let url = format!("{root}{reset}");
                if let Err(e) = admin(client, &self.retry, &url, &json!({})) {
                    tracing::warn!(
                        "{}: could not drop the prefix cache after loading new adapters \
                         (POST {url}: {}); cached prompts of the previous versions may be \
                         reused (vLLM offers the call with VLLM_SERVER_DEV_MODE=1)",
                        client.endpoint,
                        e.detail
                    );
                }
            }
        }
        let mut replaced = Vec::new();
        for v in versions {
            self.models.insert(v.agent.clone(), v.name.clone());
            if let Some(old) = self.loaded.insert(v.agent.clone(), v.name.clone()) {
                if old != v.name {
                    replaced.push(old);
                }
            }
        }
        self.unload_everywhere(&replaced);
        Ok(())
    }
}

impl RemoteSampler {
    /// Unloads every adapter version this sampler loaded (at the end of a stage), so that
    /// servers do not accumulate a run's versions; failures are logged.
    pub fn release_adapters(&mut self) {
        let names: Vec<String> = std::mem::take(&mut self.loaded).into_values().collect();
        self.unload_everywhere(&names);
    }

    /// Unloads `names` on every endpoint that can; failures are logged (a version left loaded
    /// costs the server memory, not the run its results).
    fn unload_everywhere(&self, names: &[String]) {
        for (i, client) in self.clients.iter().enumerate() {
            let Some(routes) = self.engines[i].and_then(Engine::adapter_routes) else {
                continue;
            };
            let url = format!("{}{}", client.endpoint.root_url(), routes.unload);
            for name in names {
                if let Err(e) = admin(client, &self.retry, &url, &json!({ "lora_name": name })) {
                    tracing::warn!(
                        "{}: could not unload the adapter `{name}`: {}",
                        client.endpoint,
                        e.detail
                    );
                }
            }
        }
    }
}

/// Loads `versions` on one endpoint (`served`: the names it served before), replacing a
/// version of the same name an earlier run left there.
fn load_on(
    client: &Client,
    retry: &RetryPolicy,
    routes: &AdapterRoutes,
    served: &[String],
    versions: &[AdapterVersion],
) -> Result<(), SamplerError> {
    let root = client.endpoint.root_url();
    for v in versions {
        let path = v.server_path(client);
        if served.contains(&v.name) {
            // Left by a run that stopped between loading and sampling: replaced, since its
            // weights may not be these.
            tracing::info!(
                "{}: replacing the adapter `{}` an earlier run left loaded",
                client.endpoint,
                v.name
            );
            admin(
                client,
                retry,
                &format!("{root}{}", routes.unload),
                &json!({ "lora_name": v.name }),
            )
            .map_err(|e| SamplerError(e.message(client, &v.name, None)))?;
        }
        admin(
            client,
            retry,
            &format!("{root}{}", routes.load),
            &json!({ "lora_name": v.name, "lora_path": path }),
        )
        .map_err(|e| SamplerError(e.message(client, &v.name, Some(&path))))?;
        tracing::debug!("{}: loaded `{}` from {path}", client.endpoint, v.name);
    }
    Ok(())
}

/// Why an administrative call failed.
struct AdminError {
    detail: String,
    status: Option<u16>,
}

impl AdminError {
    /// The run's error for a failed load (`path`: what the server was given) or unload.
    fn message(&self, client: &Client, name: &str, path: Option<&str>) -> String {
        let endpoint = &client.endpoint;
        match path {
            Some(path) => {
                let hint = match self.status {
                    Some(401 | 403) => {
                        " Check the API key (`api_key_env` of this endpoint).".to_owned()
                    }
                    Some(404 | 405) if !self.detail.contains(path) => {
                        " vLLM offers runtime LoRA loading only when started with \
                         VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (and --enable-lora)."
                            .to_owned()
                    }
                    _ => format!(
                        " The path is read on the server's own disk: set `adapter_root` on \
                         this [[generation.endpoints]] table to where the server sees the run \
                         directory{}.",
                        match &endpoint.adapter_root {
                            Some(r) => format!(" (now {r:?})"),
                            None => String::new(),
                        }
                    ),
                };
                format!(
                    "endpoint {endpoint}: cannot load the adapter `{name}` from {path}: {}; the \
                     server keeps serving the previous version.{hint} The run stopped before \
                     sampling with it; rerun to resume",
                    self.detail
                )
            }
            None => format!(
                "endpoint {endpoint}: cannot unload the adapter `{name}`: {}",
                self.detail
            ),
        }
    }
}

/// POSTs `body` to `url`, retrying connection failures, 408, 429 and 5xx within the retry
/// budget.
fn admin(client: &Client, retry: &RetryPolicy, url: &str, body: &Value) -> Result<(), AdminError> {
    call_with_retries(client, retry, url, Some(body)).map(|_| ())
}

/// The model names the server lists (`GET /v1/models`).
fn served_names(client: &Client, retry: &RetryPolicy) -> Result<Vec<String>, SamplerError> {
    let url = client.endpoint.models_url();
    let body = call_with_retries(client, retry, &url, None).map_err(|e| {
        SamplerError(format!(
            "endpoint {}: GET {url}: {}",
            client.endpoint, e.detail
        ))
    })?;
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    Ok(v.get("data")
        .and_then(Value::as_array)
        .map(|cards| {
            cards
                .iter()
                .filter_map(|c| c.get("id")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

fn call_with_retries(
    client: &Client,
    retry: &RetryPolicy,
    url: &str,
    body: Option<&Value>,
) -> Result<String, AdminError> {
    let mut waited = Duration::ZERO;
    let mut failures = 0u32;
    loop {
        let (error, retry_after) = match client.send(url, body) {
            Ok((status, text)) => match classify_status(status) {
                StatusClass::Success => return Ok(text),
                StatusClass::Retry => (format!("HTTP {status}: {}", error_message(&text)), None),
                StatusClass::Refused | StatusClass::Fatal => {
                    return Err(AdminError {
                        detail: format!("HTTP {status}: {}", error_message(&text)),
                        status: Some(status),
                    })
                }
            },
            Err(Outcome::Retry { error, retry_after }) => (error, retry_after),
            Err(Outcome::Fatal(m) | Outcome::Refused(m)) => {
                return Err(AdminError {
                    detail: m,
                    status: None,
                })
            }
            Err(Outcome::Choices(_)) => unreachable!("an administrative call has no choices"),
        };
        failures += 1;
        let wait = retry
            .backoff(failures, 0)
            .max(retry_after.unwrap_or_default());
        if failures > retry.retries || waited + wait > retry.max_wait {
            return Err(AdminError {
                detail: format!("{error} (gave up after {failures} attempts)"),
                status: None,
            });
        }
        tracing::warn!(
            "{}: {url} failed: {error}; retrying in {:.1} s",
            client.endpoint,
            wait.as_secs_f64()
        );
        waited += wait;
        std::thread::sleep(wait);
    }
}
