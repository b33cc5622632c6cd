//! Retention: which restore points to keep, pruning only whole chains (pure planning).

pub mod files_chains;
pub mod plan;
pub mod prune;
pub mod rules;
pub mod target_files;

pub use plan::{plan, Decision, Plan, Point};
pub use rules::{Rules, RulesError};
