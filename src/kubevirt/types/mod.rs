//! Typed subsets of the KubeVirt and CDI kinds snapback uses.
//!
//! Each struct holds only the fields snapback reads or writes. Unknown fields in
//! what the API server returns are ignored (serde's default), so a newer
//! KubeVirt that adds fields does not break us. Where snapback must hand a
//! whole object back (the VM spec it saves and re-creates), the struct keeps the
//! unknown part as JSON instead of dropping it.
//!
//! Status values that KubeVirt may extend (phases, reasons, states) are plain
//! strings with constants beside them, so an unexpected value is still readable;
//! values that the schema closes with an `enum` and that snapback writes are
//! Rust enums.

pub mod backup;
pub mod cdi;
pub mod config;
pub mod export;
pub mod vm;

pub use backup::*;
pub use cdi::*;
pub use config::*;
pub use export::*;
pub use vm::*;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

/// A condition as KubeVirt and CDI report it.
///
/// The kinds differ slightly: the backup API uses `metav1.Condition` (v1.9),
/// VirtualMachineExport its own type with `lastProbeTime`, DataVolume one with
/// `lastHeartbeatTime`. One lenient struct reads all of them: every field is
/// optional so that a v1.8 backup (whose times may be `null`) or a partly filled
/// condition still deserialises. Only the fields that are set are written, and
/// the schema tests check that each kind gets only fields its schema has.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
}

impl Condition {
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// The condition of `type_` in `conditions`, if there is one.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when `conditions` holds `type_` with status `True`.
pub fn condition_is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(Condition::is_true)
}
