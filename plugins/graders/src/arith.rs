//! Procedurally generated multi-step arithmetic word problems, deterministic in the seed
//! (splitmix64; no `rand`). Integer answers, never negative.
//!
//! `difficulty` 0..=5 sets the number of steps and the magnitude of the numbers:
//!
//! | difficulty | steps | start value | operations |
//! |---|---|---|---|
//! | 0 | 1 | 2..=10 | add, subtract |
//! | 1 (default) | 1-2 | 2..=20 | add, subtract |
//! | 2 | 2-3 | 2..=50 | + packs of k items |
//! | 3 | 3-4 | 2..=100 | + multiply, divide evenly |
//! | 4 | 4-5 | 2..=500 | all |
//! | 5 | 5-6 | 2..=1000 | all |

use crate::Record;

pub const DEFAULT_DIFFICULTY: u32 = 1;

/// splitmix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (`lo <= hi`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next_u64() % xs.len() as u64) as usize]
    }
}

const NAMES: &[&str] = &[
    "Ava", "Ben", "Chloe", "Dev", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack", "Kira", "Leo",
    "Maya", "Noah", "Omar", "Priya", "Rosa", "Sam", "Tara", "Yuki",
];

const ITEMS: &[&str] = &[
    "apples", "coins", "books", "marbles", "stickers", "pencils", "cookies", "stamps", "shells",
    "cards", "buttons", "crayons",
];

const ADD: &[&str] = &[
    "{n} buys {b} more {it}.",
    "{n} finds {b} more {it}.",
    "A friend gives {n} {b} {it}.",
    "{n} wins {b} {it} in a game.",
];
const SUB: &[&str] = &[
    "{n} gives {b} {it} to a friend.",
    "{n} loses {b} {it}.",
    "{n} sells {b} {it}.",
    "{n} uses {b} {it} for a school project.",
];
const PACKS: &[&str] = &[
    "{n} buys {k} packs of {it} with {b} {it} in each pack.",
    "{n} receives {k} bags with {b} {it} in each bag.",
];
const MUL: &[&str] = &[
    "Then the number of {it} {n} has becomes {k} times as large.",
    "{n}'s collection of {it} grows to {k} times its size.",
];
const DIV: &[&str] = &[
    "{n} splits the {it} equally into {k} groups and keeps only one group.",
    "{n} shares the {it} equally among {k} people, {n} included, and keeps one share.",
];

fn fill(t: &str, n: &str, it: &str, b: u64, k: u64) -> String {
    t.replace("{n}", n)
        .replace("{it}", it)
        .replace("{b}", &b.to_string())
        .replace("{k}", &k.to_string())
}

/// One generated problem: question text, integer answer, number of steps.
pub fn problem(rng: &mut Rng, difficulty: u32) -> (String, u64, u32) {
    let p = solved_problem(rng, difficulty);
    (p.question, p.answer, p.steps)
}

/// A generated problem with a worked solution (one equation per step, then a
/// `Final Answer: N` line), used as a few-shot demonstration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solved {
    pub question: String,
    pub answer: u64,
    pub steps: u32,
    pub solution: String,
    /// The solution step by step (for worked verifier examples).
    pub trace: Vec<Step>,
    pub name: &'static str,
    pub item: &'static str,
    /// The starting count.
    pub start: u64,
}

/// One step of a worked solution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The problem's sentence for the step.
    pub sentence: String,
    /// The equation(s) of the solution, e.g. `7 + 5 = 12.`
    pub equation: String,
    /// The operation in words with its equation, e.g. `So 5 are added: 7 + 5 = 12.`
    pub explained: String,
    /// `+ - x /` of the count, and its operand (`k * b` for packs).
    pub op: char,
    pub operand: u64,
    pub before: u64,
    pub after: u64,
}

