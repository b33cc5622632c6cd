//! The single-host front-end: resources from a config dir of YAML files, the daemon that
//! schedules and drives them, and the state dir as the site of their records.

pub mod config;
pub mod daemon;
pub mod local;
pub mod site;
