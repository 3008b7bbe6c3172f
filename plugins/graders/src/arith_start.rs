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

/// The two choices of `choices = "2"`: the start and the start the usual mistake gives (the
/// sentence's own operation instead of its inverse, else one off), `right_first` deciding the
/// order.
pub fn choices(p: &Solved, right_first: bool) -> [u64; 2] {
    let (_, mistake) = wrong_solution(p, true, 1);
    if right_first {
        [p.start, mistake]
    } else {
        [mistake, p.start]
    }
}

/// [`question`] followed by its two choices ("Choices: 10 or 22.").
pub fn question_with_choices(p: &Solved, choices: [u64; 2]) -> String {
    format!("{} Choices: {} or {}.", question(p), choices[0], choices[1])
}

/// The question of `p`, with its choices when there are any.
fn asked(p: &Solved, choices: Option<[u64; 2]>) -> String {
    match choices {
        Some(c) => question_with_choices(p, c),
        None => question(p),
    }
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

/// [`check`] of a question with two `choices` (`choices = "2"`). A proposed choice is followed
/// forward; a wrong verdict ends with the other choice ("The answer is the other choice, 10."),
/// which needs no arithmetic. A proposed answer that is no choice (a slip, the base model's usual
/// mistake) is judged wrong and the first choice is followed forward instead, ending with the
/// choice that is right. Either way one forward check decides the answer.
pub fn check_choices(p: &Solved, proposed: Option<u64>, choices: [u64; 2]) -> String {
    let [first, second] = choices;
    match proposed {
        Some(a) if choices.contains(&a) => {
            let check = check(p, Some(a));
            if a == p.start {
                return check;
            }
            let other = if a == first { second } else { first };
            format!("{check} The answer is the other choice, {other}.")
        }
        _ => {
            let mut lines = vec![match proposed {
                Some(a) => format!(
                    "The proposed answer is {a}, which is not one of the choices. Verdict: wrong."
                ),
                None => "The proposed solution gives no answer. Verdict: wrong.".to_owned(),
            }];
            lines.push(format!("I check the first choice, {first}."));
            let (followed, reached) = follow(p, first);
            lines.extend(followed);
            let end = p.answer;
            lines.push(match reached {
                Some(x) if x == end as i128 => format!(
                    "The story ends with {end}. {x} is {end}, so the answer is the first \
                     choice, {first}."
                ),
                Some(x) => format!(
                    "The story ends with {end}. {x} is not {end}, so the answer is the other \
                     choice, {second}."
                ),
                None => format!("So the answer is the other choice, {second}."),
            });
            lines.join("\n")
        }
    }
}

/// The story followed forward from `start`, a line per sentence with its operation and
/// equation, and the end reached (`None` once a division is not whole).
fn follow(p: &Solved, start: u64) -> (Vec<String>, Option<i128>) {
    let mut lines = vec![format!("Start with {start} {}.", p.item)];
    let mut x = start as i128;
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
            None => return (lines, None),
        }
    }
    (lines, Some(x))
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
    let (followed, end_reached) = follow(p, a);
    let mut lines = vec![format!("The proposed answer is {a}.")];
    lines.extend(followed);
    let Some(x) = end_reached else {
        lines.push(format!("Verdict: wrong.{stated}"));
        return lines.join("\n");
    };
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

/// [`feedback_demos`] of questions with two choices, [`check_choices`]'s checks and a refiner
/// that takes the feedback's answer. They cycle through the three cases: the right choice
/// proposed, a slip that is no choice (the base model's usual mistake here), the other choice.
pub fn feedback_demos_choices(difficulty: u32, count: u32) -> Vec<FeedbackDemo> {
    crate::arith::demonstrations(difficulty, count)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let c = choices(&p, i % 2 == 0);
            let (proposed, answer) = match i % 3 {
                0 => (solution(&p), p.start),
                1 => slip(&p, c),
                _ => wrong_solution(&p, true, 1),
            };
            FeedbackDemo {
                critique: check_choices(&p, Some(answer), c),
                question: question_with_choices(&p, c),
                proposed,
                refined: if answer == p.start {
                    arith_check::refined_kept(answer)
                } else {
                    arith_check::refined_taken(p.start)
                },
            }
        })
        .collect()
}

