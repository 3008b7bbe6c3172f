//! When to try a request again and how long to wait first.

use std::time::Duration;

use sha2::{Digest, Sha256};

/// The retry budget of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub retries: u32,
    /// First wait; doubled at each retry.
    pub backoff: Duration,
    /// Cap of one wait.
    pub max_backoff: Duration,
    /// Total waiting one request may accumulate before the batch fails.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 8,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_wait: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// Wait before attempt `failures + 1` (after `failures` failed ones): exponential, capped,
    /// with "equal jitter" (between half and all of it) so that the requests of a batch that
    /// failed together do not all come back at the same instant. The jitter is a hash of the
    /// request's first seed, so a rerun waits the same way.
    pub fn backoff(&self, failures: u32, seed: u64) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let full = exp.min(self.max_backoff);
        let mut h = Sha256::new();
        h.update(b"malt-remote-jitter/v1");
        h.update(seed.to_le_bytes());
        h.update(failures.to_le_bytes());
        let d = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        let u = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
        full.mul_f64(0.5 + 0.5 * u)
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Completions by choice index (`None`: not returned).
    Choices(Vec<Option<malt_tree::Completion>>),
    /// Worth trying again (connection, timeout, 408, 429, 5xx, unreadable body).
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The server refused this request (4xx): its nodes are errored, generation goes on.
    Refused(String),
    /// The endpoint is misconfigured (bad key, URL or model name): every request would fail
    /// the same way, so the run stops rather than store trees of errors.
    Fatal(String),
}

/// How a status code is handled.
pub fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Success,
        408 | 429 | 500..=599 => StatusClass::Retry,
        401 | 403 | 404 => StatusClass::Fatal,
        _ => StatusClass::Refused,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    Retry,
    Refused,
    Fatal,
}

/// `Retry-After` in seconds (the HTTP-date form is ignored: the backoff applies instead).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jitter_is_deterministic() {
        let p = RetryPolicy {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for f in 1..10 {
            let d = p.backoff(f, 42);
            assert_eq!(d, p.backoff(f, 42));
            let full = Duration::from_millis(100 * (1 << (f - 1))).min(p.max_backoff);
            assert!(d >= full / 2 && d <= full, "{f}: {d:?}");
        }
        assert_ne!(p.backoff(3, 1), p.backoff(3, 2));
    }

    #[test]
    fn statuses_and_retry_after() {
        assert_eq!(classify_status(200), StatusClass::Success);
        assert_eq!(classify_status(429), StatusClass::Retry);
        assert_eq!(classify_status(503), StatusClass::Retry);
        assert_eq!(classify_status(408), StatusClass::Retry);
        assert_eq!(classify_status(400), StatusClass::Refused);
        assert_eq!(classify_status(422), StatusClass::Refused);
        assert_eq!(classify_status(401), StatusClass::Fatal);
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
