//! `malt export`: a run's trained adapters and datasets in one self-contained folder for the
//! Python ecosystem, with a README showing how to continue training with TRL and how to serve
//! with vLLM, an `export.json` manifest (source run, file hashes) and, on request, a merged
//! Hugging Face model per agent.
//!
//! ```text
//! OUT/
//!   README.md
//!   export.json
//!   adapters/<agent>/{adapter_config.json, adapter_model.safetensors}   (PEFT)
//!   datasets/<agent>/{sft,dpo}.jsonl                                    (TRL's formats)
//!   merged/<agent>/{config.json, model.safetensors, tokenizer...}       (--merge)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;

use malt_base::hash::sha256_hex;
use malt_tree::Manifest;

/// The Hugging Face repository of a model name the model crate knows, for exported adapter
/// configs (PEFT and vLLM load the base by this id).
fn hf_id(model: &str) -> Option<&'static str> {
    model
        .eq_ignore_ascii_case(malt_model::fetch::DEFAULT_MODEL)
        .then_some("HuggingFaceTB/SmolLM2-135M-Instruct")
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// A run directory (with `manifest.json`) or a run config.
    pub source: PathBuf,
    pub out: PathBuf,
    /// Also write a merged HF model per agent with an adapter.
    pub merge: bool,
    /// Base model id written into the exported adapter configs and the README (default: the
    /// HF id of the run's model when known, else the run's model as recorded).
    pub base_model: Option<String>,
    /// With `merge`: the dtype the base is loaded in and the merged weights are stored in
    /// (`None`: the model layer's default, f32 on the CPU). Merging itself is done in f32.
    pub dtype: Option<malt_model::candle_core::DType>,
}

/// What went where, also written as `export.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ExportManifest {
    pub format: u32,
    pub malt_version: String,
    /// The run directory exported (absolute).
    pub source_run: PathBuf,
    /// The run's own identity: its config hash, model and seed.
    pub run_config_sha256: String,
    pub run_model: String,
    pub run_seed: u64,
    /// The base model the adapters apply to, as written in their configs.
    pub base_model: String,
    pub agents: BTreeMap<String, AgentExport>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentExport {
    pub role: String,
    /// The training phase the adapter comes from (`dpo` when the agent has one, else `sft`).
    pub adapter_phase: Option<String>,
    /// Exported file (relative to the export folder) -> sha256.
    pub files: BTreeMap<String, String>,
    /// Dataset (`sft`, `dpo`) -> records.
    pub dataset_rows: BTreeMap<String, usize>,
    pub lora_rank: Option<u64>,
    pub merged: Option<String>,
}

/// One agent's exportable files in the run.
struct Found {
    name: String,
    role: String,
    /// Its final adapter directory, if trained.
    adapter: Option<PathBuf>,
    /// (phase, file) of the datasets present.
    datasets: Vec<(String, PathBuf)>,
}

/// The run directory named by `source`: itself, or the `[run] dir` of a config.
pub fn resolve_run_dir(source: &Path) -> anyhow::Result<PathBuf> {
    if source.is_dir() {
        if !source.join(malt_tree::store::MANIFEST).exists() {
            bail!(
                "{} is not a run directory (no {}): pass a run directory or its config",
                source.display(),
                malt_tree::store::MANIFEST
            );
        }
        return Ok(source.to_path_buf());
    }
    if !source.exists() {
        bail!(
            "{} does not exist: pass a run directory or a run config",
            source.display()
        );
    }
    let cfg = malt_config::Config::load(source)?;
    let dir = cfg.run.dir.clone();
    if !dir.join(malt_tree::store::MANIFEST).exists() {
        bail!(
            "{}: run directory {} has no {} yet: run `malt run {}` (or generate, credit and train) first",
            source.display(),
            dir.display(),
            malt_tree::store::MANIFEST,
            source.display()
        );
    }
    Ok(dir)
}

