//! A files restore (`spec.files`): Resolving chooses the files-mode backup set and finds each
//! path in it; Fetching restores the paths into `to` with duplicity, one at a time, each
//! recorded when whole. duplicity restores with `--force`, so a path restored again (a
//! restore resumed after a crash) is written over with the same content: re-running is
//! idempotent.

use std::path::{Path, PathBuf};

use jiff::Timestamp;

use super::{invalid, io_err};
use crate::api::{
    BackupType, FailureReason, FilesRestore, PointRef, RestorePhase, RestoreRequest, RestoredFiles,
};
use crate::catalog::layout;
use crate::catalog::manifest::Manifest;
use crate::catalog::points::dup_time;
use crate::catalog::select::{parse_at, At};
use crate::duplicity::{self, log::collection_sets, Action, TargetConfig};
use crate::error::StepError;
use crate::files::point::POINT_DIR;
use crate::files::restore::listed_paths;
use crate::lifecycle::{Event, Journal};
use crate::restore::files::{check_spec, choose_set, plan_paths, point_run, under};
use crate::restore::RestoreEngine;
use crate::source::Source;
use crate::state_dir;

fn no_files_backup(domain: &str) -> StepError {
    StepError::new(
        FailureReason::DomainNotFound,
        format!("the target holds no files-mode backup of domain '{domain}'"),
    )
}

/// The tree paths of the files point at `time`.
async fn listing_at(target: &TargetConfig, time: Timestamp) -> Result<Vec<String>, StepError> {
    let out = duplicity::run(
        target,
        &Action::ListCurrentFiles {
            time: Some(dup_time(time)),
        },
        |_| {},
    )
    .await?;
    Ok(listed_paths(&out.stdout))
}

/// Refuses a destination that an existing symbolic link between `to` and it would send
/// elsewhere (one restored by an earlier path of the request, say): nothing outside `to` is
/// written. A symbolic link at the destination itself is removed, so that duplicity replaces
/// it rather than writing through it.
fn check_inside(to: &Path, dest: &Path) -> Result<(), StepError> {
    let rel = dest
        .strip_prefix(to)
        .map_err(|_| invalid(format!("{} is not under {}", dest.display(), to.display())))?;
    let mut at = to.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, c) in parts.iter().enumerate() {
        at.push(c);
        let Ok(m) = std::fs::symlink_metadata(&at) else {
            return Ok(()); // nothing below a missing entry exists yet
        };
        if m.file_type().is_symlink() {
            if i + 1 == parts.len() {
                return std::fs::remove_file(&at)
                    .map_err(|e| io_err(&format!("cannot replace {}", at.display()), e));
            }
            return Err(invalid(format!(
                "{} is a symbolic link: restoring {} through it would write outside {}",
                at.display(),
                dest.display(),
                to.display()
            )));
        }
    }
    Ok(())
}

