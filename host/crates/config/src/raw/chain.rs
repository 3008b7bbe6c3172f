//! `[credit]`, `[[agents]]` and `[train]`: the chain, each agent's sampling and threshold, and
//! its training plan (the `[train]` defaults overridden by the agent's own `[agents.train]`).

use std::collections::{BTreeMap, HashSet};

use super::{unknown_plugin, Checker, RawAgent, RawCredit, RawTrain};
use crate::locate::Seg;
use crate::types::*;

use Seg::{Index as I, Key as K};

pub(super) fn resolve_credit(raw: RawCredit, c: &mut Checker<'_, '_>) -> Credit {
    let credit = Credit {
        theta: raw.theta.unwrap_or(0.5),
        pooling: raw.pooling.unwrap_or(Pooling::Global),
        pairs: raw.pairs.unwrap_or(Pairs::All),
        truncated: raw.truncated.unwrap_or(Truncated::Exclude),
    };
    check_credit(&credit, c);
    credit
}

fn check_credit(credit: &Credit, c: &mut Checker<'_, '_>) {
    c.theta(
        &[K("credit"), K("theta")],
        "credit.theta",
        "[credit] theta",
        credit.theta,
    );
}

/// The default training method of a prompt role, as in the MALT paper.
pub(super) fn default_method(role: &str) -> Method {
    if role == "generator" {
        Method::Sft
    } else {
        Method::SftThenDpo
    }
}

pub(super) fn resolve_agents(
    raw: Vec<RawAgent>,
    train: &RawTrain,
    dataset: &Dataset,
    plugins: &BTreeMap<String, PluginSpec>,
    credit: &Credit,
    c: &mut Checker<'_, '_>,
) -> Vec<Agent> {
    if raw.is_empty() {
        c.err(
            &[K("agents")],
            "no agents: the chain needs at least one [[agents]] table",
        );
    }
    let mut seen = HashSet::new();
    let mut agents = Vec::with_capacity(raw.len());
    for (i, a) in raw.into_iter().enumerate() {
        let own = Own {
            theta: a.theta.is_some(),
            train: a.train.is_some(),
        };
        let agent = resolve_agent(a, train, dataset, credit);
        check_agent(i, &agent, own, (plugins, &dataset.plugin), &mut seen, c);
        agents.push(agent);
    }
    agents
}

fn resolve_agent(a: RawAgent, train: &RawTrain, dataset: &Dataset, credit: &Credit) -> Agent {
    let role = a.role.unwrap_or_else(|| {
        a.name
            .trim_end_matches(|ch: char| ch.is_ascii_digit() || ch == '-')
            .to_string()
    });
    let mut plan = TrainPlan {
        method: default_method(&role),
        gradient_checkpointing: false,
        lora: Lora::default(),
        sft: Sft::default(),
        dpo: Dpo::default(),
    };
    train.apply(&mut plan);
    if let Some(t) = &a.train {
        t.apply(&mut plan);
    }
    Agent {
        name: a.name,
        role,
        plugin: a.plugin.unwrap_or_else(|| dataset.plugin.clone()),
        branches: a.branches.unwrap_or(3),
        temperature: a.temperature.unwrap_or(0.3),
        top_p: a.top_p.unwrap_or(1.0),
        top_k: a.top_k.unwrap_or(0),
        max_new_tokens: a.max_new_tokens.unwrap_or(256),
        stop: a.stop.unwrap_or_default(),
        theta: a.theta.unwrap_or(credit.theta),
        train: plan,
    }
}

/// Which keys the agent's own table sets (rather than inheriting them).
#[derive(Clone, Copy)]
struct Own {
    theta: bool,
    train: bool,
}

/// Checks the `i`-th agent against the declared plugins (and the dataset's, reported once at
/// `[dataset] plugin`); `seen` collects the names of the agents before it.
fn check_agent(
    i: usize,
    agent: &Agent,
    own: Own,
    (plugins, dataset_plugin): (&BTreeMap<String, PluginSpec>, &str),
    seen: &mut HashSet<String>,
    c: &mut Checker<'_, '_>,
) {
    let at = |k: &'static str| [K("agents"), I(i), K(k)];
    if agent.name.is_empty() {
        c.err(&at("name"), "agent name must not be empty");
    } else if !seen.insert(agent.name.clone()) {
        c.err(
            &at("name"),
            format!("duplicate agent name `{}`", agent.name),
        );
    }
    if !plugins.contains_key(&agent.plugin) && agent.plugin != dataset_plugin {
        c.err(&at("plugin"), unknown_plugin(&agent.plugin, plugins));
    }
    c.positive(&at("branches"), "branches", agent.branches);
    c.positive(
        &at("max_new_tokens"),
        "max_new_tokens",
        agent.max_new_tokens,
    );
    c.range(
        &at("temperature"),
        "temperature",
        agent.temperature,
        0.0,
        5.0,
    );
    if !(agent.top_p.is_finite() && agent.top_p > 0.0 && agent.top_p <= 1.0) {
        c.err(
            &at("top_p"),
            format!(
                "top_p = {} is out of range: expected 0 < top_p <= 1",
                agent.top_p
            ),
        );
    }
    if own.theta {
        c.theta(&at("theta"), "theta", "[[agents]] theta", agent.theta);
    }
    if agent.role == "generator" && matches!(agent.train.method, Method::Dpo | Method::SftThenDpo) {
        c.warn(
            &[K("agents"), I(i), K("train"), K("method")],
            format!(
                "agent `{}`: DPO on the generator differs from the MALT paper (generator: sft)",
                agent.name
            ),
        );
    }
    if own.train {
        check_plan(&[K("agents"), I(i), K("train")], &agent.train, c);
    } else {
        check_plan(&[K("train")], &agent.train, c);
    }
}

