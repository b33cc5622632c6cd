//! When an internal snapshot was taken, as its qcow2 image records it (`qemu-img info`),
//! for mounting a point by its snapshot name alone.

use jiff::Timestamp;

use crate::api::FailureReason;
use crate::error::StepError;

/// The time of internal snapshot `name` in `qemu-img info --output=json` output.
pub fn snapshot_time(info: &serde_json::Value, name: &str) -> Option<Timestamp> {
    info["snapshots"]
        .as_array()?
        .iter()
        .find(|s| s["name"].as_str() == Some(name))
        .and_then(|s| Timestamp::from_second(s["date-sec"].as_i64()?).ok())
}

/// Reads the time of internal snapshot `name` from the qcow2 image `path` (while the VM
/// runs: `-U`). InvalidSpec when the image has no such snapshot.
pub async fn internal_snapshot_time(path: &str, name: &str) -> Result<Timestamp, StepError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json", path])
        .output()
        .await
        .map_err(|e| StepError::new(FailureReason::Internal, format!("qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(StepError::new(
            FailureReason::Internal,
            format!(
                "qemu-img info {path}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| StepError::new(FailureReason::Internal, format!("qemu-img info: {e}")))?;
    snapshot_time(&v, name).ok_or_else(|| {
        StepError::new(
            FailureReason::InvalidSpec,
            format!("{path} has no internal snapshot {name}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_snapshots_seconds_are_its_time() {
        let v = serde_json::json!({"format": "qcow2", "snapshots": [
            {"name": "a", "date-sec": 1_700_000_000, "date-nsec": 5, "id": "1"},
            {"name": "snapback-b", "date-sec": 1_800_000_000, "date-nsec": 0, "id": "2"}
        ]});
        assert_eq!(
            snapshot_time(&v, "snapback-b").unwrap().as_second(),
            1_800_000_000
        );
        assert_eq!(snapshot_time(&v, "c"), None);
        assert_eq!(
            snapshot_time(&serde_json::json!({"format": "qcow2"}), "a"),
            None
        );
    }
}
