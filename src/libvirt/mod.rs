//! The libvirt adapter (on the `virt` crate), with the unsafe FFI for calls the crate does not
//! wrap kept in `ffi`.

pub mod bitmaps;
pub mod domain_xml;
mod error;
mod ffi;
pub mod firmware;
mod host;
pub mod host_files;
pub mod labels;
pub mod memory_state;
pub mod snapshots;
pub mod xml_edit;

pub use domain_xml::{Disk, DiskKind, DomainFacts, Firmware};
pub use error::{LibvirtError, VirtErrorKind};
pub use host::{DomainState, DomainView, JobState, LibvirtHost};
