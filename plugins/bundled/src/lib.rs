//! Glue between the guest SDK's WIT types and malt-graders, the same for every plugin bundled
//! with malt (gsm8k, math, csqa, arith). A plugin of your own needs none of it.

use malt_graders::templates;
use malt_plugin_sdk::*;

/// A parsed dataset record as the SDK's example.
pub fn to_example(r: malt_graders::Record) -> Example {
    Example {
        id: r.id,
        question: r.question,
        gold: r.gold,
        choices: r
            .choices
            .into_iter()
            .map(|c| Choice {
                label: c.label,
                text: c.text,
            })
            .collect(),
        metadata: r.metadata,
    }
}

/// An answer extracted by malt-graders as the SDK's record.
pub fn to_extracted(e: malt_graders::Extracted) -> Extracted {
    let found_by = match e.found_by {
        malt_graders::FoundBy::Marker => AnswerSource::Marker,
        malt_graders::FoundBy::Fallback => AnswerSource::Fallback,
    };
    extracted(e.answer, e.key, found_by)
}

/// The role's messages for `req`, from the shared templates.
pub fn render_with(task: templates::Task, req: &RenderRequest) -> Result<Vec<Message>, String> {
    let choices: Vec<(&str, &str)> = req
        .example
        .choices
        .iter()
        .map(|c| (c.label.as_str(), c.text.as_str()))
        .collect();
    let history: Vec<templates::Turn> = req
        .history
        .iter()
        .map(|t| templates::Turn {
            role: &t.role,
            output: &t.output,
        })
        .collect();
    templates::render(task, &req.role, &req.example.question, &choices, &history)
        .map(|ms| ms.into_iter().map(|m| message(m.role, m.content)).collect())
}

/// The prompt roles the shared templates know.
pub fn roles() -> Vec<String> {
    templates::ROLES.iter().map(|r| r.to_string()).collect()
}
