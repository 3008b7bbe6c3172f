//! `malt export RUN_DIR_OR_CONFIG --out DIR [--merge]`: adapters, datasets, a README for TRL and
//! vLLM and an `export.json` manifest in one folder (see `malt_pipeline::export`).

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A run directory (with manifest.json) or its config.
    pub source: PathBuf,
    /// The folder to write (new or empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a merged Hugging Face model per agent (merged/<agent>/).
    #[arg(long)]
    pub merge: bool,
    /// Base model id for the exported adapter configs and README (default: the Hugging Face id
    /// of the run's model when known, else the model as the run recorded it).
    #[arg(long)]
    pub base_model: Option<String>,
    /// With --merge: the dtype the merged weights are stored in (f32, bf16, f16; default f32).
    #[arg(long, requires = "merge")]
    pub dtype: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let m = malt_pipeline::export::export(&malt_pipeline::export::ExportOptions {
        source: args.source,
        out: args.out.clone(),
        merge: args.merge,
        base_model: args.base_model,
        dtype: super::dtype_arg(args.dtype.as_deref())?,
    })?;
    for (name, a) in &m.agents {
        println!(
            "{name}: adapter {}, datasets {}{}",
            a.adapter_phase.as_deref().unwrap_or("none"),
            if a.dataset_rows.is_empty() {
                "none".to_owned()
            } else {
                a.dataset_rows
                    .iter()
                    .map(|(p, n)| format!("{p} ({n} rows)"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            if a.merged.is_some() { ", merged" } else { "" }
        );
    }
    println!("exported to {} (see its README.md)", args.out.display());
    Ok(())
}
