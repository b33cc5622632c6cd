//! The process: its child processes, its signals, and the crash points of the tests.

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

/// A crash point of the crash campaign (tests/crash_campaign.rs, docs/reliability.md): when
/// `SNAPBACK_CRASH_AT` names this point, the process kills itself with SIGKILL here, exactly
/// as `kill -9` at that moment would, so every moment can be hit on purpose rather than by
/// timing. Outside those tests the variable is unset and this is one environment lookup.
pub fn crash_point(name: &str) {
    if std::env::var_os("SNAPBACK_CRASH_AT").is_some_and(|v| v == name) {
        // SAFETY: raising a signal has no memory-safety preconditions.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}

/// A pause point of the fault tests (tests/host_faults.rs): when `SNAPBACK_PAUSE_AT` names
/// this point, the process creates the file `SNAPBACK_PAUSE_FILE` and waits until the test
/// removes it, so a fault (libvirtd restarted, say) lands at exactly this moment rather than
/// at one guessed by timing. Outside those tests the variable is unset and this is one
/// environment lookup.
pub async fn pause_point(name: &str) {
    if std::env::var_os("SNAPBACK_PAUSE_AT").is_none_or(|v| v != name) {
        return;
    }
    let Some(marker) = std::env::var_os("SNAPBACK_PAUSE_FILE") else {
        return;
    };
    let marker = std::path::PathBuf::from(marker);
    if let Err(e) = std::fs::write(&marker, name) {
        tracing::warn!(error = %e, marker = %marker.display(), "cannot create the pause marker");
        return;
    }
    while marker.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A flag that turns true on SIGINT or SIGTERM: engines then clean up (or roll back) and
/// fail as Interrupted, and daemons stop.
pub fn cancel_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    rx
}
