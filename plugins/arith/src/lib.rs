//! Procedural arithmetic word problems for malt. See README.md.
use malt_bundled::{render_with, roles, to_example, to_extracted};
use malt_graders::{arith, arith_check, arith_start, gsm8k, templates};
use malt_plugin_sdk::*;

struct Arith {
    difficulty: u32,
    /// Worked examples shown to the generator before its problem.
    shots: u32,
    /// The verifier checks every equation and gives a verdict; the refiner keeps or fixes.
    check: bool,
    /// Worked verifier and refiner examples (check format), half with an error.
    feedback_shots: u32,
    /// The question asks for the starting count instead of the end (`ask = "start"`).
    ask_start: bool,
    /// The verifier's check of a start ends with the right start (`fix = "true"`).
    fix: bool,
    /// Start questions list two choices, the start and the usual mistake's (`choices = "2"`).
    choices: bool,
    /// The verifier and refiner see only the proposed final answer, not the solution's
    /// reasoning (`proposal = "answer"`).
    answer_only: bool,
}

/// An option with two values: `off` (false) or `on` (true).
fn switch(key: &str, value: &str, off: &str, on: &str) -> Result<bool, String> {
    match value.trim() {
        v if v == off => Ok(false),
        v if v == on => Ok(true),
        _ => Err(bad_value(key, value, &format!("{off} or {on}"))),
    }
}

/// Upper bound of the `shots` option: more demonstrations only lengthen every prompt.
const MAX_SHOTS: u32 = 8;

/// Upper bound on one generate() call: keeps one call well inside a 32 MiB guest memory cap
/// (about 300 bytes per example, copied once more when returned). Ask in chunks for more:
/// item `i` depends only on `(seed, i)`.
const MAX_COUNT: u32 = 20_000;

