//! What each evaluated system cost to train: the tokens sampled to build its training data, the
//! tokens its training processed, its optimiser steps and training examples. Equal-budget claims
//! ("STaR had as much compute as MALT") are read off this table rather than asserted.
//!
//! The caller measures the figures (from the trees and the trainer's files); this module only
//! holds and renders them.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The training budget of one system (zero everywhere for a system that trains nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemBudget {
    /// The system's id.
    pub system: String,
    /// Tokens sampled to build its training data: every node of the round's trees for the
    /// systems trained on tree data (a node's value needs all its descendants), STaR's own
    /// samples for rejection-sampling STaR.
    pub sampled_tokens: u64,
    /// Tokens the training steps of its adapters processed (prompt and completion, every
    /// micro-batch, SFT and DPO phases as it uses them).
    pub trained_tokens: u64,
    /// Optimiser steps over those phases.
    pub optimizer_steps: u64,
    /// Training examples (SFT records, DPO pairs) of those phases, held-out split excluded.
    pub train_examples: u64,
    /// The trained phases it runs, `agent/phase`, e.g. `generator/sft`, `verifier/dpo`.
    pub phases: Vec<String>,
}

/// The report section of the budgets: one line per system, in the given order.
pub fn render(budgets: &[SystemBudget], label_of: impl Fn(&str) -> String) -> String {
    let mut s = String::new();
    if budgets.is_empty() {
        return s;
    }
    let _ = writeln!(s, "## Training budget\n");
    let _ = writeln!(
        s,
        "Tokens sampled to build each system's training data (a tree node's value needs every \
         node below it, so systems trained on tree data count the whole trees), tokens its \
         training steps processed, optimiser steps and training examples, over the adapters it \
         runs.\n"
    );
    let _ = writeln!(
        s,
        "| system | sampled tokens | trained tokens | optimiser steps | training examples | \
         phases |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|");
    for b in budgets {
        let phases = if b.phases.is_empty() {
            "none (base weights)".to_owned()
        } else {
            b.phases.join(", ")
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            label_of(&b.system),
            b.sampled_tokens,
            b.trained_tokens,
            b.optimizer_steps,
            b.train_examples,
            phases
        );
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_line_per_system() {
        let b = vec![
            SystemBudget {
                system: "single".into(),
                ..Default::default()
            },
            SystemBudget {
                system: "trained_chain".into(),
                sampled_tokens: 1200,
                trained_tokens: 5000,
                optimizer_steps: 12,
                train_examples: 40,
                phases: vec!["generator/sft".into(), "verifier/dpo".into()],
            },
        ];
        let md = render(&b, |id| format!("<{id}>"));
        assert!(
            md.contains("| <single> | 0 | 0 | 0 | 0 | none (base weights) |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| <trained_chain> | 1200 | 5000 | 12 | 40 | generator/sft, verifier/dpo |"
            ),
            "{md}"
        );
        assert_eq!(render(&[], |id| id.to_owned()), "");
    }
}
