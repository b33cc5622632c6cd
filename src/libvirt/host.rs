//! The libvirt adapter: one connection, every operation as one blocking closure.

use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::bitmaps;
use super::domain_xml::{self, DomainFacts};
use super::error::{LibvirtError, VirtErrorKind};
use super::ffi;
use super::memory_state;

/// The run state of a domain as snapback sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainState {
    Running,
    Paused,
    ShutOff,
    /// Crashed, being shut down, suspended to disk, ...: nothing to back up safely now.
    Other,
}

/// A domain as observed now.
#[derive(Clone, Debug)]
pub struct DomainView {
    pub facts: DomainFacts,
    pub state: DomainState,
    /// The live XML (backing chains, runtime state).
    pub xml: String,
    /// The persistent definition, saved with each backup: what a restore defines again.
    pub inactive_xml: String,
    /// Virtual size of each disk, in the order of `facts.disks`.
    pub sizes: Vec<u64>,
}

/// The state of the domain's backup job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Active {
        done: u64,
        total: u64,
    },
    /// No job runs; the last one completed successfully.
    Completed,
    /// No job runs; the last one failed or was aborted.
    Failed(String),
    /// No job runs and libvirt knows of no completed one.
    None,
}

/// How long a call waits for libvirtd to come back after the connection dropped (a restart
/// of libvirtd, an upgrade): long enough for a restart, short enough that a libvirtd that
/// stays away fails the run as `LibvirtUnavailable` rather than hanging it.
const RECONNECT_WINDOW: Duration = Duration::from_secs(60);

/// The connection, replaced by a new one when libvirtd went away and came back. A running
/// backup job outlives a libvirtd restart (libvirt 9.0 recovers it as the domain's active
/// job on reconnect, and qemu's job never stops), so the run only has to reconnect to go on.
struct Shared {
    uri: String,
    conn: Mutex<Arc<Connect>>,
}

#[derive(Clone)]
pub struct LibvirtHost {
    shared: Arc<Shared>,
    pub uri: String,
}

/// Writes `xml` as the definition a save image carries (`memory_state::rewrite_save_data`),
/// in place: only the header and its data area are read and written.
fn put_definition(file: &Path, xml: &str) -> std::io::Result<()> {
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)?;
    let mut head = vec![0u8; memory_state::SAVE_HEADER_LEN];
    f.read_exact(&mut head)?;
    let len = memory_state::save_data_len(&head).map_err(bad)?;
    head.resize(memory_state::SAVE_HEADER_LEN + len, 0);
    f.read_exact(&mut head[memory_state::SAVE_HEADER_LEN..])?;
    let new = memory_state::rewrite_save_data(&head, xml).map_err(bad)?;
    f.seek(std::io::SeekFrom::Start(0))?;
    f.write_all(&new)?;
    f.sync_all()
}

fn open(uri: &str) -> Result<Connect, LibvirtError> {
    Connect::open(Some(uri)).map_err(|e| {
        let mut err = LibvirtError::from(e);
        err.kind = VirtErrorKind::Unavailable;
        err.message = format!("cannot connect to libvirt at {uri}: {}", err.message);
        err
    })
}

/// Whether the connection still reaches libvirtd. The client only learns that libvirtd went
/// away from a failed call; after one, this is false.
fn alive(conn: &Connect) -> bool {
    conn.is_alive().unwrap_or(false)
}

