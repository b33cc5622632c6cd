//! Browsing local restore points: each point's guest filesystems mounted read-only under
//! `<dir>/@GMT-%Y.%m.%d-%H.%M.%S` (the point's UTC time), one subdirectory per filesystem,
//! while the VM keeps running; optional symlinks in a link dir; and the Samba and
//! nfs-ganesha configuration that serves them.
//!
//! The data path of one point: `qemu-nbd` opens each qcow2 disk's internal snapshot
//! read-only and without taking the running VM's image lock (`force-share`), on a unix
//! socket; from there files mode's attach (`files::attach`) takes over: a read-only FUSE
//! export by qemu-storage-daemon, read-only loop devices for the disk and its partitions,
//! LVM and md inside the guest, and read-only mounts with nodev, nosuid, noexec and no
//! journal replay. There is no `/dev/nbd` on the hosts this was built on.
//!
//! What a mount started is recorded under `<dir>/.snapback/<@GMT name>/` before it starts,
//! so an unmount, or the next mount of that point, takes it all down after a crash.

pub mod image;
pub mod name;
pub mod nfs;
pub mod point;
pub mod samba;
pub mod servers;

pub use name::{gmt_name, parse_gmt_name, GMT_FORMAT};
pub use point::{
    in_use, is_mounted, list_points, mount_point, unmount_all, unmount_point, Disk, MountedPoint,
    PointRef, Settings,
};
