//! The end of a phase: the final PEFT adapter (written atomically), the loss plot and
//! `complete.json`.

use crate::checkpoint;
use crate::error::{Result, TrainError};
use crate::metrics;
use crate::policy::PolicyModel;
use crate::settings::RunOptions;

use super::resume::write_complete;
use super::{PhaseReport, PhaseSpec};

pub(super) fn finish_phase<M: PolicyModel>(
    model: &M,
    spec: &PhaseSpec,
    opts: &RunOptions,
    adapter: &M::Adapter,
    report: &PhaseReport,
    fingerprint: &str,
) -> Result<()> {
    checkpoint::write_dir_atomic(&spec.adapter_out, |tmp| {
        model.save_adapter(adapter, tmp, &opts.base_model)
    })?;
    let (train, eval) = metrics::read_metrics(&spec.out_dir.join("metrics.jsonl"))?;
    let svg = metrics::loss_svg(
        &format!("{} {} loss", spec.agent, spec.phase.name()),
        &train
            .iter()
            .map(|m| (m.step as f64, m.loss))
            .collect::<Vec<_>>(),
        &eval
            .iter()
            .map(|m| (m.step as f64, m.eval_loss))
            .collect::<Vec<_>>(),
    );
    let svg_path = spec.out_dir.join("loss.svg");
    std::fs::write(&svg_path, svg).map_err(|e| TrainError::io(&svg_path, e))?;
    write_complete(spec, report, fingerprint)
}
