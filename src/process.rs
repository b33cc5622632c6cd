//! Helpers for child processes.

/// Makes the child receive SIGKILL when snapback dies, so a killed run never leaves a
/// duplicity, qemu-img or hook process running on its own (the resumed run starts its own).
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec here.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
