//! GSM8K benchmark plugin for malt. See README.md.
use malt_bundled::{render_with, roles, to_example, to_extracted};
use malt_graders::{gsm8k, templates};
use malt_plugin_sdk::*;

struct Gsm8k {
    mode: gsm8k::Mode,
}

impl Benchmark for Gsm8k {
    fn new() -> Self {
        Gsm8k {
            mode: gsm8k::Mode::default(),
        }
    }

    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "gsm8k".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "GSM8K grade-school math word problems: numeric answers, graded exactly \
                          (numeric mode) or as lm-evaluation-harness does"
                .into(),
            roles: roles(),
            options: vec![(
                "mode".into(),
                "numeric (default: number after the last answer cue, else the last number; exact \
                 rational comparison) | strict-match | flexible-extract | cot-strict-match \
                 (lm-evaluation-harness filters and exact match, reproduced exactly)"
                    .into(),
            )],
            can_generate: false,
        }
    }

    fn configure(&mut self, options: &[(String, String)]) -> Result<(), String> {
        let mut mode = gsm8k::Mode::default();
        for (key, value) in options {
            match key.as_str() {
                "mode" => {
                    mode = gsm8k::Mode::parse(value).ok_or_else(|| {
                        bad_value(
                            key,
                            value,
                            &format!("one of: {}", gsm8k::Mode::NAMES.join(", ")),
                        )
                    })?
                }
                _ => return Err(unknown_option(key, &["mode"])),
            }
        }
        self.mode = mode;
        Ok(())
    }

    fn parse_record(&self, line: &str) -> Result<Example, String> {
        gsm8k::parse_record(line).map(to_example)
    }

    fn render(&self, request: &RenderRequest) -> Result<Vec<Message>, String> {
        render_with(templates::Task::Numeric, request)
    }

    fn extract(&self, output: &str, _choices: &[Choice]) -> Option<Extracted> {
        gsm8k::extract_answer(output, self.mode).map(to_extracted)
    }

    fn grade(&self, answer: Option<&str>, gold: &str) -> Grade {
        let g = gsm8k::grade(answer, gold, self.mode);
        grade(g.reward, g.reason)
    }
}

export_benchmark!(Gsm8k);
