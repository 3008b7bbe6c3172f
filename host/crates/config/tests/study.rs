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
fn defaults_are_the_papers_tables() {
    let c = parse(GVR);
    assert_eq!(
        ids(&c),
        [
            // Table 1
            "single",
            "untrained_chain",
            "star",
            "star_chain",
            "trained_chain",
            // Table 4: one agent on the base model
            "untrained_generator",
            "untrained_verifier",
            "untrained_refiner",
            // Table 5: roles removed
            "only_generator",
            "generator_verifier",
            "generator_refiner",
        ]
    );
    let kind = |id: &str| &c.eval.systems.iter().find(|s| s.id == id).unwrap().kind;
    let trained = |t: &[&str], s: &[&str]| SystemKind::Trained {
        trained: t.iter().map(|x| x.to_string()).collect(),
        skip: s.iter().map(|x| x.to_string()).collect(),
    };
    assert_eq!(kind("star"), &SystemKind::Star);
    assert_eq!(kind("star_chain"), &SystemKind::StarChain);
    assert_eq!(
        kind("untrained_verifier"),
        &trained(&["generator", "refiner"], &[])
    );
    assert_eq!(
        kind("only_generator"),
        &trained(&["generator"], &["verifier", "refiner"])
    );
    assert_eq!(
        kind("generator_verifier"),
        &trained(&["generator", "verifier"], &["refiner"])
    );
    assert_eq!(
        kind("generator_refiner"),
        &trained(&["generator", "refiner"], &["verifier"])
    );
    let label = |id: &str| {
        c.eval
            .systems
            .iter()
            .find(|s| s.id == id)
            .unwrap()
            .label
            .clone()
    };
    assert_eq!(
        label("star"),
        "STaR (SA): first agent, SFT on the trees' positives"
    );
    assert_eq!(
        label("untrained_refiner"),
        "Table 4: refiner on the base model, the others MALT-trained"
    );
    assert!(label("generator_verifier").starts_with("Table 5: generator + verifier (no refiner;"));
    assert_eq!(c.star.data, StarData::Trees);
    assert_eq!(c.star.steps, StarSteps::Generator);
    assert_eq!((c.rounds.count, c.rounds.theta_of(1)), (1, None));

    // Own-sampling STaR is labelled as such.
    let sampled = parse(&format!("{GVR}\n[star]\ndata = \"sample\"\n"));
    assert!(sampled.eval.systems[2]
        .label
        .starts_with("STaR (SA, own samples)"));

    // A two-agent chain: Table 4 for both agents, Table 5's "only" row, no G+V / G+R rows; one
    // agent: no untrained chain, multi-agent STaR or ablation either.
    let two = parse(&GVR.replace("[[agents]]\nname = \"verifier\"\n", ""));
    assert_eq!(
        ids(&two),
        [
            "single",
            "untrained_chain",
            "star",
            "star_chain",
            "trained_chain",
            "untrained_generator",
            "untrained_refiner",
            "only_generator",
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
    // Remote servers load each round's adapters, if their engine can.
    let remote = format!(
        "{GVR}\n[rounds]\ncount = 2\n[generation]\nbackend = \"remote\"\n[[generation.endpoints]]\nurl = \"http://127.0.0.1:1\"\n"
    );
    assert_eq!(parse(&remote).rounds.count, 2);
    let e = err(&format!("{remote}engine = \"llama.cpp\"\n"));
    assert!(
        e.contains("[rounds] count > 1 samples with the adapters it trains")
            && e.contains("engine = \"llama.cpp\"")
            && e.contains("cannot load at run time"),
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
