//! snapback: back up and restore libvirt/KVM virtual machines the Kubernetes way.

pub mod api;
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod driver;
pub mod duplicity;
pub mod engine;
pub mod error;
pub mod files;
pub mod hooks;
pub mod libvirt;
pub mod lifecycle;
pub mod metrics;
pub mod process;
pub mod qemu_img;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod secrets;
pub mod selector;
pub mod source;
pub mod standalone;
pub mod state_dir;
pub mod store;
pub mod table;
pub mod units;
