//! The state directory on this host: staging dirs, the duplicity archive-dir cache, the run
//! and domain locks, and the file checks (free space, checksums) the engines make there.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One stable staging path per target and domain: duplicity refuses an incremental whose
/// source path differs from the previous run's.
pub fn staging_dir(state: &Path, tkey: &str, uuid: &str) -> PathBuf {
    state.join("staging").join(tkey).join(uuid)
}

pub fn archive_dir(state: &Path) -> PathBuf {
    state.join("cache").join("duplicity")
}

/// Exclusive lock on a domain+target, held for a run's whole life. flock locks vanish with the
/// process, so a killed run never leaves a stale lock.
pub fn lock(state: &Path, tkey: &str, uuid: &str) -> std::io::Result<Option<File>> {
    flock(
        &state.join("locks"),
        &format!("{tkey}-{uuid}.lock"),
        libc::LOCK_EX,
    )
}

/// The lock on a domain whatever the target: backups hold it shared (several targets may back
/// a domain up at once), an in-place restore exclusive, so neither pulls the domain from under
/// the other. `None` when the other kind holds it.
pub fn domain_lock(state: &Path, uuid: &str, exclusive: bool) -> std::io::Result<Option<File>> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    flock(&state.join("locks"), &format!("domain-{uuid}.lock"), op)
}

fn flock(dir: &Path, name: &str, op: libc::c_int) -> std::io::Result<Option<File>> {
    fs::create_dir_all(dir)?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(name))?;
    // SAFETY: flock on a descriptor we own; it has no memory-safety preconditions.
    let rc = unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(f))
}

/// Removes every file in `dir` (not the directory itself, whose path duplicity remembers).
pub fn empty_dir(dir: &Path) -> std::io::Result<()> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let p = e?.path();
                if p.is_dir() {
                    fs::remove_dir_all(&p)?;
                } else {
                    fs::remove_file(&p)?;
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub use crate::disk_space::free_bytes;

/// Bytes actually allocated by a file (sparse files count only their data).
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// SHA-256 of a file, streamed in 1 MiB reads so memory stays flat whatever the size.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_domain_and_target_is_refused_until_the_first_drops() {
        let d = tempfile::tempdir().unwrap();
        let first = lock(d.path(), "t", "u").unwrap();
        assert!(first.is_some());
        assert!(lock(d.path(), "t", "u").unwrap().is_none());
        assert!(lock(d.path(), "t", "other").unwrap().is_some());
        drop(first);
        assert!(lock(d.path(), "t", "u").unwrap().is_some());
    }
}
