//! Which duplicity files on a target make up a chain (pure), and listing/deleting them through
//! duplicity's own backends (a small Python helper run with an argv vector).

use jiff::Timestamp;

use crate::api::FailureReason;
use crate::duplicity::TargetConfig;
use crate::engine::StepError;

const HELPER: &str = include_str!("backend_helper.py");

fn parse_time(s: &str) -> Option<Timestamp> {
    jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", s)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// The files of the chain whose full was taken at `start` and whose last set is at `end`,
/// newest first: deleting in this order leaves a valid, shorter chain if it is interrupted.
pub fn chain_files(names: &[String], start: Timestamp, end: Timestamp) -> Vec<String> {
    let mut hits: Vec<(Timestamp, &String)> = Vec::new();
    for n in names {
        let parts: Vec<&str> = n.split('.').collect();
        let (kind, rest) = match parts.first() {
            Some(k) => (*k, &parts[1..]),
            None => continue,
        };
        match kind {
            "duplicity-full" | "duplicity-full-signatures"
                if rest.first().and_then(|t| parse_time(t)) == Some(start) =>
            {
                hits.push((start, n));
            }
            "duplicity-inc" | "duplicity-new-signatures" => {
                if let (Some(a), Some("to"), Some(b)) = (
                    rest.first().and_then(|t| parse_time(t)),
                    rest.get(1).copied(),
                    rest.get(2).and_then(|t| parse_time(t)),
                ) {
                    if a >= start && b <= end && a < b {
                        hits.push((b, n));
                    }
                }
            }
            _ => {}
        }
    }
    hits.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(y.1)));
    hits.into_iter().map(|(_, n)| n.clone()).collect()
}

fn python() -> String {
    std::env::var("SNAPBACK_DUPLICITY_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

async fn helper(target: &TargetConfig, args: &[String]) -> Result<String, StepError> {
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
    let out = cmd.output().await.map_err(|e| {
        StepError::new(
            FailureReason::Internal,
            format!("cannot run {}: {e}", python()),
        )
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string();
        return Err(StepError::new(
            crate::duplicity::log::classify(0, &err),
            format!("target {}: {last}", args[0]),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub async fn list(target: &TargetConfig) -> Result<Vec<String>, StepError> {
    let out = helper(target, &["list".into(), target.url.as_str().into()]).await?;
    Ok(out
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect())
}

pub async fn delete(target: &TargetConfig, names: &[String]) -> Result<(), StepError> {
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
    fn a_chain_is_its_full_and_the_incrementals_between_its_start_and_end() {
        let names: Vec<String> = [
            "duplicity-full.20260101T000000Z.manifest",
            "duplicity-full.20260101T000000Z.vol1.difftar",
            "duplicity-full-signatures.20260101T000000Z.sigtar",
            "duplicity-inc.20260101T000000Z.to.20260102T000000Z.manifest",
            "duplicity-new-signatures.20260101T000000Z.to.20260102T000000Z.sigtar",
            "duplicity-inc.20260102T000000Z.to.20260103T000000Z.vol1.difftar",
            "duplicity-full.20260104T000000Z.manifest",
            "duplicity-inc.20260104T000000Z.to.20260105T000000Z.manifest",
            "unrelated.txt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let files = chain_files(&names, t("2026-01-01T00:00:00Z"), t("2026-01-03T00:00:00Z"));
        assert_eq!(files.len(), 6);
        assert_eq!(
            files[0], "duplicity-inc.20260102T000000Z.to.20260103T000000Z.vol1.difftar",
            "newest first"
        );
        assert!(
            files[4..].iter().all(|f| f.contains("full")),
            "the full goes last"
        );
        assert!(!files.iter().any(|f| f.contains("20260104")));
    }
}
