//! Loading a dataset of questions: each non-blank line is one JSON object, parsed into an
//! `Example` by the benchmark plugin's `parse-records`. This module only adds what the
//! plugin cannot know: the file name and line number of every error, JSON syntax checks,
//! the empty-file check and duplicate ids.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Result, TreeError};
use crate::scorer::Scorer;
use crate::types::Example;

/// Reads `path` and parses it through `plugin`. Errors name `path:line:`.
pub fn load_examples(path: &Path, plugin: &str, scorer: &mut dyn Scorer) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| TreeError::io(path, e))?;
    parse_examples(path, &text, plugin, scorer)
}

/// As [`load_examples`], from text already read (`path` is only used in messages).
pub fn parse_examples(
    path: &Path,
    text: &str,
    plugin: &str,
    scorer: &mut dyn Scorer,
) -> Result<Vec<Example>> {
    let line_err = |line: usize, msg: String| TreeError::Line {
        path: path.to_owned(),
        line,
        msg,
    };
    let mut lines = Vec::new();
    let mut numbers = Vec::new();
    for (k, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => return Err(line_err(k + 1, "expected a JSON object".into())),
            Err(e) => return Err(line_err(k + 1, format!("invalid JSON: {e}"))),
        }
        lines.push(line);
        numbers.push(k + 1);
    }
    if lines.is_empty() {
        return Err(TreeError::File {
            path: path.to_owned(),
            msg: "dataset is empty (no JSON lines)".into(),
        });
    }
    let parsed = scorer
        .parse_records(plugin, &lines)
        .map_err(|e| TreeError::Plugin {
            plugin: plugin.to_owned(),
            msg: format!("parse-records on {}: {e}", path.display()),
        })?;
    if parsed.len() != lines.len() {
        return Err(TreeError::Plugin {
            plugin: plugin.to_owned(),
            msg: format!(
                "parse-records returned {} results for {} lines of {}",
                parsed.len(),
                lines.len(),
                path.display()
            ),
        });
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(parsed.len());
    for (r, &line) in parsed.into_iter().zip(&numbers) {
        let ex = r.map_err(|msg| line_err(line, msg))?;
        if let Some(first) = seen.insert(ex.id.clone(), line) {
            return Err(line_err(
                line,
                format!("duplicate id {:?} (first on line {first})", ex.id),
            ));
        }
        out.push(ex);
    }
    Ok(out)
}
