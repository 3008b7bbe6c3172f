//! Checking feedback for arithmetic word problems (`feedback = check` of the arith plugin): a
//! verifier that works the problem out again step by step, naming each sentence's operation
//! ("Jack sells 3 cards. So 3 are taken away: 7 - 3 = 4."), and compares the result with the
//! proposed answer ("Verdict: correct" or "Verdict: wrong"); a refiner that keeps a solution
//! judged correct and writes it again with the mistake fixed otherwise.
//!
//! SmolLM2-135M's wrong answers at difficulty 0 mostly apply the wrong operation ("Jack sells 3
//! cards. 3 + 7 = 10.") or copy the wrong numbers; naming the operation a sentence asks for is
//! what its check spells out. Worked demonstrations come from the fixed demonstration problems
//! of [`crate::arith`]: every other one proposes a wrong solution (the last step's operation
//! flipped, or its result off by a few), so the demonstrations show both verdicts.

use crate::arith::{demonstrations, Solved};

/// The verifier's check of a proposed answer to `problem`: the proposed answer first (copied
/// from the solution), the problem worked out again step by step, then the two numbers
/// compared and the verdict.
pub fn check(problem: &Solved, proposed: Option<u64>) -> String {
    let mut lines = vec![match proposed {
        Some(a) => format!("The proposed answer is {a}."),
        None => "The proposed solution gives no answer.".to_owned(),
    }];
    lines.push(format!(
        "{} starts with {} {}.",
        problem.name, problem.start, problem.item
    ));
    for s in &problem.trace {
        lines.push(format!("{} {}", s.sentence, s.explained));
    }
    let right = problem.answer;
    lines.push(match proposed {
        Some(a) if a == right => format!("{right} is {a}. Verdict: correct."),
        Some(a) => format!("{right} is not {a}. Verdict: wrong. The answer is {right}."),
        None => format!("Verdict: wrong. The answer is {right}."),
    });
    lines.join("\n")
}

/// A wrong solution of `problem`: its last step's operation flipped (`flip`, for an addition or
/// subtraction) or its result off by `delta`; returns the text and its final answer.
pub fn wrong_solution(problem: &Solved, flip: bool, delta: u64) -> (String, u64) {
    let Some((last, earlier)) = problem.trace.split_last() else {
        return (problem.solution.clone(), problem.answer);
    };
    let (op, wrong) = match (flip, last.op) {
        (true, '+') if last.before >= last.operand => ('-', last.before - last.operand),
        (true, '-') => ('+', last.before + last.operand),
        _ if last.after > delta && delta % 2 == 1 => (last.op, last.after - delta),
        _ => (last.op, last.after + delta),
    };
    let mut text = format!(
        "{} starts with {} {}.",
        problem.name, problem.start, problem.item
    );
    for s in earlier {
        text.push(' ');
        text.push_str(&s.equation);
    }
    text.push_str(&format!(
        " {} {op} {} = {wrong}. {} has {wrong} {} now.\nFinal Answer: {wrong}",
        last.before, last.operand, problem.name, problem.item
    ));
    (text, wrong)
}

/// A worked demonstration of the verifier and refiner turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackDemo {
    pub question: String,
    /// The solution shown to the verifier (and the refiner).
    pub proposed: String,
    /// The verifier's check of it.
    pub critique: String,
    /// The refiner's answer: the proposed answer kept, or the feedback's taken.
    pub refined: String,
}

/// `count` demonstrations at `difficulty`: even ones correct, odd ones wrong (alternately an
/// operation flipped and a result off by a few).
pub fn feedback_demos(difficulty: u32, count: u32) -> Vec<FeedbackDemo> {
    demonstrations(difficulty, count)
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let (proposed, answer) = if i % 2 == 0 {
                (d.solution.clone(), d.answer)
            } else {
                wrong_solution(&d, i % 4 == 1, 1 + (i as u64 / 4) % 3)
            };
            let refined = if answer == d.answer {
                refined_kept(answer)
            } else {
                refined_taken(d.answer)
            };
            FeedbackDemo {
                critique: check(&d, Some(answer)),
                question: d.question,
                proposed,
                refined,
            }
        })
        .collect()
}

/// The demonstrated refiner's answer when the feedback finds no mistake.
pub(crate) fn refined_kept(answer: u64) -> String {
    format!("The feedback finds no mistake. The answer is {answer}.\nFinal Answer: {answer}")
}

/// The demonstrated refiner's answer when it takes the feedback's `answer`.
pub(crate) fn refined_taken(answer: u64) -> String {
    format!("The feedback finds a mistake. The answer is {answer}.\nFinal Answer: {answer}")
}

/// What the arith plugin's `proposal = "answer"` shows the verifier and refiner of a solution:
/// its final answer line alone, so they cannot copy its reasoning.
pub fn final_answer_only(solution: &str) -> String {
    match crate::gsm8k::extract(solution, crate::gsm8k::Mode::Numeric) {
        Some(answer) => format!("Final Answer: {answer}"),
        None => "(no final answer)".to_owned(),
    }
}

