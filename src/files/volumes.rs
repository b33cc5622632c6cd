//! LVM volume groups and md RAID arrays inside the guest's disks, assembled read-only so their
//! filesystems can be mounted like any other.
//!
//! UNTESTED: both need kernel support these development machines lack (no device-mapper, no
//! md), so this code has never run against a real volume group or array. On such a host the
//! members are reported (`FilesystemUnsupported` when nothing else is mountable) instead. What
//! is recorded under the attach dir lets `release` undo the assembly after a crash.

use super::attach::{run, Layout};

const LVM_RECORD: &str = "lvm.devices";
const MD_RECORD: &str = "md.arrays";

fn has(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(cmd).is_file()))
}

/// Activates the volume groups on `members` with every LV read-only, restricted to those
/// devices (`--devices`), so the host's own volume groups are never looked at. Returns
/// (name in the tree, device) per logical volume.
pub async fn activate_lvm(
    layout: &Layout,
    members: &[(String, String)],
) -> Result<Vec<(String, String)>, String> {
    let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    if !std::path::Path::new("/dev/mapper/control").exists() || !has("lvm") {
        return Err(format!(
            "{}: LVM2_member: needs device-mapper and lvm2, which this host does not have",
            names.join(", ")
        ));
    }
    let devs: Vec<&str> = members.iter().map(|m| m.1.as_str()).collect();
    let devs = devs.join(",");
    std::fs::write(layout.attach.join(LVM_RECORD), &devs)
        .map_err(|e| format!("record LVM devices: {e}"))?;
    let ro = "activation { read_only_volume_list = [ \"*\" ] }";
    run(&[
        "lvm",
        "vgchange",
        "--devices",
        &devs,
        "--config",
        ro,
        "--activate",
        "y",
    ])
    .await
    .map_err(|e| format!("activate LVM on {}: {e}", names.join(", ")))?;
    let out = run(&[
        "lvm",
        "lvs",
        "--devices",
        &devs,
        "--noheadings",
        "--separator",
        "|",
        "-o",
        "vg_name,lv_name,lv_dm_path",
    ])
    .await
    .map_err(|e| format!("list LVs: {e}"))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            (f.len() == 3).then(|| (format!("{}-{}", f[0], f[1]), f[2].to_string()))
        })
        .collect())
}

/// Assembles the md arrays of `members` read-only under `/dev/md/snapback-N`.
pub async fn assemble_md(
    layout: &Layout,
    members: &[(String, String)],
) -> Result<Vec<(String, String)>, String> {
    let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    if !std::path::Path::new("/proc/mdstat").exists() || !has("mdadm") {
        return Err(format!(
            "{}: linux_raid_member: needs the md driver and mdadm, which this host does not have",
            names.join(", ")
        ));
    }
    let mut uuids: Vec<String> = Vec::new();
    for (_, dev) in members {
        let out = run(&["mdadm", "--examine", "--export", dev]).await?;
        if let Some(u) = out.lines().find_map(|l| l.strip_prefix("MD_UUID=")) {
            if !uuids.contains(&u.to_string()) {
                uuids.push(u.to_string());
            }
        }
    }
    let mut arrays = Vec::new();
    for (i, uuid) in uuids.iter().enumerate() {
        let md = format!("/dev/md/snapback-{}-{i}", std::process::id());
        let mut argv = vec![
            "mdadm",
            "--assemble",
            "--readonly",
            md.as_str(),
            "--uuid",
            uuid,
        ];
        argv.extend(members.iter().map(|m| m.1.as_str()));
        run(&argv).await?;
        arrays.push(md);
    }
    std::fs::write(layout.attach.join(MD_RECORD), arrays.join("\n"))
        .map_err(|e| format!("record md arrays: {e}"))?;
    Ok(arrays
        .into_iter()
        .enumerate()
        .map(|(i, md)| (format!("md{i}"), md))
        .collect())
}

/// Deactivates what `activate_lvm` and `assemble_md` recorded. Returns the problems.
pub async fn release(layout: &Layout) -> Vec<String> {
    let mut problems = Vec::new();
    let lvm = layout.attach.join(LVM_RECORD);
    if let Ok(devs) = std::fs::read_to_string(&lvm) {
        match run(&[
            "lvm",
            "vgchange",
            "--devices",
            devs.trim(),
            "--activate",
            "n",
        ])
        .await
        {
            Ok(_) => {
                let _ = std::fs::remove_file(&lvm);
            }
            Err(e) => problems.push(e),
        }
    }
    let md = layout.attach.join(MD_RECORD);
    if let Ok(list) = std::fs::read_to_string(&md) {
        for a in list.lines().filter(|l| !l.is_empty()) {
            if let Err(e) = run(&["mdadm", "--stop", a]).await {
                problems.push(e);
            }
        }
        if problems.is_empty() {
            let _ = std::fs::remove_file(&md);
        }
    }
    problems
}
