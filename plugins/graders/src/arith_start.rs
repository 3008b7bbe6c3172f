//! Arithmetic word problems that ask for the starting count (the arith plugin's `ask = "start"`),
//! and their checking feedback:
//!
//! "Ava has some apples. Ava finds 6 more apples. Now Ava has 16 apples. How many apples did Ava
//! have at the start?"
//!
//! A problem whose check is easier than its solution. Solving it means undoing each step in
//! reverse order (finding 6 more means taking 6 away), the inverse of what the sentence says;
//! SmolLM2-135M's usual mistake on forward problems is already the wrong operation. Checking a
//! proposed start means following the story forward, each sentence's own operation, and
//! comparing the end with the story's end ("Start with 22. ... 22 + 6 = 28. The story ends with
//! 16. 28 is not 16. Verdict: wrong."). So a verifier can be right more often than a generator,
//! and a refiner told "wrong" knows which answer not to give again.
//!
//! The stories are [`crate::arith`]'s, drawn with the same random numbers: item `i` of a seed
//! tells the same story as the forward problem, only the question differs.

use crate::arith::{solved_problem, Solved, Step};
use crate::arith_check::{self, FeedbackDemo};
use crate::Record;

/// The question: the story with its start hidden and its end told.
pub fn question(p: &Solved) -> String {
    let mut text = format!("{} has some {}.", p.name, p.item);
    for s in &p.trace {
        text.push(' ');
        text.push_str(&s.sentence);
    }
    text.push_str(&format!(
        " Now {} has {} {}. How many {} did {} have at the start?",
        p.name, p.answer, p.item, p.item, p.name
    ));
    text
}

/// The operation that undoes `op`.
fn inverse(op: char) -> char {
    match op {
        '+' => '-',
        '-' => '+',
        'x' => '/',
        _ => 'x',
    }
}

/// One backward step: the sentence, then the count before it from the count after it.
fn undo(p: &Solved, s: &Step, op: char, result: u64) -> String {
    format!(
        "{} So before that, {} had {} {op} {} = {result}.",
        s.sentence, p.name, s.after, s.operand
    )
}

/// The worked solution: from the end back to the start, one equation per step, then a
/// `Final Answer: N` line.
pub fn solution(p: &Solved) -> String {
    written(
        p,
        p.trace
            .iter()
            .rev()
            .map(|s| undo(p, s, inverse(s.op), s.before)),
        p.start,
    )
}

fn written(p: &Solved, steps: impl Iterator<Item = String>, answer: u64) -> String {
    let mut text = format!("{} ends with {} {}.", p.name, p.answer, p.item);
    for s in steps {
        text.push(' ');
        text.push_str(&s);
    }
    text.push_str(&format!(
        " {} had {answer} {} at the start.\nFinal Answer: {answer}",
        p.name, p.item
    ));
    text
}

/// A wrong solution: its last equation (undoing the story's first step) with the story's own
/// operation instead of its inverse (`flip`; the usual mistake), or its result off by `delta`.
/// Returns the text and its final answer.
pub fn wrong_solution(p: &Solved, flip: bool, delta: u64) -> (String, u64) {
    let Some((first, later)) = p.trace.split_first() else {
        return (solution(p), p.start);
    };
    let flipped = match first.op {
        '+' => first.after.checked_add(first.operand),
        '-' => first.after.checked_sub(first.operand).filter(|v| *v > 0),
        'x' => first.after.checked_mul(first.operand),
        _ => (first.after % first.operand == 0).then(|| first.after / first.operand),
    }
    .filter(|v| *v != first.before);
    let (op, wrong) = match flipped {
        Some(v) if flip => (first.op, v),
        _ if first.before > delta && delta % 2 == 1 => (inverse(first.op), first.before - delta),
        _ => (inverse(first.op), first.before + delta),
    };
    let steps = later
        .iter()
        .rev()
        .map(|s| undo(p, s, inverse(s.op), s.before))
        .chain(std::iter::once(undo(p, first, op, wrong)));
    (written(p, steps, wrong), wrong)
}

