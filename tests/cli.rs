//! The `malt` commands owned by the plugin host: check, score, plugin new/test.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn malt(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_malt"))
        .args(["--log", "warn"])
        .args(args)
        .current_dir(cwd)
        .env("MALT_CACHE", repo().join("target/malt-cache"))
        // Whether a shipped config fits depends on the machine (arith-smollm2's training is
        // predicted at 13 GiB); tests/memory_plan.rs tests the verdicts themselves.
        .env("MALT_MEMORY_CHECK", "off")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_passes_for_every_shipped_config() {
    let mut configs: Vec<String> = std::fs::read_dir(repo().join("configs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    configs.sort();
    assert!(configs.len() >= 6, "{configs:?}");
    let mut args = vec!["check"];
    args.extend(configs.iter().map(String::as_str));
    let (ok, out, err) = malt(&args, &repo());
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("all checks passed"), "{out}");
}

#[test]
fn check_fails_on_a_bad_config_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[dataset]\nplugin = \"arith\"\ngenerate = { count = 10 }\n[plugins.arith]\n[[agents]]\nname = \"g\"\nbranchs = 2\n").unwrap();
    let (ok, out, _) = malt(&["check", "bad.toml"], dir.path());
    assert!(!ok);
    assert!(
        out.contains("bad.toml:7:1: unknown field `branchs`"),
        "{out}"
    );
}

#[test]
fn check_names_the_plugin_and_the_fix_of_a_refused_option() {
    let dir = tempfile::tempdir().unwrap();
    let body = |options: &str| {
        format!(
            "[dataset]\nplugin = \"arith\"\ngenerate = {{ count = 10 }}\ntrain = 5\ntest = 5\n\
             [plugins.arith]\noptions = {{ {options} }}\n[[agents]]\nname = \"generator\"\n"
        )
    };
    std::fs::write(dir.path().join("end.toml"), body("choices = \"2\"")).unwrap();
    let (ok, out, err) = malt(&["check", "end.toml"], dir.path());
    assert!(!ok, "{out}\n{err}");
    let said = format!("{out}{err}");
    assert!(said.contains("arith"), "{said}");
    assert!(said.contains("set ask = start too"), "{said}");
    std::fs::write(dir.path().join("free.toml"), body("proposal = \"answer\"")).unwrap();
    let (ok, out, err) = malt(&["check", "free.toml"], dir.path());
    assert!(!ok, "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains("set feedback = check too"),
        "{out}{err}"
    );
    std::fs::write(
        dir.path().join("start.toml"),
        body("ask = \"start\", choices = \"2\", feedback = \"check\", proposal = \"answer\""),
    )
    .unwrap();
    let (ok, out, err) = malt(&["check", "start.toml"], dir.path());
    assert!(ok, "{out}\n{err}");
}

#[test]
fn score_prints_one_line_per_completion() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("raw.jsonl"), "{\"question\":\"2+3?\",\"answer\":\"#### 5\"}\n{\"question\":\"1+1?\",\"answer\":\"#### 2\"}\n").unwrap();
    std::fs::write(
        dir.path().join("c.jsonl"),
        "{\"index\":0,\"completion\":\"The answer is 5.\"}\n{\"index\":1,\"completion\":\"It is 3\"}\n",
    )
    .unwrap();
    let (ok, out, err) = malt(
        &[
            "score",
            "--plugin",
            "gsm8k",
            "--data",
            "raw.jsonl",
            "--completions",
            "c.jsonl",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["index"], 0);
    assert_eq!(lines[0]["answer"], "5");
    assert_eq!(lines[0]["reward"], 1.0);
    // gsm8k (API 0.2.0) says how it found each answer: "The answer is" is no cue of its
    // numeric mode, so both are the output's last number.
    assert_eq!(lines[0]["key"], "5");
    assert_eq!(lines[0]["found_by"], "fallback");
    assert_eq!(lines[1]["reward"], 0.0);
    assert!(err.contains("mean reward 0.5000"), "{err}");

    std::fs::write(
        dir.path().join("bad.jsonl"),
        "{\"index\":0,\"completion\":\"5\"}\n{\"index\":7,\"completion\":\"5\"}\n",
    )
    .unwrap();
    let (ok, _, err) = malt(
        &[
            "score",
            "--plugin",
            "gsm8k",
            "--data",
            "raw.jsonl",
            "--completions",
            "bad.jsonl",
        ],
        dir.path(),
    );
    assert!(!ok);
    assert!(
        err.contains("bad.jsonl:2: index 7 is out of range"),
        "{err}"
    );
}

