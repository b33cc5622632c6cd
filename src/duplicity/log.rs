//! Parsing of duplicity's `--log-fd` stream (pure) and classification of its failures.

use crate::api::FailureReason;

/// One message from the log stream: `LEVEL CODE [control...]` then `. text` lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogMessage {
    pub level: String,
    pub code: u32,
    pub control: Vec<String>,
    /// Further control lines before the text (collection status puts its machine-readable
    /// listing there).
    pub extra: Vec<String>,
    pub text: String,
}

/// Upload progress from an `NOTICE 16` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub bytes: u64,
    pub percent: u32,
}

/// Splits the log stream into messages. Tolerates a trailing partial message.
#[derive(Default)]
pub struct LogParser {
    current: Option<LogMessage>,
}

impl LogParser {
    /// Feeds one line; returns a message when one is complete.
    pub fn line(&mut self, line: &str) -> Option<LogMessage> {
        if let Some(text) = line
            .strip_prefix(". ")
            .or_else(|| (line == ".").then_some(""))
        {
            if let Some(m) = self.current.as_mut() {
                if !m.text.is_empty() {
                    m.text.push('\n');
                }
                m.text.push_str(text);
            }
            return None;
        }
        if line.trim().is_empty() {
            return self.current.take();
        }
        if let Some(m) = self.current.as_mut() {
            if m.text.is_empty() {
                m.extra.push(line.to_string());
                return None;
            }
        }
        let mut parts = line.split_whitespace();
        let level = parts.next().unwrap_or("").to_string();
        let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        let control = parts.map(str::to_string).collect();
        self.current.replace(LogMessage {
            level,
            code,
            control,
            extra: Vec::new(),
            text: String::new(),
        })
    }

    pub fn finish(&mut self) -> Option<LogMessage> {
        self.current.take()
    }
}

impl LogMessage {
    /// `NOTICE 16 changed_bytes elapsed progress eta speed stalled`.
    pub fn transfer(&self) -> Option<Transfer> {
        if self.level != "NOTICE" || self.code != 16 {
            return None;
        }
        let bytes = self.control.first()?.parse().ok()?;
        let percent = self.control.get(2)?.parse().ok()?;
        Some(Transfer { bytes, percent })
    }

    pub fn is_error(&self) -> bool {
        self.level == "ERROR" || self.level == "CRITICAL"
    }
}

/// One backup set on the target, from collection status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSet {
    pub time: jiff::Timestamp,
    pub full: bool,
    /// The time of the full that starts this set's chain.
    pub chain_start: jiff::Timestamp,
}

/// Reads the sets of every chain from collection status's machine-readable lines
/// (`chain-complete` / `chain-no-sig N`, then ` full 20261122T064439Z 1 noenc` / ` inc ...`),
/// oldest first. Orphaned and incomplete sets are not listed there.
pub fn collection_sets(messages: &[LogMessage]) -> Vec<BackupSet> {
    let mut sets = Vec::new();
    for m in messages.iter().filter(|m| m.code == 3) {
        let mut in_chain = false;
        let mut chain_start = None;
        for l in &m.extra {
            if !l.starts_with(' ') {
                // The active chain is `chain-complete`; older ones are `chain-no-sig N` (duplicity
                // keeps signatures only for the active chain) and are just as restorable.
                in_chain = l.trim() == "chain-complete" || l.starts_with("chain-no-sig");
                chain_start = None;
                continue;
            }
            if !in_chain {
                continue;
            }
            let mut f = l.split_whitespace();
            let (Some(kind), Some(t)) = (f.next(), f.next()) else {
                continue;
            };
            let Ok(dt) = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", t) else {
                continue;
            };
            let Ok(time) = dt.to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()) else {
                continue;
            };
            let full = kind == "full";
            if full {
                chain_start = Some(time);
            }
            if let Some(cs) = chain_start {
                sets.push(BackupSet {
                    time,
                    full,
                    chain_start: cs,
                });
            }
        }
    }
    sets.sort_by_key(|s| s.time);
    sets
}

/// Maps a duplicity failure to a reason word. `code` is duplicity's ErrorCode (0 if unknown),
/// `text` the error text.
pub fn classify(code: u32, text: &str) -> FailureReason {
    let t = text.to_ascii_lowercase();
    // Logins and host keys first: duplicity reports them under its generic backend codes.
    if let Some(reason) = classify_login(&t) {
        return reason;
    }
    match code {
        8 => FailureReason::TargetInvalid,                 // bad_url
        10 | 31 | 45 => FailureReason::EncryptionKeyError, // bad_sign_key, gpg_failed, encryption mismatch
        35 => FailureReason::StagingFull,                  // not_enough_freespace (its temp dir)
        53 => FailureReason::TargetFull,                   // backend_no_space
        38 | 50 | 51 | 52 => FailureReason::TargetUnreachable,
        _ if t.contains("no space left") => FailureReason::StagingFull,
        // duplicity checks each volume against the hash its manifest recorded.
        _ if t.contains("hash mismatch") => FailureReason::VerificationFailed,
        _ if t.contains("gpg")
            && (t.contains("bad passphrase")
                || t.contains("decryption failed")
                || t.contains("no secret key")
                || t.contains("public key not found")
                || t.contains("no public key")) =>
        {
            FailureReason::EncryptionKeyError
        }
        _ if t.contains("connection refused")
            || t.contains("could not connect")
            || t.contains("name or service not known")
            || t.contains("timed out")
            || t.contains("nosuchbucket")
            || t.contains("permission denied")
            || t.contains("accessdenied")
            || t.contains("endpointconnectionerror")
            || t.contains("backendexception") =>
        {
            FailureReason::TargetUnreachable
        }
        _ => FailureReason::UploadFailed,
    }
}

