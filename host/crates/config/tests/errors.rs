//! Error messages of the config loader, as snapshots: each names file:line:col.

use std::path::Path;

use malt_config::{Config, Method};

const GOOD: &str = r#"
[run]
seed = 1

[dataset]
plugin = "arith"
generate = { seed = 1, count = 200 }

[plugins.arith]
options = { difficulty = "2" }

[[agents]]
name = "generator"

[[agents]]
name = "verifier"

[[agents]]
name = "refiner"
"#;

fn err(text: &str) -> String {
    match Config::parse(text, Path::new("configs/x.toml")) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn good_config_resolves_defaults() {
    let c = Config::parse(GOOD, Path::new("configs/x.toml")).unwrap();
    assert_eq!(c.run.name, "x");
    assert_eq!(c.agents.len(), 3);
    assert_eq!(c.agents[0].plugin, "arith");
    assert_eq!(c.agents[1].role, "verifier");
    assert_eq!(c.agents[0].train.method, Method::Sft);
    assert_eq!(c.agents[2].train.method, Method::SftThenDpo);
    assert_eq!(c.agents[1].theta, 0.5);
    assert_eq!(c.sandbox.timeout_ms, 100);
    assert_eq!(c.sandbox.memory_mib, 64);
    assert_eq!(c.used_plugins(), vec!["arith".to_string()]);
}

#[test]
fn hash_ignores_formatting_but_not_values() {
    let a = Config::parse(GOOD, Path::new("configs/x.toml")).unwrap();
    let reformatted = format!(
        "# a comment\n{}\n[credit]\ntheta = 0.5\n",
        GOOD.replace(" = ", "=")
    );
    let b = Config::parse(&reformatted, Path::new("configs/x.toml")).unwrap();
    assert_eq!(a.config_hash(), b.config_hash());
    let c = Config::parse(
        &format!("{GOOD}\n[credit]\ntheta = 0.6\n"),
        Path::new("configs/x.toml"),
    )
    .unwrap();
    assert_ne!(a.config_hash(), c.config_hash());
}

#[test]
fn per_agent_train_overrides() {
    let text = format!(
        "{GOOD}\n[train.dpo]\nbeta = 0.2\n",
    )
    .replace(
        "name = \"refiner\"",
        "name = \"refiner\"\ntheta = 0.7\n[agents.train]\nmethod = \"sft\"\n[agents.train.sft]\nlr = 1e-4",
    );
    let c = Config::parse(&text, Path::new("configs/x.toml")).unwrap();
    let r = c.agent("refiner").unwrap();
    assert_eq!(r.theta, 0.7);
    assert_eq!(r.train.method, Method::Sft);
    assert_eq!(r.train.sft.optim.lr, 1e-4);
    assert_eq!(r.train.dpo.beta, 0.2);
    assert_eq!(c.agent("verifier").unwrap().train.dpo.beta, 0.2);
    assert_eq!(c.agent("verifier").unwrap().train.sft.optim.lr, 2e-4);
}

#[test]
fn gradient_checkpointing_is_off_by_default_per_agent_and_not_hashed() {
    let plain = Config::parse(GOOD, Path::new("configs/x.toml")).unwrap();
    assert!(plain.agents.iter().all(|a| !a.train.gradient_checkpointing));
    let text = format!("{GOOD}\n[train]\ngradient_checkpointing = true\n").replace(
        "name = \"refiner\"",
        "name = \"refiner\"\n[agents.train]\ngradient_checkpointing = false",
    );
    let c = Config::parse(&text, Path::new("configs/x.toml")).unwrap();
    assert!(c.agent("verifier").unwrap().train.gradient_checkpointing);
    assert!(!c.agent("refiner").unwrap().train.gradient_checkpointing);
    // It changes how training runs, not what it learns.
    assert_eq!(plain.config_hash(), c.config_hash());
}

#[test]
fn unknown_field() {
    insta::assert_snapshot!(err(
        &GOOD.replace("name = \"verifier\"", "name = \"verifier\"\nbranchs = 3")
    ));
}

#[test]
fn unknown_top_level_table() {
    insta::assert_snapshot!(err(&format!("{GOOD}\n[sandbx]\ntimeout_ms = 5\n")));
}

#[test]
fn wrong_type() {
    insta::assert_snapshot!(err(
        &GOOD.replace("seed = 1\n\n[dataset]", "seed = \"one\"\n\n[dataset]")
    ));
}

#[test]
fn bad_enum_value() {
    insta::assert_snapshot!(err(&format!("{GOOD}\n[credit]\npooling = \"globl\"\n")));
}

#[test]
fn syntax_error() {
    insta::assert_snapshot!(err("[run]\nname = \n"));
}

#[test]
fn theta_out_of_range() {
    insta::assert_snapshot!(err(&format!("{GOOD}\n[credit]\ntheta = 1.5\n")));
}

#[test]
fn agent_theta_out_of_range() {
    insta::assert_snapshot!(err(
        &GOOD.replace("name = \"refiner\"", "name = \"refiner\"\ntheta = -0.1")
    ));
}

#[test]
fn zero_agents() {
    let text: String = GOOD.split("[[agents]]").next().unwrap().to_string();
    insta::assert_snapshot!(err(&text));
}

#[test]
fn duplicate_agent_names() {
    insta::assert_snapshot!(err(
        &GOOD.replace("name = \"refiner\"", "name = \"verifier\"")
    ));
}

#[test]
fn unknown_plugin() {
    insta::assert_snapshot!(err(&GOOD.replace(
        "name = \"refiner\"",
        "name = \"refiner\"\nplugin = \"gsm8k\""
    )));
}

#[test]
fn zero_branches_and_bad_sampling() {
    insta::assert_snapshot!(err(&GOOD.replace(
        "name = \"generator\"",
        "name = \"generator\"\nbranches = 0\ntemperature = -1.0\ntop_p = 1.5"
    )));
}

#[test]
fn dataset_needs_one_source() {
    insta::assert_snapshot!(err(
        &GOOD.replace("generate = { seed = 1, count = 200 }", "")
    ));
}

#[test]
fn split_larger_than_generated() {
    insta::assert_snapshot!(err(&GOOD.replace("count = 200", "count = 150")));
}

#[test]
fn dpo_on_generator_warns() {
    let text = GOOD.replace(
        "name = \"generator\"",
        "name = \"generator\"\n[agents.train]\nmethod = \"dpo\"",
    );
    let c = Config::parse(&text, Path::new("configs/x.toml")).unwrap();
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    insta::assert_snapshot!(w.join("\n"));
}

#[test]
fn relative_paths_resolve_against_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_dir = dir.path().join("configs");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let text = GOOD
        .replace(
            "generate = { seed = 1, count = 200 }",
            "path = \"../data/train.jsonl\"",
        )
        .replace(
            "[plugins.arith]",
            "[plugins.arith]\npath = \"../plugins/arith\"",
        );
    let path = cfg_dir.join("x.toml");
    std::fs::write(&path, text).unwrap();
    let c = Config::load(&path).unwrap();
    match &c.dataset.source {
        malt_config::DataSource::File(p) => assert!(
            p.ends_with("configs/../data/train.jsonl"),
            "{}",
            p.display()
        ),
        other => panic!("{other:?}"),
    }
    assert!(c.plugins["arith"]
        .path
        .as_ref()
        .unwrap()
        .starts_with(&cfg_dir));
    // a missing dataset file is a warning, not an error
    assert!(c
        .warnings
        .iter()
        .any(|w| w.message.contains("does not exist")));
}