/// The verifier's instruction for `solution` of `question`.
pub fn verifier_prompt(question: &str, solution: &str) -> String {
    verifier_prompt_with(
        question,
        solution,
        "Check the proposed solution: write its final answer, work the problem out again step by \
         step, saying for each sentence whether it adds or takes away and how many, then compare \
         your result with the proposed answer and end with \"Verdict: correct\" or \"Verdict: \
         wrong\" (and the right answer).",
    )
}

/// The refiner's instruction for `solution` of `question` and the verifier's `critique` (an
/// empty critique, a skipped verifier's, is no feedback).
pub fn refiner_prompt(question: &str, solution: &str, critique: &str) -> String {
    refiner_prompt_with(
        question,
        solution,
        critique,
        "If the verdict is correct, keep the previous answer. If it is wrong, take the answer the \
         feedback gives.",
    )
}

/// A verifier prompt: the problem, the proposed solution, then `instruction`.
pub(crate) fn verifier_prompt_with(question: &str, solution: &str, instruction: &str) -> String {
    format!(
        "Problem: {}\n\nProposed solution:\n{}\n\n{instruction}",
        question.trim(),
        solution.trim()
    )
}

/// A refiner prompt: the problem, the previous solution, the feedback (or a line saying there
/// is none), then `instruction` and the answer format.
pub(crate) fn refiner_prompt_with(
    question: &str,
    solution: &str,
    critique: &str,
    instruction: &str,
) -> String {
    let critique = critique.trim();
    format!(
        "Problem: {}\n\nPrevious solution:\n{}\n\nFeedback on the previous solution:\n{}\n\n\
         {instruction} End your response with a line of the form \"Final Answer: X\", where X is \
         the final numerical answer (a number only, without units).",
        question.trim(),
        solution.trim(),
        if critique.is_empty() {
            crate::templates::NO_FEEDBACK
        } else {
            critique
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arith::{solved_problem, Rng};

    #[test]
    fn checks_name_the_operation_and_the_verdict() {
        for seed in 0..50 {
            let p = solved_problem(&mut Rng::new(seed), 0);
            let right = check(&p, Some(p.answer));
            assert!(right.ends_with("Verdict: correct."), "{right}");
            let (wrong, answer) = wrong_solution(&p, true, 1);
            assert_ne!(answer, p.answer, "{wrong}");
            assert!(
                wrong.ends_with(&format!("Final Answer: {answer}")),
                "{wrong}"
            );
            let c = check(&p, Some(answer));
            assert!(
                c.starts_with(&format!("The proposed answer is {answer}.")),
                "{c}"
            );
            assert!(
                c.ends_with(&format!(
                    "{} is not {answer}. Verdict: wrong. The answer is {}.",
                    p.answer, p.answer
                )),
                "{c}"
            );
            assert!(
                c.contains("are added") || c.contains("are taken away"),
                "{c}"
            );
        }
    }

    #[test]
    fn flipped_and_slipped_solutions_are_wrong_in_the_last_step() {
        let p = solved_problem(&mut Rng::new(3), 2);
        for (flip, delta) in [(true, 1), (false, 1), (false, 2), (false, 3)] {
            let (text, answer) = wrong_solution(&p, flip, delta);
            assert_ne!(answer, p.answer, "{text}");
            let earlier: Vec<&str> = p.trace[..p.trace.len() - 1]
                .iter()
                .map(|s| s.equation.as_str())
                .collect();
            for e in earlier {
                assert!(text.contains(e), "{text} lacks {e}");
            }
        }
    }

    #[test]
    fn demonstrations_show_both_verdicts_and_fix_the_error() {
        for d in 0..=2 {
            let demos = feedback_demos(d, 4);
            assert_eq!(demos.len(), 4);
            for (i, demo) in demos.iter().enumerate() {
                assert_eq!(
                    demo.critique.ends_with("Verdict: correct."),
                    i % 2 == 0,
                    "{demo:?}"
                );
                assert_eq!(
                    demo.refined.starts_with("The feedback finds no mistake"),
                    i % 2 == 0,
                    "{demo:?}"
                );
            }
        }
        assert!(feedback_demos(0, 0).is_empty());
    }

    #[test]
    fn answer_only_keeps_the_final_answer_alone() {
        assert_eq!(
            final_answer_only("14 - 8 = 7. Tara had 7 cards.\nFinal Answer: 7"),
            "Final Answer: 7"
        );
        assert_eq!(
            final_answer_only("So it was 12 - 5 = 7."),
            "Final Answer: 7"
        );
        assert_eq!(final_answer_only("I do not know."), "(no final answer)");
    }

    #[test]
    fn an_empty_critique_is_no_feedback() {
        assert!(refiner_prompt("q", "s", " \n").contains(crate::templates::NO_FEEDBACK));
        assert!(refiner_prompt("q", "s", "Verdict: wrong.").contains("Verdict: wrong."));
    }
}
