//! Retention: which restore points to keep, pruning only whole chains (pure planning).

pub mod plan;
pub mod rules;

pub use plan::{plan, Decision, Plan, Point};
pub use rules::{Rules, RulesError};