impl RawTrain {
    fn apply(&self, plan: &mut TrainPlan) {
        if let Some(m) = self.method {
            plan.method = m;
        }
        if let Some(on) = self.gradient_checkpointing {
            plan.gradient_checkpointing = on;
        }
        if let Some(l) = &self.lora {
            if let Some(v) = l.rank {
                plan.lora.rank = v;
            }
            if let Some(v) = l.alpha {
                plan.lora.alpha = v;
            }
            if let Some(v) = l.dropout {
                plan.lora.dropout = v;
            }
            if let Some(v) = &l.targets {
                plan.lora.targets = v.clone();
            }
        }
        if let Some(s) = &self.sft {
            s.apply_optim(&mut plan.sft.optim);
        }
        if let Some(d) = &self.dpo {
            d.apply_optim(&mut plan.dpo.optim);
            if let Some(v) = d.beta {
                plan.dpo.beta = v;
            }
            if let Some(v) = d.lora_dropout {
                plan.dpo.lora_dropout = v;
            }
            if let Some(v) = d.label_smoothing {
                plan.dpo.label_smoothing = v;
            }
            if let Some(v) = d.loss {
                plan.dpo.loss = v;
            }
        }
    }
}

fn check_plan(prefix: &[Seg<'static>], plan: &TrainPlan, c: &mut Checker<'_, '_>) {
    let p = |rest: &[&'static str]| -> Vec<Seg<'static>> {
        prefix
            .iter()
            .copied()
            .chain(rest.iter().map(|k| Seg::Key(k)))
            .collect()
    };
    c.positive(&p(&["lora", "rank"]), "lora.rank", plan.lora.rank);
    c.range(
        &p(&["lora", "dropout"]),
        "lora.dropout",
        plan.lora.dropout,
        0.0,
        0.99,
    );
    if !(plan.lora.alpha.is_finite() && plan.lora.alpha > 0.0) {
        c.err(&p(&["lora", "alpha"]), "lora.alpha must be > 0");
    }
    if plan.lora.targets.is_empty() {
        c.err(
            &p(&["lora", "targets"]),
            "lora.targets must name at least one module",
        );
    }
    for (table, o) in [("sft", &plan.sft.optim), ("dpo", &plan.dpo.optim)] {
        if !(o.lr.is_finite() && o.lr > 0.0 && o.lr < 1.0) {
            c.err(
                &p(&[table, "lr"]),
                format!("{table}.lr = {} is out of range: expected 0 < lr < 1", o.lr),
            );
        }
        c.positive(
            &p(&[table, "micro_batch"]),
            &format!("{table}.micro_batch"),
            o.micro_batch,
        );
        c.positive(
            &p(&[table, "grad_accum"]),
            &format!("{table}.grad_accum"),
            o.grad_accum,
        );
        c.positive(
            &p(&[table, "max_seq_len"]),
            &format!("{table}.max_seq_len"),
            o.max_seq_len,
        );
        if o.epochs == 0 && o.max_steps == 0 {
            c.err(
                &p(&[table, "epochs"]),
                format!("{table}: epochs and max_steps are both 0"),
            );
        }
        c.range(
            &p(&[table, "warmup_ratio"]),
            &format!("{table}.warmup_ratio"),
            o.warmup_ratio,
            0.0,
            1.0,
        );
        c.range(
            &p(&[table, "weight_decay"]),
            &format!("{table}.weight_decay"),
            o.weight_decay,
            0.0,
            1.0,
        );
        if !(o.max_grad_norm.is_finite() && o.max_grad_norm >= 0.0) {
            c.err(
                &p(&[table, "max_grad_norm"]),
                format!("{table}.max_grad_norm must be >= 0 (0 = no clipping)"),
            );
        }
    }
    if !(plan.dpo.beta.is_finite() && plan.dpo.beta > 0.0) {
        c.err(
            &p(&["dpo", "beta"]),
            format!("dpo.beta = {} must be > 0", plan.dpo.beta),
        );
    }
    c.range(
        &p(&["dpo", "label_smoothing"]),
        "dpo.label_smoothing",
        plan.dpo.label_smoothing,
        0.0,
        0.49,
    );
}
