//! The single-host store: one YAML file per resource under the state dir
//! (`STATE/backupruns/NAME.yaml`). Writes are atomic (temp file + rename), so a crash never
//! leaves a half-written status: the state dir is the journal.

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

use crate::api::BackupRun;
use crate::lifecycle::Journal;

#[derive(Clone, Debug)]
pub struct FileStore {
    root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl FileStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn kind_dir(&self, plural: &str) -> PathBuf {
        self.root.join(plural)
    }

    pub fn path_of(&self, plural: &str, name: &str) -> PathBuf {
        self.kind_dir(plural).join(format!("{name}.yaml"))
    }

    pub fn write<T: Serialize>(&self, plural: &str, name: &str, obj: &T) -> Result<(), StoreError> {
        let dir = self.kind_dir(plural);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = self.path_of(plural, name);
        let text = serde_saphyr::to_string(obj).map_err(|e| StoreError::Format {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let tmp = dir.join(format!(".{name}.yaml.tmp"));
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(())
    }

    pub fn read<T: DeserializeOwned>(&self, plural: &str, name: &str) -> Result<T, StoreError> {
        let path = self.path_of(plural, name);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        serde_saphyr::from_str(&text).map_err(|e| StoreError::Format {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Every stored object of a kind. Unreadable files are reported, not skipped silently.
    pub fn list<T: DeserializeOwned>(&self, plural: &str) -> Result<Vec<T>, StoreError> {
        let dir = self.kind_dir(plural);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.ends_with(".yaml") && !n.starts_with('.'))
            .collect();
        names.sort();
        names
            .iter()
            .map(|n| self.read(plural, n.trim_end_matches(".yaml")))
            .collect()
    }

    pub fn backup_runs(&self) -> Result<Vec<BackupRun>, StoreError> {
        self.list("backupruns")
    }
}

impl Journal<crate::api::RestoreRequest> for FileStore {
    fn save(
        &self,
        req: &crate::api::RestoreRequest,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send {
        let name = req.metadata.name.as_deref().unwrap_or("unnamed");
        let result = self
            .write("restorerequests", name, req)
            .map_err(|e| e.to_string());
        async move { result }
    }
}

impl Journal<BackupRun> for FileStore {
    fn save(
        &self,
        run: &BackupRun,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send {
        let result = self
            .write(
                "backupruns",
                run.metadata.name.as_deref().unwrap_or("unnamed"),
                run,
            )
            .map_err(|e| e.to_string());
        async move { result }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupPhase, BackupRunSpec, BackupRunStatus};

    #[test]
    fn a_saved_run_reads_back_equal() {
        let d = tempfile::tempdir().unwrap();
        let store = FileStore::new(d.path());
        let mut run = BackupRun::new("r1", BackupRunSpec::new("web", "file:///t"));
        run.status = Some(BackupRunStatus {
            phase: BackupPhase::Uploading,
            size_bytes: 42,
            ..Default::default()
        });
        store.write("backupruns", "r1", &run).unwrap();
        let back: BackupRun = store.read("backupruns", "r1").unwrap();
        assert_eq!(back.spec, run.spec);
        assert_eq!(back.status, run.status);
        assert_eq!(store.backup_runs().unwrap().len(), 1);
        assert!(!d.path().join("backupruns/.r1.yaml.tmp").exists());
    }
}
