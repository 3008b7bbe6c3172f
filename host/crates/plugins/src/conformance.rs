//! The conformance battery behind `malt check` and `malt plugin test`.
//!
//! Checks: `info` is sane; the config's options configure; an unknown option is refused;
//! empty and 100 KB inputs to parse-records, render, extract and grade end in a result or a
//! rejection, never a trap, timeout or memory error; rewards are in [0, 1]; results are the
//! same on two fresh instances; `generate` is deterministic (when `can-generate`) or
//! returns an error (when not).

use std::fmt;

use crate::types::*;
use crate::{CallError, CallErrorKind, Plugin};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub plugin: String,
    pub version: String,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
    pub fn failures(&self) -> usize {
        self.checks.iter().filter(|c| !c.passed).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plugin `{}` {}:", self.plugin, self.version)?;
        for c in &self.checks {
            let mark = if c.passed { "ok  " } else { "FAIL" };
            if c.detail.is_empty() {
                writeln!(f, "  {mark} {}", c.name)?;
            } else {
                writeln!(f, "  {mark} {}: {}", c.name, c.detail)?;
            }
        }
        let n = self.checks.len();
        write!(f, "  {} of {n} checks passed", n - self.failures())
    }
}

struct Battery {
    checks: Vec<Check>,
}

impl Battery {
    fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            passed,
            detail: detail.into(),
        });
    }
}

/// A sandbox failure (as opposed to a result or a plugin's own rejection).
fn is_failure(e: &CallError) -> bool {
    !matches!(e.kind, CallErrorKind::Rejected(_))
}

fn first_failure<T>(rs: &[Result<T, CallError>]) -> Option<String> {
    rs.iter().find_map(|r| {
        r.as_ref()
            .err()
            .filter(|e| is_failure(e))
            .map(|e| e.to_string())
    })
}

fn short(s: &str) -> String {
    let s: String = s.chars().take(300).collect();
    s.replace('\n', " ")
}

/// Everything the battery feeds a plugin, run once per fresh instance for the determinism check.
fn outputs(p: &Plugin, examples: &[Example], records: &[String]) -> String {
    let roles = if p.info().roles.is_empty() {
        vec!["generator".to_string()]
    } else {
        p.info().roles.clone()
    };
    let reqs: Vec<RenderRequest> = examples
        .iter()
        .flat_map(|e| {
            let roles = &roles;
            roles.iter().enumerate().map(move |(i, r)| RenderRequest {
                agent: r.clone(),
                role: r.clone(),
                position: i as u32,
                chain_length: roles.len() as u32,
                example: e.clone(),
                history: roles[..i]
                    .iter()
                    .map(|h| Turn {
                        agent: h.clone(),
                        role: h.clone(),
                        output: format!("The answer is {}.", e.gold),
                    })
                    .collect(),
            })
        })
        .collect();
    let ex: Vec<ExtractRequest> = examples
        .iter()
        .map(|e| ExtractRequest {
            output: format!("So the final answer is {}.", e.gold),
            choices: e.choices.clone(),
        })
        .collect();
    let gr: Vec<GradeRequest> = examples
        .iter()
        .map(|e| GradeRequest {
            answer: Some(e.gold.clone()),
            gold: e.gold.clone(),
        })
        .collect();
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}",
        p.parse_records(records),
        p.render(&reqs),
        p.extract(&ex),
        p.grade(&gr)
    )
}

