//! `malt tokenize --model M [--chat] TEXT`: the token ids malt gives a text, one line per token
//! with its text, as llama.cpp's `llama-tokenize` prints them. Only the tokenizer is read (no
//! weights), so this is instant even for large models.

use anyhow::Context;
use malt_model::{Message, Model};
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    /// Model: `smollm2-135m-instruct` (fetched on first use), a Hugging Face directory or a .gguf file.
    #[arg(long, default_value = malt_model::fetch::DEFAULT_MODEL)]
    pub model: String,
    /// The text to tokenize (with --chat: the user message).
    pub text: String,
    /// Render TEXT as a user turn with the model's chat template and the generation prompt
    /// (as `malt generate` and training do) and tokenize that.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message (otherwise the template's default, if any).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Add the tokenizer's own special tokens (e.g. BOS where the model asks for one); a
    /// rendered chat has its special tokens already.
    #[arg(long, conflicts_with = "chat")]
    pub add_special: bool,
    /// Print only the ids, as one JSON array.
    #[arg(long)]
    pub ids: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (tokenizer, chat) = Model::load_tokenizer(&args.model)
        .with_context(|| format!("loading the tokenizer of {}", args.model))?;
    let text = if args.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &args.system {
            msgs.push(Message::system(s));
        }
        msgs.push(Message::user(&args.text));
        chat.render(&msgs, true)?
    } else {
        args.text.clone()
    };
    let ids = tokenizer.encode(&text, args.add_special && !args.chat)?;
    let mut out = std::io::stdout().lock();
    if args.ids {
        writeln!(out, "{}", serde_json::to_string(&ids)?)?;
        return Ok(());
    }
    for &id in &ids {
        // The token's own text, special tokens included, quoted with escapes so that spaces
        // and line ends show.
        let piece = tokenizer.decode(&[id], false)?;
        let raw = tokenizer.inner().id_to_token(id).unwrap_or_default();
        writeln!(out, "{id:>7} -> {piece:?}  ({raw})")?;
    }
    writeln!(out, "{} tokens", ids.len())?;
    Ok(())
}
