//! Tiny random checkpoints written in HF format, so tests need no downloads.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use malt_model::{Arch, Model, ModelConfig, Proj};
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

pub const VOCAB: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct Variant {
    pub arch: Arch,
    pub tied: bool,
    pub llama3_rope: bool,
}

pub const LLAMA: Variant = Variant {
    arch: Arch::Llama,
    tied: false,
    llama3_rope: true,
};
pub const LLAMA_TIED: Variant = Variant {
    arch: Arch::Llama,
    tied: true,
    llama3_rope: false,
};
pub const QWEN2: Variant = Variant {
    arch: Arch::Qwen2,
    tied: false,
    llama3_rope: false,
};
pub const QWEN3: Variant = Variant {
    arch: Arch::Qwen3,
    tied: true,
    llama3_rope: false,
};

pub fn words() -> Vec<String> {
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
    for s in [
        "the", "capital", "of", "france", "is", "paris", "what", "a", "b", "c", "d", "e", "hello",
        "world", "answer", "final", "x", "y", "z", "?", ".", ",", "1", "2", "3", "4", "5", "6",
        "7", "8", "9", "0", "+", "=", "ok", "no", "yes", "why", "how", "one", "two", "three",
        "four", "five", "six", "seven", "eight", "nine", "ten", "cat", "dog", "sun", "moon",
        "star", "tree", "sea", "sky",
    ] {
        w.push(s.to_string());
    }
    w.truncate(VOCAB);
    assert_eq!(w.len(), VOCAB);
    w
}

pub fn tokenizer_json() -> serde_json::Value {
    let w = words();
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
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

pub fn config_json(v: Variant) -> serde_json::Value {
    let mut c = json!({
        "architectures": [v.arch.hf_class()],
        "model_type": v.arch.model_type(),
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 256,
        "tie_word_embeddings": v.tied,
        "bos_token_id": 3,
        "eos_token_id": 2,
    });
    if v.llama3_rope {
        c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
    }
    c
}

fn rand_t(rng: &mut rand::rngs::StdRng, shape: &[usize], scale: f32, offset: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| offset + rng.random_range(-scale..scale))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Random HF-named tensors for config `c`.
pub fn random_tensors(c: &ModelConfig, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = HashMap::new();
    let h = c.hidden_size;
    t.insert(
        "model.embed_tokens.weight".into(),
        rand_t(&mut rng, &[c.vocab_size, h], 1.0, 0.0),
    );
    t.insert("model.norm.weight".into(), rand_t(&mut rng, &[h], 0.2, 1.0));
    if !c.tie_word_embeddings {
        t.insert(
            "lm_head.weight".into(),
            rand_t(&mut rng, &[c.vocab_size, h], 0.3, 0.0),
        );
    }
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        t.insert(
            format!("{p}.input_layernorm.weight"),
            rand_t(&mut rng, &[h], 0.2, 1.0),
        );
        t.insert(
            format!("{p}.post_attention_layernorm.weight"),
            rand_t(&mut rng, &[h], 0.2, 1.0),
        );
        if c.qk_norm {
            t.insert(
                format!("{p}.self_attn.q_norm.weight"),
                rand_t(&mut rng, &[c.head_dim], 0.2, 1.0),
            );
            t.insert(
                format!("{p}.self_attn.k_norm.weight"),
                rand_t(&mut rng, &[c.head_dim], 0.2, 1.0),
            );
        }
        for proj in Proj::ALL {
            let (o, i_) = proj.dims(c);
            let base = format!("{p}.{}.{}", proj.module(), proj.hf_name());
            let s = 1.0 / (i_ as f32).sqrt() * 1.5;
            t.insert(format!("{base}.weight"), rand_t(&mut rng, &[o, i_], s, 0.0));
            if c.qkv_bias && matches!(proj, Proj::Q | Proj::K | Proj::V) {
                t.insert(format!("{base}.bias"), rand_t(&mut rng, &[o], 0.2, 0.0));
            }
        }
    }
    t
}

pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Writes a tiny HF checkpoint (sharded when `shards`) and returns its config.
pub fn write_tiny(dir: &Path, v: Variant, seed: u64, shards: bool) -> ModelConfig {
    std::fs::create_dir_all(dir).unwrap();
    let cj = config_json(v);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cj).unwrap(),
    )
    .unwrap();
    let cfg = ModelConfig::from_hf_json(&cj, Path::new("config.json")).unwrap();
    let t = random_tensors(&cfg, seed);
    if shards {
        let mut names: Vec<&String> = t.keys().collect();
        names.sort();
        let (a, b) = names.split_at(names.len() / 2);
        let mut map = serde_json::Map::new();
        for (file, part) in [
            ("model-00001-of-00002.safetensors", a),
            ("model-00002-of-00002.safetensors", b),
        ] {
            let sub: HashMap<String, Tensor> =
                part.iter().map(|n| ((*n).clone(), t[*n].clone())).collect();
            candle_core::safetensors::save(&sub, dir.join(file)).unwrap();
            for n in part {
                map.insert((*n).clone(), json!(file));
            }
        }
        let idx = json!({"metadata": {}, "weight_map": map});
        std::fs::write(dir.join("model.safetensors.index.json"), idx.to_string()).unwrap();
    } else {
        candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    }
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
    let tc = json!({"bos_token": "<s>", "eos_token": {"content": "<|im_end|>"}, "chat_template": CHATML});
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    cfg
}

pub fn load_tiny(v: Variant, seed: u64) -> (tempfile::TempDir, Model) {
    let d = tempfile::tempdir().unwrap();
    write_tiny(d.path(), v, seed, false);
    let m = Model::load(d.path().to_str().unwrap(), &Device::Cpu).unwrap();
    (d, m)
}

/// A batch of one sequence of token ids.
pub fn ids(v: &[u32]) -> Tensor {
    Tensor::from_vec(v.to_vec(), (1, v.len()), &Device::Cpu).unwrap()
}

/// `n` deterministic token ids, varied by `salt`.
pub fn seq(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 7 + salt * 13 + 5) % VOCAB as u32)
        .collect()
}

pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// Makes B non-zero so that every LoRA variable influences the output.
pub fn randomize_b(a: &malt_model::LoraAdapter, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (name, var) in a.named_vars() {
        if name.contains("lora_B") {
            let dims = var.dims().to_vec();
            var.set(&rand_t(&mut rng, &dims, 0.1, 0.0)).unwrap();
        }
    }
}

/// The embedded default's GGUF, or `None` after a loud skip message; fetched when
/// MALT_REQUIRE_SMOLLM2 is set (CI sets it).
pub fn smollm2_path() -> Option<std::path::PathBuf> {
    use malt_model::fetch;
    match fetch::smollm2_cached() {
        Some(p) => Some(p),
        None if std::env::var_os("MALT_REQUIRE_SMOLLM2").is_some() => {
            Some(fetch::ensure_smollm2().expect("fetching SmolLM2"))
        }
        None => {
            eprintln!(
                "\n!!!!!!!! SKIPPED: SmolLM2-135M-Instruct is not cached at {} \
                 (run `malt generate --model smollm2-135m-instruct ...` once, or set \
                 MALT_REQUIRE_SMOLLM2=1 to fetch it) !!!!!!!!\n",
                fetch::smollm2_path().display()
            );
            None
        }
    }
}

/// The embedded default loaded on the CPU (f32), or `None` after a loud skip message.
pub fn smollm2() -> Option<Model> {
    let path = smollm2_path()?;
    Some(Model::load_gguf(&path, &Device::Cpu, None).expect("loading SmolLM2"))
}
