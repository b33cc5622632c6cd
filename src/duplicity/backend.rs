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
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string();
        return Err(DuplicityError {
            reason: classify(0, &err),
            message: format!("target {}: {last}", args[0]),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
