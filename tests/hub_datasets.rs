//! The Hub's parquet files, written by pyarrow in the exact schemas of openai/gsm8k,
//! tau/commonsense_qa (with its nested `choices` struct) and HuggingFaceH4/MATH-500, read by
//! malt-records and parsed by the three benchmark plugins. Skips with a message when python3
//! has no pyarrow (`pip install pyarrow`, or MALT_TEST_PYTHON=/path/to/python); CI installs it
//! and sets MALT_REQUIRE_PY_TOOLS=1, which turns the skip into a failure.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use malt_plugins::{load_named, Sandbox};

/// The interpreter with `module`, or None (after saying why) when the test must skip.
pub fn python_with(module: &str) -> Option<String> {
    let py = std::env::var("MALT_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    let msg = format!(
        "skipped: `{py}` cannot import {module} (pip install {module}, or set MALT_TEST_PYTHON)"
    );
    if std::env::var("MALT_REQUIRE_PY_TOOLS").is_ok_and(|v| v == "1") {
        panic!("{msg}; MALT_REQUIRE_PY_TOOLS=1 requires it");
    }
    eprintln!("{msg}");
    None
}

const WRITE: &str = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
out = sys.argv[1]
gsm8k = pa.table({
    "question": ["Janet has 3 eggs and buys 2. How many eggs?", "What is 6 times 7?"],
    "answer": ["3 + 2 = <<3+2=5>>5\n#### 5", "6 * 7 = 42\n#### 42"],
})
pq.write_table(gsm8k, f"{out}/gsm8k-test-00000-of-00001.parquet")
choices = pa.struct([("label", pa.list_(pa.string())), ("text", pa.list_(pa.string()))])
csqa = pa.table({
    "id": ["075e483d21c29a511267ef62bedc0461", "61fe6e879ff18686d7552425a36344c8"],
    "question": ["The sanctions against the school were a punishing blow, and they seemed to what the efforts the school had made to change?",
                 "Sammy wanted to go to where the people were. Where might he go?"],
    "question_concept": ["punishing", "people"],
    "choices": pa.array([
        {"label": ["A", "B", "C", "D", "E"], "text": ["ignore", "enforce", "authoritarian", "yell at", "avoid"]},
        {"label": ["A", "B", "C", "D", "E"], "text": ["race track", "populated areas", "the desert", "apartment", "roadblock"]},
    ], type=choices),
    "answerKey": ["A", "B"],
})
pq.write_table(csqa, f"{out}/csqa-validation-00000-of-00001.parquet")
math = pa.table({
    "problem": ["Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.", "What is $1+1$?"],
    "solution": ["... $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$", "$\\boxed{2}$"],
    "answer": ["\\left( 3, \\frac{\\pi}{2} \\right)", "2"],
    "subject": ["Precalculus", "Algebra"],
    "level": pa.array([2, 1], type=pa.int64()),
    "unique_id": ["test/precalculus/807.json", "test/algebra/1.json"],
})
pq.write_table(math, f"{out}/math500-test.parquet")
"#;

#[test]
fn hub_parquet_files_load_through_the_benchmark_plugins() {
    let Some(py) = python_with("pyarrow") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(&py)
        .args(["-c", WRITE])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rt = common::runtime();
    let parse = |plugin: &str, file: &str| {
        let p = load_named(
            &rt,
            &common::repo()
                .join("plugins")
                .join(plugin)
                .display()
                .to_string(),
            &BTreeMap::new(),
            &Sandbox::default(),
        )
        .unwrap();
        let records = malt_records::read_records(&d.path().join(file)).unwrap();
        let texts: Vec<String> = records.into_iter().map(|r| r.text).collect();
        p.parse_records(&texts)
            .into_iter()
            .map(|r| r.unwrap())
            .collect::<Vec<_>>()
    };
    let g = parse("gsm8k", "gsm8k-test-00000-of-00001.parquet");
    assert_eq!(
        (g.len(), g[0].gold.as_str(), g[1].gold.as_str()),
        (2, "5", "42")
    );
    let c = parse("csqa", "csqa-validation-00000-of-00001.parquet");
    assert_eq!(c[1].id, "61fe6e879ff18686d7552425a36344c8");
    assert_eq!(c[1].gold, "B");
    assert_eq!(c[1].choices.len(), 5);
    assert_eq!(c[1].choices[1].text, "populated areas");
    assert!(c[0].metadata.contains("punishing"), "{}", c[0].metadata);
    let m = parse("math", "math500-test.parquet");
    assert_eq!(m[0].id, "test/precalculus/807.json");
    assert_eq!(m[0].gold, "\\left( 3, \\frac{\\pi}{2} \\right)");
    assert!(m[0].metadata.contains("\"level\":2"), "{}", m[0].metadata);
}

