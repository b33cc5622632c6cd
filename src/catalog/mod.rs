//! What a target holds and how to read it without local state: the layout of domains on a
//! target, each run's manifest, the restore points listed from duplicity's sets, and the
//! choice of a point and its chain.

pub mod layout;
pub mod manifest;
pub mod points;
pub mod select;
