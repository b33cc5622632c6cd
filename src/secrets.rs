//! Secrets from files: the first line, never echoed. Values go to child processes by
//! environment or file descriptor only.

use std::path::Path;

use crate::api::FailureReason;
use crate::error::StepError;

/// Reads a secret file: first line, without the line ending. Never echoes the content.
pub fn read_secret_file(path: &Path) -> Result<String, StepError> {
    read_first_line(path, FailureReason::EncryptionKeyError, "passphrase")
}

/// Reads a target's login password file (FTP), as `read_secret_file` does.
pub fn read_password_file(path: &Path) -> Result<String, StepError> {
    read_first_line(path, FailureReason::TargetAuthFailed, "password")
}

fn read_first_line(path: &Path, reason: FailureReason, what: &str) -> Result<String, StepError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        StepError::new(
            reason,
            format!("cannot read {what} file {}: {e}", path.display()),
        )
    })?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err(StepError::new(
            reason,
            format!("{what} file {} is empty", path.display()),
        ));
    }
    Ok(line)
}

/// Writes a secret into `path` for a child process that only reads files (an SSH key): mode
/// 0600 from its creation, in a 0700 directory, replaced whole by a rename.
pub fn write_secret_file(path: &Path, value: &str) -> Result<(), StepError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let fail = |e: std::io::Error| {
        StepError::new(
            FailureReason::Internal,
            format!("cannot write secret file {}: {e}", path.display()),
        )
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
    }
    let tmp = path.with_extension("part");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    // OpenSSH refuses a key file without its final newline.
    let text = if value.ends_with('\n') {
        value.to_string()
    } else {
        format!("{value}\n")
    };
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_written_secret_file_is_readable_by_its_owner_only_and_ends_with_a_newline() {
        let dir = std::env::temp_dir().join(format!("snapback-secret-{}", std::process::id()));
        let path = dir.join("ssh").join("identity");
        write_secret_file(&path, "-----BEGIN KEY-----\nabc\n-----END KEY-----").unwrap();
        write_secret_file(&path, "-----BEGIN KEY-----\nabc\n-----END KEY-----").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "-----BEGIN KEY-----\nabc\n-----END KEY-----\n"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