/// Files (all but directories) and the bytes of the regular files among `rels` under `dest`,
/// as restored. Symbolic links are counted, not followed.
fn count<'a>(dest: &Path, rels: impl Iterator<Item = &'a str>) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    for rel in rels {
        let p = if rel.is_empty() {
            dest.to_path_buf()
        } else {
            dest.join(rel)
        };
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            if !m.is_dir() {
                files += 1;
            }
            if m.is_file() {
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    /// The duplicity target of the domain's files-mode backups (`<target>/<domain>.files`).
    fn files_target(&self) -> TargetConfig {
        let mut t = layout::files_target(&self.ctx.target, &self.lc.record.spec.domain);
        t.archive_dir = state_dir::archive_dir(&self.ctx.state_dir)
            .display()
            .to_string();
        t
    }

    /// Resolving a files restore: the point's set, its run, and each path found in it.
    pub(crate) async fn resolve_files(&mut self, f: FilesRestore) -> Result<(), StepError> {
        self.lc.enter(RestorePhase::Resolving).await?;
        let spec = self.lc.record.spec.clone();
        check_spec(&spec, &f)?;
        let at = parse_at(spec.at.as_deref()).map_err(invalid)?;
        let target = self.files_target();
        let sets = match duplicity::run(&target, &Action::CollectionStatus, |_| {}).await {
            Ok(o) => collection_sets(&o.messages),
            Err(e) => {
                let m = e.message.to_ascii_lowercase();
                if m.contains("chains found") || m.contains("no backup chains") {
                    Vec::new()
                } else {
                    return Err(e.into());
                }
            }
        };
        if sets.is_empty() {
            return Err(no_files_backup(&spec.domain));
        }
        let mut idx = choose_set(&sets, &at).map_err(invalid)?;
        let mut listing = listing_at(&target, sets[idx].time).await?;
        if let At::Run(run) = &at {
            // Newest first: the run asked for is most often a recent one.
            while point_run(&listing).as_deref() != Some(run.as_str()) {
                if idx == 0 {
                    return Err(invalid(format!(
                        "--at '{run}' is neither an RFC 3339 time nor a files-mode backup run on the target"
                    )));
                }
                idx -= 1;
                listing = listing_at(&target, sets[idx].time).await?;
            }
        }
        let set = sets[idx].clone();
        let to = PathBuf::from(&f.to);
        let paths = plan_paths(&listing, &f.paths, &to, set.time)?;

        let work = self.ctx.state_dir.join("restore-work").join(self.lc.name());
        std::fs::create_dir_all(&work).map_err(|e| io_err("cannot create the work dir", e))?;
        self.lc.status_mut().work_dir = Some(work.display().to_string());
        let manifest = match point_run(&listing) {
            Some(run) => Some(self.point_manifest(&target, set.time, &run, &work).await?),
            None => None,
        };
        // Like cp and rsync, a missing destination directory is created.
        std::fs::create_dir_all(&to)
            .map_err(|e| io_err(&format!("files.to {}: cannot create it", f.to), e))?;
        if !to.is_dir() {
            return Err(invalid(format!("files.to {}: not a directory", f.to)));
        }
        let point = PointRef {
            run: manifest.as_ref().map(|m| m.run.clone()).unwrap_or_default(),
            time: set.time,
            type_: Some(if set.full {
                BackupType::Full
            } else {
                BackupType::Incremental
            }),
            chain: manifest
                .as_ref()
                .map(|m| m.chain.clone())
                .unwrap_or_default(),
            chain_index: manifest.as_ref().map_or(0, |m| m.chain_index),
        };
        self.lc.report(Event::Note(format!(
            "restoring {} path(s) of the files-mode backup {} (set of {}) into {}",
            paths.len(),
            point.run,
            point.time,
            f.to
        )));
        let s = self.lc.status_mut();
        s.point = Some(point);
        s.files = Some(RestoredFiles {
            paths,
            ..Default::default()
        });
        self.lc.enter(RestorePhase::Fetching).await
    }

    /// The manifest of the point's run, from its `@snapback` files.
    async fn point_manifest(
        &self,
        target: &TargetConfig,
        time: Timestamp,
        run: &str,
        work: &Path,
    ) -> Result<Manifest, StepError> {
        let name = format!("{run}.manifest.json");
        let dest = work.join(&name);
        let _ = std::fs::remove_file(&dest);
        let action = Action::Restore {
            dest: dest.display().to_string(),
            time: Some(dup_time(time)),
            file: Some(format!("{POINT_DIR}/{name}")),
        };
        duplicity::run(target, &action, |_| {}).await?;
        let text = std::fs::read(&dest)
            .map_err(|e| io_err(&format!("cannot read {}", dest.display()), e))?;
        serde_json::from_slice(&text).map_err(|e| {
            StepError::new(
                FailureReason::VerificationFailed,
                format!("manifest {name}: {e}"),
            )
        })
    }

    /// Fetching a files restore: restores the paths `todo` (indexes into `status.files.paths`)
    /// into `to`, each recorded once whole; then counts and ends Succeeded.
    pub(crate) async fn restore_files(&mut self, todo: Vec<usize>) -> Result<(), StepError> {
        let to = PathBuf::from(
            self.lc
                .record
                .spec
                .files
                .as_ref()
                .map(|f| f.to.clone())
                .unwrap_or_default(),
        );
        let Some(point) = self.lc.status().point.clone() else {
            return Err(StepError::new(
                FailureReason::Internal,
                "a files restore in Fetching without its point",
            ));
        };
        let target = self.files_target();
        let listing = listing_at(&target, point.time).await?;
        for i in todo {
            if self.lc.cancelled() {
                return Err(StepError::new(
                    FailureReason::Interrupted,
                    "interrupted by a signal; the files restored so far stay in place",
                ));
            }
            let p = self.lc.status().files.as_ref().unwrap().paths[i].clone();
            let dest = PathBuf::from(&p.path);
            check_inside(&to, &dest)?;
            if let Some(parent) = dest.parent() {
                check_inside(&to, parent)?;
                std::fs::create_dir_all(parent)
                    .map_err(|e| io_err(&format!("cannot create {}", parent.display()), e))?;
            }
            self.lc.note(format!("restoring {} to {}", p.found, p.path));
            duplicity::run(
                &target,
                &Action::Restore {
                    dest: p.path.clone(),
                    time: Some(dup_time(point.time)),
                    file: Some(p.found.clone()),
                },
                |_| {},
            )
            .await?;
            let (files, bytes) = count(&dest, under(&listing, &p.found));
            let done = &mut self.lc.status_mut().files.as_mut().unwrap().paths[i];
            done.restored = true;
            done.files = files;
            done.bytes = bytes;
            self.lc.save().await?;
            crate::process::crash_point("restore:files:one-restored");
        }
        let f = self.lc.status_mut().files.as_mut().unwrap();
        f.files = f.paths.iter().map(|p| p.files).sum();
        f.bytes = f.paths.iter().map(|p| p.bytes).sum();
        let note = format!(
            "restored {} file(s), {} byte(s) into {}",
            f.files,
            f.bytes,
            to.display()
        );
        self.lc.note(note);
        let _ = std::fs::remove_dir_all(self.work_dir());
        self.lc.finish(RestorePhase::Succeeded, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symbolic_link_inside_to_is_never_written_through() {
        let d = tempfile::tempdir().unwrap();
        let to = d.path().join("to");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(to.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, to.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, to.join("etc/hosts")).unwrap();

        assert!(check_inside(&to, &to.join("etc/new/file")).is_ok());
        assert!(check_inside(&to, &to).is_ok());
        let e = check_inside(&to, &to.join("link/hosts")).unwrap_err();
        assert_eq!(e.reason, FailureReason::InvalidSpec);
        assert!(e.message.contains("is a symbolic link"), "{}", e.message);
        // A link at the destination itself is replaced, not followed.
        check_inside(&to, &to.join("etc/hosts")).unwrap();
        assert!(std::fs::symlink_metadata(to.join("etc/hosts")).is_err());
        assert!(outside.exists());
        assert!(check_inside(&to, &d.path().join("elsewhere")).is_err());
    }

    #[test]
    fn counting_takes_files_and_links_not_directories_and_does_not_follow_links() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("etc");
        std::fs::create_dir_all(dest.join("app")).unwrap();
        std::fs::write(dest.join("hosts"), b"12345").unwrap();
        std::fs::write(dest.join("app/conf"), b"abc").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dest.join("link")).unwrap();
        let rels = ["", "app", "app/conf", "hosts", "link", "gone"];
        assert_eq!(count(&dest, rels.iter().copied()), (3, 8));
    }
}