/// The verifier's check of a proposed start: the story followed forward from it, its end
/// compared with the story's end, and the verdict. It gives no answer of its own: finding the
/// start is the refiner's job.
pub fn check(p: &Solved, proposed: Option<u64>) -> String {
    check_with(p, proposed, false)
}

/// [`check`] that ends a wrong verdict with the right start (`fix = true` of the arith
/// plugin): when the story only adds and takes away, the start is off by exactly as much as the
/// end the check reached ("28 is 12 more than 16, so the start was 12 fewer: 22 - 12 = 10."),
/// so the check's own numbers give the fix; otherwise the right start is stated.
pub fn check_fixed(p: &Solved, proposed: Option<u64>) -> String {
    check_with(p, proposed, true)
}

fn check_with(p: &Solved, proposed: Option<u64>, fix: bool) -> String {
    let stated = if fix {
        format!(" The answer is {}.", p.start)
    } else {
        String::new()
    };
    let Some(a) = proposed else {
        return format!("The proposed solution gives no answer. Verdict: wrong.{stated}");
    };
    let mut lines = vec![
        format!("The proposed answer is {a}."),
        format!("Start with {a} {}.", p.item),
    ];
    let mut x = a as i128;
    for s in &p.trace {
        let b = s.operand as i128;
        let (said, y) = match s.op {
            '+' => (
                format!("So {b} are added: {x} + {b} = {}.", x + b),
                Some(x + b),
            ),
            '-' => (
                format!("So {b} are taken away: {x} - {b} = {}.", x - b),
                Some(x - b),
            ),
            'x' => (
                format!("So the count is multiplied by {b}: {x} x {b} = {}.", x * b),
                Some(x * b),
            ),
            _ if x % b == 0 => (
                format!("So the count is divided by {b}: {x} / {b} = {}.", x / b),
                Some(x / b),
            ),
            _ => (
                format!("So the count is divided by {b}: {x} / {b} is not a whole number."),
                None,
            ),
        };
        lines.push(format!("{} {said}", s.sentence));
        match y {
            Some(y) => x = y,
            None => {
                lines.push(format!("Verdict: wrong.{stated}"));
                return lines.join("\n");
            }
        }
    }
    let end = p.answer;
    if x == end as i128 {
        lines.push(format!(
            "The story ends with {end}. {x} is {end}. Verdict: correct."
        ));
        return lines.join("\n");
    }
    lines.push(format!(
        "The story ends with {end}. {x} is not {end}. Verdict: wrong."
    ));
    let adds_and_takes = p.trace.iter().all(|s| matches!(s.op, '+' | '-'));
    if fix && adds_and_takes {
        let d = x - end as i128;
        let (ended, started, op) = if d > 0 {
            ("more", "fewer", '-')
        } else {
            ("fewer", "more", '+')
        };
        let (d, start) = (d.abs(), p.start);
        lines.push(format!(
            "{x} is {d} {ended} than {end}, so the start was {d} {started}: {a} {op} {d} = \
             {start}. The answer is {start}."
        ));
    } else if fix {
        lines.push(stated.trim_start().to_owned());
    }
    lines.join("\n")
}

/// `count` worked verifier and refiner demonstrations at `difficulty`: even ones correct, odd
/// ones wrong (alternately the wrong operation and a result off by a few).
pub fn feedback_demos(difficulty: u32, count: u32) -> Vec<FeedbackDemo> {
    feedback_demos_with(difficulty, count, false)
}

/// [`feedback_demos`] with [`check_fixed`]'s checks; the refiner takes the feedback's answer.
pub fn feedback_demos_fixed(difficulty: u32, count: u32) -> Vec<FeedbackDemo> {
    feedback_demos_with(difficulty, count, true)
}

