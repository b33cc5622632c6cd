//! VMs kept in memory, behaving as libvirt does where the engines depend on it, so cleanup,
//! rollback and resume are tested without a hypervisor: a backup job writes its exports and
//! creates its checkpoint; a checkpoint is deleted with its changes; defining a known name
//! keeps its UUID; freezing needs a guest agent channel. Any operation can be told to fail
//! once, and every call is logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{BackupBegun, BackupRequest, SnapshotInfo, SnapshotRequest, Source};
use crate::api::FirmwareKind;
use crate::libvirt::domain_xml::parse_domain;
use crate::libvirt::{DomainState, DomainView, JobState, LibvirtError, VirtErrorKind};

/// One VM as the fake holds it.
#[derive(Clone, Debug)]
pub struct FakeVm {
    pub uuid: String,
    pub name: String,
    pub definition: String,
    pub state: DomainState,
    pub frozen: bool,
    pub checkpoints: Vec<String>,
    pub job: JobState,
    pub snapshots: Vec<SnapshotInfo>,
    /// What `record_dropped_checkpoints` recorded.
    pub dropped: Vec<String>,
    /// Each snapshot's run state and frozen flag, which a revert brings back.
    pub snapshot_states: BTreeMap<String, (DomainState, bool)>,
}

#[derive(Default)]
struct State {
    vms: BTreeMap<String, FakeVm>,
    /// Operation name → the message of its next (one-time) failure.
    faults: BTreeMap<&'static str, String>,
    /// A begun job stays Active until aborted, instead of completing at once.
    hold_jobs: bool,
    calls: Vec<String>,
    /// Where firmware state files live (see `firmware_home`).
    firmware_root: PathBuf,
    /// The account TPM state must belong to (see `firmware_owner`).
    tpm_owner: Option<(u32, u32)>,
}

#[derive(Default)]
pub struct FakeSource {
    state: Mutex<State>,
}

/// Every disk of a fake VM reports this virtual size.
pub const DISK_SIZE: u64 = 1 << 20;

fn not_found(vm: &str) -> LibvirtError {
    LibvirtError::new(VirtErrorKind::DomainNotFound, format!("no domain '{vm}'"))
}

impl FakeSource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Defines a VM from domain XML (which must carry a UUID) in the given state.
    pub fn add(&self, xml: &str, state: DomainState) -> String {
        let facts = parse_domain(xml).expect("the fake's XML parses");
        let vm = FakeVm {
            uuid: facts.uuid.clone(),
            name: facts.name,
            definition: xml.to_string(),
            state,
            frozen: false,
            checkpoints: Vec::new(),
            job: JobState::None,
            snapshots: Vec::new(),
            dropped: Vec::new(),
            snapshot_states: BTreeMap::new(),
        };
        self.state
            .lock()
            .unwrap()
            .vms
            .insert(facts.uuid.clone(), vm);
        facts.uuid
    }

    /// The VM by name or UUID.
    pub fn vm(&self, id: &str) -> Option<FakeVm> {
        let st = self.state.lock().unwrap();
        st.vms
            .values()
            .find(|v| v.uuid == id || v.name == id)
            .cloned()
    }

    /// Changes a VM in place (a test's setup: frozen by a dead run, a checkpoint left...).
    pub fn edit(&self, id: &str, f: impl FnOnce(&mut FakeVm)) {
        let mut st = self.state.lock().unwrap();
        let vm = st
            .vms
            .values_mut()
            .find(|v| v.uuid == id || v.name == id)
            .expect("the fake VM exists");
        f(vm);
    }

    /// The next call of `op` (a trait method's name) fails with `message`.
    pub fn fail_next(&self, op: &'static str, message: &str) {
        self.state
            .lock()
            .unwrap()
            .faults
            .insert(op, message.to_string());
    }

    /// Puts firmware state files under `dir`.
    pub fn firmware_root(&self, dir: &Path) {
        self.state.lock().unwrap().firmware_root = dir.to_path_buf();
    }

    /// Makes TPM state belong to this uid and gid, as swtpm's own account does on a host.
    pub fn tpm_owner(&self, uid: u32, gid: u32) {
        self.state.lock().unwrap().tpm_owner = Some((uid, gid));
    }

    /// Begun jobs stay Active (a job the process was killed in the middle of).
    pub fn hold_jobs(&self) {
        self.state.lock().unwrap().hold_jobs = true;
    }

    /// The calls made so far, as `op vm`.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Logs the call, fails it if told to, else runs `f` on the state.
    fn op<T>(
        &self,
        op: &'static str,
        vm: &str,
        f: impl FnOnce(&mut State) -> Result<T, LibvirtError>,
    ) -> Result<T, LibvirtError> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("{op} {vm}").trim_end().to_string());
        if let Some(m) = st.faults.remove(op) {
            return Err(LibvirtError::new(VirtErrorKind::Other, m));
        }
        f(&mut st)
    }

    fn with_vm<T>(
        &self,
        op: &'static str,
        vm: &str,
        f: impl FnOnce(&mut FakeVm, bool) -> Result<T, LibvirtError>,
    ) -> Result<T, LibvirtError> {
        self.op(op, vm, |st| {
            let hold = st.hold_jobs;
            let v = st
                .vms
                .values_mut()
                .find(|v| v.uuid == vm || v.name == vm)
                .ok_or_else(|| not_found(vm))?;
            f(v, hold)
        })
    }
}

