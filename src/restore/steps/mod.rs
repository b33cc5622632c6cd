//! The steps of a restore, one file each. `decide.rs` chooses which runs and with how much
//! work left; each step ends by entering the next phase.

mod define;
mod devices;
mod fetch;
mod files;
mod firmware;
mod host_files;
mod place;
mod rebuild;
mod recover;
mod resolve;
mod rollback;
mod start;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::RestoreEngine;
use crate::api::{FailureReason, RestoreRequest};
use crate::catalog::manifest::{manifest_name, Manifest};
use crate::error::StepError;
use crate::hooks::HookStage;
use crate::lifecycle::Journal;
use crate::source::Source;
use crate::state_dir;
use crate::units::human_bytes;

/// What a chain member's fetch dir holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fetched {
    Verified,
    Missing,
    /// This export is whole but its checksum is not the one recorded at backup time.
    Mismatch(String),
}

pub(crate) fn invalid(msg: impl Into<String>) -> StepError {
    StepError::new(FailureReason::InvalidSpec, msg)
}

pub(crate) fn io_err(what: &str, e: std::io::Error) -> StepError {
    let reason = if e.raw_os_error() == Some(libc::ENOSPC) {
        FailureReason::StorageFull
    } else {
        FailureReason::Internal
    };
    StepError::new(reason, format!("{what}: {e}"))
}

/// Runs a `qemu-img compare` argv; any difference (or a failure to compare) fails the restore
/// `VerificationFailed`, naming `what` (the restored file or device).
pub(crate) async fn run_compare(argv: &[String], what: &str) -> Result<(), StepError> {
    crate::qemu_img::run_qemu_img(
        argv,
        FailureReason::VerificationFailed,
        FailureReason::StorageFull,
        |_| {},
    )
    .await
    .map_err(|e| {
        StepError::new(
            FailureReason::VerificationFailed,
            format!("{what} does not hold the restored disk: {}", e.message),
        )
    })
}

/// A storage directory must exist, be writable and hold `need` bytes.
pub(crate) fn check_storage_dir(dir: &Path, need: u64) -> Result<(), StepError> {
    if !dir.is_dir() {
        return Err(invalid(format!(
            "storage dir {} does not exist or is not a directory",
            dir.display()
        )));
    }
    let probe = dir.join(format!(".snapback-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"x").map_err(|e| {
        invalid(format!(
            "storage dir {} is not writable: {e}",
            dir.display()
        ))
    })?;
    let _ = std::fs::remove_file(&probe);
    let free = state_dir::free_bytes(dir).unwrap_or(u64::MAX);
    if free < need {
        return Err(StepError::new(
            FailureReason::StorageFull,
            format!(
                "storage dir {} has {} free, the restored disks need up to {}",
                dir.display(),
                human_bytes(free),
                human_bytes(need)
            ),
        ));
    }
    Ok(())
}

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    pub(crate) fn work_dir(&self) -> PathBuf {
        PathBuf::from(self.lc.status().work_dir.clone().unwrap_or_default())
    }

    /// Runs hooks of a stage; the domain in their environment is the one being restored to.
    pub(crate) async fn hooks(
        &mut self,
        stage: HookStage,
        extra: Vec<(String, String)>,
    ) -> Result<(), StepError> {
        let hooks = stage.of(&self.lc.record.spec.hooks).to_vec();
        let domain = self
            .lc
            .status()
            .defined_domain
            .clone()
            .unwrap_or_else(|| self.lc.record.spec.domain.clone());
        self.lc
            .run_hooks(self.source, stage, &hooks, &domain, extra)
            .await
    }

    /// The run of the point being restored (known once Resolving is done).
    pub(crate) fn point_run(&self) -> String {
        let point = self.lc.status().point.as_ref();
        point.map(|p| p.run.clone()).unwrap_or_default()
    }

    pub(crate) fn member_dir(&self, run: &str) -> PathBuf {
        self.work_dir().join("fetch").join(run)
    }

    pub(crate) async fn read_manifest(&self, run: &str) -> Result<Manifest, StepError> {
        let p = self.member_dir(run).join(manifest_name(run));
        let text =
            std::fs::read(&p).map_err(|e| io_err(&format!("cannot read {}", p.display()), e))?;
        serde_json::from_slice(&text).map_err(|e| {
            StepError::new(
                FailureReason::VerificationFailed,
                format!("{}: {e}", p.display()),
            )
        })
    }

    /// The export files each chain member must give (see `plan::exports_needed`), read from
    /// the members' manifests in their fetch dirs.
    pub(crate) async fn exports_needed(&self) -> Result<Vec<BTreeSet<String>>, StepError> {
        let mut chain = Vec::new();
        for m in &self.lc.status().chain_runs {
            chain.push(self.read_manifest(&m.run).await?);
        }
        crate::restore::plan::exports_needed(&chain)
            .map_err(|m| StepError::new(FailureReason::VerificationFailed, m))
    }

    /// Whether a member's fetched exports are all there and match the checksums recorded at
    /// backup time. Files are fetched under a `.part` name and renamed when duplicity is done,
    /// so a file under its own name is whole: a mismatch is the target's copy, not a fetch
    /// that a crash cut short.
    /// The point's own member also holds the firmware state it saved.
    pub(crate) async fn member_fetched(&self, run: &str) -> Result<Fetched, StepError> {
        let Ok(m) = self.read_manifest(run).await else {
            return Ok(Fetched::Missing);
        };
        let is_point = self.lc.status().point.as_ref().map(|p| p.run.as_str()) == Some(run);
        // Only the exports the restore needs of this member were fetched; with a manifest of
        // the chain missing, every export of the member counts (and is fetched again).
        let index = self
            .lc
            .status()
            .chain_runs
            .iter()
            .position(|m| m.run == run);
        let needed = match (self.exports_needed().await, index) {
            (Ok(mut n), Some(i)) => Some(std::mem::take(&mut n[i])),
            _ => None,
        };
        let disks = m
            .disks
            .iter()
            .filter(|d| needed.as_ref().is_none_or(|n| n.contains(&d.export_file)))
            .map(|d| (d.export_file.clone(), d.sha256.clone()));
        let firmware = m
            .firmware
            .iter()
            .filter(|_| is_point)
            .map(|f| (f.file.clone(), Some(f.sha256.clone())));
        let memory = m
            .memory
            .iter()
            .filter(|_| is_point && self.lc.record.spec.resume)
            .map(|f| (f.file.clone(), Some(f.sha256.clone())));
        for (file, want) in disks.chain(firmware).chain(memory) {
            let p = self.member_dir(run).join(&file);
            if !p.exists() {
                return Ok(Fetched::Missing);
            }
            let sum = tokio::task::spawn_blocking(move || state_dir::sha256_file(&p))
                .await
                .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?
                .map_err(|e| io_err("cannot read a fetched file", e))?;
            if Some(&sum) != want.as_ref() {
                return Ok(Fetched::Mismatch(file));
            }
        }
        Ok(Fetched::Verified)
    }
}
