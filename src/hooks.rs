//! Runs hooks: argv vectors on the host (child process) or in the guest (guest-exec).

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use crate::api::{Hook, HookLocation, HookResult, Hooks};
use crate::source::Source;

/// When a hook list runs. Backups run the snapshot stages, restores the recovery stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookStage {
    PreSnapshot,
    OnSnapshot,
    PostSnapshot,
    PreRecovery,
    EndRecovery,
    PostRecovery,
}

impl HookStage {
    /// The name in specs, status (`hooks[].stage`) and the hook's `SNAPBACK_STAGE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreSnapshot => "preSnapshot",
            Self::OnSnapshot => "onSnapshot",
            Self::PostSnapshot => "postSnapshot",
            Self::PreRecovery => "preRecovery",
            Self::EndRecovery => "endRecovery",
            Self::PostRecovery => "postRecovery",
        }
    }

    /// The hooks a spec lists for this stage.
    pub fn of(self, hooks: &Hooks) -> &[Hook] {
        match self {
            Self::PreSnapshot => &hooks.pre_snapshot,
            Self::OnSnapshot => &hooks.on_snapshot,
            Self::PostSnapshot => &hooks.post_snapshot,
            Self::PreRecovery => &hooks.pre_recovery,
            Self::EndRecovery => &hooks.end_recovery,
            Self::PostRecovery => &hooks.post_recovery,
        }
    }
}

/// The most hook output kept in status.
pub const OUTPUT_LIMIT: usize = 2048;

/// Truncates output to the limit, keeping the end (where errors usually are).
pub fn truncate_output(s: &str) -> String {
    if s.len() <= OUTPUT_LIMIT {
        return s.to_string();
    }
    let mut cut = s.len() - OUTPUT_LIMIT;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    format!("...[truncated]...{}", &s[cut..])
}

/// Context passed to hooks as environment variables.
pub struct HookEnv<'a> {
    pub stage: HookStage,
    pub domain: &'a str,
    pub run: &'a str,
    pub extra: Vec<(String, String)>,
}

pub async fn run_hook<S: Source>(source: &S, hook: &Hook, env: &HookEnv<'_>) -> HookResult {
    let started = Instant::now();
    let timeout = Duration::from_secs(hook.timeout_seconds.max(1) as u64);
    let (exit_code, output, ok) = match hook.run_in {
        HookLocation::Host => run_on_host(hook, env, timeout).await,
        HookLocation::Guest => run_in_guest(source, hook, env.domain, timeout).await,
    };
    HookResult {
        hook: hook.display_name(),
        stage: env.stage.as_str().to_string(),
        exit_code,
        output: truncate_output(&output),
        duration_ms: started.elapsed().as_millis() as u64,
        succeeded: ok,
    }
}

async fn run_on_host(
    hook: &Hook,
    env: &HookEnv<'_>,
    timeout: Duration,
) -> (Option<i32>, String, bool) {
    let Some((prog, args)) = hook.command.split_first() else {
        return (None, "empty command".into(), false);
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .env("SNAPBACK_STAGE", env.stage.as_str())
        .env("SNAPBACK_DOMAIN", env.domain)
        .env("SNAPBACK_RUN", env.run)
        .envs(env.extra.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    crate::process::die_with_parent(&mut cmd);
    let child = match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(r) => r,
        Err(_) => {
            return (
                None,
                format!("timed out after {}s", timeout.as_secs()),
                false,
            )
        }
    };
    match child {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.code(), text, out.status.success())
        }
        Err(e) => (None, format!("cannot start '{prog}': {e}"), false),
    }
}

async fn run_in_guest<S: Source>(
    source: &S,
    hook: &Hook,
    domain: &str,
    timeout: Duration,
) -> (Option<i32>, String, bool) {
    let Some((prog, args)) = hook.command.split_first() else {
        return (None, "empty command".into(), false);
    };
    let deadline = Instant::now() + timeout;
    let cmd = json!({"execute": "guest-exec", "arguments": {"path": prog, "arg": args, "capture-output": true}});
    let started = match source.agent_command(domain, cmd.to_string(), timeout).await {
        Ok(s) => s,
        Err(e) => return (None, format!("guest agent: {e}"), false),
    };
    let Some(pid) = serde_json::from_str::<serde_json::Value>(&started)
        .ok()
        .and_then(|v| v["return"]["pid"].as_i64())
    else {
        return (
            None,
            format!("unexpected guest-exec answer: {started}"),
            false,
        );
    };
    loop {
        if Instant::now() >= deadline {
            return (
                None,
                format!("timed out after {}s", timeout.as_secs()),
                false,
            );
        }
        let q = json!({"execute": "guest-exec-status", "arguments": {"pid": pid}});
        let left = deadline.saturating_duration_since(Instant::now());
        let ans = match source
            .agent_command(domain, q.to_string(), left.max(Duration::from_secs(1)))
            .await
        {
            Ok(a) => a,
            Err(e) => return (None, format!("guest agent: {e}"), false),
        };
        let v: serde_json::Value = serde_json::from_str(&ans).unwrap_or_default();
        let r = &v["return"];
        if r["exited"].as_bool() == Some(true) {
            let dec = |k: &str| {
                r[k].as_str()
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            };
            let code = r["exitcode"].as_i64().map(|c| c as i32);
            return (code, dec("out-data") + &dec("err-data"), code == Some(0));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_output_keeps_its_end_and_is_bounded() {
        let s = "x".repeat(5000) + "the error";
        let t = truncate_output(&s);
        assert!(t.len() < OUTPUT_LIMIT + 40);
        assert!(t.ends_with("the error"));
        assert_eq!(truncate_output("short"), "short");
    }

    #[test]
    fn each_stage_picks_its_own_list_and_keeps_its_spec_name() {
        let hook = |n: &str| Hook {
            name: Some(n.into()),
            command: vec!["true".into()],
            run_in: HookLocation::Host,
            timeout_seconds: 1,
            on_error: Default::default(),
        };
        let hooks = Hooks {
            pre_snapshot: vec![hook("a")],
            on_snapshot: vec![hook("b")],
            post_snapshot: vec![hook("c")],
            pre_recovery: vec![hook("d")],
            end_recovery: vec![hook("e")],
            post_recovery: vec![hook("f")],
        };
        let stages = [
            HookStage::PreSnapshot,
            HookStage::OnSnapshot,
            HookStage::PostSnapshot,
            HookStage::PreRecovery,
            HookStage::EndRecovery,
            HookStage::PostRecovery,
        ];
        let picked: Vec<String> = stages
            .iter()
            .map(|s| s.of(&hooks)[0].display_name())
            .collect();
        assert_eq!(picked, ["a", "b", "c", "d", "e", "f"]);
        // The spec's field names, as serde writes them.
        let yaml = serde_json::to_value(&hooks).unwrap();
        for s in stages {
            assert!(yaml.get(s.as_str()).is_some(), "{}", s.as_str());
        }
    }
}
