//! The duplicity adapter: a pure argv/env builder, log parsing, and a process runner.

pub mod argv;
pub mod backend;
pub mod log;
pub mod names;
pub mod runner;
pub mod tempdir;
pub mod url;

pub use argv::{Action, Crypto, SshFiles, TargetConfig};
pub use runner::{run, DuplicityError};
pub use url::TargetUrl;
