//! Target URL checks (pure): which duplicity backends snapback accepts, and redaction.

/// A target URL that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUrl {
    raw: String,
    pub scheme: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid target URL '{url}': {why}")]
pub struct UrlError {
    pub url: String,
    pub why: String,
}

/// Backends snapback knows how to drive and test. Others are refused rather than half-supported.
const SCHEMES: &[&str] = &[
    "file", "boto3+s3", "s3", "s3+http", "sftp", "scp", "ftp", "ftps", "rsync",
];

impl TargetUrl {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let err = |why: &str| UrlError {
            url: redact(url),
            why: why.to_string(),
        };
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(err("contains whitespace or control characters"));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(err(
                "expected SCHEME://..., e.g. file:///var/backups or boto3+s3://bucket/prefix",
            ));
        };
        if !SCHEMES.contains(&scheme) {
            return Err(err(&format!(
                "unsupported scheme '{scheme}' (supported: {})",
                SCHEMES.join(", ")
            )));
        }
        if scheme == "file" {
            if !rest.starts_with('/') || rest.len() < 2 {
                return Err(err("a file:// URL needs an absolute path: file:///path"));
            }
        } else {
            let authority = rest.split('/').next().unwrap_or("");
            let host = authority.rsplit('@').next().unwrap_or("");
            if host.is_empty() {
                return Err(err("missing host or bucket"));
            }
            // Refused rather than redacted: the URL is stored in every run's status and in
            // resources, and handed to duplicity in its argv, so a password in it would be
            // kept in all of those. It has its own ways in.
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                if userinfo.contains(':') {
                    return Err(err(
                        "a password in the URL is refused (it would be stored and shown): give it in FTP_PASSWORD, --ftp-password-file or the BackupTarget's password",
                    ));
                }
            }
        }
        Ok(Self {
            raw: url.to_string(),
            scheme: scheme.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// FTP and FTPS: duplicity's lftp backend, which logs in with $FTP_PASSWORD.
    pub fn is_ftp(&self) -> bool {
        matches!(self.scheme.as_str(), "ftp" | "ftps")
    }

    /// SFTP and SCP: duplicity's paramiko backend, which honours `--ssh-options`.
    pub fn is_ssh(&self) -> bool {
        matches!(self.scheme.as_str(), "sftp" | "scp")
    }

    /// The user named in the URL (`scheme://user@host/...`), if any.
    pub fn user(&self) -> Option<&str> {
        let rest = self.raw.split_once("://")?.1;
        let authority = rest.split('/').next()?;
        authority.rsplit_once('@').map(|(u, _)| u)
    }

    pub fn is_s3(&self) -> bool {
        self.scheme.contains("s3")
    }

    /// The local directory of a file:// target.
    pub fn local_path(&self) -> Option<&str> {
        (self.scheme == "file").then(|| &self.raw["file://".len()..])
    }

    /// The URL of a sub-directory (or key prefix) of this target.
    pub fn child(&self, segment: &str) -> TargetUrl {
        TargetUrl {
            raw: format!("{}/{segment}", self.raw.trim_end_matches('/')),
            scheme: self.scheme.clone(),
        }
    }

    /// The URL safe to print: any password in the user-info part replaced.
    pub fn redacted(&self) -> String {
        redact(&self.raw)
    }
}

/// Replaces the password of `scheme://user:password@host/...` with `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match auth.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_supported_backends() {
        for u in [
            "file:///var/b",
            "boto3+s3://bucket/prefix",
            "sftp://u@h:22/p",
            "s3://b",
        ] {
            TargetUrl::parse(u).unwrap();
        }
    }

    #[test]
    fn rejects_malformed_urls_with_a_reason() {
        assert!(TargetUrl::parse("/var/b")
            .unwrap_err()
            .why
            .contains("SCHEME://"));
        assert!(TargetUrl::parse("file://relative").is_err());
        assert!(TargetUrl::parse("gopher://x/y")
            .unwrap_err()
            .why
            .contains("unsupported"));
        assert!(TargetUrl::parse("file:///a b").is_err());
        assert!(TargetUrl::parse("sftp:///p").is_err());
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_being_repeated() {
        for u in [
            "ftp://me:s3cret@h/p",
            "sftp://me:s3cret@h:22/p",
            "ftps://me:@h/p",
        ] {
            let e = TargetUrl::parse(u).unwrap_err();
            assert!(e.why.contains("password in the URL"), "{u}: {e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
        let u = TargetUrl::parse("ftp://backup@h:2121/p").unwrap();
        assert_eq!((u.is_ftp(), u.user()), (true, Some("backup")));
        assert_eq!(TargetUrl::parse("ftps://h/p").unwrap().user(), None);
        assert!(TargetUrl::parse("sftp://u@h/p").unwrap().is_ssh());
    }

    #[test]
    fn child_urls_append_one_segment() {
        let u = TargetUrl::parse("file:///b/").unwrap();
        assert_eq!(u.child("web").as_str(), "file:///b/web");
        assert_eq!(
            TargetUrl::parse("boto3+s3://bk/p")
                .unwrap()
                .child("x")
                .as_str(),
            "boto3+s3://bk/p/x"
        );
    }

    #[test]
    fn redaction_hides_passwords_in_errors_and_status() {
        assert_eq!(redact("sftp://me:s3cret@h/p"), "sftp://me:***@h/p");
        assert_eq!(redact("file:///x"), "file:///x");
        let e = TargetUrl::parse("gopher://me:s3cret@h/p").unwrap_err();
        assert!(!e.to_string().contains("s3cret"));
    }
}
