//! The driver: runs one backup or one restore for any front-end (the CLI, the single-host
//! daemon, the node agent). It resolves the target, runs the engine, prunes after a success,
//! marks the runs of pruned chains expired and records metrics.

pub mod target;