/// A record the plugin rejects is located by file and row.
#[test]
fn a_rejected_parquet_row_names_file_and_row() {
    let Some(py) = python_with("pyarrow") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let script = "import sys, pyarrow as pa, pyarrow.parquet as pq\n\
                  pq.write_table(pa.table({'question': ['a?', 'b?'], 'answer': ['#### 1', None]}), sys.argv[1])";
    let file = d.path().join("test.parquet");
    let out = Command::new(&py)
        .args(["-c", script])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rt = common::runtime();
    let p = load_named(
        &rt,
        &common::repo().join("plugins/gsm8k").display().to_string(),
        &BTreeMap::new(),
        &Sandbox::default(),
    )
    .unwrap();
    let records = malt_records::read_records(&file).unwrap();
    let texts: Vec<String> = records.iter().map(|r| r.text.clone()).collect();
    let results = p.parse_records(&texts);
    let (r, rec) = results
        .iter()
        .zip(&records)
        .find(|(r, _)| r.is_err())
        .unwrap();
    let msg = format!(
        "{}: {}",
        rec.at.locate(Path::new("test.parquet")),
        r.as_ref().unwrap_err()
    );
    assert!(msg.starts_with("test.parquet: row 1: "), "{msg}");
    assert!(msg.contains("answer"), "{msg}");
}

/// `[dataset] test_path`: the whole file is the test split, the training questions come from
/// `path`; a question in both (same text up to case and spacing) stops the run, named.
#[test]
fn test_path_is_the_held_out_split_and_overlap_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let q =
        |text: &str, n: u32| format!("{{\"question\": \"{text}\", \"answer\": \"#### {n}\"}}\n");
    let train: String = (0..6)
        .map(|i| q(&format!("What is {i} plus {i}?"), 2 * i))
        .collect();
    std::fs::write(d.path().join("train.jsonl"), &train).unwrap();
    let test: String = (0..3)
        .map(|i| q(&format!("What is {i} times 3?"), 3 * i))
        .collect();
    std::fs::write(
        d.path().join("test.json"),
        format!("[{}]", test.trim_end().replace('\n', ",")),
    )
    .unwrap();
    let config = format!(
        "[dataset]\nplugin = \"gsm8k\"\npath = \"train.jsonl\"\ntest_path = \"test.json\"\n\
         train = 4\n\n[plugins.gsm8k]\npath = \"{}\"\n\n[[agents]]\nname = \"generator\"\n",
        common::repo().join("plugins/gsm8k").display()
    );
    let cfg = d.path().join("c.toml");
    std::fs::write(&cfg, &config).unwrap();
    let mut s = malt_pipeline::session::Session::open(&cfg).unwrap();
    let split = s.questions().unwrap();
    assert_eq!((split.train.len(), split.test.len()), (4, 3));
    assert_eq!(split.test[2].question, "What is 2 times 3?");

    let leaked = format!("{test}{}", q("  WHAT is 5 plus   5? ", 10));
    std::fs::write(d.path().join("test.jsonl"), leaked).unwrap();
    std::fs::write(&cfg, config.replace("test.json\"", "test.jsonl\"")).unwrap();
    let mut s = malt_pipeline::session::Session::open(&cfg).unwrap();
    let e = s.questions().err().unwrap().to_string();
    assert!(
        e.contains("1 of the 4 questions of dataset.test_path"),
        "{e}"
    );
    assert!(e.contains("test.jsonl:4 = "), "{e}");
    assert!(e.contains("train.jsonl:6 (same question text"), "{e}");
}
