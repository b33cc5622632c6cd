//! Stores for resources outside Kubernetes.

pub mod files;

pub use files::FileStore;
