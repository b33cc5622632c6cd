//! The controller: turns policies into BackupRuns on schedule, keeps history, tracks agents.
//! One replica leads at a time (`lease.rs`, decided in `leadership.rs`).

pub mod inventory;
pub mod kubevirt;
pub mod leadership;
pub mod lease;
pub mod pass;
pub mod plan;

pub use pass::{pass, PassConfig, PassStats};
