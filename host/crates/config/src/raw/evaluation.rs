//! `[eval]`: how many held-out questions each seed draws, the seeds, and majority voting.

use super::{Checker, RawEval};
use crate::locate::Seg;
use crate::types::*;

use Seg::Key as K;

pub(super) fn resolve_eval(
    raw: RawEval,
    agents: &[Agent],
    star: StarData,
    c: &mut Checker<'_, '_>,
) -> Eval {
    let eval = Eval {
        systems: super::resolve_systems(raw.systems, agents, star, c),
        questions: raw.questions.unwrap_or(100),
        seeds: raw.seeds.unwrap_or_else(|| vec![0, 1, 2, 3]),
        majority_k: raw.majority_k.unwrap_or(3),
        batch_questions: raw.batch_questions.unwrap_or(8),
        std: raw.std.unwrap_or_default(),
    };
    check_eval(&eval, c);
    eval
}

fn check_eval(eval: &Eval, c: &mut Checker<'_, '_>) {
    c.positive(
        &[K("eval"), K("questions")],
        "eval.questions",
        eval.questions,
    );
    c.positive(
        &[K("eval"), K("majority_k")],
        "eval.majority_k",
        eval.majority_k,
    );
    c.positive(
        &[K("eval"), K("batch_questions")],
        "eval.batch_questions",
        eval.batch_questions,
    );
    if eval.seeds.is_empty() {
        c.err(
            &[K("eval"), K("seeds")],
            "eval.seeds must list at least one seed",
        );
    }
}
