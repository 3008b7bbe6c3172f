//! Parquet rows as JSON objects, read with the parquet crate's record reader (no arrow).
//!
//! A row becomes `{"column": value, ...}` in schema order: strings stay strings, integers and
//! floats numbers (NaN and infinities null), nulls null, structs objects, lists arrays and maps
//! objects; dates and timestamps become their text. That is the JSON a Hub dataset's JSONL
//! export has, so a plugin reads both alike.
//!
//! When a row cannot be decoded, each top-level column of its row group is read on its own to
//! find the one that fails, and the error names the row and that column.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use bytes::Bytes;
use parquet::file::reader::{FileReader, RowGroupReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::{Field, Row};
use parquet::schema::types::Type;
use serde_json::{Map, Value};

use crate::record::{DatasetError, Position, Record};

pub(crate) fn read(path: &Path, bytes: Vec<u8>) -> Result<Vec<Record>, DatasetError> {
    // The decoder is not hardened against every damaged file: a panic in it is that file's
    // error (located like any other), never the run's.
    match catch_unwind(AssertUnwindSafe(|| read_unguarded(path, bytes))) {
        Ok(r) => r,
        Err(panic) => Err(DatasetError::file(
            path,
            format!(
                "damaged parquet file (the decoder failed: {}); download it again",
                panic_text(&*panic)
            ),
        )),
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown failure");
    short(what)
}

fn read_unguarded(path: &Path, bytes: Vec<u8>) -> Result<Vec<Record>, DatasetError> {
    if !bytes.starts_with(b"PAR1") || !bytes.ends_with(b"PAR1") {
        return Err(DatasetError::file(
            path,
            "not a parquet file (it must start and end with `PAR1`); an interrupted download \
             leaves a truncated file: download it again",
        ));
    }
    let reader = SerializedFileReader::new(Bytes::from(bytes)).map_err(|e| {
        DatasetError::file(
            path,
            format!("cannot read the parquet footer: {}", short(&e.to_string())),
        )
    })?;
    let meta = reader.metadata();
    let total: i64 = meta.row_groups().iter().map(|g| g.num_rows()).sum();
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut first_row = 0usize;
    for g in 0..meta.num_row_groups() {
        let group = reader.get_row_group(g).map_err(|e| {
            DatasetError::file(path, format!("row group {g}: {}", short(&e.to_string())))
        })?;
        let before = out.len();
        let read = catch_unwind(AssertUnwindSafe(|| {
            read_group(path, group.as_ref(), first_row, &mut out)
        }));
        match read {
            Ok(r) => r?,
            Err(panic) => {
                let k = out.len() - before;
                return Err(locate(
                    path,
                    group.as_ref(),
                    first_row,
                    k,
                    &panic_text(&*panic),
                ));
            }
        }
        first_row += usize::try_from(group.metadata().num_rows()).unwrap_or(0);
    }
    Ok(out)
}

/// Appends the rows of one row group, whose first row is `first_row` of the file.
fn read_group(
    path: &Path,
    group: &dyn RowGroupReader,
    first_row: usize,
    out: &mut Vec<Record>,
) -> Result<(), DatasetError> {
    let rows = RowIter::from_row_group(None, group)
        .map_err(|e| locate(path, group, first_row, 0, &e.to_string()))?;
    for (k, row) in rows.enumerate() {
        let at = Position::Row(first_row + k);
        let row = row.map_err(|e| locate(path, group, first_row, k, &e.to_string()))?;
        let value = row_json(&row).map_err(|(column, msg)| {
            DatasetError::record(path, at, format!("column `{column}`: {msg}"))
        })?;
        out.push(Record {
            text: value.to_string(),
            at,
        });
    }
    Ok(())
}

/// The error of a row group that failed at its row `k` (or while opening, `k = 0`): the first
/// top-level column that fails when read on its own, and the row where it does.
fn locate(
    path: &Path,
    group: &dyn RowGroupReader,
    first_row: usize,
    k: usize,
    err: &str,
) -> DatasetError {
    let schema = group.metadata().schema_descr_ptr();
    let root = schema.root_schema();
    let mut worst: Option<(usize, String, String)> = None;
    for field in root.get_fields() {
        let Ok(projection) = Type::group_type_builder(root.name())
            .with_fields(vec![field.clone()])
            .build()
        else {
            continue;
        };
        let mut good = 0usize;
        let probe = catch_unwind(AssertUnwindSafe(|| {
            let rows =
                RowIter::from_row_group(Some(projection), group).map_err(|e| e.to_string())?;
            for r in rows {
                r.map_err(|e| e.to_string())?;
                good += 1;
            }
            Ok::<(), String>(())
        }));
        let failure = match probe {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(panic) => Some(panic_text(&*panic)),
        };
        if let Some(e) = failure {
            if worst.as_ref().is_none_or(|(w, _, _)| good < *w) {
                worst = Some((good, field.name().to_owned(), e));
            }
        }
    }
    match worst {
        Some((i, column, e)) => DatasetError::record(
            path,
            Position::Row(first_row + i),
            format!(
                "column `{column}`: damaged data ({}); download the file again",
                short(&e)
            ),
        ),
        None => DatasetError::record(
            path,
            Position::Row(first_row + k),
            format!("damaged data ({}); download the file again", short(err)),
        ),
    }
}

/// A row as a JSON object; on failure, the column path and why.
fn row_json(row: &Row) -> Result<Value, (String, String)> {
    let mut obj = Map::new();
    for (name, field) in row.get_column_iter() {
        let v = field_json(field).map_err(|(inner, msg)| {
            let column = if inner.is_empty() {
                name.clone()
            } else {
                format!("{name}.{inner}")
            };
            (column, msg)
        })?;
        obj.insert(name.clone(), v);
    }
    Ok(Value::Object(obj))
}

fn field_json(f: &Field) -> Result<Value, (String, String)> {
    let num = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
    Ok(match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float16(n) => num(f64::from(*n)),
        Field::Float(n) => num(f64::from(*n)),
        Field::Double(n) => num(*n),
        Field::Str(s) => Value::String(s.clone()),
        // Binary columns written without a string annotation (older writers) usually hold
        // text; anything else has no JSON form a plugin could use.
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => {
                return Err((
                    String::new(),
                    "binary data that is not UTF-8 text; a dataset column must hold text, \
                     numbers, lists or structs"
                        .into(),
                ))
            }
        },
        Field::Decimal(_)
        | Field::Date(_)
        | Field::TimeMillis(_)
        | Field::TimeMicros(_)
        | Field::TimestampMillis(_)
        | Field::TimestampMicros(_) => Value::String(f.to_string().trim_matches('"').to_owned()),
        Field::Group(row) => row_json(row)?,
        Field::ListInternal(list) => Value::Array(
            list.elements()
                .iter()
                .enumerate()
                .map(|(i, e)| field_json(e).map_err(|(inner, m)| (join(&i.to_string(), &inner), m)))
                .collect::<Result<_, _>>()?,
        ),
        Field::MapInternal(map) => {
            let mut obj = Map::new();
            for (k, v) in map.entries() {
                let key = match field_json(k)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let value = field_json(v).map_err(|(inner, m)| (join(&key, &inner), m))?;
                obj.insert(key, value);
            }
            Value::Object(obj)
        }
    })
}

fn join(a: &str, b: &str) -> String {
    if b.is_empty() {
        a.to_owned()
    } else {
        format!("{a}.{b}")
    }
}

/// At most 200 characters of a decoder message (some quote whole byte buffers).
fn short(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
#[path = "parquet_tests.rs"]
mod tests;