fn running(v: &FakeVm, what: &str) -> Result<(), LibvirtError> {
    if matches!(v.state, DomainState::Running | DomainState::Paused) {
        Ok(())
    } else {
        Err(LibvirtError::new(
            VirtErrorKind::InvalidState,
            format!("cannot {what}: domain '{}' is not running", v.name),
        ))
    }
}

impl Source for FakeSource {
    fn location(&self) -> String {
        "fake:///".into()
    }

    async fn domain(&self, vm: &str) -> Result<DomainView, LibvirtError> {
        self.with_vm("domain", vm, |v, _| {
            let facts = parse_domain(&v.definition)
                .map_err(|e| LibvirtError::new(VirtErrorKind::Other, e.to_string()))?;
            let sizes = vec![DISK_SIZE; facts.disks.len()];
            Ok(DomainView {
                facts,
                state: v.state,
                xml: v.definition.clone(),
                inactive_xml: v.definition.clone(),
                sizes,
            })
        })
    }

    async fn domain_names(&self) -> Result<Vec<String>, LibvirtError> {
        self.op("domain_names", "", |st| {
            Ok(st.vms.values().map(|v| v.name.clone()).collect())
        })
    }

    async fn checkpoints(&self, vm: &str) -> Result<Vec<String>, LibvirtError> {
        self.with_vm("checkpoints", vm, |v, _| Ok(v.checkpoints.clone()))
    }

    async fn checkpoint_xml(&self, vm: &str, name: &str) -> Result<String, LibvirtError> {
        self.with_vm("checkpoint_xml", vm, |v, _| {
            if v.checkpoints.iter().any(|c| c == name) {
                Ok(format!(
                    "<domaincheckpoint><name>{name}</name></domaincheckpoint>"
                ))
            } else {
                Err(LibvirtError::new(
                    VirtErrorKind::CheckpointNotFound,
                    format!("no checkpoint {name}"),
                ))
            }
        })
    }

    async fn validate_checkpoint(&self, vm: &str, name: &str) -> Result<(), LibvirtError> {
        self.checkpoint_xml(vm, name).await.map(|_| ())
    }

    async fn delete_checkpoint(&self, vm: &str, name: &str) -> Result<(), LibvirtError> {
        self.with_vm("delete_checkpoint", vm, |v, _| {
            v.checkpoints.retain(|c| c != name);
            Ok(())
        })
    }

    async fn forget_checkpoint(&self, vm: &str, name: &str) -> Result<(), LibvirtError> {
        self.with_vm("forget_checkpoint", vm, |v, _| {
            v.checkpoints.retain(|c| c != name);
            Ok(())
        })
    }

    async fn remove_stray_bitmap(
        &self,
        vm: &str,
        _disk_path: &str,
        _bitmap: &str,
    ) -> Result<(), LibvirtError> {
        self.with_vm("remove_stray_bitmap", vm, |_, _| Ok(()))
    }

