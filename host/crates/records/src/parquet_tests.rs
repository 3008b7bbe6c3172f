//! Parquet files written here with the parquet crate's low-level writer in the layouts the
//! Hugging Face Hub's files have (pyarrow's: optional columns, strings annotated STRING,
//! CommonsenseQA's `choices` a struct of two 3-level lists). The host integration tests write
//! the same schemas with pyarrow itself.

use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::dataset::read_records;
use crate::record::Position;

/// One leaf column's data for one row group.
enum Col<'a> {
    /// An optional top-level string column.
    Str(Vec<Option<&'a str>>),
    /// An optional top-level int64 column.
    I64(Vec<Option<i64>>),
    /// A nested string leaf: values with explicit definition and repetition levels.
    Nested {
        values: Vec<&'a str>,
        def: Vec<i16>,
        rep: Vec<i16>,
    },
}

fn write(path: &Path, schema: &str, groups: &[Vec<Col<'_>>], props: WriterProperties) {
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, Arc::new(props)).unwrap();
    for cols in groups {
        let mut g = w.next_row_group().unwrap();
        for col in cols {
            let mut c = g.next_column().unwrap().unwrap();
            match col {
                Col::Str(v) => {
                    let vals: Vec<ByteArray> = v.iter().flatten().map(|s| (*s).into()).collect();
                    let def: Vec<i16> = v.iter().map(|x| i16::from(x.is_some())).collect();
                    c.typed::<ByteArrayType>()
                        .write_batch(&vals, Some(&def), None)
                        .unwrap();
                }
                Col::I64(v) => {
                    let vals: Vec<i64> = v.iter().flatten().copied().collect();
                    let def: Vec<i16> = v.iter().map(|x| i16::from(x.is_some())).collect();
                    c.typed::<Int64Type>()
                        .write_batch(&vals, Some(&def), None)
                        .unwrap();
                }
                Col::Nested { values, def, rep } => {
                    let vals: Vec<ByteArray> = values.iter().map(|s| (*s).into()).collect();
                    c.typed::<ByteArrayType>()
                        .write_batch(&vals, Some(def), Some(rep))
                        .unwrap();
                }
            }
            c.close().unwrap();
        }
        g.close().unwrap();
    }
    w.close().unwrap();
}

/// pyarrow's defaults: snappy pages with dictionary encoding.
fn pyarrow_like() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build()
}

fn texts(path: &Path) -> Vec<String> {
    read_records(path)
        .unwrap()
        .into_iter()
        .map(|r| r.text)
        .collect()
}

const GSM8K: &str = "message schema {
  optional binary question (STRING);
  optional binary answer (STRING);
}";

#[test]
fn gsm8k_rows_become_objects_across_row_groups() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("test-00000-of-00001.parquet");
    write(
        &p,
        GSM8K,
        &[
            vec![
                Col::Str(vec![Some("Q1"), Some("Q2")]),
                Col::Str(vec![Some("a #### 1"), Some("b #### 2")]),
            ],
            vec![Col::Str(vec![Some("Q3")]), Col::Str(vec![None])],
        ],
        pyarrow_like(),
    );
    let r = read_records(&p).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].text, r#"{"answer":"a #### 1","question":"Q1"}"#);
    assert_eq!(r[2].text, r#"{"answer":null,"question":"Q3"}"#);
    assert_eq!(r[2].at, Position::Row(2));
}

/// CommonsenseQA's `choices` (a datasets `Sequence` of a dict): a struct of two lists. Older
/// pyarrow named the list element `item`, newer `element`; both read alike.
fn csqa_schema(element: &str) -> String {
    format!(
        "message schema {{
  optional binary id (STRING);
  optional binary question (STRING);
  optional binary question_concept (STRING);
  optional group choices {{
    optional group label (LIST) {{
      repeated group list {{
        optional binary {element} (STRING);
      }}
    }}
    optional group text (LIST) {{
      repeated group list {{
        optional binary {element} (STRING);
      }}
    }}
  }}
  optional binary answerKey (STRING);
}}"
    )
}

