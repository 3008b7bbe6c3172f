//! `[dataset]`: where the questions come from and how many go to training and to the held-out
//! split: either both cut from one source (`train`, then `test`, after a seeded shuffle), or
//! training questions from `path`/`generate` and the held-out split as its own file
//! (`test_path`, as datasets are downloaded: GSM8K's test split, CommonsenseQA's validation
//! split, MATH-500).

use std::collections::BTreeMap;
use std::path::Path;

use super::{resolve_path, unknown_plugin, Checker, RawDataset};
use crate::locate::Seg;
use crate::types::*;

use Seg::Key as K;

pub(super) fn resolve_dataset(
    raw: RawDataset,
    plugins: &BTreeMap<String, PluginSpec>,
    base: &Path,
    c: &mut Checker<'_, '_>,
) -> Dataset {
    let given = Sources {
        path: raw.path.is_some(),
        generate: raw.generate.is_some(),
        test: raw.test.is_some(),
    };
    let source = match (raw.path, raw.generate) {
        (Some(p), None) => DataSource::File(resolve_path(base, &p)),
        (None, Some(g)) => DataSource::Generate {
            seed: g.seed,
            count: g.count,
        },
        // Refused by the check; a placeholder keeps the rest of the config resolvable.
        _ => DataSource::Generate { seed: 0, count: 0 },
    };
    let test_source = raw.test_path.map(|p| resolve_path(base, &p));
    let dataset = Dataset {
        plugin: raw.plugin,
        source,
        // With its own file the test split is the whole file; `test` counts nothing then.
        test: match test_source {
            Some(_) => 0,
            None => raw.test.unwrap_or(100),
        },
        test_source,
        train: raw.train.unwrap_or(100),
    };
    check_dataset(&dataset, given, plugins, c);
    dataset
}

/// Which of the mutually exclusive keys the file gives.
#[derive(Clone, Copy)]
struct Sources {
    path: bool,
    generate: bool,
    test: bool,
}

fn check_dataset(
    d: &Dataset,
    given: Sources,
    plugins: &BTreeMap<String, PluginSpec>,
    c: &mut Checker<'_, '_>,
) {
    if !plugins.contains_key(&d.plugin) {
        c.err(
            &[K("dataset"), K("plugin")],
            unknown_plugin(&d.plugin, plugins),
        );
    }
    match (given.path, given.generate) {
        (true, true) => c.err(
            &[K("dataset"), K("generate")],
            "dataset: give either `path` or `generate`, not both",
        ),
        (false, false) => c.err(
            &[K("dataset")],
            "dataset: give either `path` (a JSONL, JSON or parquet file) or \
             `generate = { seed, count }`",
        ),
        _ => match &d.source {
            DataSource::File(p) => {
                if !p.exists() {
                    c.warn(
                        &[K("dataset"), K("path")],
                        format!("dataset file {} does not exist (yet)", p.display()),
                    );
                }
            }
            DataSource::Generate { count, .. } => {
                let count = *count as usize;
                if count == 0 {
                    c.err(
                        &[K("dataset"), K("generate"), K("count")],
                        "dataset.generate.count must be at least 1",
                    );
                } else if d.train + d.test > count {
                    let msg = if d.test_source.is_some() {
                        format!(
                            "dataset: train ({}) exceeds generate.count ({count})",
                            d.train
                        )
                    } else {
                        format!(
                            "dataset: train ({}) + test ({}) exceeds generate.count ({count})",
                            d.train, d.test
                        )
                    };
                    c.err(&[K("dataset"), K("train")], msg);
                }
            }
        },
    }
    if let Some(p) = &d.test_source {
        check_test_source(d, p, given, c);
    } else if d.train == 0 && d.test == 0 {
        c.err(&[K("dataset")], "dataset: train and test are both 0");
    }
}

fn check_test_source(d: &Dataset, test: &Path, given: Sources, c: &mut Checker<'_, '_>) {
    if given.test {
        c.err(
            &[K("dataset"), K("test")],
            "dataset.test counts held-out questions cut from `path`; with `test_path` the \
             held-out split is that whole file (each eval seed draws eval.questions of it): \
             remove `test`",
        );
    }
    if let DataSource::File(train) = &d.source {
        if same_file(train, test) {
            c.err(
                &[K("dataset"), K("test_path")],
                "dataset.test_path is the training file (`path`): give the held-out split's own \
                 file, or drop `test_path` to cut both splits from `path`",
            );
        }
    }
    if !test.exists() {
        c.warn(
            &[K("dataset"), K("test_path")],
            format!("test file {} does not exist (yet)", test.display()),
        );
    }
}

/// Whether two paths name one file (resolving links when both exist).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
