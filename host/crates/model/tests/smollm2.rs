//! The real embedded default model. Skipped (loudly) when it is not cached, unless
//! MALT_REQUIRE_SMOLLM2 is set, in which case it is fetched and must pass.

use candle_core::Device;
use malt_model::{fetch, Message, Model, SamplingParams};

const EXPECTED_PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn model() -> Option<Model> {
    let path = match fetch::smollm2_cached() {
        Some(p) => p,
        None if std::env::var_os("MALT_REQUIRE_SMOLLM2").is_some() => {
            fetch::ensure_smollm2().expect("fetching SmolLM2")
        }
        None => {
            eprintln!(
                "\n!!!!!!!! SKIPPED: SmolLM2-135M-Instruct is not cached at {} \
                 (run `malt generate --model smollm2-135m-instruct ...` once, or set \
                 MALT_REQUIRE_SMOLLM2=1 to fetch it) !!!!!!!!\n",
                fetch::smollm2_path().display()
            );
            return None;
        }
    };
    Some(Model::load_gguf(&path, &Device::Cpu, None).expect("loading SmolLM2"))
}

#[test]
fn smollm2_chat_template_and_greedy_answer() {
    let Some(m) = model() else { return };
    let cfg = m.config();
    assert_eq!(
        (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size),
        (30, 576, 49152)
    );
    let msgs = [Message::user("What is the capital of France?")];
    let prompt = m.render_chat(&msgs, true).unwrap();
    assert_eq!(prompt, EXPECTED_PROMPT);
    let ids = m.tokenizer.encode(&prompt, false).unwrap();
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 16,
        ..Default::default()
    };
    let out = m.complete(&ids, &params, None).unwrap();
    eprintln!("SmolLM2 says: {:?}", out.text);
    assert!(out.text.contains("Paris"), "{:?}", out.text);
}