impl Benchmark for Arith {
    fn new() -> Self {
        Arith {
            difficulty: arith::DEFAULT_DIFFICULTY,
            shots: 0,
            check: false,
            feedback_shots: 0,
            ask_start: false,
            fix: false,
            choices: false,
            answer_only: false,
        }
    }

    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "arith".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Procedurally generated multi-step arithmetic word problems with integer \
                          answers, deterministic in the seed; graded numerically"
                .into(),
            roles: roles(),
            options: vec![
                (
                    "difficulty".into(),
                    "integer 0..=5 (default 1): number of steps and size of the numbers".into(),
                ),
                (
                    "shots".into(),
                    "integer 0..=8 (default 0): worked examples of the same difficulty shown to \
                     the generator as earlier chat turns (few-shot prompting)"
                        .into(),
                ),
                (
                    "feedback".into(),
                    "free (default): the verifier critiques freely; check: it recomputes every \
                     equation of the solution and ends with a verdict, and the refiner keeps a \
                     solution judged correct and fixes the wrong step otherwise"
                        .into(),
                ),
                (
                    "feedback_shots".into(),
                    "integer 0..=8 (default 0): worked verifier and refiner examples in the check \
                     format (every other one with an error in its last step); needs \
                     feedback = check"
                        .into(),
                ),
                (
                    "ask".into(),
                    "end (default): how many there are after the story; start: how many there \
                     were before it, given the end (solved by undoing each step; checked by \
                     following the story forward from the proposed start)"
                        .into(),
                ),
                (
                    "fix".into(),
                    "false (default) or true: with ask = start and feedback = check, the \
                     verifier's check of a wrong start ends with the right one (off by as much \
                     as the end it reached), and the refiner takes it"
                        .into(),
                ),
                (
                    "choices".into(),
                    "0 (default) or 2: with ask = start, the question lists two choices, the \
                     start and the start the usual mistake gives; with feedback = check the \
                     verifier follows the story forward from the proposed choice (or the first \
                     choice) and ends with the choice that is right, and the refiner takes it"
                        .into(),
                ),
                (
                    "proposal".into(),
                    "solution (default) or answer: what the verifier and refiner of feedback = \
                     check see of the solution before them, all of it or only its final answer \
                     (\"Final Answer: 7\"), so they cannot copy its reasoning"
                        .into(),
                ),
            ],
            can_generate: true,
        }
    }

    fn configure(&mut self, options: &[(String, String)]) -> Result<(), String> {
        let mut difficulty = arith::DEFAULT_DIFFICULTY;
        let mut shots = 0;
        let mut check = false;
        let mut feedback_shots = 0;
        let mut ask_start = false;
        let mut fix = false;
        let mut choices = false;
        let mut answer_only = false;
        for (key, value) in options {
            match key.as_str() {
                "difficulty" => {
                    difficulty = match value.trim().parse::<u32>() {
                        Ok(d) if d <= 5 => d,
                        _ => return Err(bad_value(key, value, "an integer from 0 to 5")),
                    }
                }
                "shots" => {
                    shots = match value.trim().parse::<u32>() {
                        Ok(n) if n <= MAX_SHOTS => n,
                        _ => return Err(bad_value(key, value, "an integer from 0 to 8")),
                    }
                }
                "feedback" => check = switch(key, value, "free", "check")?,
                "feedback_shots" => {
                    feedback_shots = match value.trim().parse::<u32>() {
                        Ok(n) if n <= MAX_SHOTS => n,
                        _ => return Err(bad_value(key, value, "an integer from 0 to 8")),
                    }
                }
                "ask" => ask_start = switch(key, value, "end", "start")?,
                "fix" => fix = switch(key, value, "false", "true")?,
                "choices" => choices = switch(key, value, "0", "2")?,
                "proposal" => answer_only = switch(key, value, "solution", "answer")?,
                _ => {
                    return Err(unknown_option(
                        key,
                        &[
                            "difficulty",
                            "shots",
                            "feedback",
                            "feedback_shots",
                            "ask",
                            "fix",
                            "choices",
                            "proposal",
                        ],
                    ))
                }
            }
        }
        if feedback_shots > 0 && !check {
            return Err(
                "feedback_shots shows examples in the check format: set feedback = check too"
                    .into(),
            );
        }
        // Every option is validated before any applies: a refused configuration leaves the
        // previous one whole.
        if fix && !(check && ask_start) {
            return Err(
                "fix changes the check of a start: set feedback = check and ask = start too".into(),
            );
        }
        if choices && !ask_start {
            return Err(
                "choices lists the start and the usual mistake's start: set ask = start too".into(),
            );
        }
        if choices && fix {
            return Err(
                "with choices a wrong check already ends with the other choice: drop fix".into(),
            );
        }
        if answer_only && !check {
            return Err(
                "proposal changes what the check format's verifier and refiner see: set feedback \
                 = check too"
                    .into(),
            );
        }
        self.difficulty = difficulty;
        self.shots = shots;
        self.check = check;
        self.feedback_shots = feedback_shots;
        self.ask_start = ask_start;
        self.fix = fix;
        self.choices = choices;
        self.answer_only = answer_only;
        Ok(())
    }

    fn parse_record(&self, line: &str) -> Result<Example, String> {
        arith::parse_record(line).map(to_example)
    }

    fn generate(&self, seed: u64, count: u32) -> Result<Vec<Example>, String> {
        if count > MAX_COUNT {
            return Err(format!(
                "count {count} is too large (at most {MAX_COUNT} per call)"
            ));
        }
        let records = if self.ask_start {
            arith_start::generate(seed, count, self.difficulty, self.choices)
        } else {
            arith::generate(seed, count, self.difficulty)
        };
        Ok(records.into_iter().map(to_example).collect())
    }

    fn render(&self, request: &RenderRequest) -> Result<Vec<Message>, String> {
        if self.check && matches!(request.role.as_str(), "verifier" | "refiner") {
            return self.render_check(request);
        }
        let mut messages = render_with(templates::Task::Numeric, request)?;
        if self.shots == 0 || request.role != "generator" {
            return Ok(messages);
        }
        // The demonstrations go between the system message and the problem, each as the
        // generator prompt of its question followed by its worked solution.
        let question = messages.split_off(1);
        let demos: Vec<(String, String)> = if self.ask_start {
            arith_start::demonstrations(self.difficulty, self.shots, self.choices)
        } else {
            arith::demonstrations(self.difficulty, self.shots)
                .into_iter()
                .map(|d| (d.question, d.solution))
                .collect()
        };
        for (demo_question, demo_solution) in demos {
            let prompt = templates::render(
                templates::Task::Numeric,
                "generator",
                &demo_question,
                &[],
                &[],
            )?;
            if let Some(user) = prompt.into_iter().find(|m| m.role == "user") {
                messages.push(message(user.role, user.content));
                messages.push(message("assistant", demo_solution));
            }
        }
        messages.extend(question);
        Ok(messages)
    }

    fn extract(&self, output: &str, _choices: &[Choice]) -> Option<Extracted> {
        gsm8k::extract_answer(output, gsm8k::Mode::Numeric).map(to_extracted)
    }

    fn grade(&self, answer: Option<&str>, gold: &str) -> Grade {
        let g = gsm8k::grade(answer, gold, gsm8k::Mode::Numeric);
        grade(g.reward, g.reason)
    }
}

