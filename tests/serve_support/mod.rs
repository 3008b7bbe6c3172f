//! What the `malt serve` tests share: a tiny random model and a PEFT adapter under a run
//! directory, an in-process server over them, and small HTTP helpers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use malt_engine::serve_backend::{Batching, EngineSettings, ModelServeBackend};
use malt_engine::ModelSampler;
use malt_model::candle_core::{Device, Tensor};
use malt_model::{LoraAdapter, LoraConfig, Model, ModelConfig, Proj};
use malt_serve::{Limits, Server};
use malt_tree::{SampleRequest, Sampler};
use serde_json::{json, Value};

pub const CONTEXT: usize = 256;

pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        max_position_embeddings: CONTEXT,
        tie_word_embeddings: false,
        ..ModelConfig::llama(96, 64, 128, 2, 4, 2)
    }
}

/// Writes `dir/model` (HF format) and `dir/run/adapters/generator/sft` (PEFT, B != 0).
pub fn write_fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let model_dir = dir.join("model");
    let model = Model::random(tiny_config(), &Device::Cpu).expect("random model");
    model.export_merged(&model_dir, None).expect("export");
    let adapter = model
        .new_adapter("generator", LoraConfig::default(), 3)
        .expect("adapter");
    nonzero_b(&adapter);
    let run_dir = dir.join("run");
    adapter
        .save_peft(&run_dir.join("adapters/generator/sft"), "tiny")
        .expect("save adapter");
    (model_dir, run_dir)
}

/// A fresh adapter equals the base model (B = 0); give it weight so it answers differently.
pub fn nonzero_b(a: &LoraAdapter) {
    for layer in 0..tiny_config().num_hidden_layers {
        for p in Proj::ALL {
            if let Some(pair) = a.get(layer, p) {
                let shape = pair.b.as_tensor().dims().to_vec();
                let t = Tensor::randn(0f32, 0.5, shape.as_slice(), &Device::Cpu).expect("randn");
                pair.b.set(&t).expect("set B");
            }
        }
    }
}

pub fn load(model_dir: &Path, run_dir: &Path) -> (Model, LoraAdapter) {
    let model = Model::load_hf_dir(model_dir, &Device::Cpu, None).expect("load model");
    let adapter = model
        .load_adapter(&run_dir.join("adapters/generator/sft"), "generator")
        .expect("load adapter");
    (model, adapter)
}

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub model_dir: PathBuf,
    pub run_dir: PathBuf,
    pub _server: Server,
    pub url: String,
}

pub fn start(limits: Limits, batch: Batching) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let (model_dir, run_dir) = write_fixture(dir.path());
    start_on(dir, model_dir, run_dir, limits, batch)
}

/// A second server on the same checkpoint as `f`.
pub fn start_like(f: &Fixture, limits: Limits, batch: Batching) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    start_on(dir, f.model_dir.clone(), f.run_dir.clone(), limits, batch)
}

/// `malt serve` in process on a free loopback port: `model` as "tiny", with `adapters`.
pub fn server_over(
    model: Model,
    adapters: Vec<(String, LoraAdapter)>,
    limits: Limits,
    batching: Batching,
) -> Server {
    let backend = ModelServeBackend::start(
        model,
        "tiny",
        adapters,
        None,
        EngineSettings {
            batching,
            max_batch: 64,
            timeout_s: limits.request_timeout.as_secs_f64(),
        },
    )
    .expect("backend");
    Server::start("127.0.0.1:0", Arc::new(backend), limits).expect("server")
}

pub fn start_on(
    dir: tempfile::TempDir,
    model_dir: PathBuf,
    run_dir: PathBuf,
    limits: Limits,
    batching: Batching,
) -> Fixture {
    let (model, adapter) = load(&model_dir, &run_dir);
    let server = server_over(model, vec![("generator".into(), adapter)], limits, batching);
    let url = format!("http://{}", server.addr());
    Fixture {
        _dir: dir,
        model_dir,
        run_dir,
        _server: server,
        url,
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// (status, body as JSON, Retry-After).
pub fn post(url: &str, body: &str) -> (u16, Value, Option<String>) {
    let resp = agent()
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .expect("request");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.into_body().read_to_string().expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, v, retry)
}

pub fn get(url: &str) -> (u16, Value) {
    let resp = agent().get(url).call().expect("request");
    let status = resp.status().as_u16();
    let text = resp.into_body().read_to_string().expect("body");
    (status, serde_json::from_str(&text).expect("JSON"))
}

pub fn chat(base: &str, body: Value) -> (u16, Value) {
    let (s, v, _) = post(&format!("{base}/v1/chat/completions"), &body.to_string());
    (s, v)
}

pub fn texts(v: &Value) -> Vec<String> {
    v["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .map(|c| {
            c["message"]["content"]
                .as_str()
                .expect("content")
                .to_owned()
        })
        .collect()
}

pub fn request(model: &str, n: usize, seed: u64) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "system", "content": "t3 t4"}, {"role": "user", "content": "t5 t6 t7"}],
        "n": n, "seed": seed, "temperature": 0.8, "top_p": 0.95, "max_tokens": 12,
    })
}

/// What the embedded sampler gives `agent` for `request`'s messages at temperature 0.8 and
/// 12 tokens, one completion per seed.
pub fn embedded(
    sampler: &mut ModelSampler<'_>,
    agent: &str,
    top_p: f64,
    top_k: u32,
    seeds: &[u64],
) -> Vec<malt_tree::Completion> {
    let messages = [
        malt_tree::Message::new("system", "t3 t4"),
        malt_tree::Message::new("user", "t5 t6 t7"),
    ];
    let params = malt_tree::SamplingParams {
        temperature: 0.8,
        top_p,
        top_k,
        max_new_tokens: 12,
        stop: vec![],
    };
    sampler
        .sample(&[SampleRequest {
            agent,
            messages: &messages,
            params: &params,
            seeds,
        }])
        .expect("sample")
        .pop()
        .unwrap()
        .expect("completions")
}

/// Writes a PEFT adapter with its own non-zero B under `dir/name`.
pub fn write_adapter(model_dir: &Path, dir: &Path, name: &str, seed: u64) -> PathBuf {
    let model = Model::load_hf_dir(model_dir, &Device::Cpu, None).expect("load model");
    let adapter = model
        .new_adapter(name, LoraConfig::default(), seed)
        .expect("adapter");
    nonzero_b(&adapter);
    let path = dir.join(name);
    adapter.save_peft(&path, "tiny").expect("save adapter");
    path
}

pub fn model_ids(url: &str) -> Vec<String> {
    let (s, models) = get(&format!("{url}/v1/models"));
    assert_eq!(s, 200, "{models}");
    models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}
