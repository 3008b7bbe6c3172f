//! Byte offsets to line/column, and key paths to their position in the source.

use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use crate::Location;

/// 1-based (line, column) of a byte offset; columns count characters.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// One step of a path into the document.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Finds where a key path is written, for semantic errors.
pub(crate) struct Locator<'t> {
    text: &'t str,
    file: PathBuf,
    doc: Option<toml::Spanned<DeTable<'t>>>,
}

impl<'t> Locator<'t> {
    pub(crate) fn new(text: &'t str, file: &Path) -> Self {
        Locator {
            text,
            file: file.to_path_buf(),
            doc: DeTable::parse(text).ok(),
        }
    }

    /// The location of the deepest prefix of `path` that is present in the file (so a default
    /// value that is out of range points at its table).
    pub(crate) fn at(&self, path: &[Seg<'_>]) -> Location {
        let mut span: Option<std::ops::Range<usize>> = None;
        if let Some(doc) = &self.doc {
            let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
            let mut array: Option<&toml::de::DeArray<'_>> = None;
            for seg in path {
                let next = match (*seg, table, array) {
                    (Seg::Key(k), Some(t), _) => t.get(k),
                    (Seg::Index(i), _, Some(a)) => a.get(i),
                    _ => None,
                };
                let Some(v) = next else { break };
                // A key's span is the value's; for tables prefer the key (header) position.
                span = Some(match (*seg, table) {
                    (Seg::Key(k), Some(t)) => match t.get_key_value(k) {
                        Some((_, val)) if !matches!(val.get_ref(), DeValue::Table(_)) => val.span(),
                        Some((key, _)) => key.span(),
                        None => v.span(),
                    },
                    _ => v.span(),
                });
                table = None;
                array = None;
                match v.get_ref() {
                    DeValue::Table(t) => table = Some(t),
                    DeValue::Array(a) => array = Some(a),
                    _ => {}
                }
            }
        }
        Location {
            file: self.file.clone(),
            line_col: span.map(|s| line_col(self.text, s.start)),
        }
    }
}