/// The verifier's and refiner's turns of `feedback = check` for one kind of question.
struct CheckFormat {
    demos: fn(u32, u32) -> Vec<arith_check::FeedbackDemo>,
    verifier_prompt: fn(&str, &str) -> String,
    refiner_prompt: fn(&str, &str, &str) -> String,
}

/// Questions about the end: the verifier works the problem out again.
const WORK_AGAIN: CheckFormat = CheckFormat {
    demos: arith_check::feedback_demos,
    verifier_prompt: arith_check::verifier_prompt,
    refiner_prompt: arith_check::refiner_prompt,
};

/// Questions about the start: the verifier follows the story forward from the proposed start.
const FOLLOW_FORWARD: CheckFormat = CheckFormat {
    demos: arith_start::feedback_demos,
    verifier_prompt: arith_start::verifier_prompt,
    refiner_prompt: arith_start::refiner_prompt,
};

/// Questions about the start, `fix = true`: the forward check ends with the right start, which
/// the refiner takes.
const FOLLOW_FORWARD_AND_FIX: CheckFormat = CheckFormat {
    demos: arith_start::feedback_demos_fixed,
    verifier_prompt: arith_start::verifier_prompt_fixed,
    refiner_prompt: arith_check::refiner_prompt,
};

/// Questions about the start with two choices: one forward check (of the proposed choice, else
/// of the first) ends with the choice that is right, which the refiner takes.
const FOLLOW_FORWARD_TO_THE_OTHER_CHOICE: CheckFormat = CheckFormat {
    demos: arith_start::feedback_demos_choices,
    verifier_prompt: arith_start::verifier_prompt_choices,
    refiner_prompt: arith_check::refiner_prompt,
};

impl Arith {
    /// The verifier and refiner of `feedback = check`, with their worked examples.
    fn render_check(&self, request: &RenderRequest) -> Result<Vec<Message>, String> {
        let history: Vec<templates::Turn> = request
            .history
            .iter()
            .map(|t| templates::Turn {
                role: &t.role,
                output: &t.output,
            })
            .collect();
        let (solution, critique) = templates::latest(&history);
        let solution = solution.ok_or_else(|| {
            format!(
                "the {} needs an earlier generator or refiner output in the chain",
                request.role
            )
        })?;
        let verifier = request.role == "verifier";
        let system = if verifier {
            templates::VERIFIER_SYSTEM
        } else {
            templates::REFINER_SYSTEM
        };
        let format = match (self.ask_start, self.fix, self.choices) {
            (true, _, true) => &FOLLOW_FORWARD_TO_THE_OTHER_CHOICE,
            (true, true, false) => &FOLLOW_FORWARD_AND_FIX,
            (true, false, false) => &FOLLOW_FORWARD,
            (false, _, _) => &WORK_AGAIN,
        };
        let (verifier_prompt, refiner_prompt) = (format.verifier_prompt, format.refiner_prompt);
        let shown = |solution: &str| -> String {
            if self.answer_only {
                arith_check::final_answer_only(solution)
            } else {
                solution.to_owned()
            }
        };
        let mut messages = vec![message("system", system)];
        for demo in (format.demos)(self.difficulty, self.feedback_shots) {
            let (prompt, answer) = if verifier {
                (
                    verifier_prompt(&demo.question, &shown(&demo.proposed)),
                    demo.critique,
                )
            } else {
                (
                    refiner_prompt(&demo.question, &shown(&demo.proposed), &demo.critique),
                    demo.refined,
                )
            };
            messages.push(message("user", prompt));
            messages.push(message("assistant", answer));
        }
        let question = &request.example.question;
        messages.push(message(
            "user",
            if verifier {
                verifier_prompt(question, &shown(solution))
            } else {
                refiner_prompt(question, &shown(solution), critique.unwrap_or(""))
            },
        ));
        Ok(messages)
    }
}

export_benchmark!(Arith);
