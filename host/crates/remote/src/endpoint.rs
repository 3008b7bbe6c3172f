//! One OpenAI-compatible server as the sampler sees it: where to post, with which key, how many
//! requests at once and how long to wait.

use std::fmt;
use std::time::Duration;

use crate::engine::EngineChoice;

/// A server endpoint. The API key is held here only; `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Endpoint {
    /// The chat-completions URL requests are posted to.
    completions_url: String,
    /// The URL without user info, for logs and errors.
    shown: String,
    api_key: Option<String>,
    /// Requests in flight at once.
    pub max_concurrency: usize,
    /// Deadline of one request, generation included.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Send the `malt_seeds` extension field; `None`: only to `malt serve`.
    pub malt_seeds: Option<bool>,
    /// The engine behind the endpoint (what it honours decides the request shape).
    pub engine: EngineChoice,
    /// Where the server sees the run directory, when not at the same path as here: adapters
    /// sent to it at run time are named by their path on the server's disk.
    pub adapter_root: Option<String>,
}

impl Endpoint {
    /// `url` is a base (`http://h:8000`, `http://h:8000/v1`) or the full chat-completions URL.
    pub fn new(url: &str) -> Endpoint {
        let trimmed = url.trim_end_matches('/');
        let completions_url = if trimmed.ends_with("/chat/completions") {
            trimmed.to_owned()
        } else if trimmed.ends_with("/v1") {
            format!("{trimmed}/chat/completions")
        } else {
            format!("{trimmed}/v1/chat/completions")
        };
        Endpoint {
            shown: without_userinfo(&completions_url),
            completions_url,
            api_key: None,
            max_concurrency: 8,
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
            malt_seeds: None,
            engine: EngineChoice::Auto,
            adapter_root: None,
        }
    }

    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key.filter(|k| !k.is_empty());
        self
    }

    pub fn completions_url(&self) -> &str {
        &self.completions_url
    }

    /// The model list beside the chat-completions URL (`.../v1/models`).
    pub fn models_url(&self) -> String {
        let base = self
            .completions_url
            .strip_suffix("/chat/completions")
            .unwrap_or(&self.completions_url);
        format!("{base}/models")
    }

    /// The server's root (`http://h:8000` for `http://h:8000/v1/chat/completions`), under which
    /// engines put their administrative routes.
    pub fn root_url(&self) -> String {
        let base = self
            .completions_url
            .strip_suffix("/chat/completions")
            .unwrap_or(&self.completions_url);
        base.strip_suffix("/v1").unwrap_or(base).to_owned()
    }

    pub(crate) fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }
}

/// `scheme://user:pass@host/...` -> `scheme://host/...`: credentials in a URL stay out of logs.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.shown)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("max_concurrency", &self.max_concurrency)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("malt_seeds", &self.malt_seeds)
            .field("engine", &self.engine)
            .field("adapter_root", &self.adapter_root)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_completed_and_credentials_hidden() {
        assert_eq!(
            Endpoint::new("http://h:1").completions_url(),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            Endpoint::new("http://h:1/v1/").completions_url(),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            Endpoint::new("https://h/x/v1/chat/completions").completions_url(),
            "https://h/x/v1/chat/completions"
        );
        assert_eq!(
            Endpoint::new("https://h/x/v1/chat/completions").models_url(),
            "https://h/x/v1/models"
        );
        assert_eq!(Endpoint::new("http://h:1/v1").root_url(), "http://h:1");
        assert_eq!(Endpoint::new("http://h:1").root_url(), "http://h:1");
        let e = Endpoint::new("http://me:secret@h:1/v1").with_api_key(Some("sk-123".into()));
        assert_eq!(e.to_string(), "http://h:1/v1/chat/completions");
        let dbg = format!("{e:?}");
        assert!(!dbg.contains("secret") && !dbg.contains("sk-123"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
    }
}