fn feedback_demos_with(difficulty: u32, count: u32, fix: bool) -> Vec<FeedbackDemo> {
    crate::arith::demonstrations(difficulty, count)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let (proposed, answer) = if i % 2 == 0 {
                (solution(&p), p.start)
            } else {
                wrong_solution(&p, i % 4 == 1, 1 + (i as u64 / 4) % 3)
            };
            let refined = if answer == p.start {
                arith_check::refined_kept(answer)
            } else if fix {
                arith_check::refined_taken(p.start)
            } else {
                format!(
                    "The feedback finds a mistake, so I work back from the end again, undoing \
                     each step. {}",
                    solution(&p)
                )
            };
            FeedbackDemo {
                critique: check_with(&p, Some(answer), fix),
                question: question(&p),
                proposed,
                refined,
            }
        })
        .collect()
}

/// What every verifier prompt of start questions asks for.
const FORWARD_CHECK: &str = "Check the proposed solution: write its final answer, start the story \
     from that number and follow it forward sentence by sentence, saying for each whether it \
     adds or takes away and how many, then compare your end with the end the story gives and \
     end with \"Verdict: correct\" or \"Verdict: wrong\"";

/// The verifier's instruction for `solution` of `question`.
pub fn verifier_prompt(question: &str, solution: &str) -> String {
    arith_check::verifier_prompt_with(question, solution, &format!("{FORWARD_CHECK}."))
}

/// The verifier's instruction with `fix = true`: the check ends with the right start.
pub fn verifier_prompt_fixed(question: &str, solution: &str) -> String {
    arith_check::verifier_prompt_with(
        question,
        solution,
        &format!(
            "{FORWARD_CHECK} (and then the right start: as many fewer as your end is too high, as \
             many more as it is too low)."
        ),
    )
}

/// The refiner's instruction for `solution` of `question` and the verifier's `critique` (an
/// empty critique, a skipped verifier's, is no feedback).
pub fn refiner_prompt(question: &str, solution: &str, critique: &str) -> String {
    arith_check::refiner_prompt_with(
        question,
        solution,
        critique,
        "If the verdict is correct, keep the previous answer. If it is wrong, work back from the \
         end again, undoing each step (what was added is taken away, what was taken away is \
         added).",
    )
}

/// `count` worked generator examples (question and solution) at `difficulty` for few-shot
/// prompts, always the same ones (the stories of [`crate::arith::demonstrations`]).
pub fn demonstrations(difficulty: u32, count: u32) -> Vec<(String, String)> {
    crate::arith::demonstrations(difficulty, count)
        .iter()
        .map(|p| (question(p), solution(p)))
        .collect()
}

