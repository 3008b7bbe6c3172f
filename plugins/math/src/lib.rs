//! MATH / MATH-500 benchmark plugin for malt. See README.md.
use malt_bundled::{render_with, roles, to_example, to_extracted};
use malt_graders::{math, templates};
use malt_plugin_sdk::*;

struct Math {
    mode: math::Mode,
}

impl Benchmark for Math {
    fn new() -> Self {
        Math {
            mode: math::Mode::default(),
        }
    }

    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "math".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "MATH and MATH-500 competition problems: last \\boxed{} (or Final Answer) \
                          graded as PRM800K or Hendrycks do"
                    .into(),
            roles: roles(),
            options: vec![(
                "mode".into(),
                "prm800k (default: PRM800K grade_answer with an exact evaluator instead of sympy) \
                 | hendrycks (is_equiv, reproduced exactly)"
                    .into(),
            )],
            can_generate: false,
        }
    }

    fn configure(&mut self, options: &[(String, String)]) -> Result<(), String> {
        let mut mode = math::Mode::default();
        for (key, value) in options {
            match key.as_str() {
                "mode" => {
                    mode = math::Mode::parse(value).ok_or_else(|| {
                        bad_value(
                            key,
                            value,
                            &format!("one of: {}", math::Mode::NAMES.join(", ")),
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
        math::parse_record(line).map(to_example)
    }

    fn render(&self, request: &RenderRequest) -> Result<Vec<Message>, String> {
        render_with(templates::Task::Math, request)
    }

    fn extract(&self, output: &str, _choices: &[Choice]) -> Option<Extracted> {
        math::extract_answer(output, self.mode).map(to_extracted)
    }

    fn grade(&self, answer: Option<&str>, gold: &str) -> Grade {
        let g = math::grade(answer, gold, self.mode);
        grade(g.reward, g.reason)
    }
}

export_benchmark!(Math);
