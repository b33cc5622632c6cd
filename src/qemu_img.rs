//! qemu-img as a child process: conversions with progress, chain probing, checks.

use tokio::io::AsyncReadExt;

use crate::api::FailureReason;
use crate::error::StepError;
use crate::libvirt::domain_xml::ChainImage;

/// Runs a short qemu-img command to completion; a non-zero exit becomes `fail` with its output.
async fn output(args: &[&str], fail: FailureReason) -> Result<Vec<u8>, StepError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| {
            StepError::new(
                FailureReason::Internal,
                format!("cannot start qemu-img: {e}"),
            )
        })?;
    if !out.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Err(StepError::new(
            fail,
            format!("qemu-img {}: {text}", args.join(" ")),
        ));
    }
    Ok(out.stdout)
}

/// `qemu-img info -U --output=json` (with more `args` before the path), read.
async fn info(
    args: &[&str],
    path: &str,
    fail: FailureReason,
) -> Result<serde_json::Value, StepError> {
    let mut all = vec!["info", "-U", "--output=json"];
    all.extend_from_slice(args);
    all.push(path);
    let stdout = output(&all, fail).await?;
    serde_json::from_slice(&stdout).map_err(|e| {
        StepError::new(
            FailureReason::Internal,
            format!("qemu-img info output: {e}"),
        )
    })
}

/// The backing chain of an image, top first, as qemu-img sees it.
pub async fn probe_chain(path: &str) -> Result<Vec<ChainImage>, StepError> {
    let v = info(&["--backing-chain"], path, FailureReason::BackupJobFailed).await?;
    let images = v.as_array().cloned().unwrap_or_default();
    Ok(images
        .iter()
        .filter_map(|i| {
            Some(ChainImage {
                path: i["filename"].as_str()?.to_string(),
                format: i["format"].as_str()?.to_string(),
            })
        })
        .collect())
}

/// Runs qemu-img with `-p` and reports its percentage.
/// `fail` is the reason for a failure, `full` the reason when the disk filled up.
pub async fn run_qemu_img(
    argv: &[String],
    fail: FailureReason,
    full: FailureReason,
    mut on_pct: impl FnMut(f64),
) -> Result<(), StepError> {
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    crate::process::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        StepError::new(
            FailureReason::Internal,
            format!("cannot start qemu-img: {e}"),
        )
    })?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s).await;
        s
    });
    let mut buf = [0u8; 256];
    let mut pending = String::new();
    while let Ok(n) = out.read(&mut buf).await {
        if n == 0 {
            break;
        }
        pending.push_str(&String::from_utf8_lossy(&buf[..n]));
        // Progress lines look like "    (42.00/100%)\r".
        while let Some(i) = pending.find('\r') {
            let line: String = pending.drain(..=i).collect();
            if let Some(p) = line
                .trim()
                .strip_prefix('(')
                .and_then(|l| l.split('/').next())
                .and_then(|v| v.parse().ok())
            {
                on_pct(p);
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| StepError::new(FailureReason::Internal, e.to_string()))?;
    let stderr = err_task.await.unwrap_or_default();
    if !status.success() {
        let reason = if stderr.contains("No space left") {
            full
        } else {
            fail
        };
        return Err(StepError::new(
            reason,
            format!(
                "qemu-img {} failed: {}",
                argv.first().map(String::as_str).unwrap_or(""),
                stderr.trim()
            ),
        ));
    }
    Ok(())
}

/// `qemu-img check`: the image's metadata is consistent.
pub async fn check(path: &str) -> Result<(), StepError> {
    output(&["check", "-q", path], FailureReason::VerificationFailed)
        .await
        .map(|_| ())
}

/// Makes `overlay`, a qcow2 image of `size` bytes that keeps its data in the raw file or
/// device `data` (`data_file_raw`: the guest's blocks stay where they are, and `data` stays a
/// plain raw image), so the disk can hold changed-block bitmaps. `data` is neither opened nor
/// written: a running domain holds its lock, so the image is made against `placeholder` (a
/// sparse file, removed after) and then told its real data file (`amend` rewrites only the
/// header). Through `overlay.part` and a rename, so `overlay` is whole when it exists.
pub async fn create_raw_overlay(
    overlay: &std::path::Path,
    data: &str,
    size: u64,
) -> Result<(), StepError> {
    let part = std::path::PathBuf::from(format!("{}.part", overlay.display()));
    let placeholder = std::path::PathBuf::from(format!("{}.placeholder", overlay.display()));
    let _ = std::fs::remove_file(&part);
    let io = |what: &str, e: std::io::Error| {
        StepError::new(FailureReason::Internal, format!("{what}: {e}"))
    };
    std::fs::File::create(&placeholder)
        .and_then(|f| f.set_len(size))
        .map_err(|e| io(&format!("cannot make {}", placeholder.display()), e))?;
    let opts = format!(
        "data_file={},data_file_raw=on",
        placeholder.display().to_string().replace(',', ",,")
    );
    let made = async {
        output(
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &opts,
                &part.display().to_string(),
                &size.to_string(),
            ],
            FailureReason::Internal,
        )
        .await?;
        let real = format!("data_file={}", data.replace(',', ",,"));
        output(
            &[
                "amend",
                "-f",
                "qcow2",
                "-o",
                &real,
                &part.display().to_string(),
            ],
            FailureReason::Internal,
        )
        .await
    }
    .await;
    let _ = std::fs::remove_file(&placeholder);
    if let Err(e) = made {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, overlay)
        .map_err(|e| io(&format!("cannot make {}", overlay.display()), e))
}

/// The external data file a qcow2 image keeps its data in, if it has one.
pub async fn data_file(path: &str) -> Result<Option<String>, StepError> {
    let v = info(&[], path, FailureReason::Internal).await?;
    Ok(v["format-specific"]["data"]["data-file"]
        .as_str()
        .map(str::to_string))
}
