//! `malt serve`'s runtime adapters (vLLM's `load_lora_adapter` / `unload_lora_adapter`) on
//! the real server on 127.0.0.1 over a tiny random model, in-process.

mod serve_support;

use malt_engine::serve_backend::Batching;
use malt_engine::ModelSampler;
use malt_model::candle_core::Device;
use malt_model::Model;
use malt_serve::Limits;
use serde_json::{json, Value};
use serve_support::*;

/// vLLM's runtime LoRA endpoints on `malt serve`: a versioned adapter is loaded, listed,
/// served (with the embedded sampler's completions and log-probs) and unloaded; a path the
/// server cannot read gets a 4xx naming it while the loaded versions keep serving; loading
/// other weights under a name already served changes what it answers.
#[test]
fn adapters_load_list_serve_and_unload_at_run_time() {
    let f = start(Limits::default(), Batching::Continuous);
    let url = &f.url;
    let tmp = tempfile::tempdir().expect("tempdir");
    let v1 = write_adapter(&f.model_dir, tmp.path(), "v1", 11);
    let v2 = write_adapter(&f.model_dir, tmp.path(), "v2", 12);
    let load = |body: Value| post(&format!("{url}/v1/load_lora_adapter"), &body.to_string());
    let unload = |name: &str| {
        post(
            &format!("{url}/v1/unload_lora_adapter"),
            &json!({ "lora_name": name }).to_string(),
        )
    };

    let (s, v, _) = load(json!({"lora_name": "generator-v1", "lora_path": v1}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(model_ids(url), ["tiny", "generator", "generator-v1"]);

    // Served as the embedded sampler samples with the same weights, log-probs included.
    let model = Model::load_hf_dir(&f.model_dir, &Device::Cpu, None).expect("load model");
    let adapter = model.load_adapter(&v1, "g").expect("load v1");
    let mut sampler = ModelSampler::new(&model).with_adapter("g", adapter);
    let seeds = [3u64, 4, 5];
    let expected = embedded(&mut sampler, "g", 1.0, 0, &seeds);
    let body = |model: &str| {
        let mut b = request(model, 3, 0);
        b["malt_seeds"] = json!(seeds);
        b["top_p"] = json!(1.0);
        b["logprobs"] = json!(true);
        b
    };
    let (s, first) = chat(url, body("generator-v1"));
    assert_eq!(s, 200, "{first}");
    let want: Vec<String> = expected.iter().map(|c| c.text.clone()).collect();
    assert_eq!(texts(&first), want);
    for (c, e) in first["choices"].as_array().unwrap().iter().zip(&expected) {
        let ids: Vec<u32> = serde_json::from_value(c["token_ids"].clone()).unwrap();
        let lps: Vec<f64> = c["logprobs"]["content"]
            .as_array()
            .expect("logprobs")
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect();
        let recorded = e.logprobs.as_ref().expect("recorded log-probs");
        assert_eq!((lps.len(), Some(&ids)), (ids.len(), e.token_ids.as_ref()));
        for (a, b) in lps.iter().zip(recorded) {
            assert!((a - *b as f64).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!(
            c["logprobs"]["content"][0]["token"],
            format!("token_id:{}", ids[0])
        );
    }

    // A path the server cannot read: 4xx naming it; what was served stays served.
    let (s, v, _) = load(json!({"lora_name": "generator-v2", "lora_path": "/no/such/adapter"}));
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("/no/such/adapter"), "{v}");
    let (s, v, _) = load(json!({"lora_name": "generator-v2", "lora_path": tmp.path()}));
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("adapter_config.json"), "{v}");
    assert_eq!(model_ids(url), ["tiny", "generator", "generator-v1"]);
    assert_eq!(texts(&chat(url, body("generator-v1")).1), want);

    // A name already served is refused unless replaced in place; other weights under it answer
    // otherwise (the prefix pool is keyed on the weights, not the name).
    let (s, v, _) = load(json!({"lora_name": "generator-v1", "lora_path": v2}));
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("load_inplace"), "{v}");
    let (s, v, _) =
        load(json!({"lora_name": "generator-v1", "lora_path": v2, "load_inplace": true}));
    assert_eq!(s, 200, "{v}");
    let replaced = texts(&chat(url, body("generator-v1")).1);
    assert_ne!(
        replaced, want,
        "other weights under the same name answered the same"
    );
    // Back to the first weights through unload + load: the first answers again.
    assert_eq!(unload("generator-v1").0, 200);
    assert_eq!(
        load(json!({"lora_name": "generator-v1", "lora_path": v1})).0,
        200
    );
    assert_eq!(texts(&chat(url, body("generator-v1")).1), want);

    // Unloaded: no longer listed or served; a second unload is a 404.
    let (s, v, _) = unload("generator-v1");
    assert_eq!(s, 200, "{v}");
    assert_eq!(model_ids(url), ["tiny", "generator"]);
    let (s, v) = chat(url, body("generator-v1"));
    assert_eq!(s, 404, "{v}");
    assert_eq!(unload("generator-v1").0, 404);
    // The base name is not an adapter's; what these endpoints take is checked.
    assert_eq!(load(json!({"lora_name": "tiny", "lora_path": v1})).0, 400);
    assert_eq!(load(json!({"lora_path": v1})).0, 400);
    let mut b = body("generator");
    b["top_logprobs"] = json!(2);
    assert_eq!(chat(url, b).0, 400);
    let mut b = body("generator");
    b["stream"] = json!(true);
    assert_eq!(chat(url, b).0, 400);
    // Loading and unloading never stopped the server.
    assert_eq!(chat(url, request("generator", 2, 1)).0, 200);
}