/// Exports the run; returns what was written.
pub fn export(opts: &ExportOptions) -> anyhow::Result<ExportManifest> {
    let run = resolve_run_dir(&opts.source)?;
    let run = std::path::absolute(&run).unwrap_or(run);
    let manifest = Manifest::load(&run)?;
    let base_model = opts
        .base_model
        .clone()
        .or_else(|| hf_id(&manifest.model).map(str::to_owned))
        .unwrap_or_else(|| manifest.model.clone());

    // With `[rounds]`, the last trained round's adapters and the datasets they were trained on.
    let round = malt_layout::RunLayout::new(&run).latest_trained_round();
    // Find everything before writing anything: a run with nothing to export fails cleanly.
    let mut found: Vec<Found> = Vec::new();
    for agent in &manifest.chain.agents {
        let adapter = malt_train::final_adapter_dir(round.dir(), &agent.name);
        let datasets: Vec<(String, PathBuf)> = ["sft", "dpo"]
            .into_iter()
            .map(|p| (p.to_owned(), round.dataset(&agent.name, p)))
            .filter(|(_, p)| p.is_file())
            .collect();
        found.push(Found {
            name: agent.name.clone(),
            role: agent.role.clone(),
            adapter,
            datasets,
        });
    }
    let adapters = found.iter().filter(|f| f.adapter.is_some()).count();
    let datasets = found.iter().map(|f| f.datasets.len()).sum::<usize>();
    if adapters == 0 && datasets == 0 {
        bail!(
            "run {} has neither adapters (adapters/<agent>/{{sft,dpo}}) nor datasets \
             (datasets/<agent>/{{sft,dpo}}.jsonl): run `malt credit` and `malt train` on its \
             config first",
            run.display()
        );
    }
    if opts.merge && adapters == 0 {
        bail!(
            "--merge: no agent of run {} has a trained adapter (adapters/<agent>/{{sft,dpo}}); \
             run `malt train` on its config first, or export without --merge",
            run.display()
        );
    }
    prepare_out(&opts.out)?;

    let model = if opts.merge {
        let device = malt_model::parse_device("cpu")?;
        Some(
            malt_model::Model::load_as(&manifest.model, &device, opts.dtype)
                .with_context(|| format!("--merge: loading the run's model {}", manifest.model))?,
        )
    } else {
        None
    };

    let mut out = ExportManifest {
        format: 1,
        malt_version: env!("CARGO_PKG_VERSION").to_owned(),
        source_run: run.clone(),
        run_config_sha256: manifest.config_sha256.clone(),
        run_model: manifest.model.clone(),
        run_seed: manifest.run_seed,
        base_model: base_model.clone(),
        agents: BTreeMap::new(),
    };
    for Found {
        name,
        role,
        adapter,
        datasets: sets,
    } in found
    {
        let mut a = AgentExport {
            role,
            ..AgentExport::default()
        };
        match &adapter {
            Some(dir) => {
                a.adapter_phase = dir.file_name().map(|p| p.to_string_lossy().into_owned());
                let rel = format!("adapters/{name}");
                let rank = copy_adapter(dir, &opts.out.join(&rel), &base_model)?;
                a.lora_rank = rank;
                for f in ["adapter_config.json", "adapter_model.safetensors"] {
                    let r = format!("{rel}/{f}");
                    a.files.insert(r.clone(), file_sha256(&opts.out.join(&r))?);
                }
                if let Some(model) = &model {
                    let adapter = model
                        .load_adapter(dir, &name)
                        .with_context(|| format!("loading adapter {}", dir.display()))?;
                    let rel = format!("merged/{name}");
                    model
                        .export_merged(&opts.out.join(&rel), Some(&adapter))
                        .with_context(|| format!("writing merged model {rel}"))?;
                    a.files.insert(
                        format!("{rel}/model.safetensors"),
                        file_sha256(&opts.out.join(&rel).join("model.safetensors"))?,
                    );
                    a.merged = Some(rel);
                }
            }
            None => tracing::warn!(
                "agent `{name}`: no trained adapter in {} (not trained, or method = \"none\")",
                round.adapters().join(&name).display()
            ),
        }
        for (phase, src) in sets {
            let rel = format!("datasets/{name}/{phase}.jsonl");
            let dst = opts.out.join(&rel);
            copy_file(&src, &dst)?;
            let bytes =
                std::fs::read(&dst).with_context(|| format!("reading {}", dst.display()))?;
            a.dataset_rows.insert(
                phase,
                bytes
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count(),
            );
            a.files.insert(rel, sha256_hex(&bytes));
        }
        out.agents.insert(name, a);
    }
    let json = serde_json::to_string_pretty(&out)?;
    write(&opts.out.join("export.json"), json.as_bytes())?;
    write(&opts.out.join("README.md"), readme(&out).as_bytes())?;
    Ok(out)
}