/// A gsm8k file as the Hub ships it (`openai/gsm8k`'s `test-00000-of-00001.parquet`: optional
/// STRING columns, snappy pages, as pyarrow writes them); `None` is a null cell.
fn write_gsm8k_parquet(path: &Path, rows: &[(&str, Option<&str>)]) {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    let schema = "message schema {\n  optional binary question (STRING);\n  \
                  optional binary answer (STRING);\n}";
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let mut w = SerializedFileWriter::new(file, schema, Arc::new(props)).unwrap();
    let mut group = w.next_row_group().unwrap();
    let questions: Vec<Option<&str>> = rows.iter().map(|r| Some(r.0)).collect();
    let answers: Vec<Option<&str>> = rows.iter().map(|r| r.1).collect();
    for column in [questions, answers] {
        let mut c = group.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = column.iter().flatten().map(|s| (*s).into()).collect();
        let def: Vec<i16> = column.iter().map(|v| i16::from(v.is_some())).collect();
        c.typed::<ByteArrayType>()
            .write_batch(&values, Some(&def), None)
            .unwrap();
        c.close().unwrap();
    }
    group.close().unwrap();
    w.close().unwrap();
}

/// `malt score --data` and `malt plugin test --data` read datasets as `[dataset] path` does:
/// parquet (the issue's `test-00000-of-00001.parquet`, once "stream did not contain valid
/// UTF-8") and JSON arrays, with errors that name the file and the row, element or line.
#[test]
fn score_and_plugin_test_read_parquet_and_json_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let parquet = "test-00000-of-00001.parquet";
    write_gsm8k_parquet(
        &dir.path().join(parquet),
        &[
            ("What is 2+3?", Some("2 + 3 = <<2+3=5>>5\n#### 5")),
            ("What is 1+1?", Some("#### 2")),
            ("What is 6*7?", None),
        ],
    );
    std::fs::write(
        dir.path().join("raw.json"),
        "[{\"question\":\"2+3?\",\"answer\":\"#### 5\"},\n {\"question\":\"1+1?\",\"answer\":\"#### 2\"}]",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("c.jsonl"),
        "{\"index\":0,\"completion\":\"The answer is 5.\"}\n{\"index\":1,\"completion\":\"It is 3\"}\n",
    )
    .unwrap();
    let score = |data: &str, completions: &str| {
        malt(
            &[
                "score",
                "--plugin",
                "gsm8k",
                "--data",
                data,
                "--completions",
                completions,
            ],
            dir.path(),
        )
    };
    for data in [parquet, "raw.json"] {
        let (ok, out, err) = score(data, "c.jsonl");
        assert!(ok, "{data}: {err}");
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{data}: {out}");
        assert_eq!(
            (&lines[0]["answer"], &lines[0]["reward"]),
            (&serde_json::json!("5"), &serde_json::json!(1.0)),
            "{data}: {out}"
        );
        assert_eq!(lines[1]["reward"], 0.0, "{data}: {out}");
        assert!(err.contains("mean reward 0.5000"), "{data}: {err}");
    }

    // The record the plugin rejects (a null answer) is named by file and row.
    std::fs::write(
        dir.path().join("c2.jsonl"),
        "{\"index\":2,\"completion\":\"42\"}\n",
    )
    .unwrap();
    let (ok, out, err) = score(parquet, "c2.jsonl");
    assert!(ok, "{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let msg = line["error"].as_str().unwrap_or_default();
    assert!(msg.starts_with(&format!("{parquet}: row 2: ")), "{out}");
    // An index counts records, not lines: the parquet file has 3.
    std::fs::write(
        dir.path().join("c3.jsonl"),
        "{\"index\":3,\"completion\":\"5\"}\n",
    )
    .unwrap();
    let (ok, _, err) = score(parquet, "c3.jsonl");
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "c3.jsonl:1: index 3 is out of range ({parquet} has 3 records)"
        )),
        "{err}"
    );
    // A malformed array names the file and the line.
    std::fs::write(dir.path().join("bad.json"), "[{\"question\": 1},\n {oops}]").unwrap();
    let (ok, _, err) = score("bad.json", "c.jsonl");
    assert!(!ok);
    assert!(err.contains("bad.json:2: invalid JSON array"), "{err}");

    let plugin = repo().join("plugins/gsm8k").display().to_string();
    for (data, parsed) in [
        (parquet, "3 records, 2 parsed"),
        ("raw.json", "2 records, 2 parsed"),
    ] {
        let (ok, out, err) = malt(&["plugin", "test", &plugin, "--data", data], dir.path());
        assert!(ok, "{data}: {out}{err}");
        assert!(out.contains(&format!("{data}: {parsed}")), "{out}");
        assert!(out.contains("gold-vs-gold mean reward 1.0000"), "{out}");
    }
    let (ok, out, _) = malt(&["plugin", "test", &plugin, "--data", parquet], dir.path());
    assert!(ok);
    assert!(out.contains(&format!("{parquet}: row 2: ")), "{out}");
}

