//! `malt export` on a tiny run: a random HF model, a run directory with a manifest, PEFT
//! adapters in the layout training writes (`adapters/<agent>/{sft,dpo}`) and datasets. The
//! exported adapters and merged models load back and equal the originals; hashes, README and
//! the errors of runs with nothing to export are checked.

use std::path::{Path, PathBuf};
use std::process::Command;

use malt_model::candle_core::{Device, Tensor};
use malt_model::{LoraConfig, Model, ModelConfig, Proj};
use malt_tree::{AgentSpec, ChainSpec, CreditSettings, Manifest, RunWriter};
use serde_json::Value;

const MALT: &str = env!("CARGO_BIN_EXE_malt");

fn tiny_model(dir: &Path) -> Model {
    let cfg = ModelConfig {
        max_position_embeddings: 128,
        eos_token_ids: vec![1],
        ..ModelConfig::llama(64, 16, 32, 2, 2, 1)
    };
    Model::random(cfg, &Device::Cpu)
        .unwrap()
        .export_merged(dir, None)
        .unwrap();
    // Reload so the model is exactly what a run with this `[model] source` would use.
    Model::load(dir.to_str().unwrap(), &Device::Cpu).unwrap()
}

/// A run of generator -> verifier -> refiner with a manifest and no outputs yet.
fn run_dir(root: &Path, model: &Path) -> PathBuf {
    let run = root.join("runs/tiny");
    let chain = ChainSpec::new(vec![
        AgentSpec::new("generator", "generator", "arith", 2),
        AgentSpec::new("verifier", "verifier", "arith", 2),
        AgentSpec::new("refiner", "refiner", "arith", 2),
    ])
    .unwrap();
    let manifest = Manifest::new(
        "# config\n",
        Default::default(),
        model.to_str().unwrap(),
        7,
        chain,
        CreditSettings::default(),
    );
    drop(RunWriter::open(&run, manifest).unwrap());
    run
}

/// A trained-looking adapter (B non-zero, so merging changes the weights) saved where training
/// saves it.
fn adapter(model: &Model, run: &Path, agent: &str, phase: &str, seed: u64) {
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: Proj::ALL.to_vec(),
    };
    let a = model.new_adapter(agent, cfg, seed).unwrap();
    for (name, var) in a.named_vars() {
        if name.contains("lora_B") {
            let t = Tensor::randn(0f32, 0.1, var.dims(), &Device::Cpu).unwrap();
            var.set(&t).unwrap();
        }
    }
    a.save_peft(&run.join("adapters").join(agent).join(phase), &model.source)
        .unwrap();
}

fn datasets(run: &Path, agent: &str, phases: &[&str]) {
    let dir = run.join("datasets").join(agent);
    std::fs::create_dir_all(&dir).unwrap();
    for p in phases {
        let row = match *p {
            "sft" => {
                r#"{"prompt":[{"role":"user","content":"1+1?"}],"completion":[{"role":"assistant","content":"2"}],"meta":{}}"#
            }
            _ => {
                r#"{"prompt":[{"role":"user","content":"1+1?"}],"chosen":[{"role":"assistant","content":"2"}],"rejected":[{"role":"assistant","content":"3"}],"meta":{}}"#
            }
        };
        std::fs::write(dir.join(format!("{p}.jsonl")), format!("{row}\n{row}\n")).unwrap();
    }
}

