//! Runs duplicity as a child process: argv vector, secrets in its environment, progress and
//! errors read from `--log-fd`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use super::argv::{self, Action, TargetConfig};
use super::log::{classify, LogParser, Transfer};
use crate::api::FailureReason;

/// The descriptor number duplicity sees its log pipe as.
const LOG_FD: i32 = 3;

#[derive(Debug, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct DuplicityError {
    pub reason: FailureReason,
    pub message: String,
}

impl DuplicityError {
    fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// What a successful call printed.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: String,
    /// Texts of the log messages (statistics, notices).
    pub notices: Vec<String>,
    /// Every non-error log message, for callers that read machine-readable parts.
    pub messages: Vec<super::log::LogMessage>,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // O_CLOEXEC: neither end leaks into other children; the child gets a dup2'ed copy.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Keeps the tail of a stream for error messages without holding all of it.
fn keep_tail(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = s.len() - max;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s.drain(..cut);
    }
}

/// Runs one duplicity action to completion. `on_progress` sees upload progress.
pub async fn run(
    target: &TargetConfig,
    action: &Action,
    mut on_progress: impl FnMut(Transfer) + Send,
) -> Result<Output, DuplicityError> {
    let inv = argv::build(target, action, LOG_FD)
        .map_err(|e| DuplicityError::new(FailureReason::InvalidSpec, e.to_string()))?;
    let (read_end, write_end) =
        pipe().map_err(|e| DuplicityError::new(FailureReason::Internal, e.to_string()))?;

    let mut cmd = Command::new(&inv.argv[0]);
    cmd.args(&inv.argv[1..])
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
        )
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .envs(inv.secret_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Ok(gh) = std::env::var("GNUPGHOME") {
        if !inv.env.iter().any(|(k, _)| k == "GNUPGHOME") {
            cmd.env("GNUPGHOME", gh);
        }
    }
    for k in [
        "TMPDIR",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_SESSION_TOKEN",
    ] {
        if let Ok(v) = std::env::var(k) {
            if !inv.secret_env.iter().any(|(s, _)| s == k) {
                cmd.env(k, v);
            }
        }
    }
    // Dropped (and removed) when this call returns, after duplicity has exited.
    let memory_temp = super::tempdir::memory_temp(target);
    if let Some(t) = &memory_temp {
        cmd.env("TMPDIR", t.path());
    }
    crate::process::die_with_parent(&mut cmd);
    let wfd = std::os::fd::AsRawFd::as_raw_fd(&write_end);
    // SAFETY: between fork and exec only async-signal-safe calls are made (dup2).
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(wfd, LOG_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    tracing::debug!(argv = ?inv.argv, "running duplicity");
    let mut child = cmd.spawn().map_err(|e| {
        DuplicityError::new(
            FailureReason::Internal,
            format!("cannot start duplicity (is it installed?): {e}"),
        )
    })?;
    drop(write_end);

    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s).await;
        s
    });
    let err_task = tokio::spawn(async move {
        let mut buf = String::new();
        let mut chunk = vec![0u8; 8192];
        while let Ok(n) = stderr.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
            keep_tail(&mut buf, 8192);
        }
        buf
    });

    let log_file = tokio::fs::File::from_std(std::fs::File::from(read_end));
    let mut lines = BufReader::new(log_file).lines();
    let mut parser = LogParser::default();
    let mut notices = Vec::new();
    let mut messages = Vec::new();
    let mut errors: Vec<(u32, String)> = Vec::new();
    let mut handle = |m: super::log::LogMessage| {
        if m.is_error() {
            errors.push((m.code, m.text));
        } else {
            if !m.text.is_empty() {
                notices.push(m.text.clone());
            }
            messages.push(m);
        }
    };
    // Progress: how many bytes duplicity has read so far (its source files dominate).
    let pid = child.id();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if let Some(m) = parser.line(&line) {
                        handle(m);
                    }
                }
                _ => break,
            },
            _ = tick.tick() => {
                if let Some(bytes) = pid.and_then(bytes_read) {
                    on_progress(Transfer { bytes, percent: 0 });
                }
            }
        }
    }
    if let Some(m) = parser.finish() {
        handle(m);
    }
    let status = child
        .wait()
        .await
        .map_err(|e| DuplicityError::new(FailureReason::Internal, e.to_string()))?;
    let stdout = out_task.await.unwrap_or_default();
    let stderr = err_task.await.unwrap_or_default();
    if status.success() {
        return Ok(Output {
            stdout,
            notices,
            messages,
        });
    }
    let (code, text) = errors.last().cloned().unwrap_or((0, String::new()));
    let detail = if text.trim().is_empty() {
        last_lines(&stderr, 3)
    } else {
        text
    };
    // stdout too: the paramiko backend asks about an unknown host key there.
    let all = format!("{detail}\n{stderr}\n{stdout}");
    let reason = classify(code, &all);
    Err(DuplicityError::new(
        reason,
        format!(
            "duplicity {} failed ({}): {}",
            inv.argv[1],
            status,
            one_line(&detail)
        ),
    ))
}

/// `rchar` of /proc/PID/io: bytes the process has read.
fn bytes_read(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
}

fn last_lines(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(n)..].join(" | ")
}

fn one_line(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let n = s.chars().count();
    if n > 400 {
        "...".to_string() + &s.chars().skip(n - 400).collect::<String>()
    } else {
        s
    }
}
