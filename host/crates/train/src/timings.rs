//! Where a training phase spends its wall time, for the log and `malt bench train --workload`.

use serde::{Deserialize, Serialize};

/// Wall seconds of each part of one phase, for the log and `malt bench train --workload`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseTimings {
    /// Loading and tokenizing the data, the initial adapter and the optimiser.
    pub setup_s: f64,
    /// DPO's reference log-probs (computed or read from the cache).
    pub reference_s: f64,
    /// The first optimiser step (allocations, page faults, first touches of the weights).
    pub first_step_s: f64,
    /// Every later step together, and how many there were.
    pub later_steps_s: f64,
    pub later_steps: u64,
    /// Held-out evaluations.
    pub eval_s: f64,
    /// Checkpoints (adapter + optimiser state).
    pub checkpoint_s: f64,
    /// The final adapter, the loss plot and `complete.json`.
    pub finish_s: f64,
    pub total_s: f64,
}

/// Timings are measurements, not results: two reports of the same training are equal whatever
/// their timings (resumed and uninterrupted runs compare equal).
impl PartialEq for PhaseTimings {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl PhaseTimings {
    /// One line for the log.
    pub fn summary(&self) -> String {
        let later = if self.later_steps > 0 {
            format!(
                ", {} later steps {:.2}s each",
                self.later_steps,
                self.later_steps_s / self.later_steps as f64
            )
        } else {
            String::new()
        };
        format!(
            "{:.1}s: setup {:.2}s, reference pass {:.2}s, first step {:.2}s{later}, eval {:.2}s, checkpoints {:.2}s, adapter and report {:.2}s",
            self.total_s,
            self.setup_s,
            self.reference_s,
            self.first_step_s,
            self.eval_s,
            self.checkpoint_s,
            self.finish_s
        )
    }
}
