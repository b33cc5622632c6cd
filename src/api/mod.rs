//! The resource model (API group `snapback.dev`, version `v1alpha1`).
//!
//! These are the CRD types: the Kubernetes front-end serves them as custom resources and the
//! single-host front-end reads and writes the same documents as YAML files.

pub mod common;
pub mod conditions;
pub mod crds;
pub mod local;
pub mod policy;
pub mod reference;
pub mod restore;
pub mod retention;
pub mod run;
pub mod target;
pub mod virthost;

pub use common::*;
pub use conditions::{reason, ConditionType};
pub use local::*;
pub use policy::*;
pub use restore::*;
pub use retention::*;
pub use run::*;
pub use target::*;
pub use virthost::*;

/// The API group of every snapback resource.
pub const GROUP: &str = "snapback.dev";
/// The API version served today.
pub const VERSION: &str = "v1alpha1";
