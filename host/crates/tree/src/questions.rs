//! Loading a dataset of questions: malt-records reads the file (JSONL, a JSON array or parquet)
//! into raw records, each parsed into an `Example` by the benchmark plugin's `parse-records`.
//! This module adds what the plugin cannot know: the file and line (or row) of every error, and
//! duplicate ids.

use std::collections::HashMap;
use std::path::Path;

use malt_records::{read_records, Position, Record};

use crate::error::{Result, TreeError};
use crate::scorer::Scorer;
use crate::types::Example;

/// Reads `path` and parses it through `plugin`. Errors name `path:line:` or `path: row N:`.
pub fn load_examples(path: &Path, plugin: &str, scorer: &mut dyn Scorer) -> Result<Vec<Example>> {
    let records = read_records(path)?;
    parse_examples(path, &records, plugin, scorer)
}

/// As [`load_examples`], each example with the position of its record (for messages about it).
pub fn load_located(
    path: &Path,
    plugin: &str,
    scorer: &mut dyn Scorer,
) -> Result<Vec<(Example, Position)>> {
    let records = read_records(path)?;
    let examples = parse_examples(path, &records, plugin, scorer)?;
    Ok(examples
        .into_iter()
        .zip(records.iter().map(|r| r.at))
        .collect())
}

/// As [`load_examples`], from records already read (`path` is only used in messages).
pub fn parse_examples(
    path: &Path,
    records: &[Record],
    plugin: &str,
    scorer: &mut dyn Scorer,
) -> Result<Vec<Example>> {
    let texts: Vec<&str> = records.iter().map(|r| r.text.as_str()).collect();
    let parsed = scorer
        .parse_records(plugin, &texts)
        .map_err(|e| TreeError::Plugin {
            plugin: plugin.to_owned(),
            msg: format!("parse-records on {}: {e}", path.display()),
        })?;
    if parsed.len() != records.len() {
        return Err(TreeError::Plugin {
            plugin: plugin.to_owned(),
            msg: format!(
                "parse-records returned {} results for {} records of {}",
                parsed.len(),
                records.len(),
                path.display()
            ),
        });
    }
    let record_err = |r: &Record, msg: String| TreeError::Record {
        path: path.to_owned(),
        at: r.at,
        msg,
    };
    let mut seen: HashMap<String, &Record> = HashMap::new();
    let mut out = Vec::with_capacity(parsed.len());
    for (result, record) in parsed.into_iter().zip(records) {
        let ex = result.map_err(|msg| record_err(record, msg))?;
        if let Some(first) = seen.insert(ex.id.clone(), record) {
            return Err(record_err(
                record,
                format!("duplicate id {:?} (first on {})", ex.id, first.at),
            ));
        }
        out.push(ex);
    }
    Ok(out)
}
