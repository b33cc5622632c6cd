//! Where duplicity keeps its volumes between the source and the target: it writes each volume
//! of a backup into its temp dir before the backend copies it to the target, and downloads each
//! volume of a restore there before it extracts the files. On disk, that is every byte written
//! a second time (measured: a 512 MiB file wrote 1041 MiB on a backup to `file://` and 1028 MiB
//! on its restore; 525 and 512 MiB with the temp dir in memory). So a run's duplicity gets a
//! private directory on the host's shared-memory tmpfs when that has room for its volumes, and
//! the usual temp dir on disk otherwise.

use std::path::{Path, PathBuf};

use super::argv::TargetConfig;

/// The shared-memory tmpfs of a Linux host (in a container: the pod's, 64 MiB unless mounted).
const SHM: &str = "/dev/shm";
/// Left free on the tmpfs for everyone else.
const MARGIN: u64 = 256 << 20;

/// Whether a tmpfs with `free` bytes can hold a run's volumes of `volsize_mib`: duplicity
/// holds the volume it writes and, uploading asynchronously, the one before; a restore holds
/// the volume it reads. Room for four leaves headroom for a set written with a larger
/// volume size than the target's present one.
pub fn fits_in_memory(volsize_mib: u32, free: u64) -> bool {
    (u64::from(volsize_mib.max(1)) << 20)
        .saturating_mul(4)
        .saturating_add(MARGIN)
        <= free
}

/// Whether the run's duplicity already has a temp dir chosen by the user: `--tempdir` among
/// the target's options, or TMPDIR in snapback's environment.
pub fn chosen_by_user(target: &TargetConfig, tmpdir_env: Option<&std::ffi::OsStr>) -> bool {
    tmpdir_env.is_some_and(|v| !v.is_empty())
        || target
            .extra_options
            .iter()
            .any(|o| o == "--tempdir" || o.starts_with("--tempdir="))
}

/// A private directory on the tmpfs, removed (with whatever duplicity left in it) on drop.
#[derive(Debug)]
pub struct MemoryTemp(PathBuf);

impl MemoryTemp {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for MemoryTemp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A memory temp dir for a run against `target`, or None: duplicity then uses its default.
pub fn memory_temp(target: &TargetConfig) -> Option<MemoryTemp> {
    if chosen_by_user(target, std::env::var_os("TMPDIR").as_deref()) {
        return None;
    }
    let free = crate::disk_space::free_bytes(Path::new(SHM)).ok()?;
    if !fits_in_memory(target.volsize_mib, free) {
        return None;
    }
    sweep_dead();
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Path::new(SHM).join(format!("snapback-duplicity-{}-{n}", std::process::id()));
    // A dead process's dir of the same name (pids come round again) holds nothing of ours.
    let _ = std::fs::remove_dir_all(&dir);
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(&dir).ok()?;
    Some(MemoryTemp(dir))
}

/// Removes the memory temp dirs of snapback processes that are gone (killed before their
/// dir's drop ran): memory the host would otherwise not get back until it reboots.
fn sweep_dead() {
    let Ok(entries) = std::fs::read_dir(SHM) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = owner_pid(&name.to_string_lossy()) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The pid in a memory temp dir's name (`snapback-duplicity-PID-N`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("snapback-duplicity-")?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tmpfs_holds_the_volumes_only_with_room_for_four_and_the_margin() {
        let mib = |n: u64| n << 20;
        assert!(fits_in_memory(200, mib(4 * 200 + 256)));
        assert!(!fits_in_memory(200, mib(4 * 200 + 255)));
        assert!(!fits_in_memory(1024, mib(64)));
        assert!(fits_in_memory(1, mib(260)));
    }

    #[test]
    fn only_names_of_memory_temp_dirs_give_an_owner() {
        assert_eq!(owner_pid("snapback-duplicity-4242-0"), Some(4242));
        assert_eq!(owner_pid("snapback-duplicity-4242"), None);
        assert_eq!(owner_pid("snapback-duplicity-x-1"), None);
        assert_eq!(owner_pid("other-4242-0"), None);
    }

    #[test]
    fn a_dead_processs_memory_temp_dir_is_swept_and_a_live_ones_kept() {
        // No process has a pid above the kernel's limit (at most 2^22).
        let dead = Path::new(SHM).join("snapback-duplicity-4999999-0");
        let live = Path::new(SHM).join(format!("snapback-duplicity-{}-999", std::process::id()));
        for d in [&dead, &live] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("duplicity-volume"), b"x").unwrap();
        }
        sweep_dead();
        assert!(!dead.exists());
        assert!(live.join("duplicity-volume").exists());
        std::fs::remove_dir_all(&live).unwrap();
    }

    #[test]
    fn a_temp_dir_the_user_chose_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = TargetConfig::local_for_tests(dir.path());
        assert!(!chosen_by_user(&t, None));
        assert!(!chosen_by_user(&t, Some(std::ffi::OsStr::new(""))));
        assert!(chosen_by_user(&t, Some(std::ffi::OsStr::new("/scratch"))));
        t.extra_options = vec!["--tempdir=/scratch".into()];
        assert!(chosen_by_user(&t, None));
    }

    #[test]
    fn the_memory_temp_dir_goes_with_everything_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let t = TargetConfig::local_for_tests(dir.path());
        let Some(m) = memory_temp(&t) else {
            // A host without a roomy /dev/shm: nothing to check here.
            return;
        };
        let p = m.path().to_path_buf();
        assert!(p.starts_with(SHM));
        std::fs::write(p.join("duplicity-volume"), b"x").unwrap();
        drop(m);
        assert!(!p.exists());
    }
}
