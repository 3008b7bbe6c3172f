//! One HTTP attempt against one endpoint, turned into an [`Outcome`].

use serde_json::Value;

use crate::endpoint::Endpoint;
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
            // A fresh connection per request. A request generates n completions (seconds), so
            // a handshake is noise; and `malt serve` 0.1 (tiny_http 0.12) was seen leaving a
            // request unread on a reused keep-alive connection until another client connected,
            // stalling a batch for the whole timeout.
            .max_idle_connections(0)
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
