//! Request limits of the server (the `[serve]` config section).

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_n: 16,
            max_tokens: 2048,
            max_body_bytes: 1 << 20,
            max_queue: 32,
            request_timeout: Duration::from_secs(300),
        }
    }
}

impl Limits {
    /// Handler threads: one per admitted request plus a few, so `/health` and `/v1/models`
    /// answer (and an over-limit request gets its 429) while the queue is full.
    pub fn handler_threads(&self) -> usize {
        self.max_queue + 4
    }
}