#[test]
fn csqa_nested_choices_become_objects_of_arrays() {
    for element in ["element", "item"] {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("validation-00000-of-00001.parquet");
        // Row 0: two choices; row 1: empty lists; row 2: no choices at all (null struct).
        let nested = |values: Vec<&'static str>| Col::Nested {
            values,
            def: vec![4, 4, 2, 0],
            rep: vec![0, 1, 0, 0],
        };
        write(
            &p,
            &csqa_schema(element),
            &[vec![
                Col::Str(vec![Some("id0"), Some("id1"), Some("id2")]),
                Col::Str(vec![Some("Where?"), Some("What?"), Some("Who?")]),
                Col::Str(vec![Some("place"), None, Some("x")]),
                nested(vec!["A", "B"]),
                nested(vec!["bank", "library"]),
                Col::Str(vec![Some("A"), Some("B"), None]),
            ]],
            pyarrow_like(),
        );
        let t = texts(&p);
        assert_eq!(
            t[0],
            r#"{"answerKey":"A","choices":{"label":["A","B"],"text":["bank","library"]},"id":"id0","question":"Where?","question_concept":"place"}"#,
            "{element}"
        );
        assert!(
            t[1].contains(r#""choices":{"label":[],"text":[]}"#),
            "{element}: {}",
            t[1]
        );
        assert!(t[2].contains(r#""choices":null"#), "{element}: {}", t[2]);
    }
}

#[test]
fn math500_integer_level_stays_a_number() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("test.parquet");
    write(
        &p,
        "message schema {
  optional binary problem (STRING);
  optional binary solution (STRING);
  optional binary answer (STRING);
  optional binary subject (STRING);
  optional int64 level;
  optional binary unique_id (STRING);
}",
        &[vec![
            Col::Str(vec![Some("1+1?")]),
            Col::Str(vec![Some("$\\boxed{2}$")]),
            Col::Str(vec![Some("2")]),
            Col::Str(vec![Some("Algebra")]),
            Col::I64(vec![Some(3)]),
            Col::Str(vec![Some("test/algebra/1.json")]),
        ]],
        pyarrow_like(),
    );
    let v: serde_json::Value = serde_json::from_str(&texts(&p)[0]).unwrap();
    assert_eq!(v["level"], serde_json::json!(3));
    assert_eq!(v["unique_id"], "test/algebra/1.json");
}

#[test]
fn zstd_pages_read_too() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.parquet");
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(Default::default()))
        .build();
    write(
        &p,
        GSM8K,
        &[vec![
            Col::Str(vec![Some("Q")]),
            Col::Str(vec![Some("#### 1")]),
        ]],
        props,
    );
    assert_eq!(texts(&p).len(), 1);
}

fn err(path: &Path) -> String {
    read_records(path).unwrap_err().to_string()
}

#[test]
fn truncated_and_foreign_files_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("t.parquet");
    write(
        &p,
        GSM8K,
        &[vec![
            Col::Str(vec![Some("Q")]),
            Col::Str(vec![Some("#### 1")]),
        ]],
        pyarrow_like(),
    );
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&p);
    assert!(e.contains("t.parquet: not a parquet file"), "{e}");
    assert!(e.contains("download it again"), "{e}");
    std::fs::write(&p, b"{\"question\": 1}\n").unwrap();
    assert!(err(&p).contains("t.parquet: not a parquet file"));
    // A damaged footer: right magic, garbage metadata.
    let mut bad = b"PAR1".to_vec();
    bad.extend_from_slice(&[7u8; 64]);
    bad.extend_from_slice(&20u32.to_le_bytes());
    bad.extend_from_slice(b"PAR1");
    std::fs::write(&p, &bad).unwrap();
    let e = err(&p);
    assert!(
        e.contains("t.parquet: cannot read the parquet footer"),
        "{e}"
    );
}

#[test]
fn damaged_column_data_names_the_row_and_the_column() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("d.parquet");
    let plain = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .build();
    let group = |q: [&'static str; 2], a: [&'static str; 2]| {
        vec![
            Col::Str(q.map(Some).to_vec()),
            Col::Str(a.map(Some).to_vec()),
        ]
    };
    write(
        &p,
        GSM8K,
        &[
            group(["Q0", "Q1"], ["#### 0", "#### 1"]),
            group(["Q2", "Q3"], ["#### 2", "#### 3"]),
        ],
        plain,
    );
    // Overwrite the second row group's `answer` column chunk (its page header and data).
    let meta = {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let r = SerializedFileReader::new(std::fs::File::open(&p).unwrap()).unwrap();
        let c = r.metadata().row_group(1).column(1).clone();
        (c.data_page_offset() as usize, c.compressed_size() as usize)
    };
    let mut bytes = std::fs::read(&p).unwrap();
    for b in &mut bytes[meta.0..meta.0 + meta.1] {
        *b = 0xFF;
    }
    std::fs::write(&p, &bytes).unwrap();
    let e = err(&p);
    assert!(
        e.contains("d.parquet: row 2: column `answer`: damaged data"),
        "{e}"
    );
}

#[test]
fn binary_that_is_not_text_is_located() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("b.parquet");
    let schema = Arc::new(
        parse_message_type("message schema { optional binary question; optional binary blob; }")
            .unwrap(),
    );
    let mut w = SerializedFileWriter::new(
        std::fs::File::create(&p).unwrap(),
        schema,
        Arc::new(pyarrow_like()),
    )
    .unwrap();
    let mut g = w.next_row_group().unwrap();
    for vals in [
        vec![ByteArray::from("text"), ByteArray::from("more")],
        vec![ByteArray::from("ok"), ByteArray::from(vec![0xFFu8, 0xFE])],
    ] {
        let mut c = g.next_column().unwrap().unwrap();
        c.typed::<ByteArrayType>()
            .write_batch(&vals, Some(&[1, 1]), None)
            .unwrap();
        c.close().unwrap();
    }
    g.close().unwrap();
    w.close().unwrap();
    let e = err(&p);
    assert!(
        e.contains("b.parquet: row 1: column `blob`: binary data that is not UTF-8 text"),
        "{e}"
    );
}
