//! Listing and deleting files on a target through duplicity's own backends, so that every
//! scheme duplicity supports works the same: a small Python helper run with an argv vector,
//! credentials in its environment as for duplicity itself.

use super::argv::TargetConfig;
use super::log::classify;
use super::runner::DuplicityError;
use crate::api::FailureReason;

const HELPER: &str = include_str!("backend_helper.py");

fn python() -> String {
    std::env::var("SNAPBACK_DUPLICITY_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

async fn helper(target: &TargetConfig, args: &[String]) -> Result<String, DuplicityError> {
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg("-c")
        .arg(HELPER)
        .args(args)
        .env(
            "SNAPBACK_NUM_RETRIES",
            target.num_retries.max(1).to_string(),
        )
        .kill_on_drop(true);
    if let Some(ep) = &target.s3_endpoint_url {
        cmd.env("SNAPBACK_S3_ENDPOINT_URL", ep);
    }
    let ssh = super::argv::ssh_options(&target.ssh).map_err(|e| DuplicityError {
        reason: FailureReason::InvalidSpec,
        message: e.to_string(),
    })?;
    if let Some(o) = ssh {
        cmd.env("SNAPBACK_SSH_OPTIONS", o);
    }
    for (k, v) in &target.backend_env {
        cmd.env(k, v);
    }
    crate::process::die_with_parent(&mut cmd);
    let out = cmd.output().await.map_err(|e| DuplicityError {
        reason: FailureReason::Internal,
        message: format!("cannot run {}: {e}", python()),
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // stdout too: the paramiko backend asks about an unknown host key there.
        let all = format!("{err}\n{}", String::from_utf8_lossy(&out.stdout));
        let last = telling_line(&err).to_string();
        return Err(DuplicityError {
            reason: classify(0, &all),
            message: format!("target {}: {last}", args[0]),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The line of the helper's stderr that says what went wrong: the backend's own words when
/// they are there (Python's shutdown prints unrelated tracebacks after them), else the last.
fn telling_line(err: &str) -> &str {
    const TELLING: &[&str] = &[
        "Login failed",
        "Authentication failed",
        "does not match",
        "authenticity of host",
        "BackendException",
    ];
    let lines = || err.lines().rev().map(str::trim).filter(|l| !l.is_empty());
    TELLING
        .iter()
        .find_map(|t| lines().find(|l| l.contains(t)))
        .or_else(|| lines().next())
        .unwrap_or("")
}

/// The names of every file in the target's directory.
pub async fn list(target: &TargetConfig) -> Result<Vec<String>, DuplicityError> {
    let out = helper(target, &["list".into(), target.url.as_str().into()]).await?;
    Ok(out
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect())
}

/// Deletes the named files, in the order given.
pub async fn delete(target: &TargetConfig, names: &[String]) -> Result<(), DuplicityError> {
    if names.is_empty() {
        return Ok(());
    }
    let mut args = vec!["delete".to_string(), target.url.as_str().to_string()];
    args.extend(names.iter().cloned());
    helper(target, &args).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backends_own_words_are_reported_not_pythons_shutdown_noise() {
        let err = "Giving up after 1 attempts. BackendException: Error running 'lftp'\n\ncd: Login failed: 530 Authentication failed.\n\nException ignored in: <function TemporaryDirectory.__del__>\nNameError: name '_' is not defined\n";
        assert_eq!(
            telling_line(err),
            "cd: Login failed: 530 Authentication failed."
        );
        assert_eq!(telling_line("one\ntwo\n\n"), "two");
    }
}
