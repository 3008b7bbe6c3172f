//! No panic, rewards in [0, 1], deterministic results and voting keys, and bounded time on
//! hostile inputs
//! (the host's conformance battery runs the same kind of inputs through WASM).
use malt_graders::{arith, csqa, gsm8k, math, templates};
use std::time::Instant;

fn garbage(n: usize, seed: u64) -> String {
    let mut rng = arith::Rng::new(seed);
    let alphabet: Vec<char> =
        "0123456789 .,$-+/\\{}()[]^_*#:=abcxyzABCDE\n\tFinal Answer:boxedfrac√π∞é中🙂"
            .chars()
            .collect();
    (0..n)
        .map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize])
        .collect()
}

fn inputs() -> Vec<String> {
    let mut v = vec![
        String::new(),
        " ".into(),
        "\u{0}".into(),
        "é中🙂".into(),
        "Final Answer:".into(),
        "\\boxed{".into(),
        "\\frac".into(),
        "\\sqrt".into(),
        "####".into(),
        "-".into(),
        "1/0".into(),
        "0/0".into(),
        "2^999999999".into(),
        "(((((((((((((((((((((((((((((((((((((((((1".into(),
    ];
    v.push(garbage(100_000, 1));
    v.push(garbage(100_000, 2));
    v.push("9".repeat(100_000));
    v.push("1,000".repeat(20_000));
    v.push("\\boxed{".repeat(15_000));
    v.push("\\frac".repeat(20_000));
    v.push("{".repeat(100_000));
    v.push("(".repeat(100_000));
    v.push("-".repeat(100_000));
    v.push("Answer: ".repeat(12_000));
    v.push("final answer ".repeat(8_000));
    v.push("\\sqrt{".repeat(15_000));
    v.push("x^".repeat(50_000));
    v.push("é".repeat(50_000));
    v
}

fn in_range(r: f64) {
    assert!((0.0..=1.0).contains(&r), "reward {r} out of range");
}

#[test]
fn hostile_inputs() {
    let start = Instant::now();
    let choices = [("A", "bank"), ("B", "zoo")];
    for (i, s) in inputs().iter().enumerate() {
        let t = Instant::now();
        for mode in [
            gsm8k::Mode::Numeric,
            gsm8k::Mode::StrictMatch,
            gsm8k::Mode::FlexibleExtract,
            gsm8k::Mode::CotStrictMatch,
        ] {
            let a = gsm8k::extract(s, mode);
            assert_eq!(a, gsm8k::extract(s, mode));
            let e = gsm8k::extract_answer(s, mode);
            assert_eq!(e.as_ref().map(|e| &e.answer), a.as_ref());
            assert_eq!(gsm8k::key(s, mode), gsm8k::key(s, mode));
            in_range(gsm8k::grade(a.as_deref(), "72", mode).reward);
            in_range(gsm8k::grade(Some(s), s, mode).reward);
            in_range(gsm8k::grade(Some("72"), s, mode).reward);
        }
        let a = math::extract(s);
        assert_eq!(a, math::extract(s));
        for mode in [math::Mode::Prm800k, math::Mode::Hendrycks] {
            in_range(math::grade(a.as_deref(), "\\frac{1}{2}", mode).reward);
            in_range(math::grade(Some(s), "5", mode).reward);
            in_range(math::grade(Some("5"), s, mode).reward);
            let x = math::grade(Some(s), s, mode);
            assert_eq!(x, math::grade(Some(s), s, mode));
            assert_eq!(math::key::key(s, mode), math::key::key(s, mode));
            let e = math::extract_answer(s, mode);
            assert_eq!(e.map(|e| e.answer), a);
        }
        let c = csqa::extract(s, &choices);
        assert_eq!(c, csqa::extract(s, &choices));
        assert_eq!(csqa::extract_answer(s, &choices).map(|e| e.answer), c);
        in_range(csqa::grade(c.as_deref(), "A").reward);
        let _ = csqa::simple_evals(s);
        assert!(gsm8k::parse_record(s).is_err());
        assert!(math::parse_record(s).is_err());
        assert!(csqa::parse_record(s).is_err());
        assert!(arith::parse_record(s).is_err());
        let h = [templates::Turn {
            role: "generator",
            output: s,
        }];
        for role in templates::ROLES {
            assert!(templates::render(templates::Task::Math, role, s, &choices, &h).is_ok());
        }
        assert!(templates::render(templates::Task::Math, s, s, &[], &h).is_err());
        assert!(
            t.elapsed().as_secs_f64() < 5.0,
            "input #{i} took {:?}",
            t.elapsed()
        );
    }
    assert!(start.elapsed().as_secs_f64() < 30.0);
}

#[test]
fn json_record_errors_name_the_problem() {
    for (line, want) in [
        (r#"{"question":"q"}"#, "missing field `answer`"),
        ("{\"answer\":\"#### 1\"}", "missing field `question`"),
        ("[1,2]", "not a JSON object"),
        ("not json", "not a JSON object"),
        (
            "{\"question\":1,\"answer\":\"#### 2\"}",
            "field `question` is not a string",
        ),
    ] {
        let e = gsm8k::parse_record(line).unwrap_err();
        assert!(e.contains(want), "{line}: {e}");
    }
}

/// Native throughput of the reward path (run: `cargo test --release -p malt-graders --test
/// robustness -- --ignored --nocapture`).
#[test]
#[ignore]
fn grade_throughput() {
    let outputs = [
        "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\nFinal Answer: 72",
        "The answer is $1,000.",
        "#### 72.00",
    ];
    let n = 300_000;
    let t = Instant::now();
    let mut total = 0.0;
    for i in 0..n {
        total += gsm8k::grade(
            Some("72"),
            if i % 2 == 0 { "72" } else { "1000" },
            gsm8k::Mode::Numeric,
        )
        .reward;
    }
    let dt = t.elapsed();
    println!(
        "gsm8k numeric grade: {:.0} calls/s ({total})",
        n as f64 / dt.as_secs_f64()
    );
    let t = Instant::now();
    for i in 0..n {
        let a = gsm8k::extract(outputs[i % 3], gsm8k::Mode::Numeric);
        total += gsm8k::grade(a.as_deref(), "72", gsm8k::Mode::Numeric).reward;
    }
    println!(
        "gsm8k extract+grade: {:.0} calls/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    for _ in 0..n / 10 {
        total += math::grade(Some("\\frac{1}{2}"), "\\frac12", math::Mode::Prm800k).reward;
    }
    println!(
        "math prm800k grade (MATH-normalised match): {:.0} calls/s",
        (n / 10) as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    for _ in 0..n / 100 {
        total += math::grade(Some("2\\sqrt{2}"), "\\sqrt{8}", math::Mode::Prm800k).reward;
    }
    println!(
        "math prm800k grade (evaluator): {:.0} calls/s",
        (n / 100) as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    for _ in 0..n {
        total += csqa::grade(csqa::extract("so the answer is (B).", &[]).as_deref(), "B").reward;
    }
    println!(
        "csqa extract+grade: {:.0} calls/s ({total})",
        n as f64 / t.elapsed().as_secs_f64()
    );
}