/// Run the battery on a loaded plugin. `records` are sample dataset lines (may be empty).
pub fn run(p: &Plugin, records: &[String]) -> Report {
    let mut b = Battery { checks: Vec::new() };
    let info = p.info().clone();

    // info
    let mut problems = Vec::new();
    if info.roles.is_empty() {
        problems.push("lists no prompt roles".to_string());
    }
    if info.description.trim().is_empty() {
        problems.push("has an empty description".to_string());
    }
    if let Some((k, _)) = info
        .options
        .iter()
        .find(|(k, d)| k.trim().is_empty() || d.trim().is_empty())
    {
        problems.push(format!("option {k:?} has an empty name or description"));
    }
    b.check(
        "info is sane",
        problems.is_empty(),
        if problems.is_empty() {
            format!(
                "roles [{}], can-generate {}",
                info.roles.join(", "),
                info.can_generate
            )
        } else {
            problems.join("; ")
        },
    );

    // configure
    b.check(
        "configure with the config's options",
        true,
        format!("{:?}", p.options()),
    );
    let mut opts = p.options().to_vec();
    opts.push(("malt-conformance-unknown-key".into(), "1".into()));
    match p.try_configure(&opts) {
        Ok(Err(msg)) => b.check("configure refuses an unknown option", true, short(&msg)),
        Ok(Ok(())) => b.check(
            "configure refuses an unknown option",
            false,
            "an unknown key was accepted",
        ),
        Err(e) => b.check("configure refuses an unknown option", false, e.to_string()),
    }

    // generate
    let mut examples = Vec::new();
    if info.can_generate {
        let a = p.generate(7, 5);
        p.reset();
        let c = p.generate(7, 5);
        match (&a, &c) {
            (Ok(x), Ok(y)) if x == y => {
                b.check(
                    "generate is deterministic",
                    true,
                    format!("{} examples", x.len()),
                );
                examples = x.clone();
            }
            (Ok(_), Ok(_)) => b.check(
                "generate is deterministic",
                false,
                "two fresh instances differ for the same seed",
            ),
            (Err(e), _) | (_, Err(e)) => b.check("generate is deterministic", false, e.to_string()),
        }
    } else {
        match p.generate(7, 5) {
            Err(e) if !is_failure(&e) => b.check(
                "generate refuses (can-generate = false)",
                true,
                short(&e.to_string()),
            ),
            Err(e) => b.check(
                "generate refuses (can-generate = false)",
                false,
                e.to_string(),
            ),
            Ok(_) => b.check(
                "generate refuses (can-generate = false)",
                false,
                "returned examples anyway",
            ),
        }
    }

    // parse the sample records
    if !records.is_empty() {
        let parsed = p.parse_records(records);
        let ok = parsed.iter().filter(|r| r.is_ok()).count();
        let fail = first_failure(&parsed);
        b.check(
            "parse-records on sample records",
            fail.is_none() && ok > 0,
            match fail {
                Some(f) => f,
                None => format!("{ok} of {} parsed", records.len()),
            },
        );
        examples.extend(parsed.into_iter().filter_map(Result::ok).take(5));
    }
    if examples.is_empty() {
        examples.push(Example {
            id: "conformance-0".into(),
            question: "What is 2 + 3?".into(),
            gold: "5".into(),
            choices: vec![],
            metadata: "{}".into(),
        });
    }

    // hostile-ish inputs
    let big = "9".repeat(100 * 1024);
    let parse = p.parse_records(&[String::new(), big.clone(), "{}".into()]);
    b.check(
        "parse-records: empty and 100 KB inputs",
        first_failure(&parse).is_none(),
        first_failure(&parse).unwrap_or_default(),
    );
    let role = info
        .roles
        .first()
        .cloned()
        .unwrap_or_else(|| "generator".into());
    let mk = |q: &str| {
        let mut e = examples[0].clone();
        e.question = q.to_string();
        RenderRequest {
            agent: role.clone(),
            role: role.clone(),
            position: 0,
            chain_length: 3,
            example: e,
            history: vec![],
        }
    };
    let render = p.render(&[mk(""), mk(&big)]);
    b.check(
        "render: empty and 100 KB inputs",
        first_failure(&render).is_none(),
        first_failure(&render).unwrap_or_default(),
    );
    let extract = p.extract(&[
        ExtractRequest {
            output: String::new(),
            choices: vec![],
        },
        ExtractRequest {
            output: big.clone(),
            choices: vec![],
        },
    ]);
    b.check(
        "extract: empty and 100 KB inputs",
        first_failure(&extract).is_none(),
        first_failure(&extract).unwrap_or_default(),
    );
    let grade = p.grade(&[
        GradeRequest {
            answer: None,
            gold: String::new(),
        },
        GradeRequest {
            answer: Some(String::new()),
            gold: "1".into(),
        },
        GradeRequest {
            answer: Some(big.clone()),
            gold: big.clone(),
        },
    ]);
    b.check(
        "grade: empty and 100 KB inputs",
        first_failure(&grade).is_none(),
        first_failure(&grade).unwrap_or_default(),
    );

    // rewards in [0, 1]
    let golds: Vec<GradeRequest> = examples
        .iter()
        .flat_map(|e| {
            [
                GradeRequest {
                    answer: Some(e.gold.clone()),
                    gold: e.gold.clone(),
                },
                GradeRequest {
                    answer: Some("not the answer".into()),
                    gold: e.gold.clone(),
                },
                GradeRequest {
                    answer: None,
                    gold: e.gold.clone(),
                },
            ]
        })
        .collect();
    let g = p.grade(&golds);
    let bad = g
        .iter()
        .find_map(|r| r.as_ref().err().map(|e| e.to_string()));
    let exact = g
        .iter()
        .step_by(3)
        .filter(|r| matches!(r, Ok(g) if g.reward == 1.0))
        .count();
    b.check(
        "rewards are in [0, 1]",
        bad.is_none(),
        bad.unwrap_or_else(|| format!("gold graded 1.0 for {exact} of {}", examples.len())),
    );

    // determinism across fresh instances
    p.reset();
    let a = outputs(p, &examples, records);
    p.reset();
    let c = outputs(p, &examples, records);
    b.check(
        "deterministic across two fresh instances",
        a == c,
        if a == c {
            String::new()
        } else {
            "outputs differ".into()
        },
    );

    let s = p.stats();
    let failures = s.timeouts + s.memory + s.traps + s.output_too_large + s.bad_responses;
    b.check(
        "no traps, timeouts or memory errors",
        failures == 0,
        format!(
            "timeouts {}, memory {}, traps {}, oversized {}, malformed {}",
            s.timeouts, s.memory, s.traps, s.output_too_large, s.bad_responses
        ),
    );

    Report {
        plugin: p.name().to_string(),
        version: info.version,
        checks: b.checks,
    }
}
