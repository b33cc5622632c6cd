//! What the fake's virt-launcher does to its domain, through `virsh` and `qemu-img` with
//! argument lists (no shell).

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn connect_uri() -> String {
    std::env::var("SNAPBACK_TEST_CONNECT").unwrap_or_else(|_| "qemu:///system".into())
}

/// Runs virsh; stdout on success, libvirt's error (without virsh's "error: " prefixes) else.
pub fn virsh(args: &[&str]) -> Result<String, String> {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(connect_uri())
        .args(args)
        .output()
        .map_err(|e| format!("cannot run virsh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg: Vec<&str> = err
            .lines()
            .map(|l| l.trim_start_matches("error: ").trim())
            .filter(|l| !l.is_empty())
            .collect();
        Err(msg.join(": "))
    }
}

pub fn qemu_img(args: &[&str]) -> Result<String, String> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

pub fn running(domain: &str) -> bool {
    virsh(&["domstate", domain]).is_ok_and(|s| s.trim() == "running" || s.trim() == "paused")
}

/// The domain's disks: (target device, source file).
pub fn disks(domain: &str) -> Vec<(String, PathBuf)> {
    virsh(&["domblklist", domain])
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), PathBuf::from(it.next()?)))
        })
        .collect()
}

pub fn checkpoints(domain: &str) -> Vec<String> {
    virsh(&["checkpoint-list", domain, "--name"])
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// The persistent dirty bitmaps in a qcow2 image (readable while QEMU has it open).
pub fn image_bitmaps(image: &Path) -> Vec<String> {
    let Ok(out) = qemu_img(&["info", "-U", "--output=json", image.to_str().unwrap()]) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v.pointer("/format-specific/data/bitmaps")
        .and_then(|b| b.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|b| b["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The state of the domain's current job, as `virsh domjobinfo` names it ("None" when idle).
pub fn job_type(domain: &str, completed: bool) -> Result<(String, String), String> {
    let mut args = vec!["domjobinfo", domain];
    if completed {
        args.push("--completed");
    }
    let out = virsh(&args)?;
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    Ok((field("Job type:"), field("Error message:")))
}
