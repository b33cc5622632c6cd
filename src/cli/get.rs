//! `snapback get backupruns`: a kubectl-like table.

use jiff::Timestamp;

use crate::api::BackupRun;
use crate::api::ConditionType;
use crate::table::table;

fn age(t: Option<Timestamp>) -> String {
    let Some(t) = t else {
        return "<unknown>".into();
    };
    let s = Timestamp::now().duration_since(t).as_secs().max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Renders runs oldest first, like `kubectl get backupruns`.
pub fn backup_runs_table(runs: &[BackupRun]) -> String {
    let mut rows: Vec<[String; 7]> = Vec::new();
    let mut sorted: Vec<&BackupRun> = runs.iter().collect();
    sorted.sort_by_key(|r| r.status.as_ref().and_then(|s| s.start_time));
    for r in sorted {
        let s = r.status.clone().unwrap_or_default();
        let expired = s
            .conditions
            .iter()
            .any(|c| c.type_ == ConditionType::Expired.as_str() && c.status == "True");
        let phase = match (&s.failure, s.phase) {
            _ if expired => "Expired".to_string(),
            (Some(f), p) if p.is_terminal() => format!("{p:?} ({})", f.reason),
            (_, p) => format!("{p:?}"),
        };
        rows.push([
            r.metadata.name.clone().unwrap_or_default(),
            r.spec.domain.clone(),
            s.type_
                .map(|t| format!("{t:?}"))
                .unwrap_or_else(|| "-".into()),
            phase,
            s.size.clone().unwrap_or_else(|| "-".into()),
            s.duration.clone().unwrap_or_else(|| "-".into()),
            age(s.start_time),
        ]);
    }
    table(
        ["NAME", "DOMAIN", "TYPE", "PHASE", "SIZE", "DURATION", "AGE"],
        rows,
    )
}
