//! The controller: turns policies into BackupRuns on schedule, keeps history, tracks agents.

pub mod inventory;
pub mod pass;
pub mod plan;

pub use pass::{pass, PassConfig, PassStats};
