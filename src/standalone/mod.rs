//! The single-host front-end: resources from a config dir of YAML files.

pub mod config;
