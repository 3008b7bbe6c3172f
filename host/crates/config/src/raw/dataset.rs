//! `[dataset]`: where the questions come from and how many go to training and to the held-out
//! split.

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
    let dataset = Dataset {
        plugin: raw.plugin,
        source,
        train: raw.train.unwrap_or(100),
        test: raw.test.unwrap_or(100),
    };
    check_dataset(&dataset, given, plugins, c);
    dataset
}

/// Which of the mutually exclusive sources the file gives.
#[derive(Clone, Copy)]
struct Sources {
    path: bool,
    generate: bool,
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
            "dataset: give either `path` (a JSONL file) or `generate = { seed, count }`",
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
                    c.err(
                        &[K("dataset"), K("train")],
                        format!(
                            "dataset: train ({}) + test ({}) exceeds generate.count ({count})",
                            d.train, d.test
                        ),
                    );
                }
            }
        },
    }
    if d.train == 0 && d.test == 0 {
        c.err(&[K("dataset")], "dataset: train and test are both 0");
    }
}
