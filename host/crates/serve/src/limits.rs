//! Request limits of the server (the `[serve]` config section).

use std::fmt;
use std::time::Duration;

/// `Debug` shows whether a key is set, never the key.
#[derive(Clone, PartialEq)]
pub struct Limits {
    /// Largest `n` (choices per request) and `k` (chain attempts).
    pub max_n: usize,
    /// Largest `max_tokens` a request may ask for; also the default when it asks for none
    /// (capped by what the context leaves after the prompt).
    pub max_tokens: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Generation and chain requests admitted at once (running or waiting for the engine);
    /// one more gets 429 with Retry-After.
    pub max_queue: usize,
    /// A generation or chain request not finished by then gets 503 (code `timeout`).
    pub request_timeout: Duration,
    /// A request must arrive whole (head and body) within this long of its first byte (408).
    pub read_timeout: Duration,
    /// How long an idle keep-alive connection is kept open.
    pub keep_alive: Duration,
    /// Connections open at once; one more gets 503 and is closed.
    pub max_connections: usize,
    /// The bearer token every endpoint but `/health` requires (`None`: no authentication).
    pub api_key: Option<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_n: 16,
            max_tokens: 2048,
            max_body_bytes: 1 << 20,
            max_queue: 32,
            request_timeout: Duration::from_secs(300),
            read_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(30),
            max_connections: 32 + 32,
            api_key: None,
        }
    }
}

impl Limits {
    /// Connections for `max_queue` admitted requests plus 32 more, so that idle keep-alive
    /// clients, `/health` and over-limit requests (their 429) are answered.
    pub fn connections_for(max_queue: usize) -> usize {
        max_queue + 32
    }
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field("max_n", &self.max_n)
            .field("max_tokens", &self.max_tokens)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_queue", &self.max_queue)
            .field("request_timeout", &self.request_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("max_connections", &self.max_connections)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}
