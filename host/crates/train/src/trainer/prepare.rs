//! Before the first step: the adapter the phase starts from, and the tokenised data with, for
//! DPO, the reference log-probs (computed once, then read from their cache).

use std::time::Instant;

use crate::data::{self, DpoItem, SftItem};
use crate::error::{Result, TrainError};
use crate::fingerprint::adapter_hash;
use crate::policy::{ChatTokenizer, PolicyModel};
use crate::reference::{
    compute_ref_logprobs, load_ref_cache, ref_cache_path, save_ref_cache, RefLogprobs,
};
use crate::settings::Phase;

use super::{PhaseSpec, PhaseTimings};

/// The adapter a phase starts from (`spec.init_adapter`; for DPO also the frozen reference)
/// and its hash, `"base"` when there is none.
pub(super) struct InitialAdapter<A> {
    pub adapter: Option<A>,
    pub hash: String,
}

pub(super) fn initial_adapter<M: PolicyModel>(
    model: &M,
    spec: &PhaseSpec,
) -> Result<InitialAdapter<M::Adapter>> {
    let adapter = match &spec.init_adapter {
        Some(dir) => Some(model.load_adapter(dir, &spec.agent)?),
        None => None,
    };
    let hash = match &adapter {
        Some(a) => adapter_hash(&model.trainable_vars(a))?,
        None => "base".to_string(),
    };
    Ok(InitialAdapter { adapter, hash })
}

/// Tokenised data of a phase.
pub(super) enum PhaseData {
    Sft(Vec<SftItem>),
    Dpo(Vec<DpoItem>, RefLogprobs),
}

impl PhaseData {
    pub(super) fn len(&self) -> usize {
        match self {
            PhaseData::Sft(v) => v.len(),
            PhaseData::Dpo(v, _) => v.len(),
        }
    }

    pub(super) fn id(&self, i: usize) -> String {
        match self {
            PhaseData::Sft(v) => v[i].id.clone(),
            PhaseData::Dpo(v, _) => v[i].id.clone(),
        }
    }
}

/// The phase's dataset, tokenised, and its sha256; for DPO with the reference log-probs of
/// every pair (their computation is timed into `timings.reference_s`).
pub(super) fn load_data<M: PolicyModel>(
    model: &M,
    tok: &dyn ChatTokenizer,
    spec: &PhaseSpec,
    init: &InitialAdapter<M::Adapter>,
    timings: &mut PhaseTimings,
) -> Result<(PhaseData, String)> {
    let max_seq_len = spec.optim.max_seq_len as usize;
    match spec.phase {
        Phase::Sft => {
            let file = data::load_sft(&spec.dataset)?;
            let items = data::tokenize_sft(tok, &file.records, max_seq_len)
                .map_err(|e| in_file(e, &spec.dataset))?;
            Ok((PhaseData::Sft(items), file.sha256))
        }
        Phase::Dpo => {
            let file = data::load_dpo(&spec.dataset)?;
            let items = data::tokenize_dpo(tok, &file.records, max_seq_len)
                .map_err(|e| in_file(e, &spec.dataset))?;
            let refs = reference_logprobs(model, tok, spec, init, &items, &file.sha256, timings)?;
            Ok((PhaseData::Dpo(items, refs), file.sha256))
        }
    }
}

/// A tokenizer error of a dataset's record, with the dataset's path in front.
fn in_file(e: TrainError, path: &std::path::Path) -> TrainError {
    match e {
        TrainError::Tokenizer(msg) => TrainError::Tokenizer(format!("{}: {msg}", path.display())),
        e => e,
    }
}

/// The reference log-probs from their cache beside the dataset, else computed and cached.
fn reference_logprobs<M: PolicyModel>(
    model: &M,
    tok: &dyn ChatTokenizer,
    spec: &PhaseSpec,
    init: &InitialAdapter<M::Adapter>,
    items: &[DpoItem],
    dataset_sha: &str,
    timings: &mut PhaseTimings,
) -> Result<RefLogprobs> {
    let max_seq_len = spec.optim.max_seq_len;
    let cache = ref_cache_path(
        &spec.dataset,
        dataset_sha,
        &init.hash,
        &tok.fingerprint(),
        max_seq_len,
    );
    if let Some(refs) = load_ref_cache(&cache, items.len())? {
        tracing::info!("reference log-probs from cache {}", cache.display());
        return Ok(refs);
    }
    let started = Instant::now();
    tracing::info!("computing reference log-probs ({} pairs)", items.len());
    let micro_batch = spec.optim.micro_batch as usize;
    let refs = compute_ref_logprobs(
        model,
        init.adapter.as_ref(),
        items,
        micro_batch,
        tok.eos_id(),
    )?;
    let description = serde_json::json!({
        "dataset": spec.dataset, "dataset_sha256": dataset_sha,
        "reference_adapter": spec.init_adapter, "reference_adapter_sha256": init.hash,
        "tokenizer": tok.fingerprint(), "max_seq_len": max_seq_len, "pairs": items.len(),
    });
    save_ref_cache(&cache, &refs, &description)?;
    timings.reference_s = started.elapsed().as_secs_f64();
    Ok(refs)
}
