//! OpenAI-shaped errors: `{"error":{"message","type","param","code"}}` with an HTTP status.

use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `not_found_error`, `rate_limit_error`, ...
    pub kind: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, sent as `Retry-After` (429 and 503).
    pub retry_after: Option<u64>,
    /// Sent as `Allow` (405).
    pub allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
            allow: None,
        }
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The same error under another status (431 for an oversized head, ...).
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        if status == 413 {
            self.code = Some("request_too_large");
        }
        self
    }

    /// 401: no or a wrong bearer token.
    pub fn unauthorised(had_header: bool) -> Self {
        Self::new(
            401,
            "invalid_request_error",
            if had_header {
                "incorrect API key: send `Authorization: Bearer <key>` with the key held by \
                 the server's [serve] api_key_env variable"
            } else {
                "this server needs an API key: send `Authorization: Bearer <key>` (the key \
                 held by the server's [serve] api_key_env variable)"
            },
        )
        .with_code("invalid_api_key")
    }

    /// 408: the request did not arrive within the read timeout.
    pub fn read_timeout(secs: f64) -> Self {
        Self::new(
            408,
            "invalid_request_error",
            format!(
                "the request was not received within {secs} s of its first byte \
                 ([serve] read_timeout_s); the connection is closed"
            ),
        )
        .with_code("request_timeout")
    }

    /// 400: the request is wrong; the message says what to change.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }

    /// 400 naming the field at fault.
    pub fn invalid_field(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(message).with_param(param)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found_error", message)
    }

    pub fn method_not_allowed(method: &str, path: &str, allow: &'static str) -> Self {
        let mut e = Self::new(
            405,
            "invalid_request_error",
            format!("{method} is not allowed on {path}; use {allow}"),
        )
        .with_code("method_not_allowed");
        e.allow = Some(allow);
        e
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            format!(
                "request body is larger than this server's limit of {limit} bytes \
                 ([serve] max_body_bytes)"
            ),
        )
        .with_code("request_too_large")
    }

    pub fn queue_full(limit: usize) -> Self {
        let mut e = Self::new(
            429,
            "rate_limit_error",
            format!(
                "the server already has {limit} requests in flight ([serve] max_queue); \
                 retry after the Retry-After delay"
            ),
        )
        .with_code("queue_full");
        e.retry_after = Some(1);
        e
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        let mut e = Self::new(503, "timeout_error", message).with_code("timeout");
        e.retry_after = Some(1);
        e
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(503, "server_error", message).with_code("unavailable");
        e.retry_after = Some(1);
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "server_error", message).with_code("internal_error")
    }

    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}
