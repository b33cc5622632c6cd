//! `--max-concurrent-runs` and `--staging-budget`: the limits of one host's backup runs, for
//! the node agent and the single-host daemon alike (see driver/admission.rs).

use clap::Args;

use crate::driver::admission::{Limits, DEFAULT_MAX_RUNS};
use crate::units::parse_bytes;

#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Backup runs started at once on this host; more wait, Pending with Admitted=False
    /// WaitingForSlot, and start when one ends
    #[arg(long, default_value_t = DEFAULT_MAX_RUNS, value_parser = at_least_one, env = "SNAPBACK_MAX_CONCURRENT_RUNS")]
    pub max_concurrent_runs: usize,
    /// Staging the runs in flight may hold together (bytes, or with a unit: 20Gi, 500Mi);
    /// a run that would not fit waits with WaitingForStaging. Default: no budget
    #[arg(long, value_parser = parse_bytes, env = "SNAPBACK_STAGING_BUDGET")]
    pub staging_budget: Option<u64>,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_runs: self.max_concurrent_runs,
            staging_budget: self.staging_budget,
        }
    }
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "invalid run limit '{s}': expected a whole number of at least 1"
        )),
    }
}
