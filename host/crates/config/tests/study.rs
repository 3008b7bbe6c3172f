//! `[eval] systems`, `[star]` and `[rounds]`: defaults, parsing and errors that point at the
//! entry.

use std::path::Path;

use malt_config::{Config, StarData, StarSteps, SystemKind};

const GVR: &str = r#"
[dataset]
plugin = "arith"
generate = { seed = 1, count = 200 }

[plugins.arith]

[[agents]]
name = "generator"

[[agents]]
name = "verifier"

[[agents]]
name = "refiner"
"#;

fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("configs/x.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> String {
    match Config::parse(text, Path::new("configs/x.toml")) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn ids(c: &Config) -> Vec<&str> {
    c.eval.systems.iter().map(|s| s.id.as_str()).collect()
}

#[test]
fn defaults_are_the_papers_table_and_ablations() {
    let c = parse(GVR);
    assert_eq!(
        ids(&c),
        [
            "single",
            "untrained_chain",
            "star",
            "trained_chain",
            "trained_generator",
            "trained_generator_verifier",
            "trained_generator_refiner_skip_verifier",
        ]
    );
    let gr = &c.eval.systems[6];
    assert_eq!(
        gr.kind,
        SystemKind::Trained {
            trained: vec!["generator".into(), "refiner".into()],
            skip: vec!["verifier".into()],
        }
    );
    assert_eq!(gr.label, "generator + refiner trained, verifier skipped");
    assert_eq!(c.eval.systems[4].label, "Only generator trained");
    assert_eq!(c.star.data, StarData::Sample);
    assert_eq!(c.star.steps, StarSteps::Generator);
    assert_eq!((c.rounds.count, c.rounds.theta_of(1)), (1, None));

    // A two-agent chain: no G+V / G+R rows; one agent: no untrained chain either.
    let two = parse(&GVR.replace("[[agents]]\nname = \"verifier\"\n", ""));
    assert_eq!(
        ids(&two),
        [
            "single",
            "untrained_chain",
            "star",
            "trained_chain",
            "trained_generator"
        ]
    );
    let one = parse(&GVR.replace(
        "[[agents]]\nname = \"verifier\"\n\n[[agents]]\nname = \"refiner\"\n",
        "",
    ));
    assert_eq!(ids(&one), ["single", "star", "trained_chain"]);
}

#[test]
fn systems_as_configured() {
    let c = parse(&format!(
        r#"{GVR}
[eval]
systems = [
  "single", "untrained", "malt",
  {{ trained = [] }},
  {{ trained = ["refiner", "generator"], skip = ["verifier"], name = "g_r", label = "G+R" }},
]
"#
    ));
    assert_eq!(
        ids(&c),
        [
            "single",
            "untrained_chain",
            "trained_chain",
            "trained_none",
            "g_r"
        ]
    );
    assert_eq!(c.eval.systems[3].label, "No agent trained");
    assert!(!c.eval.systems[3].kind.uses_adapters());
    assert_eq!(c.eval.systems[4].label, "G+R");
    // Chain order whatever the order written.
    assert_eq!(
        c.eval.systems[4].kind,
        SystemKind::Trained {
            trained: vec!["generator".into(), "refiner".into()],
            skip: vec!["verifier".into()],
        }
    );
}

#[test]
fn system_errors_point_at_the_entry() {
    let with = |systems: &str| err(&format!("{GVR}\n[eval]\nsystems = {systems}\n"));
    let e = with(r#"["single", "mal"]"#);
    assert!(e.starts_with("configs/x.toml:18:22:"), "{e}");
    assert!(
        e.contains(r#"unknown system "mal""#) && e.contains("\"malt\""),
        "{e}"
    );
    let e = with(r#"[{ trained = ["judge"] }]"#);
    assert!(
        e.contains("no agent named `judge` (agents: generator, verifier, refiner)"),
        "{e}"
    );
    let e = with(r#"[{ trained = ["verifier"], skip = ["verifier"] }]"#);
    assert!(e.contains("both trained and skipped"), "{e}");
    let e = with(r#"[{ trained = ["generator"] }, { trained = ["generator"] }]"#);
    assert!(e.contains("listed twice"), "{e}");
    let e = with(r#"[{ trianed = ["generator"] }]"#);
    assert!(e.contains("unknown key `trianed`"), "{e}");
    let e = with(r#"[{ trained = [], skip = ["generator", "verifier", "refiner"] }]"#);
    assert!(e.contains("at least one agent"), "{e}");
    let e = with("[]");
    assert!(e.contains("eval.systems is empty"), "{e}");
    let e = with(r#"[{ trained = [], name = "a b" }]"#);
    assert!(e.contains("may only hold"), "{e}");
}

#[test]
fn star_and_rounds() {
    let c = parse(&format!(
        "{GVR}\n[star]\ndata = \"trees\"\nsteps = \"malt\"\n[rounds]\ncount = 3\ntheta = [0.5, 0.7, 0.9]\n"
    ));
    assert_eq!(c.star.data, StarData::Trees);
    assert_eq!(c.star.steps, StarSteps::Malt);
    assert_eq!(c.rounds.theta_of(2), Some(0.7));
    assert_eq!(c.rounds.theta_of(4), None);
    let fixed = parse(&format!("{GVR}\n[star]\nsteps = 12\nsamples = 20\n"));
    assert_eq!(
        (fixed.star.steps, fixed.star.samples),
        (StarSteps::Fixed(12), 20)
    );

    let e = err(&format!("{GVR}\n[star]\nsteps = \"all\"\n"));
    assert!(
        e.contains("star.steps") && e.contains("\"generator\""),
        "{e}"
    );
    let e = err(&format!("{GVR}\n[rounds]\ncount = 2\ntheta = [0.5]\n"));
    assert!(e.contains("one theta per round"), "{e}");
    let e = err(&format!("{GVR}\n[rounds]\ncount = 0\n"));
    assert!(e.contains("rounds.count must be at least 1"), "{e}");
    let e = err(&format!("{GVR}\n[rounds]\ncount = 2\ntheta = [0.5, 1.5]\n"));
    assert!(e.contains("rounds.theta = 1.5 is out of range"), "{e}");
    let e = err(&format!(
        "{GVR}\n[rounds]\ncount = 2\n[generation]\nbackend = \"remote\"\n[[generation.endpoints]]\nurl = \"http://127.0.0.1:1\"\n"
    ));
    assert!(
        e.contains("needs [generation] backend = \"embedded\""),
        "{e}"
    );
    let e = err(&format!("{GVR}\n[star]\ndata = \"both\"\n"));
    assert!(e.contains("unknown variant `both`"), "{e}");
}

#[test]
fn a_theta_of_one_is_refused_in_every_section() {
    let e = err(&format!("{GVR}\n[credit]\ntheta = 1.0\n"));
    assert!(
        e.contains("[credit] theta = 1 labels no node positive"),
        "{e}"
    );
    let e = err(&format!(
        "{GVR}\n[rounds]\ncount = 3\ntheta = [0.5, 0.7, 1.0]\n"
    ));
    assert!(
        e.contains("[rounds] theta = 1 labels no node positive"),
        "{e}"
    );
    // Below 1 every section accepts it, however close.
    assert!(Config::parse(
        &format!("{GVR}\n[credit]\ntheta = 0.99\n[rounds]\ncount = 2\ntheta = [0.5, 0.9]\n"),
        Path::new("configs/x.toml")
    )
    .is_ok());
}
