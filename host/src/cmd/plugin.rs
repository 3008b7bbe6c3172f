//! `malt plugin build|test|new`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use malt_plugins::{build, conformance, GradeRequest, Runtime, Sandbox};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand)]
enum Which {
    /// Build a plugin crate for wasm32-wasip2 (always runs cargo).
    Build {
        /// A guest crate directory, or a plugin name under plugins/.
        path: String,
    },
    /// Build (if needed), load and run the conformance battery; with --data, also parse the
    /// file and grade each record's gold answer against itself.
    Test {
        /// A guest crate directory, a .wasm component or a plugin name under plugins/.
        path: String,
        /// A dataset file (JSONL, JSON array or parquet) to parse and score.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Plugin options, `key=value` (repeatable).
        #[arg(long = "options", value_name = "KEY=VALUE", num_args = 1..)]
        options: Vec<String>,
    },
    /// Scaffold a new plugin crate from plugins/template/.
    New {
        /// Crate name (letters, digits, `-` and `_`).
        name: String,
        /// Parent directory of the new crate.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

const TEMPLATE_CARGO: &str = include_str!("../../../plugins/template/Cargo.toml.tmpl");
const TEMPLATE_LIB: &str = include_str!("../../../plugins/template/src/lib.rs.tmpl");

/// The SDK the scaffolded crate depends on: this repository's plugins/sdk, as an absolute path
/// computed from where this binary was built (`env!("CARGO_MANIFEST_DIR")`). Override with
/// `MALT_SDK_PATH` when the binary runs elsewhere.
fn sdk_path() -> PathBuf {
    if let Some(p) = std::env::var_os("MALT_SDK_PATH") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk");
    std::fs::canonicalize(&p).unwrap_or(p)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.which {
        Which::Build { path } => {
            let cwd = std::env::current_dir()?;
            let p = Path::new(&path);
            let (name, source) = if p.exists() {
                let n = p
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or(path.clone());
                (n.clone(), build::resolve(&n, Some(p), &cwd)?)
            } else {
                (path.clone(), build::resolve(&path, None, &cwd)?)
            };
            let build::Source::Crate(c) = source else {
                bail!("{path} is a .wasm file, not a crate")
            };
            let wasm = build::build(&name, &c)?;
            println!("{}", wasm.display());
            Ok(())
        }
        Which::Test {
            path,
            data,
            options,
        } => {
            let options = malt_plugins::parse_cli_options(&options).map_err(anyhow::Error::msg)?;
            let runtime = Runtime::shared()?;
            let plugin = malt_plugins::load_named(&runtime, &path, &options, &Sandbox::default())
                .with_context(|| format!("loading plugin {path}"))?;
            let read = match &data {
                Some(d) => malt_records::read_records(d)?,
                None => Vec::new(),
            };
            let records: Vec<String> = read.iter().map(|r| r.text.clone()).collect();
            let report = conformance::run(&plugin, &records[..records.len().min(20)]);
            println!("{report}");
            if let Some(d) = &data {
                let parsed = plugin.parse_records(&records);
                let examples: Vec<_> = parsed.iter().filter_map(|r| r.as_ref().ok()).collect();
                for (r, record) in parsed.iter().zip(&read) {
                    if let Err(e) = r {
                        println!("{}: {e}", record.at.locate(d));
                    }
                }
                let reqs: Vec<GradeRequest> = examples
                    .iter()
                    .map(|e| GradeRequest {
                        answer: Some(e.gold.clone()),
                        gold: e.gold.clone(),
                    })
                    .collect();
                let grades = plugin.grade(&reqs);
                let ok: Vec<f64> = grades
                    .iter()
                    .filter_map(|g| g.as_ref().ok().map(|g| g.reward))
                    .collect();
                let mean = if ok.is_empty() {
                    0.0
                } else {
                    ok.iter().sum::<f64>() / ok.len() as f64
                };
                println!(
                    "{}: {} records, {} parsed, gold-vs-gold mean reward {mean:.4} ({} grade errors)",
                    d.display(),
                    records.len(),
                    examples.len(),
                    grades.len() - ok.len()
                );
            }
            if !report.passed() {
                bail!("{} conformance check(s) failed", report.failures());
            }
            Ok(())
        }
        Which::New { name, dir } => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                || name.starts_with(|c: char| c.is_ascii_digit())
            {
                bail!("plugin name {name:?}: use letters, digits, `-` and `_`, not starting with a digit");
            }
            let root = dir.join(&name);
            if root.exists() {
                bail!("{} already exists", root.display());
            }
            let sdk = sdk_path();
            let fill = |t: &str| {
                t.replace("{{name}}", &name)
                    .replace("{{sdk_path}}", &sdk.to_string_lossy())
            };
            std::fs::create_dir_all(root.join("src"))
                .with_context(|| format!("creating {}", root.display()))?;
            std::fs::write(root.join("Cargo.toml"), fill(TEMPLATE_CARGO))?;
            std::fs::write(root.join("src/lib.rs"), fill(TEMPLATE_LIB))?;
            println!("created {} (sdk: {})", root.display(), sdk.display());
            println!("build it:  malt plugin build {}", root.display());
            println!("test it:   malt plugin test {}", root.display());
            Ok(())
        }
    }
}
