//! LVM snapshots for a shut-off domain's export. A shut-off domain's logical volume does not
//! change while snapback reads it, unless someone starts the domain mid-export: a snapshot
//! taken first makes the export one instant of the volume whatever happens meanwhile.
//!
//! Untested on a real LVM: the machines snapback is developed on have no device-mapper, so
//! only the decisions (`plan.rs`) and `lvs`'s report (`report.rs`) are tested, and that a
//! host without device-mapper or `lvs` skips all of it. The calls here are the small rest.
//! Never used for a running domain (see `plan::decide`).

pub mod plan;
pub mod report;

use std::path::Path;

use report::LogicalVolume;

/// Where device-mapper's control node is: without it there is no LVM to ask.
const DM_CONTROL: &str = "/dev/mapper/control";

/// What `lookup` found behind a disk.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Volume(LogicalVolume),
    /// Not a logical volume, or no LVM on this host: exported as before, without a snapshot.
    /// The text says why, for a note on the run when it is worth one.
    NotLvm(String),
}

/// Runs an LVM command; its stdout, or a message naming the command and its error output.
/// `LVM_SUPPRESS_FD_WARNINGS`: LVM warns of every inherited descriptor on stderr otherwise.
async fn run(argv: &[String]) -> Result<String, RunError> {
    let out = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                RunError::Missing
            } else {
                RunError::Failed(format!("{}: {e}", argv[0]))
            }
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(RunError::Failed(format!(
            "{} exited {}: {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[derive(Debug)]
enum RunError {
    /// The program is not installed.
    Missing,
    Failed(String),
}

/// The logical volume behind `device`, if it is one and this host can snapshot it.
pub async fn lookup(device: &str) -> Lookup {
    if !Path::new(DM_CONTROL).exists() {
        return Lookup::NotLvm("this host has no device-mapper".into());
    }
    let canonical = std::fs::canonicalize(device)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if !plan::may_be_logical_volume(&canonical) {
        return Lookup::NotLvm(format!("{device} is not a device-mapper device"));
    }
    query("lvs", device).await
}

/// `lvs` (the program `lvs`, replaceable for tests) about one volume.
async fn query(lvs: &str, volume: &str) -> Lookup {
    let mut argv = plan::lvs_argv(volume);
    argv[0] = lvs.to_string();
    match run(&argv).await {
        Ok(json) => match report::parse(&json) {
            Ok(mut v) if v.len() == 1 => Lookup::Volume(v.remove(0)),
            Ok(v) => Lookup::NotLvm(format!("lvs reported {} volumes for {volume}", v.len())),
            Err(e) => Lookup::NotLvm(e),
        },
        Err(RunError::Missing) => Lookup::NotLvm("lvs is not installed".into()),
        // A device-mapper device that is no logical volume (dm-crypt, multipath).
        Err(RunError::Failed(e)) => Lookup::NotLvm(e),
    }
}

/// Takes the snapshot.
pub async fn create(s: &plan::Snapshot) -> Result<(), String> {
    run(&s.create_argv()).await.map(|_| ()).map_err(message)
}

/// Whether the snapshot `id` (`VG/NAME`) still exists; an error when `lvs` cannot say.
async fn exists(id: &str) -> Result<bool, String> {
    match query("lvs", id).await {
        Lookup::Volume(_) => Ok(true),
        Lookup::NotLvm(why) if why.contains("not found") || why.contains("Failed to find") => {
            Ok(false)
        }
        // No LVM here at all: nothing snapback made can exist.
        Lookup::NotLvm(why) if why == "lvs is not installed" => Ok(false),
        Lookup::NotLvm(why) => Err(why),
    }
}

/// Whether a classic snapshot ran out of copy-on-write space (then what was read from it is
/// not the volume's). A thin snapshot cannot: its pool fails writes instead.
pub async fn overflowed(id: &str) -> Result<bool, String> {
    match query("lvs", id).await {
        Lookup::Volume(v) => Ok(v.is_invalid_snapshot()),
        Lookup::NotLvm(why) => Err(why),
    }
}

/// Removes the snapshot `id` (`VG/NAME`); one that is already gone counts as removed, so a
/// resumed run or a second cleanup can ask again.
pub async fn remove(id: &str) -> Result<(), String> {
    if !exists(id).await? {
        return Ok(());
    }
    run(&plan::remove_argv(id))
        .await
        .map(|_| ())
        .map_err(message)
}

fn message(e: RunError) -> String {
    match e {
        RunError::Missing => "LVM's commands are not installed".into(),
        RunError::Failed(m) => m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_host_without_lvs_or_device_mapper_skips_the_snapshot() {
        let q = query("/nonexistent/lvs", "/dev/vg0/web").await;
        assert_eq!(q, Lookup::NotLvm("lvs is not installed".into()));
        // A loop device (or anything but device-mapper) is never asked of lvs.
        match lookup("/dev/loop0").await {
            Lookup::NotLvm(why) => assert!(
                why.contains("device-mapper"),
                "skipped for the right reason: {why}"
            ),
            other => panic!("a loop device is no logical volume: {other:?}"),
        }
    }
}
