//! Test harness: real libvirtd + qemu guests, the real `snapback` binary, real duplicity.
//!
//! Each test gets its own domain, disk, state dir and target, and cleans them up on drop.
//! libvirtd must be running (scripts/setup-host.sh starts it); without it the tests fail.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use snapback::api::BackupRun;

pub fn connect_uri() -> String {
    std::env::var("SNAPBACK_TEST_CONNECT").unwrap_or_else(|_| "qemu:///system".into())
}

pub fn guest_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("SNAPBACK_GUEST_DIR").unwrap_or_else(|_| "/var/tmp/snapback-guest".into()),
    )
}

fn root() -> PathBuf {
    let r = PathBuf::from(
        std::env::var("SNAPBACK_TEST_ROOT").unwrap_or_else(|_| "/var/tmp/snapback-tests".into()),
    );
    std::fs::create_dir_all(&r).unwrap();
    r
}

/// Builds the writer guest once (kernel + initramfs) if it is not there yet.
fn ensure_guest_built() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = guest_dir();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/build-guest.sh");
        let st = Command::new("bash")
            .arg(script)
            .arg(&dir)
            .status()
            .expect("run build-guest.sh");
        assert!(st.success(), "building the test guest failed");
    });
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn virsh(args: &[&str]) -> Output {
    let uri = connect_uri();
    let mut all = vec!["-c", uri.as_str()];
    all.extend_from_slice(args);
    run("virsh", &all)
}