/// A solution whose last equation is off by a few, giving no choice (of three distinct slips
/// at most two are choices; the fallback only keeps this total).
fn slip(p: &Solved, choices: [u64; 2]) -> (String, u64) {
    [1, 2, 3]
        .into_iter()
        .map(|delta| wrong_solution(p, false, delta))
        .find(|(_, a)| !choices.contains(a))
        .unwrap_or_else(|| wrong_solution(p, false, 4))
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

/// The verifier's instruction for a question with two choices: one forward check, of the
/// proposed choice or else of the first, ending with the choice that is right.
pub fn verifier_prompt_choices(question: &str, solution: &str) -> String {
    arith_check::verifier_prompt_with(
        question,
        solution,
        "Check the proposed solution against the choices: write its final answer; if it is one \
         of the choices, start the story from it and follow it forward sentence by sentence, \
         saying for each whether it adds or takes away and how many, compare your end with the \
         end the story gives and end with \"Verdict: correct\" or \"Verdict: wrong\" and the \
         other choice; if it is not one of the choices, say \"Verdict: wrong\", follow the \
         story forward from the first choice the same way and end with the choice that is \
         right.",
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
/// With `with_choices` each question lists two choices, the right one first in every other.
pub fn demonstrations(difficulty: u32, count: u32, with_choices: bool) -> Vec<(String, String)> {
    crate::arith::demonstrations(difficulty, count)
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let c = with_choices.then(|| choices(p, i % 2 == 0));
            (asked(p, c), solution(p))
        })
        .collect()
}

/// `count` examples from `seed`, ids `arith-start-<seed>-<i>`: the stories of
/// [`crate::arith::generate`] asking for the start. With `with_choices` each question lists
/// two choices ([`choices`]), their order drawn after the story (the same story either way).
pub fn generate(seed: u64, count: u32, difficulty: u32, with_choices: bool) -> Vec<Record> {
    (0..count)
        .map(|i| {
            let mut rng = crate::arith::item_rng(seed, i);
            let p = solved_problem(&mut rng, difficulty);
            let c = with_choices.then(|| choices(&p, rng.next_u64().is_multiple_of(2)));
            Record {
                id: format!("arith-start-{seed}-{i}"),
                question: asked(&p, c),
                gold: p.start.to_string(),
                choices: Vec::new(),
                metadata: format!(
                    "{{\"difficulty\":{difficulty},\"steps\":{},\"ask\":\"start\"{}}}",
                    p.steps,
                    if with_choices { ",\"choices\":2" } else { "" }
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
        let start = generate(7, 20, 1, false);
        assert_eq!(start, generate(7, 20, 1, false));
        for (f, s) in forward.iter().zip(&start) {
            // The same sentences between the first and the last.
            let story = |q: &str| q.split(". ").nth(1).unwrap_or("").to_owned();
            assert_eq!(story(&f.question), story(&s.question));
            assert_eq!(s.id, f.id.replace("arith-", "arith-start-"));
        }
        assert_eq!(generate(7, 3, 1, false)[2], generate(7, 10, 1, false)[2]);
    }

    #[test]
    fn choices_are_the_start_and_the_usual_mistake_in_both_orders() {
        let plain = generate(7, 200, 0, false);
        let with = generate(7, 200, 0, true);
        let mut right_first = 0;
        for (a, b) in plain.iter().zip(&with) {
            // The same story and answer; only the choices are added.
            assert!(b.question.starts_with(&a.question), "{}", b.question);
            assert_eq!(a.gold, b.gold);
            let tail = b.question.rsplit("Choices: ").next().unwrap();
            let c: Vec<&str> = tail.trim_end_matches('.').split(" or ").collect();
            assert_eq!(c.len(), 2, "{}", b.question);
            assert_ne!(c[0], c[1], "{}", b.question);
            assert!(c.contains(&b.gold.as_str()), "{}", b.question);
            right_first += usize::from(c[0] == b.gold);
        }
        // Drawn, so both orders are common.
        assert!((70..=130).contains(&right_first), "{right_first} of 200");
    }

    #[test]
    fn a_check_with_choices_names_the_other_choice_after_a_wrong_verdict() {
        for d in 0..=5 {
            for p in problems(d) {
                for right_first in [true, false] {
                    let c = choices(&p, right_first);
                    let mistake = if right_first { c[1] } else { c[0] };
                    assert!(check_choices(&p, Some(p.start), c).ends_with("Verdict: correct."));
                    let wrong = check_choices(&p, Some(mistake), c);
                    assert!(wrong.contains("Verdict: wrong."), "{wrong}");
                    assert!(
                        wrong.ends_with(&format!("The answer is the other choice, {}.", p.start)),
                        "{wrong}"
                    );
                    // No choice, or no answer: the first choice is checked, and the
                    // check ends with the right one.
                    for none in [Some(p.start + mistake + 1), None] {
                        let check = check_choices(&p, none, c);
                        let first = if c[0] == p.start { "first" } else { "other" };
                        assert!(check.lines().next().unwrap().ends_with("Verdict: wrong."));
                        assert!(
                            check.contains(&format!("I check the first choice, {}.", c[0])),
                            "{check}"
                        );
                        assert!(
                            check.ends_with(&format!(
                                "the answer is the {first} choice, {}.",
                                p.start
                            )),
                            "{check}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn demonstrations_with_choices_show_each_case_and_take_the_right_one() {
        let demos = feedback_demos_choices(0, 6);
        for (i, demo) in demos.iter().enumerate() {
            let tail = demo.question.rsplit("Choices: ").next().unwrap();
            let c: Vec<&str> = tail.trim_end_matches('.').split(" or ").collect();
            let proposed = crate::gsm8k::extract_numeric(&demo.proposed).unwrap();
            let refined = crate::gsm8k::extract_numeric(&demo.refined).unwrap();
            assert!(c.contains(&refined.as_str()), "{demo:?}");
            // Right, then a slip that is no choice, then the other choice.
            match i % 3 {
                0 => assert_eq!(proposed, refined, "{demo:?}"),
                1 => assert!(!c.contains(&proposed.as_str()), "{demo:?}"),
                _ => assert!(c.contains(&proposed.as_str()) && proposed != refined),
            }
            assert!(
                demo.critique.ends_with("Verdict: correct.")
                    || demo.critique.ends_with(&format!("choice, {refined}.")),
                "{demo:?}"
            );
        }
        let demos = demonstrations(0, 2, true);
        assert!(demos.iter().all(|(q, _)| q.contains("Choices: ")));
        assert_eq!(demonstrations(0, 2, false)[0].1, demos[0].1);
    }
}