    /// Writes a small export per disk and creates the checkpoint, as a push-mode job would.
    async fn begin_backup(
        &self,
        vm: &str,
        req: &BackupRequest,
    ) -> Result<BackupBegun, LibvirtError> {
        self.with_vm("begin_backup", vm, |v, hold| {
            running(v, "back up")?;
            if matches!(v.job, JobState::Active { .. }) {
                return Err(LibvirtError::new(
                    VirtErrorKind::InvalidState,
                    "a backup job is already running",
                ));
            }
            for e in &req.exports {
                write_export(&e.file, &e.disk)?;
            }
            v.checkpoints.extend(req.checkpoint.clone());
            v.job = if hold {
                JobState::Active {
                    done: 0,
                    total: DISK_SIZE,
                }
            } else {
                JobState::Completed
            };
            Ok(BackupBegun {
                checkpoint: req.checkpoint.clone(),
            })
        })
    }

    async fn job(&self, vm: &str) -> Result<JobState, LibvirtError> {
        self.with_vm("job", vm, |v, _| Ok(v.job.clone()))
    }

    async fn abort_job(&self, vm: &str) -> Result<(), LibvirtError> {
        self.with_vm("abort_job", vm, |v, _| {
            v.job = JobState::Failed("aborted".into());
            Ok(())
        })
    }

    async fn freeze(&self, vm: &str, _timeout: Duration) -> Result<u32, LibvirtError> {
        self.with_vm("freeze", vm, |v, _| {
            running(v, "freeze")?;
            let facts = parse_domain(&v.definition)
                .map_err(|e| LibvirtError::new(VirtErrorKind::Other, e.to_string()))?;
            if !facts.has_agent_channel {
                return Err(LibvirtError::new(
                    VirtErrorKind::AgentUnavailable,
                    "no guest agent channel",
                ));
            }
            v.frozen = true;
            Ok(1)
        })
    }

    async fn thaw(&self, vm: &str) -> Result<u32, LibvirtError> {
        self.with_vm("thaw", vm, |v, _| {
            let n = u32::from(v.frozen);
            v.frozen = false;
            Ok(n)
        })
    }

    async fn suspend(&self, vm: &str) -> Result<(), LibvirtError> {
        self.with_vm("suspend", vm, |v, _| {
            running(v, "suspend")?;
            v.state = DomainState::Paused;
            Ok(())
        })
    }

    async fn resume(&self, vm: &str) -> Result<(), LibvirtError> {
        self.with_vm("resume", vm, |v, _| {
            if v.state != DomainState::Paused {
                return Err(LibvirtError::new(
                    VirtErrorKind::InvalidState,
                    "domain is not paused",
                ));
            }
            v.state = DomainState::Running;
            Ok(())
        })
    }

    async fn agent_command(
        &self,
        vm: &str,
        _json: String,
        _timeout: Duration,
    ) -> Result<String, LibvirtError> {
        self.with_vm("agent_command", vm, |_, _| {
            Err(LibvirtError::new(
                VirtErrorKind::AgentUnavailable,
                "the fake has no guest",
            ))
        })
    }

    /// Firmware state lives under the fake's `firmware_root` (a test's temp dir), named as
    /// libvirt names it.
    fn firmware_state(&self, vm: &DomainView) -> Vec<(FirmwareKind, PathBuf)> {
        let fw = &vm.facts.firmware;
        let nvram = fw.efi.then(|| {
            let path = fw.nvram.as_ref().map(PathBuf::from);
            let home = self.firmware_home(FirmwareKind::Nvram, &vm.facts.name, &vm.facts.uuid);
            (FirmwareKind::Nvram, path.unwrap_or(home))
        });
        let tpm = fw.tpm_emulator.then(|| {
            let home = self.firmware_home(FirmwareKind::TpmState, &vm.facts.name, &vm.facts.uuid);
            (FirmwareKind::TpmState, home)
        });
        nvram.into_iter().chain(tpm).collect()
    }

