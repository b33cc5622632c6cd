//! File restore: single files or trees from a files-mode backup into a directory, with their
//! owners, modes and timestamps (duplicity restores them; run as root to keep owners).

use std::path::{Path, PathBuf};

use crate::api::FailureReason;
use crate::duplicity::{self, Action, TargetConfig};
use crate::error::StepError;

use super::select::locate;

/// What was restored: (guest path asked for, tree path found, destination).
pub type Restored = Vec<(String, String, PathBuf)>;

/// Restores each of `paths` (guest paths, optionally `fs:/path`) as of `time` (duplicity
/// time, None = newest) from the files chain `target` into `to`. A path found on one
/// filesystem lands at `to/<path>`; found on several, at `to/<fs>/<path>` for each.
pub async fn restore_files(
    target: &TargetConfig,
    paths: &[String],
    time: Option<String>,
    to: &Path,
) -> Result<Restored, StepError> {
    // Like cp and rsync, a missing destination directory is created.
    if !to.exists() {
        std::fs::create_dir_all(to).map_err(|e| {
            StepError::new(
                FailureReason::InvalidSpec,
                format!("--to {}: cannot create it: {e}", to.display()),
            )
        })?;
    }
    if !to.is_dir() {
        return Err(StepError::new(
            FailureReason::InvalidSpec,
            format!("--to {}: not a directory", to.display()),
        ));
    }
    let listing = duplicity::run(
        target,
        &Action::ListCurrentFiles { time: time.clone() },
        |_| {},
    )
    .await
    .map_err(|e| {
        let mut s: StepError = e.into();
        if s.message.contains("No backup chains") || s.message.contains("chains found") {
            s = StepError::new(
                FailureReason::DomainNotFound,
                "the target holds no files-mode backup of this domain",
            );
        }
        s
    })?;
    let entries = listed_paths(&listing.stdout);
    let mut out = Vec::new();
    for want in paths {
        let hits =
            locate(&entries, want).map_err(|e| StepError::new(FailureReason::InvalidSpec, e))?;
        if hits.is_empty() {
            return Err(StepError::new(
                FailureReason::InvalidSpec,
                format!("{want} is not in the backup at that time"),
            ));
        }
        for h in &hits {
            let dest = destination(to, h, hits.len());
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StepError::new(
                        FailureReason::StorageFull,
                        format!("{}: {e}", parent.display()),
                    )
                })?;
            }
            duplicity::run(
                target,
                &Action::Restore {
                    dest: dest.display().to_string(),
                    time: time.clone(),
                    file: Some(h.clone()),
                },
                |_| {},
            )
            .await
            .map_err(StepError::from)?;
            out.push((want.clone(), h.clone(), dest));
        }
    }
    Ok(out)
}

/// The paths of duplicity's `list-current-files` output (each line: a date, then the path).
pub fn listed_paths(stdout: &str) -> Vec<String> {
    stdout.lines().filter_map(listed_path).collect()
}

/// "Sun May  5 05:05:05 2024 vdb/etc/my file": the path follows five date fields, which
/// asctime pads with spaces (a one-digit day has two before it).
fn listed_path(line: &str) -> Option<String> {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let mut rest = line;
    let mut fields = Vec::with_capacity(5);
    for _ in 0..5 {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ')?;
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    let dated = DAYS.contains(&fields[0]) && fields[3].matches(':').count() == 2;
    let path = rest.strip_prefix(' ')?;
    (dated && !path.is_empty() && path != ".").then(|| path.to_string())
}

/// Where a backed-up path (`FS/REST`, one of `hits` hits of one asked path) is restored
/// under `to`: a path found in one filesystem goes to `to/REST`; found in several, each
/// goes under its filesystem's name, `to/FS/REST`, so none overwrites another.
pub fn destination(to: &Path, hit: &str, hits: usize) -> PathBuf {
    let (fs, rest) = hit.split_once('/').unwrap_or((hit, ""));
    if hits == 1 {
        to.join(rest)
    } else {
        to.join(fs).join(rest)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn listing_lines_give_tree_paths() {
        let out = "Last full backup date: Sun Nov 22 10:00:00 2026\n\
                   Sun Nov 22 10:00:00 2026 .\n\
                   Sun Nov 22 10:00:00 2026 vdb\n\
                   Sat Nov 21 09:05:01 2026 vdb/etc/my file\n\
                   Sun May  5 05:05:05 2024 vdb/data/old.txt\n";
        assert_eq!(
            super::listed_paths(out),
            vec!["vdb", "vdb/etc/my file", "vdb/data/old.txt"]
        );
    }
}
