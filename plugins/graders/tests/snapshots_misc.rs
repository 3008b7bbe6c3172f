//! Readable snapshots of generated problems and rendered prompts.
use malt_graders::{arith, templates};
use serde::Serialize;

#[test]
fn arith_generated() {
    let mut all = Vec::new();
    for d in 1..=5 {
        all.extend(arith::generate(2024, 4, d));
    }
    insta::assert_yaml_snapshot!("arith_generated", all);
}

#[derive(Serialize)]
struct Case {
    chain: &'static str,
    agent_role: &'static str,
    messages: Vec<templates::Msg>,
}

#[test]
fn prompts() {
    use templates::{render, Task, Turn};
    let g = Turn {
        role: "generator",
        output: "2 + 3 = 5.\nFinal Answer: 5",
    };
    let v1 = Turn {
        role: "verifier",
        output: "The addition is right.",
    };
    let r1 = Turn {
        role: "refiner",
        output: "2 + 3 = 5.\nFinal Answer: 5",
    };
    let v2 = Turn {
        role: "verifier",
        output: "Still right.",
    };
    let q = "Ava has 2 apples and finds 3 more. How many apples does she have?";
    let mut cases = Vec::new();
    let mut push = |chain, role, task, hist: &[Turn]| {
        let choices = [("A", "bank"), ("B", "library"), ("C", "park")];
        let ch: &[(&str, &str)] = if task == Task::MultipleChoice {
            &choices
        } else {
            &[]
        };
        cases.push(Case {
            chain,
            agent_role: role,
            messages: render(task, role, q, ch, hist).unwrap(),
        });
    };
    push("G (numeric)", "generator", Task::Numeric, &[]);
    push("G (math)", "generator", Task::Math, &[]);
    push(
        "G (multiple choice)",
        "generator",
        Task::MultipleChoice,
        &[],
    );
    push("G-V", "verifier", Task::Numeric, &[g]);
    push("G-V-R", "refiner", Task::Numeric, &[g, v1]);
    push("G-R (no verifier)", "refiner", Task::Numeric, &[g]);
    push("G-V-R-V", "verifier", Task::Numeric, &[g, v1, r1]);
    push("G-V-R-V-R", "refiner", Task::Numeric, &[g, v1, r1, v2]);
    push(
        "G-V-R (multiple choice)",
        "refiner",
        Task::MultipleChoice,
        &[g, v1],
    );
    insta::assert_yaml_snapshot!("prompts", cases);
}

/// The check feedback of both question kinds (and of start questions with `fix`): one wrong
/// demonstration each (question, proposed solution, the verifier's check, the refiner's answer)
/// and the prompts built from it.
#[test]
fn check_feedback() {
    use malt_graders::{arith_check, arith_start};
    let mut out = String::new();
    for (kind, demo, verifier, refiner) in [
        (
            "ask = end",
            arith_check::feedback_demos(0, 2).pop().unwrap(),
            arith_check::verifier_prompt as fn(&str, &str) -> String,
            arith_check::refiner_prompt as fn(&str, &str, &str) -> String,
        ),
        (
            "ask = start",
            arith_start::feedback_demos(0, 2).pop().unwrap(),
            arith_start::verifier_prompt,
            arith_start::refiner_prompt,
        ),
        (
            "ask = start, fix = true",
            arith_start::feedback_demos_fixed(0, 2).pop().unwrap(),
            arith_start::verifier_prompt_fixed,
            arith_check::refiner_prompt,
        ),
        (
            "ask = start, choices = 2",
            arith_start::feedback_demos_choices(0, 2).pop().unwrap(),
            arith_start::verifier_prompt_choices,
            arith_check::refiner_prompt,
        ),
    ] {
        out.push_str(&format!(
            "=== {kind}: verifier prompt\n{}\n--- verifier answer\n{}\n=== refiner prompt\n{}\n\
             --- refiner answer\n{}\n=== refiner prompt, verifier skipped\n{}\n",
            verifier(&demo.question, &demo.proposed),
            demo.critique,
            refiner(&demo.question, &demo.proposed, &demo.critique),
            demo.refined,
            refiner(&demo.question, &demo.proposed, ""),
        ));
    }
    // proposal = "answer": the arith plugin shows the verifier and refiner the final answer only.
    let demo = arith_start::feedback_demos_choices(0, 2).pop().unwrap();
    let shown = arith_check::final_answer_only(&demo.proposed);
    out.push_str(&format!(
        "=== ask = start, choices = 2, proposal = answer: verifier prompt\n{}\n=== refiner \
         prompt\n{}\n",
        arith_start::verifier_prompt_choices(&demo.question, &shown),
        arith_check::refiner_prompt(&demo.question, &shown, &demo.critique),
    ));
    out.push_str(&format!(
        "=== ask = start: generated\n{:#?}\n",
        arith_start::generate(2024, 2, 1, false)
    ));
    out.push_str(&format!(
        "=== ask = start, choices = 2: generated\n{:#?}\n",
        arith_start::generate(2024, 2, 1, true)
    ));
    insta::assert_snapshot!("check_feedback", out);
}
