//! Whether a resumed run can go on now. A run that an earlier process left mid-way (its record
//! past Pending) and whose locks another process holds (a `snapback backup` of the same domain
//! and target, an in-place restore of the domain) is alive elsewhere, or will be once that
//! process ends: driving it now would only fail it `Busy` and record a failure for a backup
//! that is not failing. The caller leaves it as it is and looks again later.

use std::path::Path;

use crate::api::{BackupPhase, BackupRun};
use crate::catalog::layout;
use crate::state_dir;

/// What holds the locks of `run` on `target_url`, when the run is a resumed one and they are
/// held; `None` when it may be driven (new, finished, or free). The locks are only tried,
/// and let go at once.
pub fn held_elsewhere(state: &Path, target_url: &str, run: &BackupRun) -> Option<String> {
    let s = run.status.as_ref()?;
    if s.phase == BackupPhase::Pending || s.phase.is_terminal() {
        return None;
    }
    let uuid = s.domain_uuid.as_deref()?;
    let tkey = layout::target_key(target_url);
    match state_dir::lock(state, &tkey, uuid) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Some(format!(
                "another snapback process is backing up domain {uuid} to this target"
            ))
        }
        // The engine reports a lock it cannot make; this is only a look.
        Err(_) => return None,
    }
    match state_dir::domain_lock(state, uuid, false) {
        Ok(None) => Some(format!("an in-place restore of domain {uuid} is running")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BackupRunSpec;

    const URL: &str = "file:///srv/backups";
    const UUID: &str = "6b1c7e0a-0000-4000-8000-000000000001";

    fn run(phase: &str) -> BackupRun {
        let mut r = BackupRun::new("r", BackupRunSpec::new("web", "t"));
        r.status = Some(
            serde_json::from_value(serde_json::json!({"phase": phase, "domainUuid": UUID}))
                .unwrap(),
        );
        r
    }

    #[test]
    fn a_resumed_run_whose_lock_another_process_holds_waits_and_goes_on_once_it_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let held = state_dir::lock(dir.path(), &layout::target_key(URL), UUID)
            .unwrap()
            .unwrap();
        let why = held_elsewhere(dir.path(), URL, &run("Exporting")).expect("held");
        assert!(why.contains("backing up domain"), "{why}");
        drop(held);
        assert_eq!(held_elsewhere(dir.path(), URL, &run("Exporting")), None);
    }

    #[test]
    fn an_in_place_restore_of_the_domain_holds_a_resumed_backup_back() {
        let dir = tempfile::tempdir().unwrap();
        let _restore = state_dir::domain_lock(dir.path(), UUID, true)
            .unwrap()
            .unwrap();
        let why = held_elsewhere(dir.path(), URL, &run("Uploading")).expect("held");
        assert!(why.contains("in-place restore"), "{why}");
    }

    #[test]
    fn new_and_finished_runs_are_never_held_back_here() {
        let dir = tempfile::tempdir().unwrap();
        let _held = state_dir::lock(dir.path(), &layout::target_key(URL), UUID)
            .unwrap()
            .unwrap();
        assert_eq!(held_elsewhere(dir.path(), URL, &run("Pending")), None);
        assert_eq!(held_elsewhere(dir.path(), URL, &run("Succeeded")), None);
        let mut fresh = run("Pending");
        fresh.status = None;
        assert_eq!(held_elsewhere(dir.path(), URL, &fresh), None);
    }
}