/// The login failures of the lftp (FTP) and paramiko (SFTP) backends, from their texts.
fn classify_login(t: &str) -> Option<FailureReason> {
    // paramiko's BadHostKeyException: "Host key for server 'h' does not match: got ..".
    if t.contains("host key for server") && t.contains("does not match") {
        return Some(FailureReason::HostKeyMismatch);
    }
    // duplicity's paramiko backend asks on stdin about a host known_hosts does not hold, and
    // fails on the closed stdin: "The authenticity of host .. can't be established".
    if t.contains("authenticity of host") || t.contains("host key verification for server") {
        return Some(FailureReason::HostKeyUnknown);
    }
    // lftp: "Login failed: 530 Login incorrect."; paramiko: "Authentication failed.".
    if t.contains("login failed") || t.contains("authentication failed") {
        return Some(FailureReason::TargetAuthFailed);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_splits_messages_and_reads_transfer_progress() {
        let mut p = LogParser::default();
        let mut out = vec![];
        for l in [
            "NOTICE 1",
            ". Last full backup date: none",
            "",
            "NOTICE 16 17636352 1 100 0 0 0",
            ". 16.8MB",
            "",
        ] {
            out.extend(p.line(l));
        }
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].text, "Last full backup date: none");
        assert_eq!(
            out[1].transfer(),
            Some(Transfer {
                bytes: 17636352,
                percent: 100
            })
        );
        assert_eq!(out[0].transfer(), None);
    }

    #[test]
    fn parser_returns_a_message_cut_off_at_the_end() {
        let mut p = LogParser::default();
        assert!(p.line("ERROR 38 'BackendException'").is_none());
        assert!(p.line(". connection refused").is_none());
        let m = p.finish().unwrap();
        assert!(m.is_error());
        assert_eq!(m.code, 38);
    }

    #[test]
    fn collection_status_lists_the_sets_of_complete_chains() {
        let mut p = LogParser::default();
        let mut msgs = vec![];
        let text = "INFO 3 \nbackend X\nchain-complete\n full 20261122T064439Z 1 noenc\n inc 20261122T064822Z 1 noenc\nchain-no-sig\n full 20261101T000000Z 1 noenc\nchain-complete\n full 20261123T000000Z 2 enc\n. Collection Status\n\n";
        for l in text.split('\n') {
            msgs.extend(p.line(l));
        }
        let sets = collection_sets(&msgs);
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert_eq!(
            sets.len(),
            4,
            "older chains (chain-no-sig) count too: {sets:?}"
        );
        assert_eq!(
            sets[0],
            BackupSet {
                time: t("2026-11-01T00:00:00Z"),
                full: true,
                chain_start: t("2026-11-01T00:00:00Z")
            }
        );
        assert_eq!(
            sets[1],
            BackupSet {
                time: t("2026-11-22T06:44:39Z"),
                full: true,
                chain_start: t("2026-11-22T06:44:39Z")
            }
        );
        assert_eq!(
            sets[2],
            BackupSet {
                time: t("2026-11-22T06:48:22Z"),
                full: false,
                chain_start: t("2026-11-22T06:44:39Z")
            }
        );
        assert!(sets[3].full);
    }

    #[test]
    fn failures_are_classified_into_reason_words() {
        assert_eq!(classify(38, ""), FailureReason::TargetUnreachable);
        assert_eq!(classify(31, ""), FailureReason::EncryptionKeyError);
        assert_eq!(
            classify(
                30,
                "gpg: decryption failed: Bad session key / gpg bad passphrase"
            ),
            FailureReason::EncryptionKeyError
        );
        assert_eq!(
            classify(30, "OSError: [Errno 28] No space left on device"),
            FailureReason::StagingFull
        );
        assert_eq!(
            classify(
                53,
                "Giving up after 1 attempts. OSError: No space left on device"
            ),
            FailureReason::TargetFull
        );
        assert_eq!(classify(35, ""), FailureReason::StagingFull);
        assert_eq!(
            classify(
                21,
                "Invalid data - SHA1 hash mismatch for file: duplicity-inc.X.to.Y.vol1.difftar"
            ),
            FailureReason::VerificationFailed
        );
        assert_eq!(
            classify(30, "Could not connect to the endpoint URL"),
            FailureReason::TargetUnreachable
        );
        assert_eq!(classify(1, "something odd"), FailureReason::UploadFailed);
    }

    #[test]
    fn login_and_host_key_failures_have_their_own_reasons_whatever_the_code() {
        let mismatch = "BackendException: ssh connection to u@127.0.0.1:2222 failed: Host key for server '127.0.0.1' does not match: got 'AAAA', expected 'BBBB'";
        assert_eq!(classify(23, mismatch), FailureReason::HostKeyMismatch);
        let unknown = "The authenticity of host '[127.0.0.1]:2222' can't be established.\nBackendException: ssh connection to u@127.0.0.1:2222 failed: EOF when reading a line";
        assert_eq!(classify(23, unknown), FailureReason::HostKeyUnknown);
        let ftp = "BackendException: Error running 'lftp -c ..': returned 1\ncd: Login failed: 530 Authentication failed.";
        assert_eq!(classify(50, ftp), FailureReason::TargetAuthFailed);
        assert_eq!(
            classify(23, "ssh connection to u@h failed: Authentication failed."),
            FailureReason::TargetAuthFailed
        );
    }
}
