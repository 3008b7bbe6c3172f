//! CommonsenseQA benchmark plugin for malt. See README.md.
use malt_bundled::{render_with, roles, to_example, to_extracted};
use malt_graders::{csqa, templates};
use malt_plugin_sdk::*;

struct Csqa {
    map_choice_text: bool,
}

impl Benchmark for Csqa {
    fn new() -> Self {
        Csqa {
            map_choice_text: true,
        }
    }

    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "csqa".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "CommonsenseQA five-way multiple choice: the last answer letter after an \
                          answer cue, graded by exact label match"
                .into(),
            roles: roles(),
            options: vec![(
                "map-choice-text".into(),
                "true (default) | false: when no letter follows an answer cue, map an exact \
                 choice text to its letter"
                    .into(),
            )],
            can_generate: false,
        }
    }

    fn configure(&mut self, options: &[(String, String)]) -> Result<(), String> {
        let mut map = true;
        for (key, value) in options {
            match key.as_str() {
                "map-choice-text" => {
                    map = match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad_value(key, value, "true or false")),
                    }
                }
                _ => return Err(unknown_option(key, &["map-choice-text"])),
            }
        }
        self.map_choice_text = map;
        Ok(())
    }

    fn parse_record(&self, line: &str) -> Result<Example, String> {
        csqa::parse_record(line).map(to_example)
    }

    fn render(&self, request: &RenderRequest) -> Result<Vec<Message>, String> {
        render_with(templates::Task::MultipleChoice, request)
    }

    fn extract(&self, output: &str, choices: &[Choice]) -> Option<Extracted> {
        let pairs: Vec<(&str, &str)> = if self.map_choice_text {
            choices
                .iter()
                .map(|c| (c.label.as_str(), c.text.as_str()))
                .collect()
        } else {
            Vec::new()
        };
        csqa::extract_answer(output, &pairs).map(to_extracted)
    }

    fn grade(&self, answer: Option<&str>, gold: &str) -> Grade {
        let g = csqa::grade(answer, gold);
        grade(g.reward, g.reason)
    }
}

export_benchmark!(Csqa);
