//! Dataset files as users download them, read into the raw records a plugin's `parse-records`
//! receives: one JSON object text per record.
//!
//! Three formats, told apart by content (the extension only decides between a parquet file and
//! a damaged one):
//! - JSONL: one JSON object per non-blank line (lines count from 1, as editors do);
//! - a JSON array of objects (elements count from 0);
//! - parquet, e.g. the `test-00000-of-00001.parquet` files of the Hugging Face Hub: each row
//!   becomes an object with one key per column; structs become objects and lists arrays (rows
//!   count from 0, as pandas and the Hub's viewer do).
//!
//! Every error names the file and, when it is about one record, the line, element or row (and
//! for parquet the column).

use std::path::Path;

use crate::record::{DatasetError, Position, Record};

/// The formats [`read_records`] understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    JsonArray,
    Parquet,
}

impl Format {
    /// The format of a file that starts with `head`.
    pub fn detect(path: &Path, head: &[u8]) -> Format {
        let parquet_name = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
        if head.starts_with(b"PAR1") || parquet_name {
            return Format::Parquet;
        }
        let first = head
            .iter()
            .copied()
            .find(|b| !(b.is_ascii_whitespace() || *b == 0xEF || *b == 0xBB || *b == 0xBF));
        if first == Some(b'[') {
            Format::JsonArray
        } else {
            Format::Jsonl
        }
    }
}

/// Reads every record of `path` (JSONL, JSON array or parquet; see the module docs).
pub fn read_records(path: &Path) -> Result<Vec<Record>, DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_owned(),
        source,
    })?;
    let records = match Format::detect(path, &bytes[..bytes.len().min(4096)]) {
        Format::Parquet => read_parquet(path, bytes)?,
        Format::JsonArray => json_array(path, &utf8(path, &bytes)?)?,
        Format::Jsonl => jsonl(path, &utf8(path, &bytes)?)?,
    };
    if records.is_empty() {
        return Err(DatasetError::file(path, "dataset is empty (no records)"));
    }
    Ok(records)
}

#[cfg(feature = "parquet")]
fn read_parquet(path: &Path, bytes: Vec<u8>) -> Result<Vec<Record>, DatasetError> {
    crate::parquet_rows::read(path, bytes)
}

#[cfg(not(feature = "parquet"))]
fn read_parquet(path: &Path, _bytes: Vec<u8>) -> Result<Vec<Record>, DatasetError> {
    Err(DatasetError::file(
        path,
        "this build reads no parquet (malt-records without its `parquet` feature)",
    ))
}

fn utf8(path: &Path, bytes: &[u8]) -> Result<String, DatasetError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        DatasetError::record(
            path,
            Position::Line(line),
            "not UTF-8 text; save the file as UTF-8 (or give a parquet file)",
        )
    })?;
    Ok(text.trim_start_matches('\u{feff}').to_owned())
}

/// Each non-blank line must be one JSON object; its text is passed on verbatim.
fn jsonl(path: &Path, text: &str) -> Result<Vec<Record>, DatasetError> {
    let mut out = Vec::new();
    for (k, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = Position::Line(k + 1);
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => return Err(DatasetError::record(path, at, "expected a JSON object")),
            Err(e) => {
                return Err(DatasetError::record(path, at, format!("invalid JSON: {e}")));
            }
        }
        out.push(Record {
            text: line.to_owned(),
            at,
        });
    }
    Ok(out)
}

/// A JSON array of objects (what `json.dump(list_of_dicts)` and `DataFrame.to_json(orient =
/// "records")` write).
fn json_array(path: &Path, text: &str) -> Result<Vec<Record>, DatasetError> {
    let items: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| {
        DatasetError::record(
            path,
            Position::Line(e.line()),
            format!("invalid JSON array (column {}): {e}", e.column()),
        )
    })?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = Position::Element(i);
            if !v.is_object() {
                return Err(DatasetError::record(
                    path,
                    at,
                    "expected a JSON object (one per question)",
                ));
            }
            Ok(Record {
                text: v.to_string(),
                at,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str, text: &str) -> Result<Vec<Record>, String> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        read_records(&p).map_err(|e| {
            e.to_string()
                .replace(&d.path().display().to_string(), "DIR")
        })
    }

    #[test]
    fn jsonl_lines_keep_their_text_and_line_numbers() {
        let r = read("q.jsonl", "{\"a\": 1}\n\n  {\"a\":2}  \n").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].text, "{\"a\": 1}");
        assert_eq!(r[1].at, Position::Line(3));
        assert_eq!(r[1].text, "{\"a\":2}");
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let e = read("q.jsonl", "{\"a\": 1}\n{oops\n").unwrap_err();
        assert!(e.starts_with("DIR/q.jsonl:2: invalid JSON"), "{e}");
        let e = read("q.jsonl", "{\"a\": 1}\n[1]\n").unwrap_err();
        assert_eq!(e, "DIR/q.jsonl:2: expected a JSON object");
    }

    #[test]
    fn json_arrays_become_one_record_per_element() {
        let r = read(
            "q.json",
            " [ {\"q\": \"x\"}, {\"q\": \"y\", \"n\": [1, 2]} ]",
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].at, Position::Element(1));
        assert_eq!(r[1].text, "{\"n\":[1,2],\"q\":\"y\"}");
        let e = read("q.json", "[{\"q\": 1}, 7]").unwrap_err();
        assert_eq!(
            e,
            "DIR/q.json: element 1: expected a JSON object (one per question)"
        );
        let e = read("q.json", "[{\"q\": 1},\n {\"q\" 2}]").unwrap_err();
        assert!(
            e.starts_with("DIR/q.json:2: invalid JSON array (column"),
            "{e}"
        );
    }

    #[test]
    fn empty_and_missing_files() {
        assert_eq!(
            read("q.jsonl", "\n \n").unwrap_err(),
            "DIR/q.jsonl: dataset is empty (no records)"
        );
        assert_eq!(
            read("q.json", "[]").unwrap_err(),
            "DIR/q.json: dataset is empty (no records)"
        );
        let e = read_records(Path::new("/nonexistent/q.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/q.jsonl: cannot read the dataset"),
            "{e}"
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_name_their_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("q.jsonl");
        std::fs::write(&p, b"{\"a\": 1}\n{\"a\": \"\xff\"}\n").unwrap();
        let e = read_records(&p).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "q.jsonl:2: not UTF-8 text; save the file as UTF-8 (or give a parquet file)"
            ),
            "{e}"
        );
    }

    #[test]
    fn formats_are_detected_by_content() {
        let p = Path::new("x.data");
        assert_eq!(Format::detect(p, b"PAR1\x15"), Format::Parquet);
        assert_eq!(Format::detect(p, b"\n  [{"), Format::JsonArray);
        assert_eq!(Format::detect(p, b"\xEF\xBB\xBF[{"), Format::JsonArray);
        assert_eq!(Format::detect(p, b"{\"a\":1}\n"), Format::Jsonl);
        assert_eq!(
            Format::detect(Path::new("x.PARQUET"), b"garbage"),
            Format::Parquet
        );
    }
}