#[test]
fn plugin_new_scaffolds_a_crate_that_passes_the_battery() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = malt(&["plugin", "new", "scaffolded", "--dir", "."], dir.path());
    assert!(ok, "{out}{err}");
    let manifest = std::fs::read_to_string(dir.path().join("scaffolded/Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&repo().join("plugins/sdk").to_string_lossy().into_owned()),
        "{manifest}"
    );
    let (ok, out, err) = malt(&["plugin", "test", "scaffolded"], dir.path());
    assert!(ok, "{out}{err}");
    assert!(out.contains("11 of 11 checks passed"), "{out}");
}

/// `malt generate --model M --dtype T` holds the weights in T (it silently loaded f32 before);
/// `malt tokenize` prints a model's ids without its weights; a GGUF whose tokenizer pair malt
/// has not checked against llama.cpp is refused with the file and the pair named.
#[test]
fn generate_honours_dtype_tokenize_prints_ids_and_unchecked_gguf_tokenizers_are_refused() {
    use malt_model::candle_core::{quantized::gguf_file, Device};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    let cfg = malt_model::ModelConfig {
        max_position_embeddings: 128,
        ..malt_model::ModelConfig::llama(64, 16, 32, 1, 2, 1)
    };
    let model = malt_model::Model::random(cfg, &Device::Cpu).unwrap();
    model.export_merged(&dir, None).unwrap();
    let dir_arg = dir.to_str().unwrap();
    for (dtype, held) in [("bf16", "BF16"), ("f32", "F32")] {
        let out = Command::new(env!("CARGO_BIN_EXE_malt"))
            .args([
                "--log", "info", "generate", "--model", dir_arg, "--dtype", dtype,
            ])
            .args(["--raw", "--prompt", "t3 t4", "--max-new-tokens", "2"])
            .env("MALT_CACHE", repo().join("target/malt-cache"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains(&format!("weights in {held}")), "{err}");
    }

    let (ok, out, err) = malt(
        &["tokenize", "--model", dir_arg, "--ids", "t3 t4 t63"],
        tmp.path(),
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[3,4,63]");
    let (ok, out, err) = malt(&["tokenize", "--model", dir_arg, "t5"], tmp.path());
    assert!(ok, "{err}");
    assert!(
        out.contains("      5 -> \"t5\"  (t5)") && out.contains("1 tokens"),
        "{out}"
    );

    // A GGUF naming the qwen2 pre-tokenizer: refused before any weight is read.
    let gguf = tmp.path().join("qwen.gguf");
    let tokens: Vec<gguf_file::Value> = ["a", "b"]
        .iter()
        .map(|t| gguf_file::Value::String((*t).into()))
        .collect();
    let md = [
        (
            "tokenizer.ggml.model",
            gguf_file::Value::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre",
            gguf_file::Value::String("qwen2".into()),
        ),
        ("tokenizer.ggml.tokens", gguf_file::Value::Array(tokens)),
        ("tokenizer.ggml.merges", gguf_file::Value::Array(vec![])),
    ];
    let md: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let mut f = std::fs::File::create(&gguf).unwrap();
    gguf_file::write(&mut f, &md, &[]).unwrap();
    drop(f);
    for args in [
        vec!["tokenize", "--model", gguf.to_str().unwrap(), "hi"],
        vec![
            "generate",
            "--model",
            gguf.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
    ] {
        let (ok, _, err) = malt(&args, tmp.path());
        assert!(!ok, "{args:?} accepted an unchecked tokenizer");
        assert!(
            err.contains("qwen.gguf")
                && err.contains("tokenizer.ggml.pre = \"qwen2\"")
                && err.contains("Hugging Face directory"),
            "{args:?}: {err}"
        );
    }
}

/// theta = 1 labels nothing positive (a node is positive when its value exceeds theta, and
/// values never exceed 1): `malt check` refuses it wherever theta is set, naming the key and
/// its line.
#[test]
fn check_refuses_a_theta_nothing_can_exceed() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[dataset]\nplugin = \"arith\"\ngenerate = { count = 10 }\ntrain = 5\ntest = 5\n\
                [plugins.arith]\n[[agents]]\nname = \"generator\"\n";
    for (name, extra, key, line) in [
        ("credit", "[credit]\ntheta = 1.0\n", "[credit] theta", 10),
        (
            "rounds",
            "[rounds]\ncount = 2\ntheta = [0.5, 1.0]\n",
            "[rounds] theta",
            11,
        ),
        ("agent", "theta = 1\n", "[[agents]] theta", 9),
    ] {
        let file = format!("{name}.toml");
        std::fs::write(dir.path().join(&file), format!("{base}{extra}")).unwrap();
        let (ok, out, err) = malt(&["check", &file], dir.path());
        assert!(!ok, "{name}: {out}\n{err}");
        let said = format!("{out}{err}");
        assert!(
            said.contains(&format!("{key} = 1 labels no node positive")),
            "{said}"
        );
        assert!(said.contains(&format!("{file}:{line}:")), "{said}");
        assert!(said.contains("use a value below 1"), "{said}");
    }
}

/// `malt compare` on two committed reports of the same questions: the shared single agent is
/// one row, each run's systems keep their figures, and the comparisons are against offline
/// MALT. Reports of other datasets are refused with both names and what differs.
#[test]
fn compare_combines_committed_reports_on_the_same_questions() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("combined");
    let results = repo().join("results");
    let (ok, stdout, stderr) = malt(
        &[
            "compare",
            &format!("offline={}", results.join("arith-smollm2").display()),
            results.join("arith-smollm2-online").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &repo(),
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("# Combined evaluation report"),
        "{stdout}"
    );
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let combined = read(&out.join("report.json"));
    let online = read(&results.join("arith-smollm2-online/report.json"));
    let row = |r: &serde_json::Value, id: &str| {
        r["systems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no row {id}"))
            .clone()
    };
    let rows = combined["systems"].as_array().unwrap();
    assert_eq!(rows.iter().filter(|s| s["system"] == "single").count(), 2);
    for id in ["online", "online_mv3"] {
        assert_eq!(row(&combined, id)["per_seed"], row(&online, id)["per_seed"]);
    }
    let sources = combined["sources"].as_array().unwrap();
    assert_eq!(sources[1]["name"], "arith-smollm2-online");
    assert_eq!(sources[1]["same_as_earlier"], serde_json::json!(["single"]));
    let compared = combined["comparisons"].as_array().unwrap();
    assert!(compared
        .iter()
        .all(|c| c["reference"] == "trained_chain_mv3"));
    assert!(compared.iter().any(|c| c["row"] == "online_mv3"));
    for file in ["report.md", "accuracy.svg", "per_turn.svg"] {
        assert!(out.join(file).is_file(), "{file}");
    }

    let (ok, _, stderr) = malt(
        &[
            "compare",
            results.join("arith-smollm2").to_str().unwrap(),
            results.join("arith-answer-small-paper").to_str().unwrap(),
            "--out",
            dir.path().join("no").to_str().unwrap(),
        ],
        &repo(),
    );
    assert!(!ok);
    assert!(
        stderr.contains("arith-answer-small-paper) and ")
            && stderr.contains("(arith-smollm2) evaluate on different datasets")
            && stderr.contains("\"train\":36"),
        "{stderr}"
    );
    assert!(!dir.path().join("no").exists(), "nothing written on error");

    // A combined report never overwrites one of its inputs.
    let (ok, _, stderr) = malt(
        &[
            "compare",
            out.to_str().unwrap(),
            results.join("arith-smollm2-online").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &repo(),
    );
    assert!(
        !ok && stderr.contains("which the combined report would overwrite"),
        "{stderr}"
    );
}
