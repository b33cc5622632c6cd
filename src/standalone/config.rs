//! Loading BackupTarget and BackupPolicy manifests from a config dir (multi-document YAML
//! files, the same apiVersion and kinds as the CRDs). Errors name the file and the field.

use std::path::{Path, PathBuf};

use crate::api::{BackupPolicy, BackupTarget};
use crate::duplicity::TargetUrl;

#[derive(Debug, Default)]
pub struct Config {
    pub targets: Vec<(PathBuf, BackupTarget)>,
    pub policies: Vec<(PathBuf, BackupPolicy)>,
    pub restores: Vec<(PathBuf, crate::api::RestoreRequest)>,
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

fn err(file: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.display().to_string(),
        message: message.into(),
    }
}

/// Reads every `*.yaml` / `*.yml` file of `dir`, in name order.
pub fn load_dir(dir: &Path) -> Result<Config, ConfigError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, format!("cannot read the config dir: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut cfg = Config::default();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| err(&f, e.to_string()))?;
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).map_err(|e| err(&f, e.to_string()))?;
        for (i, doc) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            let kind = doc
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("")
                .to_string();
            let api = doc.get("apiVersion").and_then(|k| k.as_str()).unwrap_or("");
            let name = doc
                .pointer("/metadata/name")
                .and_then(|k| k.as_str())
                .unwrap_or("")
                .to_string();
            let at = format!("document {} ({kind} {name})", i + 1);
            if api != "snapback.dev/v1alpha1" {
                return Err(err(
                    &f,
                    format!("{at}: apiVersion must be snapback.dev/v1alpha1, not '{api}'"),
                ));
            }
            if name.is_empty() {
                return Err(err(&f, format!("{at}: metadata.name is required")));
            }
            match kind.as_str() {
                "BackupTarget" => {
                    let t: BackupTarget =
                        serde_json::from_value(doc).map_err(|e| err(&f, format!("{at}: {e}")))?;
                    TargetUrl::parse(&t.spec.url)
                        .map_err(|e| err(&f, format!("{at}: spec.url: {e}")))?;
                    cfg.targets.push((f.clone(), t));
                }
                "BackupPolicy" => {
                    let p: BackupPolicy =
                        serde_json::from_value(doc).map_err(|e| err(&f, format!("{at}: {e}")))?;
                    if !p.spec.retention.is_unset() {
                        p.spec
                            .retention
                            .validate()
                            .map_err(|e| err(&f, format!("{at}: spec.{e}")))?;
                    }
                    cfg.policies.push((f.clone(), p));
                }
                "RestoreRequest" => {
                    let r: crate::api::RestoreRequest =
                        serde_json::from_value(doc).map_err(|e| err(&f, format!("{at}: {e}")))?;
                    cfg.restores.push((f.clone(), r));
                }
                other => return Err(err(&f, format!("{at}: unknown kind '{other}'"))),
            }
        }
    }
    for (f, p) in &cfg.policies {
        if !cfg
            .targets
            .iter()
            .any(|(_, t)| t.metadata.name.as_deref() == Some(p.spec.target_ref.as_str()))
        {
            return Err(err(
                f,
                format!(
                    "BackupPolicy {}: spec.targetRef '{}' names no BackupTarget in the config dir",
                    p.metadata.name.clone().unwrap_or_default(),
                    p.spec.target_ref
                ),
            ));
        }
    }
    Ok(cfg)
}

impl Config {
    pub fn target(&self, name: &str) -> Option<&BackupTarget> {
        self.targets
            .iter()
            .map(|(_, t)| t)
            .find(|t| t.metadata.name.as_deref() == Some(name))
    }

    pub fn policy(&self, name: &str) -> Option<&BackupPolicy> {
        self.policies
            .iter()
            .map(|(_, p)| p)
            .find(|p| p.metadata.name.as_deref() == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (n, t) in files {
            std::fs::write(d.path().join(n), t).unwrap();
        }
        d
    }

    const TARGET: &str = "apiVersion: snapback.dev/v1alpha1\nkind: BackupTarget\nmetadata: {name: local}\nspec: {url: 'file:///srv/b'}\n";
    const POLICY: &str = "apiVersion: snapback.dev/v1alpha1\nkind: BackupPolicy\nmetadata: {name: nightly}\nspec:\n  domainSelector: {names: [web]}\n  targetRef: local\n  schedule: '0 2 * * *'\n  retention: {keepDaily: 7}\n";

    #[test]
    fn multi_document_files_load_targets_and_policies() {
        let d = dir_with(&[("all.yaml", &format!("{TARGET}---\n{POLICY}"))]);
        let c = load_dir(d.path()).unwrap();
        assert_eq!(c.targets.len(), 1);
        assert_eq!(c.policies[0].1.spec.retention.keep_daily, Some(7));
        assert!(c.target("local").is_some());
    }

    #[test]
    fn the_shipped_examples_load_in_single_host_mode() {
        let c = load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")).unwrap();
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.policies.len(), 2);
        assert_eq!(c.restores.len(), 3);
        crate::standalone::daemon::check_policies(&c).unwrap();
        let (_, points) = c
            .policies
            .iter()
            .find(|(_, p)| p.spec.local_snapshots.is_some())
            .expect("the local points example");
        let l = points.spec.local_snapshots.as_ref().unwrap();
        crate::driver::local::local_settings(l, points.spec.time_zone.as_deref()).unwrap();
        let (_, files) = c
            .restores
            .iter()
            .find(|(_, r)| r.spec.files.is_some())
            .expect("the files restore example");
        crate::restore::plan::check_destination(&files.spec).unwrap();
        let (_, nightly) = c
            .policies
            .iter()
            .find(|(_, p)| p.spec.local_snapshots.is_none())
            .expect("the nightly example");
        let p = &nightly.spec;
        p.retention.validate().unwrap();
        assert_eq!(p.time_zone.as_deref(), Some("Europe/Berlin"));
        assert!(jiff::tz::TimeZone::get("Europe/Berlin").is_ok());
        crate::units::parse_duration(p.full_cadence.full_every.as_deref().unwrap()).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let bad = POLICY.replace("  targetRef: local\n", "");
        let d = dir_with(&[("t.yaml", TARGET), ("p.yaml", &bad)]);
        let e = load_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("p.yaml") && e.contains("targetRef"), "{e}");

        let neg = POLICY.replace("keepDaily: 7", "keepDaily: -2");
        let d = dir_with(&[("t.yaml", TARGET), ("p.yaml", &neg)]);
        let e = load_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("p.yaml") && e.contains("keepDaily is -2"), "{e}");

        let dangling = POLICY.replace("targetRef: local", "targetRef: nowhere");
        let d = dir_with(&[("t.yaml", TARGET), ("p.yaml", &dangling)]);
        assert!(load_dir(d.path())
            .unwrap_err()
            .to_string()
            .contains("names no BackupTarget"));

        let d = dir_with(&[("t.yaml", &TARGET.replace("file:///srv/b", "nope"))]);
        assert!(load_dir(d.path())
            .unwrap_err()
            .to_string()
            .contains("spec.url"));
    }
}
