//! The real embedded default model. Skipped (loudly) when it is not cached, unless
//! MALT_REQUIRE_SMOLLM2 is set, in which case it is fetched and must pass.

mod common;

use malt_model::{Message, Model, SamplingParams};

const EXPECTED_PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn model() -> Option<Model> {
    common::smollm2()
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
    let out = m.complete(&ids, &params, 0, None).unwrap();
    eprintln!("SmolLM2 says: {:?}", out.text);
    assert!(out.text.contains("Paris"), "{:?}", out.text);
}
