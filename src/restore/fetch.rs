//! Fetching one file of a backup set from the target with duplicity: into `NAME.part`, renamed
//! when whole, so a file under its own name is never one that a crash cut short.

use std::path::Path;

use crate::api::FailureReason;
use crate::duplicity::{self, Action, TargetConfig};
use crate::error::StepError;

use crate::catalog::points::dup_time;

pub async fn fetch_file(
    target: &TargetConfig,
    dir: &Path,
    set_time: jiff::Timestamp,
    file: &str,
) -> Result<(), StepError> {
    let part = dir.join(format!("{file}.part"));
    let action = Action::Restore {
        dest: part.display().to_string(),
        time: Some(dup_time(set_time)),
        file: Some(file.to_string()),
    };
    duplicity::run(target, &action, |_| {}).await?;
    std::fs::rename(&part, dir.join(file)).map_err(|e| {
        StepError::new(
            FailureReason::Internal,
            format!("cannot rename {}: {e}", part.display()),
        )
    })
}