#[test]
fn remote_generation_resolves_with_defaults() {
    let text = format!(
        "{GOOD}\n[generation]\nbackend = \"remote\"\nmodels = {{ verifier = \"v-lora\" }}\n\
         [[generation.endpoints]]\nurl = \"http://127.0.0.1:8000/v1\"\napi_key_env = \"VLLM_API_KEY\"\n"
    );
    let c = Config::parse(&text, Path::new("configs/x.toml")).unwrap();
    let g = &c.generation;
    assert_eq!(g.backend, malt_config::Backend::Remote);
    assert_eq!(g.model, "base");
    assert_eq!(g.models["verifier"], "v-lora");
    assert_eq!(g.retries, 8);
    let e = &g.endpoints[0];
    assert_eq!(e.api_key_env.as_deref(), Some("VLLM_API_KEY"));
    assert_eq!(
        (e.max_concurrency, e.timeout_s, e.malt_seeds, e.engine),
        (8, 120.0, None, malt_config::EngineKind::Auto)
    );
    // Where trees are sampled is not part of the config's identity.
    let plain = Config::parse(GOOD, Path::new("configs/x.toml")).unwrap();
    assert_eq!(plain.generation.backend, malt_config::Backend::Embedded);
    assert_eq!(plain.config_hash(), c.config_hash());
}

