//! Role prompt templates (MALT, arXiv 2412.01928): zero-shot chain of thought for the
//! generator, a critique for the verifier, a corrected solution for the refiner, whose system
//! prompt is the paper's. Outputs are asked to end with `Final Answer: X`.
//!
//! The inputs of an agent are derived from the history by role, so chains of any depth work
//! without code change: the "latest solution" is the last `generator` or `refiner` output; the
//! "latest critique" is the last `verifier` output that comes after that solution (else "No
//! feedback was given.", e.g. in a G-R chain or a second refiner in a row; so is an empty one,
//! the turn of a verifier that an evaluated system skips).

/// The prompt roles with templates.
pub const ROLES: [&str; 3] = ["generator", "verifier", "refiner"];

/// The refiner's system prompt, as published in the paper.
pub const REFINER_SYSTEM: &str =
    "You are an expert problem solver that refines math solutions based on feedback.";
pub const GENERATOR_SYSTEM: &str = "You are an expert problem solver.";
pub const VERIFIER_SYSTEM: &str =
    "You are an expert verifier. You check solutions step by step and find their mistakes.";
pub const NO_FEEDBACK: &str = "No feedback was given.";

/// What kind of question is asked, for the answer-format instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Word problems with a numeric answer (GSM8K, arith).
    Numeric,
    /// Competition math (MATH): an exact answer in simplest form, LaTeX allowed.
    Math,
    /// Multiple choice with lettered options (CommonsenseQA).
    MultipleChoice,
}

impl Task {
    fn answer_form(self) -> &'static str {
        match self {
            Task::Numeric => "the final numerical answer (a number only, without units)",
            Task::Math => "the final answer in simplest exact form (LaTeX allowed)",
            Task::MultipleChoice => "the letter of the best choice",
        }
    }
}

/// One earlier agent's output.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    pub role: &'a str,
    pub output: &'a str,
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Msg {
    pub role: &'static str,
    pub content: String,
}

fn msg(role: &'static str, content: String) -> Msg {
    Msg { role, content }
}

/// The latest solution (generator or refiner output) and the latest critique after it.
pub fn latest<'a>(history: &[Turn<'a>]) -> (Option<&'a str>, Option<&'a str>) {
    let sol = history
        .iter()
        .rposition(|t| t.role == "generator" || t.role == "refiner");
    let solution = sol.map(|i| history[i].output);
    let after = sol.map_or(0, |i| i + 1);
    let critique = history[after.min(history.len())..]
        .iter()
        .rev()
        .find(|t| t.role == "verifier")
        .map(|t| t.output);
    (solution, critique)
}

fn problem_block(task: Task, question: &str, choices: &[(&str, &str)]) -> String {
    let mut s = String::with_capacity(question.len() + 64);
    if task == Task::MultipleChoice {
        s.push_str("Question: ");
        s.push_str(question.trim());
        s.push_str("\n\nChoices:");
        for (label, text) in choices {
            s.push('\n');
            s.push_str(label);
            s.push_str(". ");
            s.push_str(text);
        }
    } else {
        s.push_str("Problem: ");
        s.push_str(question.trim());
    }
    s
}

fn final_line(task: Task, choices: &[(&str, &str)]) -> String {
    let mut s = format!(
        "End your response with a line of the form \"Final Answer: X\", where X is {}",
        task.answer_form()
    );
    if task == Task::MultipleChoice && !choices.is_empty() {
        let labels: Vec<&str> = choices.iter().map(|(l, _)| *l).collect();
        s.push_str(" (");
        s.push_str(&labels.join(", "));
        s.push(')');
    }
    s.push('.');
    s
}

/// Renders the chat messages for one agent. Unknown role => an error naming it.
pub fn render(
    task: Task,
    role: &str,
    question: &str,
    choices: &[(&str, &str)],
    history: &[Turn],
) -> Result<Vec<Msg>, String> {
    let problem = problem_block(task, question, choices);
    let (solution, critique) = latest(history);
    match role {
        "generator" => Ok(vec![
            msg("system", GENERATOR_SYSTEM.to_string()),
            msg(
                "user",
                format!(
                    "{problem}\n\nThink step by step. {}",
                    final_line(task, choices)
                ),
            ),
        ]),
        "verifier" => {
            let solution = solution
                .ok_or("the verifier needs an earlier generator or refiner output in the chain")?;
            Ok(vec![
                msg("system", VERIFIER_SYSTEM.to_string()),
                msg(
                    "user",
                    format!(
                        "{problem}\n\nProposed solution:\n{}\n\nCheck the proposed solution step by step. Point out any mistake in its reasoning or calculations and say whether its final answer is correct. Do not write a new solution.",
                        solution.trim()
                    ),
                ),
            ])
        }
        "refiner" => {
            let solution = solution
                .ok_or("the refiner needs an earlier generator or refiner output in the chain")?;
            Ok(vec![
                msg("system", REFINER_SYSTEM.to_string()),
                msg(
                    "user",
                    format!(
                        "{problem}\n\nPrevious solution:\n{}\n\nFeedback on the previous solution:\n{}\n\nUsing the feedback, write a corrected, complete solution step by step. {}",
                        solution.trim(),
                        // A skipped verifier's turn is empty (the paper's G+R ablation).
                        critique
                            .map(str::trim)
                            .filter(|c| !c.is_empty())
                            .unwrap_or(NO_FEEDBACK),
                        final_line(task, choices)
                    ),
                ),
            ])
        }
        other => Err(format!(
            "unknown role `{other}`; known roles: {}",
            ROLES.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t<'a>(role: &'a str, output: &'a str) -> Turn<'a> {
        Turn { role, output }
    }

    #[test]
    fn latest_by_role() {
        assert_eq!(latest(&[]), (None, None));
        assert_eq!(latest(&[t("generator", "g")]), (Some("g"), None));
        assert_eq!(
            latest(&[t("generator", "g"), t("verifier", "v")]),
            (Some("g"), Some("v"))
        );
        let gvrv = [
            t("generator", "g"),
            t("verifier", "v1"),
            t("refiner", "r1"),
            t("verifier", "v2"),
        ];
        assert_eq!(latest(&gvrv), (Some("r1"), Some("v2")));
        let gvr = [t("generator", "g"), t("verifier", "v1"), t("refiner", "r1")];
        assert_eq!(latest(&gvr), (Some("r1"), None));
    }

    #[test]
    fn roles() {
        let r = render(
            Task::Numeric,
            "refiner",
            "1+1?",
            &[],
            &[t("generator", "2")],
        )
        .unwrap();
        assert_eq!(r[0].content, REFINER_SYSTEM);
        assert!(r[1].content.contains(NO_FEEDBACK));
        let skipped = render(
            Task::Numeric,
            "refiner",
            "1+1?",
            &[],
            &[t("generator", "2"), t("verifier", " \n")],
        )
        .unwrap();
        assert_eq!(skipped, r, "an empty critique is no feedback");
        assert!(render(Task::Numeric, "verifier", "q", &[], &[]).is_err());
        let e = render(Task::Numeric, "judge", "q", &[], &[]).unwrap_err();
        assert!(e.contains("`judge`") && e.contains("generator, verifier, refiner"));
        let mc = render(
            Task::MultipleChoice,
            "generator",
            "Where?",
            &[("A", "bank"), ("B", "zoo")],
            &[],
        )
        .unwrap();
        assert!(mc[1].content.contains("A. bank\nB. zoo"));
        assert!(mc[1].content.contains("(A, B)"));
    }
}