pub fn virsh_ok(args: &[&str]) -> String {
    let o = virsh(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "virsh {args:?} failed: {err}{}",
        named_log(&err)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The log libvirt's error names ("Check error log 'FILE' for details", as swtpm's failures
/// say), so that a CI failure shows the cause and not only where to look for it.
fn named_log(err: &str) -> String {
    let Some(file) = err
        .split("error log '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
    else {
        return String::new();
    };
    match std::fs::read_to_string(file) {
        Ok(text) => format!("\n--- {file} ---\n{text}"),
        Err(e) => format!("\n--- {file}: {e}"),
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Options of a test guest.
#[derive(Clone)]
pub struct GuestOpts {
    pub disk_mib: u64,
    /// MiB of random data written into the disk image before boot (allocated data).
    pub prefill_mib: u64,
    /// The region the guest keeps rewriting, in MiB, and where it starts.
    pub write_mib: u64,
    pub write_offset_mib: u64,
    pub agent_channel: bool,
    pub start: bool,
    /// More disks, attached as vdb, vdc ... (the guest leaves them alone): qcow2 files, raw
    /// files (`.raw`) and block devices (`/dev/...`).
    pub extra_disks: Vec<PathBuf>,
    /// The guest's own disk (vda, the one it writes to) is this raw file or block device,
    /// made by the test, instead of a new qcow2 file (`disk_mib` and `prefill_mib` unused).
    pub own_disk: Option<PathBuf>,
    /// A q35 machine booting through OVMF (UEFI, with its own variable store) with an
    /// emulated TPM 2.0 (swtpm), instead of a BIOS `pc`.
    pub uefi_tpm: bool,
    /// More `<devices>` children, as XML.
    pub extra_devices: String,
}

impl Default for GuestOpts {
    fn default() -> Self {
        Self {
            disk_mib: 512,
            prefill_mib: 0,
            write_mib: 8,
            write_offset_mib: 64,
            agent_channel: true,
            start: true,
            extra_disks: Vec::new(),
            uefi_tpm: false,
            own_disk: None,
            extra_devices: String::new(),
        }
    }
}

/// A libvirt domain running the writer guest, removed on drop.
pub struct Guest {
    pub name: String,
    pub dir: PathBuf,
    pub disk: PathBuf,
    pub log: PathBuf,
}

impl Guest {
    pub fn new(prefix: &str, opts: GuestOpts) -> Guest {
        Self::named(&unique(prefix), opts)
    }

    pub fn named(name: &str, opts: GuestOpts) -> Guest {
        ensure_guest_built();
        let dir = root().join(format!("guest-{}", unique("g")));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = opts
            .own_disk
            .clone()
            .unwrap_or_else(|| dir.join("disk.qcow2"));
        let log = dir.join("serial.log");
        if opts.own_disk.is_some() {
            // The test made it.
        } else if opts.prefill_mib > 0 {
            let raw = dir.join("prefill.raw");
            let f = std::fs::File::create(&raw).unwrap();
            f.set_len(opts.disk_mib << 20).unwrap();
            drop(f);
            run_ok(
                "dd",
                &[
                    "if=/dev/urandom",
                    &format!("of={}", raw.display()),
                    "bs=1M",
                    &format!("count={}", opts.prefill_mib),
                    "conv=notrunc",
                    "status=none",
                ],
            );
            run_ok(
                "qemu-img",
                &[
                    "convert",
                    "-O",
                    "qcow2",
                    raw.to_str().unwrap(),
                    disk.to_str().unwrap(),
                ],
            );
            std::fs::remove_file(&raw).unwrap();
        } else {
            run_ok(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    disk.to_str().unwrap(),
                    &format!("{}M", opts.disk_mib),
                ],
            );
        }
        let gd = guest_dir();
        let agent = if opts.agent_channel {
            "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
        } else {
            ""
        };
        let extra: String = opts
            .extra_disks
            .iter()
            .enumerate()
            .map(|(i, p)| disk_element(p, &format!("vd{}", (b'b' + i as u8) as char)))
            .collect();
        // OVMF boots the same kernel and initrd; the variable store's path is libvirt's own.
        let (mib, machine, firmware, features, tpm) = if opts.uefi_tpm {
            (
                256,
                "q35",
                "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'/>",
                "<features><acpi/><apic/></features>",
                "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>",
            )
        } else {
            (192, "pc", "", "", "")
        };
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>{mib}</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type>{firmware}<kernel>{k}</kernel><initrd>{i}</initrd>
    <cmdline>console=ttyS0 quiet snapback.write_mb={wm} snapback.write_offset_mb={wo}</cmdline></os>
  {features}
  <devices>
    {vda}
    {extra}
    <serial type='file'><source path='{l}'/><target port='0'/></serial>
    {agent}
    {tpm}
    {more}
  </devices></domain>",
            name = xml_escape(name),
            k = gd.join("vmlinuz").display(),
            i = gd.join("initrd.gz").display(),
            wm = opts.write_mib,
            wo = opts.write_offset_mib,
            vda = disk_element(&disk, "vda"),
            l = log.display(),
            more = opts.extra_devices,
        );
        let xml_path = dir.join("domain.xml");
        std::fs::write(&xml_path, xml).unwrap();
        virsh_ok(&["define", xml_path.to_str().unwrap()]);
        let g = Guest {
            name: name.to_string(),
            dir,
            disk,
            log,
        };
        if opts.start {
            g.start();
        }
        g
    }

    pub fn start(&self) {
        let _ = std::fs::remove_file(&self.log);
        virsh_ok(&["start", &self.name]);
        self.wait_for_writes(2);
    }

    /// Waits until the guest has written at least `n` blocks since boot.
    pub fn wait_for_writes(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if self.writes() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "guest {} did not start writing; serial log: {}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// How many blocks the guest reports written.
    pub fn writes(&self) -> u64 {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter_map(|l| l.trim().strip_prefix("SNAPBACK-WRITER wrote "))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .max()
            .map_or(0, |n| n + 1)
    }

    pub fn state(&self) -> String {
        virsh_ok(&["domstate", &self.name]).trim().to_string()
    }

    /// The qemu process dies without flushing anything (a crash).
    pub fn kill_qemu(&self) {
        let pid_file = format!("/var/run/libvirt/qemu/{}.pid", self.name);
        let pid = std::fs::read_to_string(&pid_file).expect("qemu pid file");
        run_ok("kill", &["-9", pid.trim()]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.state() != "shut off" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn checkpoints(&self) -> Vec<String> {
        virsh_ok(&["checkpoint-list", &self.name, "--name"])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    pub fn disk_sources(&self) -> Vec<String> {
        virsh_ok(&["domblklist", &self.name])
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
            .collect()
    }

    pub fn job_type(&self) -> String {
        let out = virsh_ok(&["domjobinfo", &self.name]);
        out.lines()
            .find_map(|l| l.strip_prefix("Job type:"))
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&[
            "undefine",
            &self.name,
            "--checkpoints-metadata",
            "--snapshots-metadata",
            "--nvram",
            "--tpm",
        ]);
        let _ = virsh(&[
            "undefine",
            &self.name,
            "--checkpoints-metadata",
            "--snapshots-metadata",
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
}

/// A disk of a test guest: a device node is a raw block disk, a `.raw` file a raw file disk,
/// anything else a qcow2 file.
fn disk_element(p: &Path, dev: &str) -> String {
    let (kind, format, source) = if p.starts_with("/dev") {
        ("block", "raw", "dev")
    } else if p.extension().is_some_and(|e| e == "raw") {
        ("file", "raw", "file")
    } else {
        ("file", "qcow2", "file")
    };
    format!(
        "<disk type='{kind}' device='disk'><driver name='qemu' type='{format}'/><source {source}='{}'/><target dev='{dev}' bus='virtio'/></disk>",
        p.display()
    )
}

pub const MIB: u64 = 1 << 20;

/// A loop device over a sparse file of `mib` MiB, detached when the test ends.
pub struct LoopDevice {
    pub dev: PathBuf,
}

impl LoopDevice {
    pub fn new(file: &Path, mib: u64) -> LoopDevice {
        std::fs::File::create(file)
            .unwrap()
            .set_len(mib * MIB)
            .unwrap();
        let dev = run_ok("losetup", &["-f", "--show", file.to_str().unwrap()]);
        LoopDevice {
            dev: PathBuf::from(dev.trim()),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", self.dev.to_str().unwrap()])
            .status();
    }
}

/// A domain a test made by restoring, removed with its firmware state when the test ends,
/// passed or not.
pub struct Defined(pub String);

impl Drop for Defined {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
        let _ = virsh(&["undefine", &self.0, "--nvram", "--tpm"]);
    }
}

/// A state dir and a file:// target for one test.
pub struct Env {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub target: String,
    pub target_dir: PathBuf,
    pub extra_env: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Env {
        let dir = root().join(unique("env"));
        let state = dir.join("state");
        let target_dir = dir.join("target");
        std::fs::create_dir_all(&state).unwrap();
        Env {
            target: format!("file://{}", target_dir.display()),
            dir,
            state,
            target_dir,
            extra_env: vec![],
        }
    }

    /// Runs `snapback ARGS --state-dir STATE --connect URI`.
    pub fn snapback(&self, args: &[&str]) -> SnapOut {
        self.snapback_with(args, &[])
    }

    /// `snapback` with more environment for this one call.
    pub fn snapback_with(&self, args: &[&str], env: &[(&str, &str)]) -> SnapOut {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapback"));
        cmd.args(args)
            .env("SNAPBACK_STATE_DIR", &self.state)
            .env("SNAPBACK_CONNECT", connect_uri());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = cmd.output().expect("run snapback");
        SnapOut {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// `snapback backup --domain D --target T EXTRA...`
    pub fn backup(&self, domain: &str, extra: &[&str]) -> SnapOut {
        let mut args = vec!["backup", "--domain", domain, "--target", &self.target];
        args.extend_from_slice(extra);
        self.snapback(&args)
    }

    /// `snapback ARGS` killed by SIGKILL at a crash point (`snapback::process::crash_point`).
    pub fn snapback_crash(&self, args: &[&str], point: &str) -> SnapOut {
        let out = self.snapback_with(args, &[("SNAPBACK_CRASH_AT", point)]);
        assert_eq!(
            out.code, -1,
            "{point}: the process must die by SIGKILL there:\n{}",
            out.stderr
        );
        out
    }

    /// `snapback ARGS` in the background, output piped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_snapback"))
            .args(args)
            .env("SNAPBACK_STATE_DIR", &self.state)
            .env("SNAPBACK_CONNECT", connect_uri())
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `snapback verify --domain D --target T EXTRA...` (`--all` for every point).
    pub fn verify(&self, domain: &str, extra: &[&str]) -> SnapOut {
        let mut args = vec!["verify", "--domain", domain, "--target", &self.target];
        args.extend_from_slice(extra);
        self.snapback(&args)
    }

    /// `backup` killed at a crash point.
    pub fn backup_with_crash(&self, domain: &str, extra: &[&str], point: &str) -> SnapOut {
        let mut args = vec!["backup", "--domain", domain, "--target", &self.target];
        args.extend_from_slice(extra);
        self.snapback_crash(&args, point)
    }

    pub fn read_run(&self, name: &str) -> BackupRun {
        let text =
            std::fs::read_to_string(self.state.join("backupruns").join(format!("{name}.yaml")))
                .unwrap_or_else(|e| panic!("run {name} not recorded: {e}"));
        serde_saphyr::from_str(&text).unwrap()
    }

    pub fn read_restore(&self, name: &str) -> snapback::api::RestoreRequest {
        let text = std::fs::read_to_string(
            self.state
                .join("restorerequests")
                .join(format!("{name}.yaml")),
        )
        .unwrap_or_else(|e| panic!("restore {name} not recorded: {e}"));
        serde_saphyr::from_str(&text).unwrap()
    }

    /// `snapback restore` of `domain`'s point at `at` as a new domain `new`, its disks in `dir`.
    pub fn restore_as(&self, domain: &str, at: &str, new: &str, dir: &Path) -> SnapOut {
        self.snapback(&[
            "restore",
            "--domain",
            domain,
            "--target",
            &self.target,
            "--at",
            at,
            "--as",
            new,
            "--storage-dir",
            dir.to_str().unwrap(),
        ])
    }

    /// Every file left in any staging dir.
    pub fn staging_files(&self) -> Vec<PathBuf> {
        let mut out = vec![];
        let mut stack = vec![self.state.join("staging")];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p)
                    } else {
                        out.push(p)
                    }
                }
            }
        }
        out
    }

    /// The duplicity files of one domain's backups (`<target>/<domain dir>`).
    pub fn target_files_of(&self, domain: &str) -> Vec<String> {
        let dir = self
            .target_dir
            .join(snapback::catalog::layout::domain_dir(domain));
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Everything on the target, any domain.
    pub fn target_files(&self) -> Vec<String> {
        std::fs::read_dir(&self.target_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Restores one domain's backups at `time` (or latest) into a fresh dir with duplicity.
    pub fn duplicity_restore(
        &self,
        domain: &str,
        time: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> (bool, PathBuf, String) {
        let out = self.dir.join(unique("restore"));
        let mut args: Vec<String> = vec![
            "restore".into(),
            "--archive-dir".into(),
            self.dir.join("restore-cache").display().to_string(),
        ];
        if let Some(t) = time {
            args.push(format!("--time={t}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!(
            "{}/{}",
            self.target.trim_end_matches('/'),
            snapback::catalog::layout::domain_dir(domain)
        ));
        args.push(out.display().to_string());
        let mut cmd = Command::new("duplicity");
        cmd.args(&args).env("PASSPHRASE", "");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = cmd.output().unwrap();
        (
            o.status.success(),
            out,
            String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout),
        )
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::env::var("SNAPBACK_KEEP_TEST_DIRS").is_err() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub struct SnapOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl SnapOut {
    pub fn name(&self) -> String {
        self.stdout.lines().last().unwrap_or("").trim().to_string()
    }
    pub fn last_err_line(&self) -> String {
        self.stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string()
    }
    #[track_caller]
    pub fn assert_ok(&self) -> String {
        assert_eq!(
            self.code, 0,
            "snapback failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.name()
    }
    #[track_caller]
    pub fn assert_failed_with(&self, reason: &str) -> String {
        assert_ne!(
            self.code, 0,
            "expected failure {reason}, got success:\n{}",
            self.stderr
        );
        let last = self.last_err_line();
        assert!(
            last.starts_with(reason),
            "last stderr line should start with {reason}: {last}\nfull stderr:\n{}",
            self.stderr
        );
        self.name()
    }
}

/// The bitmaps stored in a disk image (readable while QEMU runs).
pub fn image_bitmaps(disk: &Path) -> Vec<String> {
    let json = run_ok(
        "qemu-img",
        &["info", "-U", "--output=json", disk.to_str().unwrap()],
    );
    snapback::libvirt::bitmaps::parse_image_bitmaps(&json).unwrap()
}

/// The promise after every run: the domain runs on its original disks, no block job is
/// active, only the expected checkpoints remain, and staging is empty.
#[track_caller]
pub fn assert_left_clean(g: &Guest, env: &Env, expect_running: bool, checkpoints: &[String]) {
    if expect_running {
        assert_eq!(g.state(), "running", "the domain must be running");
        assert_eq!(g.job_type(), "None", "no job may be left running");
    }
    assert_eq!(
        g.disk_sources(),
        vec![g.disk.display().to_string()],
        "the domain must be on its original disk"
    );
    let mut have = g.checkpoints();
    have.sort();
    let mut want = checkpoints.to_vec();
    want.sort();
    assert_eq!(have, want, "checkpoints left in libvirt");
    assert!(
        env.staging_files().is_empty(),
        "staging must be empty: {:?}",
        env.staging_files()
    );
}

/// The time string duplicity restores a run's backup set at.
pub fn duplicity_time(s: &snapback::api::BackupRunStatus) -> String {
    s.target_time
        .expect("the run records duplicity's backup time")
        .strftime("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}

/// A throwaway GnuPG home with one key without passphrase; returns the fingerprint.
pub fn gpg_home(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let home = dir.to_str().unwrap();
    let st = Command::new("gpg")
        .args([
            "--homedir",
            home,
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ])
        .args([
            "--quick-gen-key",
            "snapback test <test@snapback.invalid>",
            "default",
            "default",
            "never",
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "gpg key generation failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let out = run_ok("gpg", &["--homedir", home, "--list-keys", "--with-colons"]);
    out.lines()
        .find_map(|l| {
            l.strip_prefix("fpr:")
                .map(|r| r.trim_matches(':').to_string())
        })
        .expect("fingerprint")
}

/// Pauses the guest (qemu flushes its caches on stop), copies its disk as the reference of
/// this point, backs it up, and resumes it. Returns (run name, reference image).
pub fn backup_paused(env: &Env, g: &Guest, extra: &[&str]) -> (String, PathBuf) {
    virsh_ok(&["suspend", &g.name]);
    let reference = env.dir.join(unique("ref")).with_extension("qcow2");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-O",
            "qcow2",
            g.disk.to_str().unwrap(),
            reference.to_str().unwrap(),
        ],
    );
    let name = env.backup(&g.name, extra).assert_ok();
    virsh_ok(&["resume", &g.name]);
    (name, reference)
}

/// A fresh config dir for `snapback prune` and `snapback standalone`: the BackupTarget `local`
/// (this env's target) and the BackupPolicy `policy` for `domain` on `schedule`, its spec
/// followed by `more_spec` (indented YAML lines, e.g. `"  retention: {keepLast: 1}\n"`).
pub fn write_config(
    env: &Env,
    policy: &str,
    domain: &str,
    schedule: &str,
    more_spec: &str,
) -> PathBuf {
    let dir = env.dir.join(unique("config"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("target.yaml"),
        format!(
            "apiVersion: snapback.dev/v1alpha1\nkind: BackupTarget\nmetadata:\n  name: local\nspec:\n  url: '{}'\n",
            env.target
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        format!(
            "apiVersion: snapback.dev/v1alpha1\nkind: BackupPolicy\nmetadata:\n  name: {policy}\nspec:\n  domainSelector:\n    names: ['{domain}']\n  targetRef: local\n  schedule: '{schedule}'\n{more_spec}"
        ),
    )
    .unwrap();
    dir
}

/// Restores `domain` as a new domain `DOMAIN-r` into a fresh storage dir (with `extra`
/// arguments such as `--at`), undefines it again, and asserts its disk equals `reference`
/// byte for byte.
pub fn assert_restores_as_new_byte_exact(
    env: &Env,
    domain: &str,
    extra: &[&str],
    reference: &Path,
) {
    let dir = env.dir.join(unique("storage"));
    std::fs::create_dir_all(&dir).unwrap();
    let new = format!("{domain}-r");
    let mut args = vec![
        "restore",
        "--domain",
        domain,
        "--target",
        &env.target,
        "--as",
        &new,
        "--storage-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = env.snapback(&args);
    let _ = virsh(&["undefine", &new]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    run_ok(
        "qemu-img",
        &[
            "compare",
            reference.to_str().unwrap(),
            dir.join(format!("{new}-vda.qcow2")).to_str().unwrap(),
        ],
    );
}

/// A command that scripts/setup-host.sh installs from a registry into the tools folder
/// (`SNAPBACK_TOOLS`, default /var/tmp/snapback-tools), pinned in scripts/pins/.
pub fn test_tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("SNAPBACK_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/snapback-tools"));
    dir.join("bin").join(name)
}

/// moto's S3 server on a free loopback port, stopped on drop.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(test_tool("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (scripts/setup-host.sh installs it)");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        S3Server { child, endpoint }
    }

    pub fn create_bucket(&self, bucket: &str) {
        let code = format!(
            "import boto3; boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='k', aws_secret_access_key='s').create_bucket(Bucket='{bucket}')",
            self.endpoint
        );
        run_ok("/usr/bin/python3", &["-c", &code]);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 64 MiB raw disk image at `path` holding an ext4 filesystem made from `tree`
/// (`mkfs.ext4 -d`, no mount): a data disk for files mode to read.
pub fn ext4_raw_disk(tree: &Path, path: &Path) -> PathBuf {
    run_ok("truncate", &["-s", "64M", path.to_str().unwrap()]);
    run_ok(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            tree.to_str().unwrap(),
            path.to_str().unwrap(),
        ],
    );
    path.to_path_buf()
}

// The run limits (issue 16), for the daemon and the agent alike.

/// A staging budget that holds one of the guests' exports but not two: their allocated
/// data plus the guest writer's region (it may not have written it yet), below twice the
/// smallest.
pub fn budget_for_one(guests: &[Guest]) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let allocs: Vec<u64> = guests
        .iter()
        .map(|g| std::fs::metadata(&g.disk).unwrap().blocks() * 512)
        .collect();
    let budget = allocs.iter().max().unwrap() + (12 << 20);
    assert!(budget < 2 * allocs.iter().min().unwrap(), "{allocs:?}");
    budget
}

/// The run's `Admitted` condition: (status, reason).
pub fn admitted(r: &BackupRun) -> Option<(String, String)> {
    r.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Admitted")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// The most runs of `runs` that were past Pending at one moment, from their recorded phase
/// timings (first phase entered to completion): what the daemon or agent let run at once.
pub fn most_at_once(runs: &[BackupRun]) -> usize {
    let mut edges: Vec<(jiff::Timestamp, i32)> = Vec::new();
    for r in runs {
        let s = r.status.as_ref().unwrap();
        edges.push((s.phases[0].start_time, 1));
        edges.push((s.completion_time.unwrap(), -1));
    }
    // An end sorts before a start at the same instant.
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}
