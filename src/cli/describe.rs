//! `snapback describe backuprun NAME`: one run in full, for a human: what, where, the phases
//! with their timings, the failure with its reason word, the conditions and the hook output.

use std::fmt::Write as _;

use crate::api::BackupRun;
use crate::units::human_bytes;
use crate::units::human_duration;

fn line(out: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{:<16}{value}", format!("{key}:"));
}

/// Renders a run (pure: the text depends on the run only).
pub fn describe_backup_run(r: &BackupRun) -> String {
    let mut out = String::new();
    let s = r.status.clone().unwrap_or_default();
    line(&mut out, "Name", r.metadata.name.as_deref().unwrap_or("-"));
    line(&mut out, "Domain", &r.spec.domain);
    if let Some(u) = &s.domain_uuid {
        line(&mut out, "Domain UUID", u);
    }
    if let Some(p) = &r.spec.policy_ref {
        line(&mut out, "Policy", p);
    }
    if let Some(n) = &r.spec.node_name {
        line(&mut out, "Node", n);
    }
    line(
        &mut out,
        "Target",
        s.target_url.as_deref().unwrap_or(&r.spec.target_ref),
    );
    line(&mut out, "Phase", format!("{:?}", s.phase));
    if let Some(t) = s.type_ {
        let why = s
            .full_reason
            .map(|f| format!(" ({f:?})"))
            .unwrap_or_default();
        line(&mut out, "Type", format!("{t:?}{why}"));
    }
    if let Some(c) = &s.chain {
        line(
            &mut out,
            "Chain",
            format!("{c} (position {})", s.chain_index),
        );
    }
    if let Some(c) = &s.checkpoint {
        line(&mut out, "Checkpoint", c);
    }
    if let Some(p) = &s.local_point {
        line(&mut out, "Local point", p);
    }
    if let Some(t) = s.expires_at {
        line(&mut out, "Expires", t);
    }
    if let Some(p) = s.paused_seconds {
        line(&mut out, "Guest paused", format!("{p:.3} s"));
    }
    if let Some(t) = s.start_time {
        line(&mut out, "Started", t);
    }
    if let Some(t) = s.completion_time {
        line(&mut out, "Completed", t);
    }
    if let Some(d) = &s.duration {
        line(&mut out, "Duration", d);
    }
    if s.size_bytes > 0 {
        line(&mut out, "Size", human_bytes(s.size_bytes));
    }
    if let Some(w) = s.freeze_window_ms {
        let how = if s.quiesced { "frozen" } else { "paused" };
        line(&mut out, "Guest window", format!("{w} ms {how}"));
    }
    if let Some(m) = &s.memory_state {
        let paused = s
            .paused_seconds
            .map(|p| format!(", guest paused {p:.3} s"))
            .unwrap_or_default();
        line(
            &mut out,
            "Memory state",
            format!("{} ({}){paused}", m.file, human_bytes(m.bytes)),
        );
    }
    if let Some(f) = &s.failure {
        line(&mut out, "Failure", format!("{}: {}", f.reason, f.message));
    }
    if !s.disks.is_empty() {
        out.push_str("Disks:\n");
        for d in &s.disks {
            // What was stored against the disk's size, and why a disk went whole.
            let stored = if d.export_bytes > 0 {
                format!("{:>12} stored  ", human_bytes(d.export_bytes))
            } else {
                String::new()
            };
            let whole = d
                .full_reason
                .map(|r| format!("  whole ({r:?})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<8}{:>12} virtual  {stored}{}{whole}",
                d.name,
                human_bytes(d.virtual_size),
                d.export_file
            );
        }
    }
    if !s.phases.is_empty() {
        out.push_str("Phases:\n");
        for p in &s.phases {
            let took = match p.end_time {
                Some(e) => human_duration(e.duration_since(p.start_time)),
                None => "running".to_string(),
            };
            let _ = writeln!(
                out,
                "  {:<14}{:>10}   from {}",
                format!("{:?}", p.phase),
                took,
                p.start_time
            );
        }
    }
    if !s.conditions.is_empty() {
        out.push_str("Conditions:\n");
        for c in &s.conditions {
            let _ = writeln!(
                out,
                "  {:<20}{:<8}{:<22}{}",
                c.type_, c.status, c.reason, c.message
            );
        }
    }
    if !s.hooks.is_empty() {
        out.push_str("Hooks:\n");
        for h in &s.hooks {
            let code = h
                .exit_code
                .map(|c| format!("exit {c}"))
                .unwrap_or_else(|| "no exit code".into());
            let _ = writeln!(
                out,
                "  {} {} ({}, {}, {} ms)",
                h.stage,
                h.hook,
                if h.succeeded { "ok" } else { "failed" },
                code,
                h.duration_ms
            );
            for l in h.output.lines() {
                let _ = writeln!(out, "    | {l}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::*;
    use jiff::Timestamp;

    #[test]
    fn describe_shows_phase_timings_the_failure_reason_and_hook_output() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let mut r = BackupRun::new("web-1", BackupRunSpec::new("web", "file:///b"));
        r.status = Some(BackupRunStatus {
            phase: BackupPhase::Failed,
            failure: Some(Failure {
                reason: FailureReason::HookFailed,
                message: "preSnapshot flush exited 3".into(),
            }),
            phases: vec![
                PhaseRecord {
                    phase: BackupPhase::Preparing,
                    start_time: t("2026-11-22T02:00:00Z"),
                    end_time: Some(t("2026-11-22T02:00:01.5Z")),
                },
                PhaseRecord {
                    phase: BackupPhase::Snapshotting,
                    start_time: t("2026-11-22T02:00:01.5Z"),
                    end_time: None,
                },
            ],
            hooks: vec![HookResult {
                hook: "flush".into(),
                stage: "preSnapshot".into(),
                exit_code: Some(3),
                output: "disk busy\nretry later".into(),
                duration_ms: 40,
                succeeded: false,
            }],
            disks: vec![RunDisk {
                name: "vdb".into(),
                source: "/dev/vg/data".into(),
                format: "raw".into(),
                virtual_size: 64 << 20,
                export_file: "web-1.vdb.qcow2".into(),
                export_bytes: 10 << 20,
                sha256: None,
                full_reason: Some(FullReason::NoBitmapSupport),
            }],
            ..Default::default()
        });
        let text = describe_backup_run(&r);
        assert!(
            text.contains("vdb")
                && text.contains("stored")
                && text.contains("whole (NoBitmapSupport)"),
            "{text}"
        );
        assert!(
            text.contains("Failure:        HookFailed: preSnapshot flush exited 3"),
            "{text}"
        );
        assert!(text.contains("Preparing"), "{text}");
        assert!(
            text.contains(&human_duration(jiff::SignedDuration::from_millis(1500))),
            "{text}"
        );
        assert!(text.contains("running"), "{text}");
        assert!(
            text.contains("preSnapshot flush (failed, exit 3, 40 ms)"),
            "{text}"
        );
        assert!(text.contains("    | retry later"), "{text}");
    }

    #[test]
    fn describe_shows_a_points_memory_state_and_how_long_the_guest_was_paused() {
        let mut r = BackupRun::new("web-2", BackupRunSpec::new("web", "file:///b"));
        r.status = Some(BackupRunStatus {
            phase: BackupPhase::Succeeded,
            memory_state: Some(MemoryFile {
                file: "web-2.memory.state".into(),
                sha256: "0".into(),
                bytes: 101 << 20,
            }),
            paused_seconds: Some(1.233),
            ..Default::default()
        });
        let text = describe_backup_run(&r);
        assert!(
            text.contains("web-2.memory.state (101.0MiB), guest paused 1.233 s"),
            "{text}"
        );
    }
}