#[test]
fn api_keys_in_the_config_are_refused_with_their_position() {
    let text = format!(
        "{GOOD}\n[generation]\nbackend = \"remote\"\n[[generation.endpoints]]\nurl = \"http://h:1\"\napi_key = \"sk-123\"\n"
    );
    let e = err(&text);
    assert!(e.starts_with("configs/x.toml:25:11: "), "{e}");
    assert!(e.contains("api_key_env"), "{e}");
    assert!(!e.contains("sk-123"), "{e}");
}

#[test]
fn remote_generation_is_validated() {
    let e = err(&format!("{GOOD}\n[generation]\nbackend = \"remote\"\n"));
    assert!(
        e.contains("needs at least one [[generation.endpoints]]"),
        "{e}"
    );
    let e = err(&format!(
        "{GOOD}\n[generation]\nbackend = \"remote\"\nmodels = {{ critic = \"x\" }}\n\
         [[generation.endpoints]]\nurl = \"127.0.0.1:8000\"\nmax_concurrency = 0\n"
    ));
    assert!(e.contains("no agent named `critic`"), "{e}");
    assert!(e.contains("expected an http:// or https:// URL"), "{e}");
    assert!(e.contains("max_concurrency must be at least 1"), "{e}");
}

#[test]
fn endpoint_engines_parse_and_unknown_ones_are_located() {
    let with = |engine: &str| {
        format!(
            "{GOOD}\n[generation]\nbackend = \"remote\"\n[[generation.endpoints]]\n\
             url = \"http://h:1\"\nengine = \"{engine}\"\n"
        )
    };
    for (name, kind) in [
        ("llama.cpp", malt_config::EngineKind::LlamaCpp),
        ("vllm", malt_config::EngineKind::Vllm),
        ("sglang", malt_config::EngineKind::Sglang),
        ("malt", malt_config::EngineKind::Malt),
        ("openai", malt_config::EngineKind::Openai),
        ("auto", malt_config::EngineKind::Auto),
    ] {
        let c = Config::parse(&with(name), Path::new("configs/x.toml")).unwrap();
        assert_eq!(c.generation.endpoints[0].engine, kind);
    }
    let e = err(&with("tgi"));
    assert!(e.starts_with("configs/x.toml:25:"), "{e}");
    assert!(e.contains("tgi") && e.contains("llama.cpp"), "{e}");
}

#[test]
fn serve_keys_resolve_and_are_validated() {
    let c = Config::parse(GOOD, Path::new("configs/x.toml")).unwrap();
    let s = &c.serve;
    assert_eq!(
        (s.api_key_env.as_deref(), s.continuous, s.max_batch),
        (None, true, 64)
    );
    let c = Config::parse(
        &format!("{GOOD}\n[serve]\napi_key_env = \"MALT_KEY\"\ncontinuous = false\n"),
        Path::new("configs/x.toml"),
    )
    .unwrap();
    assert_eq!(c.serve.api_key_env.as_deref(), Some("MALT_KEY"));
    assert!(!c.serve.continuous);
    let e = err(&format!(
        "{GOOD}\n[serve]\napi_key_env = \"\"\nread_timeout_s = 0\nmax_batch = 0\n"
    ));
    assert!(e.contains("configs/x.toml:24:"), "{e}");
    assert!(e.contains("not an environment variable name"), "{e}");
    assert!(
        e.contains("serve.read_timeout_s = 0 must be a positive"),
        "{e}"
    );
    assert!(e.contains("serve.max_batch must be at least 1"), "{e}");
}

