//! Resolution of what a study compares: `[eval] systems`, `[star]` and `[rounds]`.

use serde::Deserialize;

use super::Checker;
use crate::locate::Seg;
use crate::types::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStar {
    data: Option<StarData>,
    samples: Option<u32>,
    steps: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRounds {
    count: Option<u32>,
    theta: Option<Vec<f64>>,
}

/// The system names `[eval] systems` accepts as strings.
const NAMED: &str = "\"single\", \"untrained\", \"star\", \"star_chain\", \"malt\", \"online\"";

/// The single-agent STaR row as `[star] data` trains it.
fn star_system(data: StarData) -> EvalSystem {
    let label = match data {
        StarData::Trees => "STaR (SA): first agent, SFT on the trees' positives",
        StarData::Sample => "STaR (SA, own samples): first agent, SFT on its correct samples",
    };
    system("star", label, SystemKind::Star)
}

/// The online system's row label: a one-agent chain is the field's single-agent baseline, not
/// MALT.
fn online_label(agents: &[Agent]) -> String {
    match agents {
        [one] => format!("Single-agent online: {} trained by [online]", one.name),
        _ => "Online MALT: the agents [online] trains on their online adapters".to_owned(),
    }
}

fn star_chain_system() -> EvalSystem {
    system(
        "star_chain",
        "STaR (MA): every agent SFT on its positives, no DPO",
        SystemKind::StarChain,
    )
}

fn system(id: &str, label: &str, kind: SystemKind) -> EvalSystem {
    EvalSystem {
        id: id.to_owned(),
        label: label.to_owned(),
        kind,
    }
}

/// The ablation `{ trained = [...], skip = [...] }` with its default id and label.
fn ablation(trained: Vec<String>, skip: Vec<String>) -> EvalSystem {
    let mut id = format!(
        "trained_{}",
        if trained.is_empty() {
            "none".to_owned()
        } else {
            trained.join("_")
        }
    );
    let mut label = match trained.as_slice() {
        [] => "No agent trained".to_owned(),
        [one] => format!("Only {one} trained"),
        many => format!("{} trained", many.join(" + ")),
    };
    if !skip.is_empty() {
        id.push_str("_skip_");
        id.push_str(&skip.join("_"));
        label.push_str(&format!(", {} skipped", skip.join(" + ")));
    }
    EvalSystem {
        id,
        label,
        kind: SystemKind::Trained { trained, skip },
    }
}

/// The paper's tables for this chain (docs/paper.md quotes them):
/// - Table 1: single agent, untrained chain, STaR (SA), STaR (MA), MALT;
/// - Table 4 ("ablations with untrained models"), with two agents or more: MALT with one agent
///   on the base model, for each agent;
/// - Table 5 ("ablated multi-agent setups"), with two agents or more: the first agent alone
///   ("G only"), and for the generator -> verifier -> refiner chain G + V (no refiner) and
///   G + R (the verifier skipped: the refiner gets an empty critique, as in the paper's A.9).
pub fn default_systems(agents: &[Agent], star: StarData) -> Vec<EvalSystem> {
    let mut out = vec![system("single", "Single agent", SystemKind::Single)];
    let chain = agents.len() > 1;
    if chain {
        out.push(system(
            "untrained_chain",
            "Untrained chain",
            SystemKind::Untrained,
        ));
    }
    out.push(star_system(star));
    if chain {
        out.push(star_chain_system());
    }
    out.push(system(
        "trained_chain",
        "MALT (trained chain)",
        SystemKind::Malt,
    ));
    if !chain {
        return out;
    }
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    for name in &names {
        let trained: Vec<String> = names.iter().filter(|n| *n != name).cloned().collect();
        let mut s = ablation(trained, Vec::new());
        s.id = format!("untrained_{name}");
        s.label = format!("Table 4: {name} on the base model, the others MALT-trained");
        out.push(s);
    }
    let mut only = ablation(vec![names[0].clone()], names[1..].to_vec());
    only.id = format!("only_{}", names[0]);
    only.label = format!(
        "Table 5: {} only (MALT-trained, the others removed)",
        names[0]
    );
    out.push(only);
    let roles: Vec<&str> = agents.iter().map(|a| a.role.as_str()).collect();
    if roles == ["generator", "verifier", "refiner"] {
        let n = |i: usize| names[i].clone();
        let mut gv = ablation(vec![n(0), n(1)], vec![n(2)]);
        gv.id = format!("{}_{}", n(0), n(1));
        gv.label = format!(
            "Table 5: {} + {} (no {}; the {}'s answer when it states one, else the {}'s)",
            n(0),
            n(1),
            n(2),
            n(1),
            n(0)
        );
        out.push(gv);
        let mut gr = ablation(vec![n(0), n(2)], vec![n(1)]);
        gr.id = format!("{}_{}", n(0), n(2));
        gr.label = format!(
            "Table 5: {} + {} ({} skipped: an empty critique)",
            n(0),
            n(2),
            n(1)
        );
        out.push(gr);
    }
    out
}

fn names(
    c: &mut Checker<'_, '_>,
    at: &[Seg<'_>],
    v: &toml::Value,
    what: &str,
    agents: &[Agent],
) -> Vec<String> {
    let Some(items) = v.as_array() else {
        c.err(at, format!("{what} must be a list of agent names"));
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for item in items {
        match item.as_str() {
            Some(name) if agents.iter().any(|a| a.name == name) => {
                if out.iter().any(|x| x == name) {
                    c.err(at, format!("{what} names agent `{name}` twice"));
                } else {
                    out.push(name.to_owned());
                }
            }
            Some(name) => c.err(
                at,
                format!(
                    "{what}: no agent named `{name}` (agents: {})",
                    agents
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            None => c.err(at, format!("{what} must be a list of agent names")),
        }
    }
    // Chain order, whatever the order written: ids and labels do not depend on it.
    out.sort_by_key(|n| agents.iter().position(|a| &a.name == n));
    out
}

fn one_system(
    c: &mut Checker<'_, '_>,
    i: usize,
    v: &toml::Value,
    agents: &[Agent],
    star: StarData,
) -> Option<EvalSystem> {
    use Seg::{Index as I, Key as K};
    let at = [K("eval"), K("systems"), I(i)];
    if let Some(name) = v.as_str() {
        return match name {
            "single" => Some(system("single", "Single agent", SystemKind::Single)),
            "untrained" | "untrained_chain" => Some(system(
                "untrained_chain",
                "Untrained chain",
                SystemKind::Untrained,
            )),
            "star" => Some(star_system(star)),
            "star_chain" => Some(star_chain_system()),
            "malt" | "trained_chain" => Some(system(
                "trained_chain",
                "MALT (trained chain)",
                SystemKind::Malt,
            )),
            "online" => Some(system("online", &online_label(agents), SystemKind::Online)),
            other => {
                c.err(
                    &at,
                    format!(
                        "eval.systems: unknown system {other:?}: expected one of {NAMED} or a \
                         table {{ trained = [agents], skip = [agents], name = \"id\", label = \
                         \"row label\" }}"
                    ),
                );
                None
            }
        };
    }
    let Some(table) = v.as_table() else {
        c.err(
            &at,
            format!("eval.systems: expected one of {NAMED} or a table {{ trained = [...] }}"),
        );
        return None;
    };
    for key in table.keys() {
        if !matches!(key.as_str(), "trained" | "skip" | "name" | "label") {
            c.err(
                &[K("eval"), K("systems"), I(i), K(key)],
                format!(
                    "eval.systems: unknown key `{key}` (a system table has `trained`, `skip`, \
                     `name`, `label`)"
                ),
            );
        }
    }
    let Some(trained_v) = table.get("trained") else {
        c.err(
            &at,
            "eval.systems: a system table needs `trained = [agents]` (the agents that run on \
             their trained adapters; `[]` for none)",
        );
        return None;
    };
    let trained = names(
        c,
        &[K("eval"), K("systems"), I(i), K("trained")],
        trained_v,
        "eval.systems trained",
        agents,
    );
    let skip = match table.get("skip") {
        Some(s) => names(
            c,
            &[K("eval"), K("systems"), I(i), K("skip")],
            s,
            "eval.systems skip",
            agents,
        ),
        None => Vec::new(),
    };
    if let Some(both) = skip.iter().find(|s| trained.contains(s)) {
        c.err(
            &[K("eval"), K("systems"), I(i), K("skip")],
            format!("eval.systems: agent `{both}` is both trained and skipped"),
        );
    }
    if !agents.is_empty() && skip.len() == agents.len() {
        c.err(
            &[K("eval"), K("systems"), I(i), K("skip")],
            "eval.systems: a system must run at least one agent",
        );
    }
    let mut s = ablation(trained, skip);
    for (key, slot) in [("name", &mut s.id), ("label", &mut s.label)] {
        match table.get(key) {
            None => {}
            Some(toml::Value::String(v)) if !v.trim().is_empty() => *slot = v.clone(),
            Some(_) => c.err(
                &[K("eval"), K("systems"), I(i), K(key)],
                format!("eval.systems: `{key}` must be a non-empty string"),
            ),
        }
    }
    if !s
        .id
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.' | '+'))
    {
        c.err(
            &[K("eval"), K("systems"), I(i), K("name")],
            format!(
                "eval.systems: name {:?} may only hold letters, digits and _ - . +",
                s.id
            ),
        );
    }
    Some(s)
}

/// `[eval] systems`, or the defaults for the chain.
pub(super) fn resolve_systems(
    raw: Option<Vec<toml::Value>>,
    agents: &[Agent],
    star: StarData,
    c: &mut Checker<'_, '_>,
) -> Vec<EvalSystem> {
    use Seg::{Index as I, Key as K};
    let Some(raw) = raw else {
        return default_systems(agents, star);
    };
    if raw.is_empty() {
        c.err(
            &[K("eval"), K("systems")],
            "eval.systems is empty: list at least one system",
        );
    }
    let mut out: Vec<EvalSystem> = Vec::new();
    for (i, v) in raw.iter().enumerate() {
        if let Some(s) = one_system(c, i, v, agents, star) {
            if out.iter().any(|o| o.id == s.id) {
                c.err(
                    &[K("eval"), K("systems"), I(i)],
                    format!(
                        "eval.systems: system `{}` is listed twice (give one a `name`)",
                        s.id
                    ),
                );
            }
            out.push(s);
        }
    }
    out
}

pub(super) fn resolve_star(raw: RawStar, c: &mut Checker<'_, '_>) -> Star {
    use Seg::Key as K;
    let steps = match raw.steps {
        None => StarSteps::Generator,
        Some(toml::Value::String(s)) if s == "generator" => StarSteps::Generator,
        Some(toml::Value::String(s)) if s == "malt" => StarSteps::Malt,
        Some(toml::Value::Integer(n)) if n >= 1 && n <= u32::MAX as i64 => {
            StarSteps::Fixed(n as u32)
        }
        Some(other) => {
            c.err(
                &[K("star"), K("steps")],
                format!(
                    "star.steps = {other}: expected \"generator\" (as many optimiser steps as the \
                     MALT generator's SFT), \"malt\" (as many as every MALT agent's phases \
                     together) or a number of steps >= 1"
                ),
            );
            StarSteps::Generator
        }
    };
    Star {
        data: raw.data.unwrap_or(StarData::Trees),
        samples: raw.samples.unwrap_or(0),
        steps,
    }
}

pub(super) fn resolve_rounds(
    raw: RawRounds,
    credit_theta: f64,
    generation: &Generation,
    c: &mut Checker<'_, '_>,
) -> Rounds {
    use Seg::Key as K;
    let count = raw.count.unwrap_or(1);
    if count == 0 {
        c.err(
            &[K("rounds"), K("count")],
            "rounds.count must be at least 1",
        );
    }
    let theta = raw.theta.unwrap_or_default();
    if !theta.is_empty() && theta.len() != count as usize {
        c.err(
            &[K("rounds"), K("theta")],
            format!(
                "rounds.theta has {} values but rounds.count = {count}: give one theta per \
                 round (or none to keep credit.theta = {credit_theta})",
                theta.len()
            ),
        );
    }
    for t in &theta {
        c.theta(
            &[K("rounds"), K("theta")],
            "rounds.theta",
            "[rounds] theta",
            *t,
        );
    }
    if count > 1 {
        super::scale_out::check_adapter_loading(generation, "[rounds] count > 1", c);
    }
    Rounds { count, theta }
}