fn export(args: &[&str], cwd: &Path) -> (bool, String) {
    let out = Command::new(MALT)
        .args(["--log", "warn", "export"])
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn export_copies_adapters_and_datasets_that_load_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model_dir = root.join("model");
    let model = tiny_model(&model_dir);
    let run = run_dir(root, &model_dir);

    // Nothing to export yet.
    let (ok, msg) = export(&["runs/tiny", "--out", "x"], root);
    assert!(
        !ok && msg.contains("neither adapters") && msg.contains("malt train"),
        "{msg}"
    );
    datasets(&run, "generator", &["sft"]);
    let (ok, msg) = export(&["runs/tiny", "--out", "x", "--merge"], root);
    assert!(!ok && msg.contains("--merge: no agent"), "{msg}");

    // generator: sft adapter; verifier: sft and dpo adapters (dpo is final); refiner: none.
    adapter(&model, &run, "generator", "sft", 1);
    adapter(&model, &run, "verifier", "sft", 2);
    adapter(&model, &run, "verifier", "dpo", 3);
    datasets(&run, "verifier", &["sft", "dpo"]);
    datasets(&run, "refiner", &["sft", "dpo"]);

    let (ok, msg) = export(&["runs/tiny", "--out", "out", "--merge"], root);
    assert!(ok, "{msg}");
    assert!(msg.contains("refiner: adapter none"), "{msg}");
    let out = root.join("out");

    // Adapters: the final phase, byte-identical weights, base model pointed at the run's.
    for (agent, phase) in [("generator", "sft"), ("verifier", "dpo")] {
        let src = run.join("adapters").join(agent).join(phase);
        let dst = out.join("adapters").join(agent);
        assert_eq!(
            std::fs::read(src.join("adapter_model.safetensors")).unwrap(),
            std::fs::read(dst.join("adapter_model.safetensors")).unwrap(),
            "{agent}"
        );
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(dst.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["base_model_name_or_path"], model_dir.to_str().unwrap());
        assert_eq!(cfg["r"], 4);
        let original = model.load_adapter(&src, agent).unwrap();
        let exported = model.load_adapter(&dst, agent).unwrap();
        for ((n1, v1), (n2, v2)) in original.named_vars().iter().zip(exported.named_vars()) {
            assert_eq!(n1, &n2);
            assert_eq!(
                max_diff(v1.as_tensor(), v2.as_tensor()),
                0.0,
                "{agent} {n1}"
            );
        }
        // The merged model loads and holds W + scale * B A.
        let merged = Model::load(
            out.join("merged").join(agent).to_str().unwrap(),
            &Device::Cpu,
        )
        .unwrap();
        let want = model.merged_tensors(Some(&original)).unwrap();
        let have = merged.merged_tensors(None).unwrap();
        assert_eq!(want.len(), have.len());
        for (name, w) in &want {
            assert!(max_diff(w, &have[name]) < 1e-6, "{agent} {name}");
        }
        let base = model.merged_tensors(None).unwrap();
        let q = "model.layers.0.self_attn.q_proj.weight";
        assert!(
            max_diff(&base[q], &have[q]) > 1e-4,
            "{agent}: the adapter was merged"
        );
    }
    assert!(!out.join("adapters/refiner").exists());
    assert!(!out.join("merged/refiner").exists());

    // Datasets byte-identical; the manifest's hashes and row counts match the files.
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("export.json")).unwrap()).unwrap();
    assert_eq!(
        m["source_run"],
        run.canonicalize().unwrap().to_str().unwrap()
    );
    assert_eq!(m["agents"]["verifier"]["adapter_phase"], "dpo");
    assert_eq!(m["agents"]["refiner"]["dataset_rows"]["dpo"], 2);
    for (agent, a) in m["agents"].as_object().unwrap() {
        for (rel, hash) in a["files"].as_object().unwrap() {
            let bytes = std::fs::read(out.join(rel)).unwrap();
            assert_eq!(hash, &malt_base::hash::sha256_hex(&bytes), "{agent} {rel}");
            if let Some(p) = rel.strip_prefix("datasets/") {
                assert_eq!(bytes, std::fs::read(run.join("datasets").join(p)).unwrap());
            }
        }
    }
    for rel in [
        "datasets/generator/sft.jsonl",
        "datasets/verifier/dpo.jsonl",
    ] {
        for line in std::fs::read_to_string(out.join(rel)).unwrap().lines() {
            let row: Value = serde_json::from_str(line).unwrap();
            assert!(row["prompt"].is_array(), "{rel}");
        }
    }

    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    for needle in [
        "SFTTrainer",
        "DPOTrainer",
        "PeftModel.from_pretrained",
        "--lora-modules generator=./adapters/generator verifier=./adapters/verifier",
        "\"adapters/verifier\", is_trainable=True)\ndpo = load_dataset(\"json\", data_files=\"datasets/verifier/dpo.jsonl\"",
        "datasets/verifier/dpo.jsonl",
        "merged/<agent>",
    ] {
        assert!(
            readme.contains(needle),
            "README lacks {needle:?}:\n{readme}"
        );
    }

    if std::env::var_os("MALT_PEEK_EXPORT").is_some() {
        println!("{readme}");
    }
    // An export never overwrites a folder with files in it.
    let (ok, msg) = export(&["runs/tiny", "--out", "out"], root);
    assert!(!ok && msg.contains("is not empty"), "{msg}");
}

#[test]
fn export_takes_a_config_and_names_a_missing_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::write(
        root.join("c.toml"),
        "[dataset]\nplugin = \"arith\"\ngenerate = { count = 10 }\ntrain = 2\ntest = 2\n[plugins.arith]\n[[agents]]\nname = \"generator\"\n",
    )
    .unwrap();
    let (ok, msg) = export(&["c.toml", "--out", "out"], root);
    assert!(!ok, "{msg}");
    assert!(
        msg.contains("runs/c") && msg.contains("no manifest.json yet"),
        "{msg}"
    );
    let (ok, msg) = export(&["nowhere", "--out", "out"], root);
    assert!(!ok && msg.contains("nowhere does not exist"), "{msg}");
}
