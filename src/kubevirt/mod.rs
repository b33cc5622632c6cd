//! KubeVirt and CDI: the parts of their APIs that snapback reads and writes.
//!
//! snapback backs up a KubeVirt VM through KubeVirt's own backup API
//! (`backup.kubevirt.io`), gets the files out through a `VirtualMachineExport`
//! and restores through CDI DataVolumes. It never talks to the libvirt inside a
//! virt-launcher pod, so the only contract it has with KubeVirt is these types.
//!
//! The structs are written by hand against the CRD schemas KubeVirt v1.9.0 and
//! CDI v1.66.0 publish; `tests/kubevirt_types.rs` checks them against copies of
//! those schemas kept in `tests/fixtures/kubevirt/`.

pub mod eligible;
pub mod naming;
pub mod restore_spec;
pub mod transfer;
pub mod types;