/// The output folder must be new or empty: an export never mixes with older files.
fn prepare_out(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        let mut entries =
            std::fs::read_dir(out).with_context(|| format!("--out {}", out.display()))?;
        if entries.next().is_some() {
            bail!(
                "--out {} exists and is not empty: choose a new folder or remove it",
                out.display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))
}

/// Copies a PEFT adapter, pointing its `base_model_name_or_path` at `base_model`. Returns its
/// rank (vLLM's `--max-lora-rank` must be at least that).
fn copy_adapter(src: &Path, dst: &Path, base_model: &str) -> anyhow::Result<Option<u64>> {
    let cfg_path = src.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    let mut cfg: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
    let rank = cfg.get("r").and_then(Value::as_u64);
    if let Some(obj) = cfg.as_object_mut() {
        obj.insert("base_model_name_or_path".into(), Value::from(base_model));
    }
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    write(
        &dst.join("adapter_config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
    copy_file(
        &src.join("adapter_model.safetensors"),
        &dst.join("adapter_model.safetensors"),
    )?;
    Ok(rank)
}

fn copy_file(src: &Path, dst: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::copy(src, dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn file_sha256(path: &Path) -> anyhow::Result<String> {
    malt_base::hash::sha256_file(path).with_context(|| format!("reading {}", path.display()))
}

/// The export's README: what is in it and the commands to continue with TRL or serve with vLLM,
/// filled in with this run's agents, base model and ranks.
fn readme(m: &ExportManifest) -> String {
    let base = &m.base_model;
    let with_adapter: Vec<(&String, &AgentExport)> = m
        .agents
        .iter()
        .filter(|(_, a)| a.adapter_phase.is_some())
        .collect();
    let mut s = String::new();
    s.push_str(&format!(
        "# malt export\n\nExported from the run `{}` (config sha256 `{}`, run seed {}) by malt \
         {}. Base model: `{base}`.\n\n",
        m.source_run.display(),
        m.run_config_sha256,
        m.run_seed,
        m.malt_version
    ));
    s.push_str("| agent | role | adapter | datasets |\n|---|---|---|---|\n");
    for (name, a) in &m.agents {
        let adapter = match &a.adapter_phase {
            Some(p) => format!(
                "`adapters/{name}` ({p}, rank {})",
                a.lora_rank
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "?".into())
            ),
            None => "none (not trained)".into(),
        };
        let sets: Vec<String> = a
            .dataset_rows
            .iter()
            .map(|(p, n)| format!("`datasets/{name}/{p}.jsonl` ({n} rows)"))
            .collect();
        s.push_str(&format!(
            "| {name} | {} | {adapter} | {} |\n",
            a.role,
            if sets.is_empty() {
                "none".into()
            } else {
                sets.join(", ")
            }
        ));
    }
    s.push_str(
        "\nAdapters are PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`). \
         Datasets are in TRL's conversational formats: `sft.jsonl` rows are `{\"prompt\": [messages], \
         \"completion\": [assistant message]}`, `dpo.jsonl` rows are `{\"prompt\", \"chosen\", \
         \"rejected\"}`; the extra `meta` column (question, tree node, value) is ignored by TRL. \
         `export.json` lists every file with its sha256.\n\n",
    );
    let (agent, sft_agent) = example_agents(m);
    s.push_str(&format!(
        "## Continue training with TRL\n\n```python\nfrom datasets import load_dataset\n\
         from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\
         from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer\n\n\
         base = \"{base}\"\ntokenizer = AutoTokenizer.from_pretrained(base)\n\n\
         # SFT: continue the `{sft_agent}` adapter on its positives\n\
         model = AutoModelForCausalLM.from_pretrained(base)\n\
         model = PeftModel.from_pretrained(model, \"adapters/{sft_agent}\", is_trainable=True)\n\
         sft = load_dataset(\"json\", data_files=\"datasets/{sft_agent}/sft.jsonl\", split=\"train\")\n\
         SFTTrainer(model=model, args=SFTConfig(output_dir=\"trl/{sft_agent}-sft\"),\n\
         \x20          train_dataset=sft, processing_class=tokenizer).train()\n\n\
         # DPO: `{agent}` on its sibling pairs; with a PEFT model and ref_model=None TRL uses the\n\
         # model with the adapter disabled as the reference (malt used the SFT adapter instead)\n\
         model = AutoModelForCausalLM.from_pretrained(base)\n\
         model = PeftModel.from_pretrained(model, \"adapters/{agent}\", is_trainable=True)\n\
         dpo = load_dataset(\"json\", data_files=\"datasets/{agent}/dpo.jsonl\", split=\"train\")\n\
         DPOTrainer(model=model, ref_model=None, args=DPOConfig(output_dir=\"trl/{agent}-dpo\", beta=0.1),\n\
         \x20          train_dataset=dpo, processing_class=tokenizer).train()\n```\n\n",
    ));
    let max_rank = with_adapter
        .iter()
        .filter_map(|(_, a)| a.lora_rank)
        .max()
        .unwrap_or(8)
        // vLLM accepts 8, 16, 32, ...
        .max(8)
        .next_power_of_two();
    let modules: Vec<String> = with_adapter
        .iter()
        .map(|(n, _)| format!("{n}=./adapters/{n}"))
        .collect();
    let models: Vec<String> = with_adapter
        .iter()
        .map(|(n, _)| format!("{n} = \"{n}\""))
        .collect();
    s.push_str(&format!(
        "## Serve with vLLM\n\nOne server, the base model plus one LoRA per agent, each selected by \
         its agent name as the request's `model`:\n\n```sh\nvllm serve {base} --enable-lora \
         --max-lora-rank {max_rank} \\\n  --lora-modules {}\n```\n\n\
         ```sh\ncurl http://localhost:8000/v1/chat/completions -H 'content-type: application/json' \\\n\
         \x20 -d '{{\"model\": \"{agent}\", \"messages\": [{{\"role\": \"user\", \"content\": \"...\"}}], \"n\": 3}}'\n```\n\n\
         To sample a malt run's trees from it, in the run config:\n\n```toml\n[generation]\n\
         backend = \"remote\"\nmodel = \"{base}\"\nmodels = {{ {} }}   # optional: sample each agent from its adapter\n\n\
         [[generation.endpoints]]\nurl = \"http://localhost:8000/v1\"\n```\n\n",
        if modules.is_empty() { "NAME=./adapters/NAME".into() } else { modules.join(" ") },
        models.join(", ")
    ));
    if with_adapter.iter().any(|(_, a)| a.merged.is_some()) {
        s.push_str(
            "## Merged models\n\n`merged/<agent>/` is a complete Hugging Face model with the \
             agent's adapter merged into the weights: `AutoModelForCausalLM.from_pretrained(\"merged/<agent>\")`, \
             `vllm serve ./merged/<agent>`, or `malt generate --model merged/<agent> --prompt ...`.\n",
        );
    } else {
        s.push_str(
            "## Merged models\n\n`malt export --merge` also writes `merged/<agent>/`, a complete \
             Hugging Face model with the adapter merged in, for servers without LoRA support.\n",
        );
    }
    s
}

/// Agents to name in the README's examples (DPO, SFT): agents with an adapter and that kind
/// of data first, so the snippets run as written.
fn example_agents(m: &ExportManifest) -> (String, String) {
    let pick = |phase: &str| {
        let has = |a: &AgentExport| a.dataset_rows.contains_key(phase);
        let trained = |a: &AgentExport| a.adapter_phase.is_some();
        m.agents
            .iter()
            .find(|(_, a)| trained(a) && has(a))
            .or_else(|| m.agents.iter().find(|(_, a)| trained(a)))
            .or_else(|| m.agents.iter().next())
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| "agent".into())
    };
    (pick("dpo"), pick("sft"))
}