/// `count` examples from `seed`, ids `arith-start-<seed>-<i>`: the stories of
/// [`crate::arith::generate`] asking for the start.
pub fn generate(seed: u64, count: u32, difficulty: u32) -> Vec<Record> {
    (0..count)
        .map(|i| {
            let p = solved_problem(&mut crate::arith::item_rng(seed, i), difficulty);
            Record {
                id: format!("arith-start-{seed}-{i}"),
                question: question(&p),
                gold: p.start.to_string(),
                choices: Vec::new(),
                metadata: format!(
                    "{{\"difficulty\":{difficulty},\"steps\":{},\"ask\":\"start\"}}",
                    p.steps
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arith::Rng;

    fn problems(d: u32) -> impl Iterator<Item = Solved> {
        (0..60).map(move |seed| solved_problem(&mut Rng::new(seed), d))
    }

    #[test]
    fn questions_hide_the_start_and_solutions_undo_every_step() {
        for d in 0..=5 {
            for p in problems(d) {
                let q = question(&p);
                assert!(
                    q.starts_with(&format!("{} has some {}.", p.name, p.item)),
                    "{q}"
                );
                assert!(q.ends_with("at the start?"), "{q}");
                let s = solution(&p);
                assert_eq!(
                    crate::gsm8k::extract_numeric(&s),
                    Some(p.start.to_string()),
                    "{s}"
                );
                assert_eq!(s.matches(" = ").count(), p.trace.len(), "{s}");
            }
        }
    }

    #[test]
    fn the_right_start_checks_correct_and_wrong_ones_check_wrong() {
        for d in 0..=5 {
            for p in problems(d) {
                let c = check(&p, Some(p.start));
                assert!(c.ends_with("Verdict: correct."), "{c}");
                for (flip, delta) in [(true, 1), (false, 1), (false, 2)] {
                    let (text, wrong) = wrong_solution(&p, flip, delta);
                    assert_ne!(wrong, p.start, "{text}");
                    assert!(text.ends_with(&format!("Final Answer: {wrong}")), "{text}");
                    let c = check(&p, Some(wrong));
                    assert!(c.ends_with("Verdict: wrong."), "{c}");
                }
            }
        }
        assert!(check(&solved_problem(&mut Rng::new(1), 0), None).ends_with("Verdict: wrong."));
    }

    #[test]
    fn a_fixed_check_of_a_wrong_start_gives_the_right_one() {
        for d in 0..=5 {
            for p in problems(d) {
                assert!(check_fixed(&p, Some(p.start)).ends_with("Verdict: correct."));
                for (flip, delta) in [(true, 1), (false, 1), (false, 2)] {
                    let (_, wrong) = wrong_solution(&p, flip, delta);
                    let c = check_fixed(&p, Some(wrong));
                    assert!(c.contains("Verdict: wrong."), "{c}");
                    assert!(c.ends_with(&format!("The answer is {}.", p.start)), "{c}");
                    if p.trace.iter().all(|s| matches!(s.op, '+' | '-')) {
                        // The fix is the check's own arithmetic.
                        let fix = c.lines().last().unwrap();
                        let eq = fix.split(": ").nth(1).unwrap();
                        let t: Vec<&str> = eq.split_whitespace().collect();
                        let (a, b): (i128, i128) = (t[0].parse().unwrap(), t[2].parse().unwrap());
                        let v = if t[1] == "-" { a - b } else { a + b };
                        assert_eq!(v, p.start as i128, "{c}");
                    }
                }
            }
        }
        let p = solved_problem(&mut Rng::new(1), 0);
        assert_eq!(
            check_fixed(&p, None),
            format!(
                "The proposed solution gives no answer. Verdict: wrong. The answer is {}.",
                p.start
            )
        );
    }

    #[test]
    fn a_flipped_one_step_solution_applies_the_sentences_own_operation() {
        for p in problems(0) {
            let s = &p.trace[0];
            let (text, wrong) = wrong_solution(&p, true, 1);
            if s.op == '+' {
                assert_eq!(wrong, s.after + s.operand, "{text}");
                assert!(
                    text.contains(&format!("{} + {}", s.after, s.operand)),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn demonstrations_show_both_verdicts_and_work_back_after_a_wrong_one() {
        for d in 0..=2 {
            let demos = feedback_demos(d, 4);
            assert_eq!(demos.len(), 4);
            for (i, demo) in demos.iter().enumerate() {
                assert_eq!(
                    demo.critique.ends_with("Verdict: correct."),
                    i % 2 == 0,
                    "{demo:?}"
                );
                assert!(demo.question.ends_with("at the start?"), "{demo:?}");
                if i % 2 == 1 {
                    assert!(demo.refined.contains("work back"), "{demo:?}");
                }
            }
        }
    }

    #[test]
    fn generation_tells_the_forward_problems_stories() {
        let forward = crate::arith::generate(7, 20, 1);
        let start = generate(7, 20, 1);
        assert_eq!(start, generate(7, 20, 1));
        for (f, s) in forward.iter().zip(&start) {
            // The same sentences between the first and the last.
            let story = |q: &str| q.split(". ").nth(1).unwrap_or("").to_owned();
            assert_eq!(story(&f.question), story(&s.question));
            assert_eq!(s.id, f.id.replace("arith-", "arith-start-"));
        }
        assert_eq!(generate(7, 3, 1)[2], generate(7, 10, 1)[2]);
    }
}
