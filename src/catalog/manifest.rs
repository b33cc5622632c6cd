//! The manifest each run uploads next to its exports. A restore on a fresh host reads it from
//! the target: it needs no local state.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::{BackupType, DomainFile, FirmwareFile, FullReason, MemoryFile, RunDisk};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub api_version: String,
    pub run: String,
    pub domain: String,
    #[serde(default)]
    pub domain_uuid: Option<String>,
    #[serde(rename = "type")]
    pub type_: BackupType,
    #[serde(default)]
    pub full_reason: Option<FullReason>,
    pub chain: String,
    pub chain_index: u32,
    #[serde(default)]
    pub checkpoint: Option<String>,
    #[serde(default)]
    pub parent_checkpoint: Option<String>,
    #[serde(default)]
    pub snapshot_time: Option<Timestamp>,
    pub online: bool,
    pub disks: Vec<RunDisk>,
    /// Firmware state saved with the point; empty for BIOS domains and for points taken
    /// before snapback saved it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firmware: Vec<FirmwareFile>,
    /// The domain's RAM and device state saved at the disks' instant (`memory: Include`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryFile>,
    /// Every file the domain XML names beside its disks, so a restore knows what it needs
    /// from the host and what it must not share.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domain_files: Vec<DomainFile>,
}

/// The file name of a run's manifest.
pub fn manifest_name(run: &str) -> String {
    format!("{run}.manifest.json")
}

/// The file name of a run's saved domain XML.
pub fn domain_xml_name(run: &str) -> String {
    format!("{run}.domain.xml")
}