impl Shared {
    fn current(&self) -> Arc<Connect> {
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A new connection in place of `dead`, waiting up to `RECONNECT_WINDOW` for libvirtd.
    /// Callers that found the same dead connection at once share the one new connection.
    fn reconnect(&self, dead: &Arc<Connect>) -> Result<Arc<Connect>, LibvirtError> {
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&slot, dead) {
            return Ok(slot.clone());
        }
        let deadline = Instant::now() + RECONNECT_WINDOW;
        loop {
            match open(&self.uri) {
                Ok(c) => {
                    tracing::info!(uri = %self.uri, "reconnected to libvirtd");
                    *slot = Arc::new(c);
                    return Ok(slot.clone());
                }
                Err(mut e) if Instant::now() >= deadline => {
                    e.message = format!(
                        "libvirtd went away and did not come back within {}s: {}",
                        RECONNECT_WINDOW.as_secs(),
                        e.message
                    );
                    return Err(e);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// Runs `f` on a live connection. A connection that dropped is replaced first; when it
    /// drops during `f`, `f` runs again on the new one if `retry` (a read, or a change that
    /// is the same when made twice), or else fails `Unavailable`: whether libvirtd made the
    /// change before it went away is unknown, and the engine looks again before going on.
    fn call<T>(
        &self,
        retry: bool,
        f: impl Fn(&Connect) -> Result<T, LibvirtError>,
    ) -> Result<T, LibvirtError> {
        let mut conn = self.current();
        if !alive(&conn) {
            conn = self.reconnect(&conn)?;
        }
        match f(&conn) {
            Err(e) if !alive(&conn) => {
                tracing::warn!(error = %e, "the connection to libvirtd dropped");
                let fresh = self.reconnect(&conn)?;
                if retry {
                    f(&fresh)
                } else {
                    Err(LibvirtError::new(
                        VirtErrorKind::Unavailable,
                        format!("the connection to libvirtd dropped during the call: {e}"),
                    ))
                }
            }
            r => r,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LibvirtError> + Send + 'static,
) -> Result<T, LibvirtError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        LibvirtError::new(
            VirtErrorKind::Other,
            format!("libvirt worker panicked: {e}"),
        )
    })?
}

impl LibvirtHost {
    /// Opens a read-write connection. Fails fast with `Unavailable` when libvirtd is not there.
    pub async fn connect(uri: &str) -> Result<Self, LibvirtError> {
        let u = uri.to_string();
        // libvirt's default error handler prints every error to stderr; errors are returned instead.
        virt::error::clear_error_callback();
        let conn = blocking(move || open(&u)).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                uri: uri.to_string(),
                conn: Mutex::new(Arc::new(conn)),
            }),
            uri: uri.to_string(),
        })
    }

    /// Runs `f` on the connection in a blocking worker; see `Shared::call` for `retry`.
    async fn with_conn<T: Send + 'static>(
        &self,
        retry: bool,
        f: impl Fn(&Connect) -> Result<T, LibvirtError> + Send + 'static,
    ) -> Result<T, LibvirtError> {
        let shared = self.shared.clone();
        blocking(move || shared.call(retry, f)).await
    }

    fn lookup(conn: &Connect, id: &str) -> Result<Domain, LibvirtError> {
        let found = if uuid::Uuid::parse_str(id).is_ok() {
            conn.lookup_domain_by_uuid_string(id)
                .or_else(|_| conn.lookup_domain_by_name(id))
        } else {
            conn.lookup_domain_by_name(id)
        };
        found.map_err(|e| match LibvirtError::from(e) {
            err if err.kind == VirtErrorKind::DomainNotFound => LibvirtError::new(
                VirtErrorKind::DomainNotFound,
                format!("domain '{id}' not found"),
            ),
            err => err,
        })
    }

    /// A read, or a change that is the same when made twice: run again after a reconnect.
    pub(super) async fn with_domain<T: Send + 'static>(
        &self,
        id: &str,
        f: impl Fn(&Domain) -> Result<T, LibvirtError> + Send + 'static,
    ) -> Result<T, LibvirtError> {
        self.on_domain(true, id, f).await
    }

    /// A change that must not be made twice (begin a job, freeze, pause, start...).
    pub(super) async fn with_domain_once<T: Send + 'static>(
        &self,
        id: &str,
        f: impl Fn(&Domain) -> Result<T, LibvirtError> + Send + 'static,
    ) -> Result<T, LibvirtError> {
        self.on_domain(false, id, f).await
    }

    async fn on_domain<T: Send + 'static>(
        &self,
        retry: bool,
        id: &str,
        f: impl Fn(&Domain) -> Result<T, LibvirtError> + Send + 'static,
    ) -> Result<T, LibvirtError> {
        let id = id.to_string();
        self.with_conn(retry, move |conn| {
            let dom = Self::lookup(conn, &id)?;
            f(&dom)
        })
        .await
    }

    /// libvirt and hypervisor versions as "major.minor.micro".
    pub async fn versions(&self) -> Result<(String, String), LibvirtError> {
        self.with_conn(true, |conn| {
            let fmt = |v: u32| format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000);
            Ok((fmt(conn.lib_version()?), fmt(conn.hyp_version()?)))
        })
        .await
    }

    /// Finds a domain by name or UUID and reads its state, XML, disks and disk sizes.
    pub async fn domain(&self, id: &str) -> Result<DomainView, LibvirtError> {
        self.with_domain(id, |dom| {
            use virt::domain::DomainState as S;
            use virt::enumutil::Enum;
            let (state, _) = dom.state()?;
            let state = match state {
                Enum::Known(S::Running) | Enum::Known(S::Blocked) => DomainState::Running,
                Enum::Known(S::Paused) => DomainState::Paused,
                Enum::Known(S::Shutoff) => DomainState::ShutOff,
                _ => DomainState::Other,
            };
            let xml = dom.xml_desc(0)?;
            let inactive_xml = dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)?;
            let facts = domain_xml::parse_domain(&xml)
                .map_err(|e| LibvirtError::new(VirtErrorKind::Other, e.to_string()))?;
            let mut sizes = Vec::with_capacity(facts.disks.len());
            for d in &facts.disks {
                sizes.push(dom.block_info(&d.name, 0)?.capacity);
            }
            Ok(DomainView {
                facts,
                state,
                xml,
                inactive_xml,
                sizes,
            })
        })
        .await
    }

    pub async fn checkpoints(&self, dom: &str) -> Result<Vec<String>, LibvirtError> {
        self.with_domain(dom, |d| Ok(ffi::list_checkpoints(d)?))
            .await
    }

    pub async fn checkpoint_xml(&self, dom: &str, name: &str) -> Result<String, LibvirtError> {
        let name = name.to_string();
        self.with_domain(dom, move |d| Ok(ffi::checkpoint_xml(d, &name, false)?))
            .await
    }

    /// Redefines the checkpoint from its own XML with validation: fails with
    /// `CheckpointInconsistent` when a bitmap is missing or broken (e.g. after a qemu crash).
    pub async fn validate_checkpoint(&self, dom: &str, name: &str) -> Result<(), LibvirtError> {
        let name = name.to_string();
        self.with_domain(dom, move |d| {
            let xml = ffi::checkpoint_xml(d, &name, true)?;
            ffi::checkpoint_redefine(d, &xml, true).map_err(|e| {
                let mut err = LibvirtError::from(e);
                if err.kind == VirtErrorKind::Other && err.message.contains("bitmap") {
                    err.kind = VirtErrorKind::CheckpointInconsistent;
                }
                err
            })
        })
        .await
    }

    /// Deletes a checkpoint and its bitmaps. On a running domain libvirt does both (every
    /// checkpoint's bitmap records on its own, so nothing is lost); when the bitmap is already
    /// gone only the record is dropped. libvirt cannot delete a checkpoint of an inactive
    /// domain, so there the bitmap is removed from each disk's image with qemu-img first, then
    /// the record: dropping only the record would leave a bitmap that QEMU loads and updates
    /// on every later start.
    pub async fn delete_checkpoint(&self, dom: &str, name: &str) -> Result<(), LibvirtError> {
        let name = name.to_string();
        self.with_domain(dom, move |d| {
            if d.is_active()? {
                return match ffi::checkpoint_delete(d, &name, false) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let err = LibvirtError::from(e);
                        if err.kind == VirtErrorKind::CheckpointNotFound {
                            Ok(())
                        } else if err.message.contains("not found in backing chain") {
                            ffi::checkpoint_delete(d, &name, true).map_err(LibvirtError::from)
                        } else {
                            Err(err)
                        }
                    }
                };
            }
            let cp_xml = match ffi::checkpoint_xml(d, &name, false) {
                Ok(x) => x,
                Err(e) => {
                    let err = LibvirtError::from(e);
                    return match err.kind {
                        VirtErrorKind::CheckpointNotFound => Ok(()),
                        _ => Err(err),
                    };
                }
            };
            let disks = domain_xml::checkpoint_disks(&cp_xml)
                .map_err(|e| LibvirtError::new(VirtErrorKind::Other, e.to_string()))?;
            let facts = domain_xml::parse_domain(&d.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)?)
                .map_err(|e| LibvirtError::new(VirtErrorKind::Other, e.to_string()))?;
            for disk in facts.disks.iter().filter(|x| disks.contains(&x.name)) {
                if disk.format() == "qcow2" {
                    bitmaps::remove_image_bitmap(disk.source(), &name)?;
                }
            }
            Ok(ffi::checkpoint_delete(d, &name, true)?)
        })
        .await
    }

    /// Removes a bitmap that has no checkpoint from the image `path` of a domain's disk: over
    /// QMP while QEMU runs (the only way to reach a bitmap libvirt does not know; libvirt then
    /// marks the domain tainted), with qemu-img when it does not.
    pub async fn remove_stray_bitmap(
        &self,
        dom: &str,
        path: &str,
        name: &str,
    ) -> Result<(), LibvirtError> {
        let (path, name) = (path.to_string(), name.to_string());
        self.with_domain_once(dom, move |d| {
            if !d.is_active()? {
                return bitmaps::remove_image_bitmap(&path, &name);
            }
            let blocks = d.qemu_monitor_command(r#"{"execute":"query-block"}"#, 0)?;
            let node = bitmaps::node_of(&blocks, &path).ok_or_else(|| {
                LibvirtError::new(
                    VirtErrorKind::Other,
                    format!("QEMU has no block node for {path}"),
                )
            })?;
            let cmd = serde_json::json!({
                "execute": "block-dirty-bitmap-remove",
                "arguments": {"node": node, "name": name},
            });
            d.qemu_monitor_command(&cmd.to_string(), 0)?;
            Ok(())
        })
        .await
    }

    pub async fn begin_backup_xml(
        &self,
        dom: &str,
        backup_xml: String,
        checkpoint_xml: Option<String>,
    ) -> Result<(), LibvirtError> {
        self.with_domain_once(dom, move |d| {
            Ok(ffi::backup_begin(
                d,
                &backup_xml,
                checkpoint_xml.as_deref(),
            )?)
        })
        .await
    }

    /// The state of the domain's backup job, with progress while it runs.
    pub async fn job(&self, dom: &str) -> Result<JobState, LibvirtError> {
        self.with_domain(dom, |d| {
            if !d.is_active()? {
                return Ok(JobState::None);
            }
            let now = ffi::job_stats(d, false)?;
            if now.job_type != sys::VIR_DOMAIN_JOB_NONE as i32 {
                return Ok(JobState::Active {
                    done: now.data_processed.unwrap_or(0),
                    total: now.data_total.unwrap_or(0),
                });
            }
            let done = ffi::job_stats(d, true)?;
            tracing::debug!(?done, "last completed job");
            Ok(match done.job_type as u32 {
                sys::VIR_DOMAIN_JOB_COMPLETED => JobState::Completed,
                sys::VIR_DOMAIN_JOB_FAILED | sys::VIR_DOMAIN_JOB_CANCELLED => JobState::Failed(
                    done.error_message
                        .unwrap_or_else(|| "backup job failed".into()),
                ),
                _ => JobState::None,
            })
        })
        .await
    }

    pub async fn abort_job(&self, dom: &str) -> Result<(), LibvirtError> {
        self.with_domain_once(dom, |d| Ok(ffi::abort_job(d)?)).await
    }

    /// Freezes the guest's filesystems through the guest agent, bounded by `timeout`.
    pub async fn freeze(&self, dom: &str, timeout: Duration) -> Result<u32, LibvirtError> {
        let secs = timeout.as_secs().clamp(1, i32::MAX as u64) as i32;
        self.with_domain_once(dom, move |d| {
            ffi::agent_set_timeout(d, secs)?;
            Ok(ffi::fs_freeze(d)?)
        })
        .await
    }

    pub async fn thaw(&self, dom: &str) -> Result<u32, LibvirtError> {
        self.with_domain(dom, |d| Ok(ffi::fs_thaw(d)?)).await
    }

    pub async fn suspend(&self, dom: &str) -> Result<(), LibvirtError> {
        self.with_domain_once(dom, |d| Ok(d.suspend()?)).await
    }

    pub async fn resume(&self, dom: &str) -> Result<(), LibvirtError> {
        self.with_domain_once(dom, |d| Ok(d.resume()?)).await
    }

    /// Sends one guest agent command (JSON) and returns the JSON answer.
    pub async fn agent_command(
        &self,
        dom: &str,
        json: String,
        timeout: Duration,
    ) -> Result<String, LibvirtError> {
        let secs = timeout.as_secs().clamp(1, i32::MAX as u64) as i32;
        self.with_domain_once(dom, move |d| Ok(d.qemu_agent_command(&json, secs, 0)?))
            .await
    }

    /// Saves the domain's RAM and device state into `file` (libvirt's save image) and leaves
    /// the domain as it was: a paused domain stays paused, the qemu process goes on. An
    /// external memory-only snapshot without metadata, so no snapshot record is left behind
    /// (see `memory_state`). The file is libvirt's to write; it replaces one already there.
    pub async fn save_memory(&self, dom: &str, file: &Path) -> Result<(), LibvirtError> {
        let file = file.display().to_string();
        self.with_domain_once(dom, move |d| {
            let live = d.xml_desc(0)?;
            let disks = memory_state::all_disk_targets(&live)
                .map_err(|e| LibvirtError::new(VirtErrorKind::Other, e))?;
            let _ = std::fs::remove_file(&file);
            let xml = memory_state::memory_snapshot_xml("snapback-memory", &file, &disks);
            d.create_snapshot_xml(&xml, sys::VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)?;
            Ok(())
        })
        .await
    }

    /// Starts the defined domain `dom` running from a saved state file, on the disks its own
    /// definition names: the file's embedded definition is replaced by the domain's (the file
    /// is rewritten in place; callers give a copy), since libvirt loads a save image only into
    /// the domain it names.
    pub async fn restore_memory(&self, dom: &str, file: &Path) -> Result<(), LibvirtError> {
        let file = file.to_path_buf();
        let id = dom.to_string();
        self.with_conn(false, move |conn| {
            let d = Self::lookup(conn, &id)?;
            let xml = d.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE | sys::VIR_DOMAIN_XML_SECURE)?;
            put_definition(&file, &xml).map_err(|e| {
                LibvirtError::new(
                    VirtErrorKind::Other,
                    format!("cannot prepare {}: {e}", file.display()),
                )
            })?;
            conn.restore_domain_flags(
                &file.display().to_string(),
                None,
                sys::VIR_DOMAIN_SAVE_RUNNING,
            )?;
            Ok(())
        })
        .await
    }

    /// Defines (or redefines) a persistent domain; returns its UUID.
    pub async fn define(&self, xml: String) -> Result<String, LibvirtError> {
        // Defining the same XML twice gives the same domain.
        self.with_conn(true, move |conn| {
            let d = conn.define_domain_xml(&xml)?;
            Ok(d.uuid_string()?)
        })
        .await
    }

    /// Removes a domain's definition, libvirt's checkpoint records of it, and its own firmware
    /// state (UEFI variable store, TPM state). Only a domain a restore defined is undefined,
    /// and a restored domain never shares those files with another (see `restore::steps`);
    /// without the flags libvirt 9.0 refuses to undefine a UEFI domain at all.
    pub async fn undefine(&self, dom: &str) -> Result<(), LibvirtError> {
        self.with_domain_once(dom, |d| {
            Ok(d.undefine_flags(
                sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                    | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                    | sys::VIR_DOMAIN_UNDEFINE_NVRAM
                    | sys::VIR_DOMAIN_UNDEFINE_TPM,
            )?)
        })
        .await
    }

    /// Sets (or with `None` removes) snapback's labels element in the domain's `<metadata>`,
    /// in its persistent definition and, while it runs, its live one: a policy's selector
    /// sees the change at its next look, with no restart.
    pub async fn set_snapback_labels(
        &self,
        dom: &str,
        element: Option<String>,
    ) -> Result<(), LibvirtError> {
        self.with_domain_once(dom, move |d| {
            let mut flags = sys::VIR_DOMAIN_AFFECT_CONFIG;
            if d.is_active()? {
                flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
            }
            Ok(d.set_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                element.as_deref(),
                Some("snapback"),
                Some(super::domain_xml::METADATA_NS),
                flags,
            )?)
        })
        .await
    }

    pub async fn start(&self, dom: &str) -> Result<(), LibvirtError> {
        self.with_domain_once(dom, |d| Ok(d.create()?)).await
    }

    /// Forces the domain off (like pulling the plug). "Not running" is not an error.
    pub async fn destroy(&self, dom: &str) -> Result<(), LibvirtError> {
        self.with_domain(dom, |d| {
            if d.is_active()? {
                d.destroy()?;
            }
            Ok(())
        })
        .await
    }

    /// Asks the guest to shut down (ACPI or agent).
    pub async fn shutdown(&self, dom: &str) -> Result<(), LibvirtError> {
        self.with_domain_once(dom, |d| Ok(d.shutdown()?)).await
    }

    /// Drops libvirt's record of a checkpoint without touching any image.
    pub async fn forget_checkpoint(&self, dom: &str, name: &str) -> Result<(), LibvirtError> {
        let name = name.to_string();
        self.with_domain_once(dom, move |d| Ok(ffi::checkpoint_delete(d, &name, true)?))
            .await
    }

    /// Names of all defined domains, running or not.
    pub async fn domain_names(&self) -> Result<Vec<String>, LibvirtError> {
        self.with_conn(true, |conn| {
            let doms = conn.list_all_domains(0)?;
            let mut names = Vec::with_capacity(doms.len());
            for d in doms {
                names.push(d.name()?);
            }
            Ok(names)
        })
        .await
    }
}
