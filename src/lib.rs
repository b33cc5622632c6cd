//! snapback: back up and restore libvirt/KVM virtual machines the Kubernetes way.

pub mod api;
pub mod cli;
pub mod cluster;
pub mod duplicity;
pub mod engine;
pub mod files;
pub mod libvirt;
pub mod metrics;
pub mod process;
pub mod qemu_img;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod standalone;
pub mod store;
