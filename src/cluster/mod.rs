//! The Kubernetes front-end: a small object-store interface the controller and the agent are
//! written against, its implementation over the real API (`kube_api`), and an in-memory one
//! (`mem`) that tests and benches use because no apiserver can be installed on these machines.

pub mod agent;
pub mod cache;
pub mod controller;
pub mod kube_api;
pub mod kubevirt;
pub mod labels;
pub mod mem;
pub mod mem_faults;
pub mod release;
pub mod retrying;
pub mod store;

pub use store::{ApiError, ApiErrorKind, EventType, Object, Store};