    fn firmware_home(&self, kind: FirmwareKind, name: &str, uuid: &str) -> PathBuf {
        let root = self.state.lock().unwrap().firmware_root.clone();
        match kind {
            FirmwareKind::Nvram => root.join("nvram").join(format!("{name}_VARS.fd")),
            FirmwareKind::TpmState => root.join("swtpm").join(uuid).join("tpm2-00.permall"),
        }
    }

    fn firmware_owner(&self, kind: FirmwareKind) -> Option<(u32, u32)> {
        let owner = self.state.lock().unwrap().tpm_owner;
        owner.filter(|_| kind == FirmwareKind::TpmState)
    }

    /// A known name keeps its UUID and run state, as a libvirt redefinition does.
    async fn define(&self, definition: String) -> Result<String, LibvirtError> {
        self.op("define", "", |st| {
            let facts = parse_domain(&definition)
                .map_err(|e| LibvirtError::new(VirtErrorKind::Other, e.to_string()))?;
            if let Some(v) = st.vms.values_mut().find(|v| v.name == facts.name) {
                v.definition = definition;
                return Ok(v.uuid.clone());
            }
            let uuid = if facts.uuid.is_empty() {
                uuid::Uuid::new_v4().to_string()
            } else {
                facts.uuid.clone()
            };
            st.vms.insert(
                uuid.clone(),
                FakeVm {
                    uuid: uuid.clone(),
                    name: facts.name,
                    definition,
                    state: DomainState::ShutOff,
                    frozen: false,
                    checkpoints: Vec::new(),
                    job: JobState::None,
                    snapshots: Vec::new(),
                    dropped: Vec::new(),
                    snapshot_states: BTreeMap::new(),
                },
            );
            Ok(uuid)
        })
    }

    async fn undefine(&self, vm: &str) -> Result<(), LibvirtError> {
        self.op("undefine", vm, |st| {
            let uuid = st
                .vms
                .values()
                .find(|v| v.uuid == vm || v.name == vm)
                .map(|v| v.uuid.clone())
                .ok_or_else(|| not_found(vm))?;
            st.vms.remove(&uuid);
            Ok(())
        })
    }

    fn saves_memory(&self) -> bool {
        true
    }

    /// Writes a small state file. As libvirt, it saves only once no backup job runs (libvirt
    /// queues the save behind the job), and leaves a paused VM paused.
    async fn save_memory(&self, vm: &str, file: &Path) -> Result<(), LibvirtError> {
        self.with_vm("save_memory", vm, |v, _| {
            running(v, "save the memory of")?;
            if matches!(v.job, JobState::Active { .. }) {
                return Err(LibvirtError::new(
                    VirtErrorKind::InvalidState,
                    "cannot acquire state change lock: a backup job is running",
                ));
            }
            std::fs::write(file, format!("memory of {}\n", v.name))
                .map_err(|e| LibvirtError::new(VirtErrorKind::Other, e.to_string()))
        })
    }

    async fn restore_memory(&self, vm: &str, file: &Path) -> Result<(), LibvirtError> {
        self.with_vm("restore_memory", vm, |v, _| {
            if v.state != DomainState::ShutOff {
                return Err(LibvirtError::new(
                    VirtErrorKind::InvalidState,
                    "domain is already running",
                ));
            }
            std::fs::read(file).map_err(|e| {
                LibvirtError::new(VirtErrorKind::Other, format!("{}: {e}", file.display()))
            })?;
            v.state = DomainState::Running;
            Ok(())
        })
    }

    async fn start(&self, vm: &str) -> Result<(), LibvirtError> {
        self.with_vm("start", vm, |v, _| {
            if v.state != DomainState::ShutOff {
                return Err(LibvirtError::new(
                    VirtErrorKind::InvalidState,
                    "domain is already running",
                ));
            }
            v.state = DomainState::Running;
            Ok(())
        })
    }

    async fn shutdown(&self, vm: &str) -> Result<(), LibvirtError> {
        self.with_vm("shutdown", vm, |v, _| {
            running(v, "shut down")?;
            v.state = DomainState::ShutOff;
            v.frozen = false;
            Ok(())
        })
    }

