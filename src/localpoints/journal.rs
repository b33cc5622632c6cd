//! What a local-point operation is in the middle of, written to the state dir before it
//! touches the guest, so a run killed there is finished by the next one for the domain: a
//! guest left frozen is thawed, a half-taken point is deleted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::FailureReason;
use crate::error::StepError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Op {
    Take,
    Revert,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub op: Op,
    pub point: String,
    /// The guest may be frozen: by the take's freeze, or by a revert to a quiesced point.
    pub may_be_frozen: bool,
    /// The checkpoints a revert dropped: recorded with the domain again after the revert,
    /// which brings back the point's definition and so loses the record made before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<String>,
}

fn path(state: &Path, uuid: &str) -> PathBuf {
    state.join("localpoints").join(format!("{uuid}.json"))
}

fn io(e: std::io::Error, what: &str) -> StepError {
    StepError::new(FailureReason::Internal, format!("{what}: {e}"))
}

/// Writes the entry durably (temp file, fsync, rename) before the guest is touched.
pub fn write(state: &Path, uuid: &str, e: &Entry) -> Result<(), StepError> {
    let p = path(state, uuid);
    let dir = p.parent().expect("the journal has a directory");
    std::fs::create_dir_all(dir).map_err(|e| io(e, "cannot create the local points journal"))?;
    let tmp = p.with_extension("json.tmp");
    let text = serde_json::to_vec(e).expect("an entry serializes");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(e, "journal"))?;
        f.write_all(&text).map_err(|e| io(e, "journal"))?;
        f.sync_all().map_err(|e| io(e, "journal"))?;
    }
    std::fs::rename(&tmp, &p).map_err(|e| io(e, "journal"))
}

pub fn read(state: &Path, uuid: &str) -> Result<Option<Entry>, StepError> {
    match std::fs::read(path(state, uuid)) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            StepError::new(
                FailureReason::Internal,
                format!("the local points journal of {uuid} is unreadable: {e}"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(e, "journal")),
    }
}

pub fn clear(state: &Path, uuid: &str) -> Result<(), StepError> {
    match std::fs::remove_file(path(state, uuid)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e, "journal")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_until_cleared() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path(), "u").unwrap(), None);
        let e = Entry {
            op: Op::Take,
            point: "snapback-x".into(),
            may_be_frozen: true,
            dropped: vec![],
        };
        write(d.path(), "u", &e).unwrap();
        assert_eq!(read(d.path(), "u").unwrap(), Some(e));
        clear(d.path(), "u").unwrap();
        assert_eq!(read(d.path(), "u").unwrap(), None);
        clear(d.path(), "u").unwrap();
    }
}
