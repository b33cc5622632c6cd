//! Secrets from files: the first line, never echoed. Values go to child processes by
//! environment or file descriptor only.

use std::path::Path;

use crate::api::FailureReason;
use crate::error::StepError;

/// Reads a secret file: first line, without the line ending. Never echoes the content.
pub fn read_secret_file(path: &Path) -> Result<String, StepError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        StepError::new(
            FailureReason::EncryptionKeyError,
            format!("cannot read passphrase file {}: {e}", path.display()),
        )
    })?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err(StepError::new(
            FailureReason::EncryptionKeyError,
            format!("passphrase file {} is empty", path.display()),
        ));
    }
    Ok(line)
}