/// [`problem`] with its worked solution; draws the same random numbers.
pub fn solved_problem(rng: &mut Rng, difficulty: u32) -> Solved {
    let d = difficulty.min(5) as u64;
    let max = [10, 20, 50, 100, 500, 1000][d as usize];
    // Level 0 exists for very small models: one step, so no draw for the step count (levels
    // 1..=5 keep their sequences, and their problems, unchanged).
    let steps = if d == 0 {
        1
    } else {
        rng.range(d, d + 1) as u32
    };
    let name = *rng.pick(NAMES);
    let item = *rng.pick(ITEMS);
    let mut x = rng.range(2, max);
    let start = x;
    let mut text = format!("{name} has {x} {item}.");
    let mut solution = format!("{name} starts with {x} {item}.");
    let mut trace = Vec::new();
    for _ in 0..steps {
        let ops = match d {
            0 | 1 => 2,
            2 => 3,
            _ => 5,
        };
        let mut op = rng.range(0, ops - 1);
        // Keep the numbers bounded and the answers whole and non-negative.
        if op == 1 && x < 3 {
            op = 0;
        }
        if op == 3 && x.saturating_mul(4) > 100 * max {
            op = 1;
        }
        let divisors: Vec<u64> = (2..=5).filter(|k| x.is_multiple_of(*k)).collect();
        if op == 4 && divisors.is_empty() {
            op = 0;
        }
        let before = x;
        let (sentence, step, explained, sign, operand) = match op {
            0 => {
                let b = rng.range(2, max);
                x += b;
                let s = fill(rng.pick::<&str>(ADD), name, item, b, 0);
                let eq = format!("{before} + {b} = {x}.");
                (s, eq.clone(), format!("So {b} are added: {eq}"), '+', b)
            }
            1 => {
                let b = if x >= 3 { rng.range(2, x.min(max)) } else { 1 };
                x -= b;
                let s = fill(rng.pick::<&str>(SUB), name, item, b, 0);
                let eq = format!("{before} - {b} = {x}.");
                (
                    s,
                    eq.clone(),
                    format!("So {b} are taken away: {eq}"),
                    '-',
                    b,
                )
            }
            2 => {
                let k = rng.range(2, 5);
                let b = rng.range(2, (max / 4).max(3));
                x += k * b;
                let s = fill(rng.pick::<&str>(PACKS), name, item, b, k);
                let kb = k * b;
                (
                    s,
                    format!("{k} x {b} = {kb}, and {before} + {kb} = {x}."),
                    format!("So {k} x {b} = {kb} are added: {before} + {kb} = {x}."),
                    '+',
                    kb,
                )
            }
            3 => {
                let k = rng.range(2, 4);
                x *= k;
                let s = fill(rng.pick::<&str>(MUL), name, item, 0, k);
                let eq = format!("{before} x {k} = {x}.");
                (
                    s,
                    eq.clone(),
                    format!("So the count is multiplied by {k}: {eq}"),
                    'x',
                    k,
                )
            }
            _ => {
                let k = *rng.pick(&divisors);
                x /= k;
                let s = fill(rng.pick::<&str>(DIV), name, item, 0, k);
                let eq = format!("{before} / {k} = {x}.");
                (
                    s,
                    eq.clone(),
                    format!("So the count is divided by {k}: {eq}"),
                    '/',
                    k,
                )
            }
        };
        text.push(' ');
        text.push_str(&sentence);
        solution.push(' ');
        solution.push_str(&step);
        trace.push(Step {
            sentence,
            equation: step,
            explained,
            op: sign,
            operand,
            before,
            after: x,
        });
    }
    text.push_str(&format!(" How many {item} does {name} have now?"));
    solution.push_str(&format!(" {name} has {x} {item} now.\nFinal Answer: {x}"));
    Solved {
        question: text,
        answer: x,
        steps,
        solution,
        trace,
        name,
        item,
        start,
    }
}

/// Seed of the few-shot demonstrations: fixed, so prompts do not depend on the dataset seed.
const SHOTS_SEED: u64 = 0x5107_5eed;

/// `count` worked examples at `difficulty` for few-shot prompts, always the same ones.
pub fn demonstrations(difficulty: u32, count: u32) -> Vec<Solved> {
    (0..count)
        .map(|i| {
            let mut rng = Rng::new(SHOTS_SEED ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
            rng.next_u64();
            solved_problem(&mut rng, difficulty)
        })
        .collect()
}

/// The random numbers of item `i` of `seed`'s dataset: they depend on nothing else.
pub fn item_rng(seed: u64, i: u32) -> Rng {
    let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
    rng.next_u64();
    rng
}

/// `count` examples from `seed`; ids `arith-<seed>-<i>`. Item `i` depends only on
/// `(seed, i)`, so a longer run extends a shorter one.
pub fn generate(seed: u64, count: u32, difficulty: u32) -> Vec<Record> {
    (0..count)
        .map(|i| {
            let (question, answer, steps) = problem(&mut item_rng(seed, i), difficulty);
            Record {
                id: format!("arith-{seed}-{i}"),
                question,
                gold: answer.to_string(),
                choices: Vec::new(),
                metadata: format!("{{\"difficulty\":{difficulty},\"steps\":{steps}}}"),
            }
        })
        .collect()
}

/// Parses a saved `{"question", "answer"}` record (GSM8K-style `#### N` answers work too).
pub fn parse_record(line: &str) -> Result<Record, String> {
    crate::gsm8k::parse_record_with_prefix(line, "arith")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_whole() {
        for d in 0..=5 {
            let a = generate(42, 50, d);
            assert_eq!(a, generate(42, 50, d));
            assert_ne!(a, generate(43, 50, d));
            for r in &a {
                assert!(r.gold.parse::<u64>().is_ok());
                assert!(r.question.ends_with("have now?"));
            }
        }
        assert_eq!(generate(7, 3, 1)[2], generate(7, 10, 1)[2]);
        assert_eq!(generate(7, 1, 1)[0].id, "arith-7-0");
        assert!(generate(0, 0, 1).is_empty());
    }

    #[test]
    fn solutions_compute_the_answer() {
        for d in 0..=5 {
            for p in demonstrations(d, 20) {
                assert!(p.solution.ends_with(&format!("Final Answer: {}", p.answer)));
                assert_eq!(
                    crate::gsm8k::extract_numeric(&p.solution),
                    Some(p.answer.to_string())
                );
                // Every equation of the solution holds.
                for eq in p.solution.split(['.', ',']).filter(|e| e.contains('=')) {
                    let (lhs, rhs) = eq.split_once('=').unwrap();
                    let t: Vec<&str> = lhs.split_whitespace().collect();
                    let (a, op, b): (u64, &str, u64) = (
                        t[t.len() - 3].parse().unwrap(),
                        t[t.len() - 2],
                        t[t.len() - 1].parse().unwrap(),
                    );
                    let r: u64 = rhs.trim().parse().unwrap();
                    let v = match op {
                        "+" => a + b,
                        "-" => a - b,
                        "x" => a * b,
                        "/" => a / b,
                        _ => panic!("operator {op} in {eq}"),
                    };
                    assert_eq!(v, r, "{eq} in {}", p.solution);
                }
            }
        }
        assert_eq!(demonstrations(1, 3), demonstrations(1, 3));
    }
}
