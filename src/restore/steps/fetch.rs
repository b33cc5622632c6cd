//! Fetching: each chain member's files from the target with duplicity, one file at a time,
//! into `NAME.part` renamed when whole, so a file under its own name is never one that a
//! crash cut short.

use super::{io_err, Fetched};
use crate::api::{FailureReason, RestorePhase, RestoreRequest};
use crate::catalog::manifest::{domain_xml_name, manifest_name};
use crate::error::StepError;
use crate::lifecycle::{Event, Journal};
use crate::restore::RestoreEngine;
use crate::source::Source;

/// The memory state a restore with `resume` starts the domain from: the point must hold one.
pub(crate) fn resume_state(
    run: &str,
    man: &crate::catalog::manifest::Manifest,
) -> Result<crate::api::MemoryFile, StepError> {
    man.memory.clone().ok_or_else(|| {
        StepError::new(
            FailureReason::InvalidSpec,
            format!(
                "resume: point {run} holds no memory state (it was taken without memory: Include, or of a shut-off domain); restore it without resume to boot it"
            ),
        )
    })
}

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    /// Restores one file of a member from the target (see `fetch::fetch_file`).
    async fn fetch_file(
        &self,
        run: &str,
        time: jiff::Timestamp,
        file: &str,
    ) -> Result<(), StepError> {
        let target = self.domain_target();
        let dir = self.member_dir(run);
        let mut cancel = self.lc.cancel.clone();
        tokio::select! {
            r = crate::restore::fetch::fetch_file(&target, &dir, time, file) => r,
            _ = cancel.changed() => Err(StepError::new(FailureReason::Interrupted, "interrupted while fetching")),
        }
    }

    /// Fetches the chain members `todo` (indexes into `chainRuns`); the others were fetched
    /// and verified before a crash.
    /// Puts a member's manifest in its fetch dir: the copy that came with the listing, or
    /// from the target if that copy is gone.
    async fn place_manifest(&self, run: &str, time: jiff::Timestamp) -> Result<(), StepError> {
        let dir = self.member_dir(run);
        std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create the fetch dir", e))?;
        let name = manifest_name(run);
        if dir.join(&name).exists() {
            return Ok(());
        }
        let listed = self.work_dir().join("manifests").join(&name);
        if std::fs::copy(&listed, dir.join(&name)).is_err() {
            self.fetch_file(run, time, &name).await?;
        }
        Ok(())
    }

    pub(crate) async fn fetch(&mut self, todo: Vec<usize>) -> Result<(), StepError> {
        let members = self.lc.status().chain_runs.clone();
        // Every member's manifest first: which exports a member must give depends on the
        // points after it (a disk whole in a later point needs nothing before that point).
        for m in &members {
            self.place_manifest(&m.run, m.time).await?;
        }
        let needed = self.exports_needed().await?;
        for (i, m) in members.iter().enumerate() {
            if !todo.contains(&i) {
                continue;
            }
            let dir = self.member_dir(&m.run);
            let _ = std::fs::remove_dir_all(&dir);
            self.place_manifest(&m.run, m.time).await?;
            let skipped =
                (self.read_manifest(&m.run).await?.disks.len()).saturating_sub(needed[i].len());
            self.lc.report(Event::Note(format!(
                "fetching {} ({}/{}){}",
                m.run,
                i + 1,
                members.len(),
                match skipped {
                    0 => String::new(),
                    n => format!(", {n} of its disk exports not needed (whole in a later point)"),
                }
            )));
            let time = m.time;
            let mut files = Vec::new();
            if Some(&m.run) == self.lc.status().point.as_ref().map(|p| &p.run) {
                files.push(domain_xml_name(&m.run));
            }
            let man = self.read_manifest(&m.run).await?;
            files.extend(
                man.disks
                    .iter()
                    .map(|d| d.export_file.clone())
                    .filter(|f| needed[i].contains(f)),
            );
            if Some(&m.run) == self.lc.status().point.as_ref().map(|p| &p.run) {
                files.extend(man.firmware.iter().map(|f| f.file.clone()));
                if self.lc.record.spec.resume {
                    files.push(resume_state(&m.run, &man)?.file);
                }
            }
            // One file at a time: duplicity then reads only the volumes that hold it, not every
            // earlier set of the chain (restoring a whole later set re-reads the full).
            for f in files {
                self.fetch_file(&m.run, time, &f).await?;
                crate::process::crash_point("restore:fetching:file");
            }
            match self.member_fetched(&m.run).await? {
                Fetched::Verified => {}
                Fetched::Missing => {
                    return Err(StepError::new(
                        FailureReason::VerificationFailed,
                        format!("the target's copy of {} is incomplete", m.run),
                    ))
                }
                Fetched::Mismatch(file) => {
                    return Err(StepError::new(
                        FailureReason::VerificationFailed,
                        format!(
                            "{file} from the target does not match the checksum recorded at backup time"
                        ),
                    ))
                }
            }
            self.lc.status_mut().progress = Some(crate::api::Progress {
                bytes_done: i as u64 + 1,
                bytes_total: members.len() as u64,
            });
            self.lc.save().await?;
        }
        self.lc.enter(RestorePhase::Rebuilding).await
    }
}
