//! A thin wrapper over `tokenizers::Tokenizer` that also carries what generation and chat
//! templates need from `tokenizer_config.json` (or GGUF metadata): bos/eos strings, the chat
//! template, and the set of token ids that end a turn.

use crate::error::{ModelError, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

/// Turn-ending tokens of common chat formats; only used when present in the vocabulary.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "</s>",
    "<end_of_turn>",
];

impl Tokenizer {
    pub fn new(inner: tokenizers::Tokenizer) -> Self {
        Tokenizer {
            inner,
            bos_token: None,
            eos_token: None,
            chat_template: None,
        }
    }

    /// `tokenizer.json` plus, when present, `tokenizer_config.json` and `chat_template.jinja`.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tpath = dir.join("tokenizer.json");
        if !tpath.exists() {
            return Err(ModelError::MissingFile { path: tpath });
        }
        let inner = tokenizers::Tokenizer::from_file(&tpath)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tpath.display())))?;
        let mut t = Tokenizer::new(inner);
        let cpath = dir.join("tokenizer_config.json");
        if cpath.exists() {
            let text = std::fs::read_to_string(&cpath).map_err(|e| ModelError::io(&cpath, e))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
                file: cpath.clone(),
                msg: e.to_string(),
            })?;
            t.bos_token = token_str(v.get("bos_token"));
            t.eos_token = token_str(v.get("eos_token"));
            t.chat_template = match v.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(a)) => a
                    .iter()
                    .find(|e| e.get("name").and_then(Value::as_str) == Some("default"))
                    .or_else(|| a.first())
                    .and_then(|e| e.get("template"))
                    .and_then(Value::as_str)
                    .map(String::from),
                _ => None,
            };
        }
        let jpath = dir.join("chat_template.jinja");
        if jpath.exists() {
            t.chat_template =
                Some(std::fs::read_to_string(&jpath).map_err(|e| ModelError::io(&jpath, e))?);
        }
        Ok(t)
    }

    /// From GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`), for the
    /// (`tokenizer.ggml.model`, `tokenizer.ggml.pre`) pairs in [`crate::gguf_tokenizer::CHECKED`].
    pub fn from_gguf(ct: &candle_core::quantized::gguf_file::Content) -> Result<Self> {
        let inner = crate::gguf_tokenizer::from_gguf(ct)?;
        let mut t = Tokenizer::new(inner);
        let id_tok = |key: &str| -> Option<String> {
            let id = ct.metadata.get(key)?.to_u32().ok()?;
            t.inner.id_to_token(id)
        };
        let bos = id_tok("tokenizer.ggml.bos_token_id");
        let eos = id_tok("tokenizer.ggml.eos_token_id");
        t.bos_token = bos;
        t.eos_token = eos;
        t.chat_template = ct
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        Ok(t)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.inner.token_to_id(t)
    }

    /// `add_special`: the tokenizer's post-processor (e.g. BOS); rendered chat prompts already
    /// contain their special tokens, so pass false for them.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, add_special)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Ids that end generation: the model's eos ids, the tokenizer's eos token and known
    /// end-of-turn tokens present in the vocabulary.
    pub fn stop_ids(&self, config_eos: &[u32]) -> Vec<u32> {
        let mut ids: Vec<u32> = config_eos.to_vec();
        if let Some(id) = self.eos_token.as_deref().and_then(|t| self.token_to_id(t)) {
            ids.push(id);
        }
        for t in END_OF_TURN {
            if let Some(id) = self.token_to_id(t) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Writes `tokenizer.json` and a `tokenizer_config.json` with bos/eos and the chat template.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        let tpath = dir.join("tokenizer.json");
        self.inner
            .save(&tpath, false)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tpath.display())))?;
        let mut cfg = serde_json::Map::new();
        cfg.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        if let Some(b) = &self.bos_token {
            cfg.insert("bos_token".into(), b.clone().into());
        }
        if let Some(e) = &self.eos_token {
            cfg.insert("eos_token".into(), e.clone().into());
        }
        if let Some(c) = &self.chat_template {
            cfg.insert("chat_template".into(), c.clone().into());
        }
        let cpath = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&Value::Object(cfg))
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        std::fs::write(&cpath, text).map_err(|e| ModelError::io(&cpath, e))
    }
}

/// Text whose ids tell tokenizers apart where they usually differ: the first word of a segment
/// (a prefix space), digits and the space before them, punctuation, whitespace runs, line ends,
/// accents, CJK, emoji and LaTeX.
pub const PROBE_TEXT: &str = "Tom has 3 apples.\nThe capital of France is Paris; 12345 + 0.5 = \
                              ½ × 2² \t  café 東京 🙂 \\frac{1}{2}\r\n\n  What's   it? ";

/// A chat whose rendering and ids probe the template's special tokens and turn separators.
fn probe_chat() -> [crate::chat::Message; 4] {
    use crate::chat::Message;
    [
        Message::system("You answer in one line."),
        Message::user("What is 2 + 3?"),
        Message::assistant("2 + 3 = 5."),
        Message::user("Tom has 3 apples and eats 1. How many are left?"),
    ]
}

/// Identifies a model's text side: a sha256 over the ids of [`PROBE_TEXT`] (with and without
/// the tokenizer's special tokens), the rendered probe chat and its ids, and the chat template's
/// source. Two tokenizers with the same fingerprint give the same ids on the probes; a fix of
/// the tokenizer or a new template changes it, so stages sampled or trained on the old ids are
/// recomputed.
pub fn fingerprint(tok: &Tokenizer, chat: &crate::chat::ChatTemplate) -> Result<String> {
    use malt_base::hash::sha256_hex;
    let rendered = chat.render(&probe_chat(), true)?;
    let v = serde_json::json!({
        "probe": tok.encode(PROBE_TEXT, false)?,
        "probe_special": tok.encode(PROBE_TEXT, true)?,
        "chat_text": rendered,
        "chat_ids": tok.encode(&rendered, false)?,
        "template_sha256": sha256_hex(chat.source.as_bytes()),
        "bos": chat.bos_token,
        "eos": chat.eos_token,
        "vocab": tok.vocab_size(),
    });
    Ok(sha256_hex(v.to_string().as_bytes()))
}
