//! `[run]`, `[model]`, `[plugins]` and `[sandbox]`: where the run writes, which model and
//! plugins it loads, and the limits of every plugin call.

use std::collections::BTreeMap;
use std::path::Path;

use super::{resolve_path, Checker, RawModel, RawPlugin, RawRun, RawSandbox};
use crate::locate::Seg;
use crate::types::*;

use Seg::Key as K;

pub(super) fn resolve_run(raw: RawRun, path: &Path, base: &Path, c: &mut Checker<'_, '_>) -> Run {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let name = raw.name.unwrap_or(stem);
    let run = Run {
        dir: match raw.dir {
            Some(d) => resolve_path(base, &d),
            None => Path::new("runs").join(&name),
        },
        name,
        seed: raw.seed.unwrap_or(0),
    };
    check_run(&run, c);
    run
}

fn check_run(run: &Run, c: &mut Checker<'_, '_>) {
    if run.name.is_empty() || run.name.contains(['/', '\\']) {
        c.err(
            &[K("run"), K("name")],
            format!(
                "run.name {:?} must be non-empty and contain no path separator",
                run.name
            ),
        );
    }
}

pub(super) fn resolve_model(raw: RawModel, base: &Path, c: &mut Checker<'_, '_>) -> Model {
    let src = raw.source.unwrap_or_else(|| "smollm2-135m-instruct".into());
    let looks_like_path =
        src.contains(['/', '\\']) || src.ends_with(".gguf") || src.starts_with('.');
    let model = Model {
        source: if looks_like_path {
            ModelSource::Path(resolve_path(base, Path::new(&src)))
        } else {
            ModelSource::Named(src)
        },
        device: raw.device.unwrap_or_else(|| "cpu".into()),
        dtype: raw.dtype.unwrap_or_else(|| "auto".into()),
    };
    check_model(&model, c);
    apply_overrides(model, &crate::ModelOverrides::current(), c)
}

/// The command line's `--device` / `--dtype` in place of the file's, with a warning that says
/// so (values were checked when the overrides were installed).
fn apply_overrides(mut model: Model, o: &crate::ModelOverrides, c: &mut Checker<'_, '_>) -> Model {
    if let Some(d) = o.device.as_ref().filter(|d| **d != model.device) {
        c.warn(
            &[K("model"), K("device")],
            format!("model.device {:?} overridden by --device {d}", model.device),
        );
        model.device = d.clone();
    }
    if let Some(d) = o.dtype.as_ref().filter(|d| **d != model.dtype) {
        c.warn(
            &[K("model"), K("dtype")],
            format!("model.dtype {:?} overridden by --dtype {d}", model.dtype),
        );
        model.dtype = d.clone();
    }
    model
}

fn check_model(model: &Model, c: &mut Checker<'_, '_>) {
    if !crate::valid_device(&model.device) {
        c.err(
            &[K("model"), K("device")],
            format!(
                "model.device {:?}: expected \"cpu\", \"cuda\", \"cuda:N\" or \"metal\"",
                model.device
            ),
        );
    }
    if !crate::valid_dtype(&model.dtype) {
        c.err(
            &[K("model"), K("dtype")],
            format!(
                "model.dtype {:?}: expected \"auto\", \"f32\", \"f16\" or \"bf16\"",
                model.dtype
            ),
        );
    }
}

pub(super) fn resolve_plugins(
    raw: BTreeMap<String, RawPlugin>,
    base: &Path,
    c: &mut Checker<'_, '_>,
) -> BTreeMap<String, PluginSpec> {
    let plugins: BTreeMap<String, PluginSpec> = raw
        .into_iter()
        .map(|(name, p)| {
            let spec = PluginSpec {
                name: name.clone(),
                path: p.path.map(|x| resolve_path(base, &x)),
                options: p.options,
            };
            (name, spec)
        })
        .collect();
    check_plugins(&plugins, c);
    plugins
}

fn check_plugins(plugins: &BTreeMap<String, PluginSpec>, c: &mut Checker<'_, '_>) {
    for (name, spec) in plugins {
        if let Some(p) = &spec.path {
            if !p.exists() {
                c.warn(
                    &[K("plugins"), K(name), K("path")],
                    format!("plugin `{name}`: {} does not exist", p.display()),
                );
            }
        }
    }
}

pub(super) fn resolve_sandbox(raw: RawSandbox, c: &mut Checker<'_, '_>) -> Sandbox {
    let dflt = Sandbox::default();
    let sandbox = Sandbox {
        timeout_ms: raw.timeout_ms.unwrap_or(dflt.timeout_ms),
        per_item_us: raw.per_item_us.unwrap_or(dflt.per_item_us),
        memory_mib: raw.memory_mib.unwrap_or(dflt.memory_mib),
        max_output_kib: raw.max_output_kib.unwrap_or(dflt.max_output_kib),
        stderr_kib: raw.stderr_kib.unwrap_or(dflt.stderr_kib),
        workers: raw.workers.unwrap_or(dflt.workers),
    };
    check_sandbox(&sandbox, c);
    sandbox
}

fn check_sandbox(sandbox: &Sandbox, c: &mut Checker<'_, '_>) {
    c.positive(
        &[K("sandbox"), K("timeout_ms")],
        "sandbox.timeout_ms",
        sandbox.timeout_ms,
    );
    c.positive(
        &[K("sandbox"), K("max_output_kib")],
        "sandbox.max_output_kib",
        sandbox.max_output_kib,
    );
    c.positive(
        &[K("sandbox"), K("workers")],
        "sandbox.workers",
        sandbox.workers,
    );
    if !(1..=4096).contains(&sandbox.memory_mib) {
        c.err(
            &[K("sandbox"), K("memory_mib")],
            format!(
                "sandbox.memory_mib = {} is out of range: expected 1..=4096",
                sandbox.memory_mib
            ),
        );
    }
}
