//! Procedural arithmetic word problems for malt. See README.md.
use malt_bundled::{render_with, roles, to_example};
use malt_graders::{arith, arith_check, gsm8k, templates};
use malt_plugin_sdk::*;

struct Arith {
    difficulty: u32,
    /// Worked examples shown to the generator before its problem.
    shots: u32,
    /// The verifier checks every equation and gives a verdict; the refiner keeps or fixes.
    check: bool,
    /// Worked verifier and refiner examples (check format), half with an error.
    feedback_shots: u32,
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
            ],
            can_generate: true,
        }
    }

    fn configure(&mut self, options: &[(String, String)]) -> Result<(), String> {
        let mut difficulty = arith::DEFAULT_DIFFICULTY;
        let mut shots = 0;
        let mut check = false;
        let mut feedback_shots = 0;
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
                "feedback" => {
                    check = match value.trim() {
                        "free" => false,
                        "check" => true,
                        _ => return Err(bad_value(key, value, "free or check")),
                    }
                }
                "feedback_shots" => {
                    feedback_shots = match value.trim().parse::<u32>() {
                        Ok(n) if n <= MAX_SHOTS => n,
                        _ => return Err(bad_value(key, value, "an integer from 0 to 8")),
                    }
                }
                _ => {
                    return Err(unknown_option(
                        key,
                        &["difficulty", "shots", "feedback", "feedback_shots"],
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
        self.difficulty = difficulty;
        self.shots = shots;
        self.check = check;
        self.feedback_shots = feedback_shots;
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
        Ok(arith::generate(seed, count, self.difficulty)
            .into_iter()
            .map(to_example)
            .collect())
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
        for demo in arith::demonstrations(self.difficulty, self.shots) {
            let prompt = templates::render(
                templates::Task::Numeric,
                "generator",
                &demo.question,
                &[],
                &[],
            )?;
            if let Some(user) = prompt.into_iter().find(|m| m.role == "user") {
                messages.push(message(user.role, user.content));
                messages.push(message("assistant", demo.solution));
            }
        }
        messages.extend(question);
        Ok(messages)
    }

    fn extract(&self, output: &str, _choices: &[Choice]) -> Option<String> {
        gsm8k::extract(output, gsm8k::Mode::Numeric)
    }

    fn grade(&self, answer: Option<&str>, gold: &str) -> Grade {
        let g = gsm8k::grade(answer, gold, gsm8k::Mode::Numeric);
        grade(g.reward, g.reason)
    }
}

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
        let mut messages = vec![message("system", system)];
        for demo in arith_check::feedback_demos(self.difficulty, self.feedback_shots) {
            let (prompt, answer) = if verifier {
                (
                    arith_check::verifier_prompt(&demo.question, &demo.proposed),
                    demo.critique,
                )
            } else {
                (
                    arith_check::refiner_prompt(&demo.question, &demo.proposed, &demo.critique),
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
                arith_check::verifier_prompt(question, solution)
            } else {
                arith_check::refiner_prompt(question, solution, critique.unwrap_or(""))
            },
        ));
        Ok(messages)
    }
}

export_benchmark!(Arith);
