//! A tiny random Llama checkpoint in HF format (WordLevel tokenizer, ChatML template) so the
//! malt-model bridge is tested without downloads.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use malt_model::{ModelConfig, Proj};
use rand::{Rng, SeedableRng};
use serde_json::json;

pub const NUMBERS: [&str; 8] = [
    "one", "two", "three", "four", "five", "six", "seven", "eight",
];

fn words() -> Vec<String> {
    let mut w: Vec<String> = [
        "<unk>",
        "<|im_start|>",
        "<|im_end|>",
        "<s>",
        "system",
        "user",
        "assistant",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    w.extend(NUMBERS.iter().map(|s| s.to_string()));
    w.extend(
        ["cat", "dog", "sun", "moon", "?", "."]
            .iter()
            .map(|s| s.to_string()),
    );
    w
}

pub fn write_tiny_llama(dir: &Path, seed: u64) -> ModelConfig {
    std::fs::create_dir_all(dir).unwrap();
    let w = words();
    let cj = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": w.len(),
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": false,
        "bos_token_id": 3, "eos_token_id": 2,
    });
    std::fs::write(dir.join("config.json"), cj.to_string()).unwrap();
    let c = ModelConfig::from_hf_json(&cj, Path::new("config.json")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut r = |shape: &[usize], scale: f32, off: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| off + rng.random_range(-scale..scale))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    let h = c.hidden_size;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert(
        "model.embed_tokens.weight".into(),
        r(&[c.vocab_size, h], 1.0, 0.0),
    );
    t.insert("model.norm.weight".into(), r(&[h], 0.2, 1.0));
    t.insert("lm_head.weight".into(), r(&[c.vocab_size, h], 0.3, 0.0));
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        t.insert(format!("{p}.input_layernorm.weight"), r(&[h], 0.2, 1.0));
        t.insert(
            format!("{p}.post_attention_layernorm.weight"),
            r(&[h], 0.2, 1.0),
        );
        for proj in Proj::ALL {
            let (o, i_) = proj.dims(&c);
            let s = 1.5 / (i_ as f32).sqrt();
            t.insert(
                format!("{p}.{}.{}.weight", proj.module(), proj.hf_name()),
                r(&[o, i_], s, 0.0),
            );
        }
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = w
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), json!(i)))
        .collect();
    let added: Vec<_> = [(1, "<|im_start|>"), (2, "<|im_end|>"), (3, "<s>")]
        .iter()
        .map(|(id, c)| {
            json!({"id": id, "content": c, "single_word": false, "lstrip": false,
                               "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tj = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}});
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    let chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    let tc = json!({"bos_token": "<s>", "eos_token": {"content": "<|im_end|>"}, "chat_template": chatml});
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    c
}

fn prompts(n: usize, seed: u64) -> Vec<(String, usize)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let a = rng.random_range(0..8);
            let b = rng.random_range(0..8);
            (format!("{} {} ?", NUMBERS[a], NUMBERS[b]), b)
        })
        .collect()
}

fn m(role: &str, c: &str) -> serde_json::Value {
    json!([{"role": role, "content": c}])
}

pub fn good(i: usize) -> String {
    format!("{} cat", NUMBERS[(i * 3 + 1) % 8])
}

pub fn bad(i: usize) -> String {
    format!("{} dog", NUMBERS[(i + 5) % 8])
}

pub fn write_sft(path: &Path, n: usize, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let s: String = prompts(n, seed)
        .into_iter()
        .enumerate()
        .map(|(k, (p, i))| {
            format!("{}\n", json!({"prompt": m("user", &p), "completion": m("assistant", &good(i)), "meta": {"id": k}}))
        })
        .collect();
    std::fs::write(path, s).unwrap();
}

pub fn write_dpo(path: &Path, n: usize, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let s: String = prompts(n, seed)
        .into_iter()
        .enumerate()
        .map(|(k, (p, i))| {
            format!(
                "{}\n",
                json!({"prompt": m("user", &p), "chosen": m("assistant", &good(i)),
                "rejected": m("assistant", &bad(i)), "meta": {"id": k}})
            )
        })
        .collect();
    std::fs::write(path, s).unwrap();
}