#[test]
fn test_path_is_the_whole_held_out_split() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace(
        "generate = { seed = 1, count = 200 }",
        "path = \"train.parquet\"\ntest_path = \"test.parquet\"\ntrain = 150",
    );
    let c = Config::parse(&text, &dir.path().join("x.toml")).unwrap();
    assert_eq!(c.dataset.test_source, Some(dir.path().join("test.parquet")));
    assert_eq!((c.dataset.train, c.dataset.test), (150, 0));
    assert!(c
        .warnings
        .iter()
        .any(|w| w.message.contains("test file") && w.message.contains("does not exist")));
    // Without a test file the hash is what it was before test_path existed.
    let plain = Config::parse(GOOD, Path::new("configs/x.toml")).unwrap();
    let json = serde_json::to_string(&plain.dataset).unwrap();
    assert!(!json.contains("test_source"), "{json}");
}

#[test]
fn test_path_refuses_a_test_count_and_the_training_file() {
    let e = err(&GOOD.replace(
        "generate = { seed = 1, count = 200 }",
        "path = \"a.jsonl\"\ntest_path = \"a.jsonl\"\ntest = 50",
    ));
    assert!(
        e.contains("configs/x.toml:9:8: dataset.test counts held-out questions"),
        "{e}"
    );
    assert!(e.contains("remove `test`"), "{e}");
    assert!(e.contains("dataset.test_path is the training file"), "{e}");
    // A generated training set with a test file only needs `train` questions generated.
    let c = Config::parse(
        &GOOD.replace("count = 200", "count = 100 }\ntest_path = \"t.jsonl\"\n#"),
        Path::new("configs/x.toml"),
    )
    .unwrap();
    assert!(c.dataset.test_source.is_some());
}

#[test]
fn eval_std_is_sample_by_default_population_on_request_and_checked() {
    use malt_config::StdConvention;
    let plain = Config::parse(GOOD, Path::new("configs/x.toml")).unwrap();
    assert_eq!(plain.eval.std, StdConvention::Sample);
    let paper = Config::parse(
        &format!("{GOOD}\n[eval]\nstd = \"population\"\n"),
        Path::new("configs/x.toml"),
    )
    .unwrap();
    assert_eq!(paper.eval.std, StdConvention::Population);
    // It changes the report, so the config's hash.
    assert_ne!(plain.config_hash(), paper.config_hash());
    assert_eq!(
        err(&format!("{GOOD}\n[eval]\nstd = \"n-1\"\n")),
        "configs/x.toml:22:7: unknown variant `n-1`, expected `sample` or `population`"
    );
}

#[test]
fn online_defaults_and_no_change_to_the_hash_without_it() {
    let c = Config::parse(GOOD, Path::new("configs/x.toml")).unwrap();
    assert!(c.online.is_none());
    let with = Config::parse(&format!("{GOOD}\n[online]\n"), Path::new("configs/x.toml")).unwrap();
    let o = with.online.as_ref().unwrap();
    assert_eq!(o.train, ["generator", "verifier", "refiner"]);
    assert_eq!((o.steps, o.epochs, o.kl_beta, o.seed), (20, 1, 0.04, None));
    assert_ne!(c.config_hash(), with.config_hash());
    // A training seed of its own leaves the run seed (and so the question split) alone.
    let seeded = Config::parse(
        &format!("{GOOD}\n[online]\nseed = 3\n"),
        Path::new("configs/x.toml"),
    )
    .unwrap();
    assert_eq!(seeded.online.as_ref().unwrap().seed, Some(3));
    assert_eq!(seeded.run.seed, with.run.seed);
}

#[test]
fn online_refuses_unknown_agents_and_truncated_sampling() {
    let text = GOOD.replace("name = \"verifier\"", "name = \"verifier\"\ntop_p = 0.9")
        + "\n[online]\ntrain = [\"generator\", \"verifier\", \"critic\"]\nclip_low = 1.5\n";
    insta::assert_snapshot!(err(&text));
}
