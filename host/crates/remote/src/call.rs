//! One HTTP attempt against one endpoint, turned into an [`Outcome`].

use serde_json::Value;

use crate::endpoint::Endpoint;
use crate::engine::Engine;
use crate::protocol::{error_message, excerpt, parse_choices};
use crate::retry::{classify_status, parse_retry_after, Outcome, StatusClass};

/// An endpoint with its HTTP agent (connection pool, timeouts).
pub(crate) struct Client {
    pub endpoint: Endpoint,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(endpoint.timeout))
            .timeout_connect(Some(endpoint.connect_timeout))
            // Status codes are classified here, with the body's message.
            .http_status_as_error(false)
            // Connections are kept alive and reused, one per worker. Idle ones are dropped after
            // 4 s, before uvicorn's default 5 s keep-alive (vLLM, SGLang) closes them under a
            // request; a connection closed anyway (a restart) fails its request, which is retried.
            .max_idle_connections(endpoint.max_concurrency.max(1))
            .max_idle_connections_per_host(endpoint.max_concurrency.max(1))
            .max_idle_age(std::time::Duration::from_secs(4))
            .user_agent(concat!("malt/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client { endpoint, agent }
    }

    /// Posts `body` and reads `n` choices.
    pub fn post(&self, body: &Value, n: usize) -> Outcome {
        let mut req = self
            .agent
            .post(self.endpoint.completions_url())
            .header("content-type", "application/json");
        if let Some(key) = self.endpoint.api_key() {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let text = body.to_string();
        let mut resp = match req.send(text.as_bytes()) {
            Ok(r) => r,
            Err(e) => return transport_error(e),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = match resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
        {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Retry {
                    error: format!("reading the response (HTTP {status}): {e}"),
                    retry_after: None,
                }
            }
        };
        match classify_status(status) {
            StatusClass::Success => match parse_choices(&body, n) {
                Ok(c) => Outcome::Choices(c),
                Err(e) => Outcome::Retry {
                    error: e,
                    retry_after: None,
                },
            },
            StatusClass::Retry => Outcome::Retry {
                error: format!("HTTP {status}: {}", error_message(&body)),
                retry_after,
            },
            StatusClass::Refused => {
                Outcome::Refused(format!("HTTP {status}: {}", error_message(&body)))
            }
            StatusClass::Fatal => Outcome::Fatal(format!(
                "HTTP {status}: {}{}",
                error_message(&body),
                match status {
                    401 | 403 => " (check the API key: `api_key_env` of this endpoint)",
                    _ => " (check the endpoint URL and the served model names: `generation.model` / `generation.models`)",
                }
            )),
        }
    }
}

impl Client {
    /// One administrative call (`body`: POST it, else GET): the status and body of any
    /// answer; connection failures are [`Outcome::Retry`] or [`Outcome::Fatal`] as for a
    /// completion request.
    pub fn send(&self, url: &str, body: Option<&Value>) -> Result<(u16, String), Outcome> {
        let auth = self.endpoint.api_key().map(|k| format!("Bearer {k}"));
        let sent = match body {
            Some(b) => {
                let mut req = self
                    .agent
                    .post(url)
                    .header("content-type", "application/json");
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                req.send(b.to_string().as_bytes())
            }
            None => {
                let mut req = self.agent.get(url);
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                req.call()
            }
        };
        let mut resp = sent.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .unwrap_or_default();
        Ok((status, text))
    }
}

/// What `GET /v1/models` said about the engine.
pub(crate) enum Probe {
    /// An engine malt knows, from the model cards' `owned_by`.
    Known(Engine),
    /// The server answered but names no engine malt knows (the reason, for the log).
    Unknown(String),
}

impl Client {
    /// Asks the endpoint's model list which engine serves it. Connection failures and 5xx are
    /// retryable (`Outcome::Retry`); a refused key is fatal.
    pub fn probe(&self) -> Result<Probe, Outcome> {
        let url = self.endpoint.models_url();
        let (status, body) = self.send(&url, None)?;
        match classify_status(status) {
            StatusClass::Success => {}
            StatusClass::Retry => {
                return Err(Outcome::Retry {
                    error: format!("GET {url}: HTTP {status}: {}", error_message(&body)),
                    retry_after: None,
                })
            }
            _ if status == 401 || status == 403 => {
                return Err(Outcome::Fatal(format!(
                    "GET {url}: HTTP {status}: {} (check the API key: `api_key_env` of this \
                     endpoint)",
                    error_message(&body)
                )))
            }
            _ => return Ok(Probe::Unknown(format!("GET {url} answered HTTP {status}"))),
        }
        let Ok(v) = serde_json::from_str::<Value>(&body) else {
            return Ok(Probe::Unknown(format!("GET {url} did not answer JSON")));
        };
        Ok(match Engine::from_models(&v) {
            Some(e) => Probe::Known(e),
            None => Probe::Unknown(format!(
                "the model cards of GET {url} name no engine malt knows (owned_by: {})",
                v.get("data")
                    .and_then(Value::as_array)
                    .and_then(|d| d.first())
                    .and_then(|c| c.get("owned_by"))
                    .map(Value::to_string)
                    .unwrap_or_else(|| "none".into())
            )),
        })
    }
}

/// Connection-level failures are retried (the server may be restarting); a URL or TLS setup
/// that can never work is fatal.
fn transport_error(e: ureq::Error) -> Outcome {
    use ureq::Error as E;
    match e {
        E::BadUri(_) | E::InvalidProxyUrl | E::Http(_) => {
            Outcome::Fatal(format!("cannot send the request: {e}"))
        }
        other => Outcome::Retry {
            error: excerpt(&other.to_string()),
            retry_after: None,
        },
    }
}
