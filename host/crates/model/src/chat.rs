//! Chat prompts rendered from the model's own Jinja template (as transformers does, with
//! `trim_blocks` + `lstrip_blocks` and Python string methods), ChatML when the model has none.

use crate::error::{ModelError, Result};
use minijinja::{Environment, Error, ErrorKind, Value};

/// The chat message a template renders: malt-base's, shared by every crate.
pub use malt_base::Message;

/// The template used when a model ships none (ChatML, as Qwen and SmolLM use).
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
    /// True when the model shipped no template and ChatML is used.
    pub is_fallback: bool,
}

fn env_for(source: &str) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| -> String {
        // Deterministic output matters more than the wall clock for training data.
        let _ = fmt;
        "26 Jul 2024".to_string()
    });
    // Python's json.dumps (no HTML escaping, unlike minijinja's built-in tojson).
    env.add_filter(
        "tojson",
        |v: Value, indent: Option<usize>| -> Result<Value, Error> {
            let s = match indent {
                Some(_) => serde_json::to_string_pretty(&v),
                None => serde_json::to_string(&v),
            }
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            Ok(Value::from_safe_string(s))
        },
    );
    env.add_template_owned("chat".to_string(), source.to_string())
        .map_err(|e| ModelError::Template(format!("invalid chat template: {e:#}")))?;
    Ok(env)
}

impl ChatTemplate {
    /// Checks that the template compiles.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        env_for(source)?;
        Ok(ChatTemplate {
            source: source.to_string(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            is_fallback: false,
        })
    }

    pub fn chatml() -> Self {
        ChatTemplate {
            source: CHATML.into(),
            bos_token: String::new(),
            eos_token: "<|im_end|>".into(),
            is_fallback: true,
        }
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let env = env_for(&self.source)?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| ModelError::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| ModelError::Template(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback() {
        let t = ChatTemplate::chatml();
        let s = t
            .render(&[Message::system("S"), Message::user("Hi")], true)
            .unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn hf_idioms() {
        let src = "{{ bos_token }}{% if messages[0].role != 'system' %}{{ raise_exception('need system') }}{% endif %}\n{% for m in messages %}\n{{ m['role'] | upper }}: {{ m.content.strip() }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let s = t
            .render(&[Message::system(" sys "), Message::user("q")], true)
            .unwrap();
        assert_eq!(s, "<s>SYSTEM: sys</s>\nUSER: q</s>\nA:");
        let err = t.render(&[Message::user("q")], true).unwrap_err();
        assert!(err.to_string().contains("need system"), "{err}");
    }
}