    async fn destroy(&self, vm: &str) -> Result<(), LibvirtError> {
        self.with_vm("destroy", vm, |v, _| {
            v.state = DomainState::ShutOff;
            v.frozen = false;
            v.job = JobState::None;
            Ok(())
        })
    }

    async fn snapshots(&self, vm: &str) -> Result<Vec<SnapshotInfo>, LibvirtError> {
        self.with_vm("snapshots", vm, |v, _| Ok(v.snapshots.clone()))
    }

    /// As libvirt: a name that exists is refused; a running VM's snapshot has its memory.
    async fn create_snapshot(&self, vm: &str, req: &SnapshotRequest) -> Result<(), LibvirtError> {
        self.with_vm("create_snapshot", vm, |v, _| {
            if v.snapshots.iter().any(|s| s.name == req.name) {
                return Err(LibvirtError::new(
                    VirtErrorKind::Other,
                    format!("domain snapshot {} already exists", req.name),
                ));
            }
            let on = matches!(v.state, DomainState::Running | DomainState::Paused);
            if on && !req.memory {
                return Err(LibvirtError::new(
                    VirtErrorKind::Other,
                    "active qemu domains require external disk snapshots",
                ));
            }
            v.snapshots.push(SnapshotInfo {
                name: req.name.clone(),
                description: req.description.clone(),
                created_secs: jiff::Timestamp::now().as_second(),
                memory: req.memory,
                internal: true,
            });
            v.snapshot_states
                .insert(req.name.clone(), (v.state, v.frozen));
            Ok(())
        })
    }

    async fn describe_snapshot(
        &self,
        vm: &str,
        name: &str,
        description: &str,
    ) -> Result<(), LibvirtError> {
        self.with_vm("describe_snapshot", vm, |v, _| {
            let s = v
                .snapshots
                .iter_mut()
                .find(|s| s.name == name)
                .ok_or_else(|| {
                    LibvirtError::new(VirtErrorKind::Other, format!("no snapshot '{name}'"))
                })?;
            s.description = description.to_string();
            Ok(())
        })
    }

    async fn delete_snapshot(&self, vm: &str, name: &str) -> Result<(), LibvirtError> {
        self.with_vm("delete_snapshot", vm, |v, _| {
            v.snapshots.retain(|s| s.name != name);
            v.snapshot_states.remove(name);
            Ok(())
        })
    }

    /// As QEMU 7.2 does: a revert while any checkpoint exists kills the VM and leaves every
    /// checkpoint inconsistent. Otherwise the VM's run state and frozen flag come back.
    async fn revert_snapshot(&self, vm: &str, name: &str) -> Result<(), LibvirtError> {
        self.with_vm("revert_snapshot", vm, |v, _| {
            let Some(&(state, frozen)) = v.snapshot_states.get(name) else {
                return Err(LibvirtError::new(
                    VirtErrorKind::Other,
                    format!("no snapshot '{name}'"),
                ));
            };
            if !v.checkpoints.is_empty() {
                v.state = DomainState::ShutOff;
                v.frozen = false;
                return Err(LibvirtError::new(
                    VirtErrorKind::Other,
                    "internal error: Device has active dirty bitmaps",
                ));
            }
            v.state = state;
            v.frozen = frozen;
            Ok(())
        })
    }

    async fn record_dropped_checkpoints(
        &self,
        vm: &str,
        names: &[String],
    ) -> Result<(), LibvirtError> {
        self.with_vm("record_dropped_checkpoints", vm, |v, _| {
            for n in names {
                if !v.dropped.contains(n) {
                    v.dropped.push(n.clone());
                }
            }
            Ok(())
        })
    }

    async fn dropped_checkpoints(&self, vm: &str) -> Result<Vec<String>, LibvirtError> {
        self.with_vm("dropped_checkpoints", vm, |v, _| Ok(v.dropped.clone()))
    }
}

/// A qcow2-looking export file; its content does not matter to the engines' checks.
fn write_export(path: &Path, disk: &str) -> Result<(), LibvirtError> {
    std::fs::write(path, format!("fake export of {disk}\n")).map_err(|e| {
        LibvirtError::new(
            VirtErrorKind::Other,
            format!("cannot write {}: {e}", path.display()),
        )
    })
}
