//! Files mode: the guest's filesystems, read from a point-in-time export of its disks, backed
//! up file by file with duplicity (its own rsync incrementals), and single files or trees
//! restored to a directory.
//!
//! The data path: the engine's usual snapshot (a push-mode backup job, guest frozen around its
//! start) writes a full qcow2 export of each disk to staging; the VM never leaves its own
//! disks, so there is nothing to merge back. `attach` then exposes each export read-only as a
//! raw file (qemu-storage-daemon's FUSE export), maps it to a read-only loop device with its
//! partitions, and mounts the ext4 and xfs filesystems found read-only with nodev, nosuid,
//! noexec and no journal replay. duplicity reads that tree; `attach::detach` undoes it all,
//! also after a crash. The point's own files (manifest, domain XML, firmware state) go up in
//! the same tree, under `@snapback` (`point.rs`).

pub mod attach;
pub mod point;
pub mod restore;
pub mod select;
pub mod volumes;
