//! FTP and SFTP targets on real servers on loopback: pyftpdlib (Debian's python3-pyftpdlib)
//! through duplicity's lftp backend, and OpenSSH's sshd through its paramiko backend.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use snapback::api::BackupType;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts on the port (the server is up), or fails after a minute.
fn wait_accepting(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before accepting: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// pyftpdlib serving `root` to one user on a free loopback port, stopped on drop.
struct FtpServer {
    child: Child,
    port: u16,
}

impl FtpServer {
    fn start(root: &Path, user: &str, password: &str) -> FtpServer {
        std::fs::create_dir_all(root).unwrap();
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ftp/server.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args([&port.to_string(), root.to_str().unwrap(), user])
            .env("FTP_SERVER_PASSWORD", password)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 (scripts/setup-host.sh installs python3-pyftpdlib)");
        wait_accepting(port, "the FTP server", &mut child);
        FtpServer { child, port }
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// OpenSSH's sshd on a free loopback port with its own config and host key, letting the
/// current user in with one key only. Stopped on drop.
struct SshServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    user: String,
}

impl SshServer {
    fn start(dir: &Path) -> SshServer {
        std::fs::create_dir_all(dir).unwrap();
        for key in ["host_key", "other_host_key", "client_key"] {
            run_ok(
                "ssh-keygen",
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-f",
                    dir.join(key).to_str().unwrap(),
                ],
            );
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        let port = free_port();
        let config = format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
             Subsystem sftp internal-sftp\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        // sshd's privilege separation directory; Debian makes it only when its service starts.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f", dir.join("sshd_config").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd (scripts/setup-host.sh installs openssh-server)");
        wait_accepting(port, "sshd", &mut child);
        let user = run_ok("id", &["-un"]).trim().to_string();
        SshServer {
            child,
            port,
            dir: dir.to_path_buf(),
            user,
        }
    }

    /// A known_hosts file naming `host_key` (the server's, or another) for this server.
    fn known_hosts(&self, name: &str, host_key: &str) -> PathBuf {
        let public = std::fs::read_to_string(self.dir.join(format!("{host_key}.pub"))).unwrap();
        let mut fields = public.split_whitespace();
        let line = format!(
            "[127.0.0.1]:{} {} {}\n",
            self.port,
            fields.next().unwrap(),
            fields.next().unwrap()
        );
        let path = self.dir.join(name);
        std::fs::write(&path, line).unwrap();
        path
    }

    /// The URL of `path` (absolute) on this server.
    fn url(&self, path: &Path) -> String {
        format!(
            "sftp://{}@127.0.0.1:{}/{}",
            self.user,
            self.port,
            path.display()
        )
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads every process's argv while a test runs, to catch a secret in any of them.
struct ArgvWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(usize, Vec<String>)>,
}

impl ArgvWatch {
    fn start(secret: &str) -> ArgvWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, secret) = (stop.clone(), secret.to_string());
        let thread = std::thread::spawn(move || {
            let mut duplicity_seen = 0;
            let mut leaks = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                for e in std::fs::read_dir("/proc").unwrap().flatten() {
                    let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
                        continue;
                    };
                    let argv = String::from_utf8_lossy(&raw).replace('\0', " ");
                    if argv.contains("duplicity") && argv.contains(" full ") {
                        duplicity_seen += 1;
                    }
                    if argv.contains(&secret) {
                        leaks.push(argv);
                    }
                }
                // Spares the two cores; every duplicity call lasts far longer than this.
                std::thread::sleep(Duration::from_millis(5));
            }
            (duplicity_seen, leaks)
        });
        ArgvWatch { stop, thread }
    }

    /// Stops watching; asserts duplicity was seen and no argv held the secret.
    fn assert_never_leaked(self) {
        self.stop.store(true, Ordering::SeqCst);
        let (seen, leaks) = self.thread.join().unwrap();
        assert!(seen > 0, "the watch never saw duplicity running");
        assert!(leaks.is_empty(), "the secret was in an argv: {leaks:?}");
    }
}

/// No file under the state dir (run statuses, journals, the cache) and no output holds `secret`.
fn assert_secret_nowhere(env: &Env, outs: &[&SnapOut], secret: &str) {
    for o in outs {
        assert!(!o.stdout.contains(secret) && !o.stderr.contains(secret));
    }
    let mut dirs = vec![env.state.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds the secret",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn an_ftp_target_takes_full_and_incremental_backups_restores_byte_exact_and_keeps_its_password_out_of_sight(
) {
    let env0 = Env::new();
    let password = "ftp-pw-3fa9c1e7";
    let server = FtpServer::start(&env0.dir.join("ftp-root"), "backup", password);
    let g = Guest::new("sbt-ftp", GuestOpts::default());
    let mut env = env0;
    env.target = format!("ftp://backup@127.0.0.1:{}/vms", server.port);
    env.target_dir = env.dir.join("ftp-root").join("vms");
    let pw_file = env.dir.join("ftp-password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let pw_arg = ["--ftp-password-file", pw_file.to_str().unwrap()];

    let watch = ArgvWatch::start(password);
    let full_out = env.backup(&g.name, &pw_arg);
    let full = full_out.assert_ok();
    g.wait_for_writes(g.writes() + 3);
    // The incremental takes the password from duplicity's own variable instead of a file.
    env.extra_env.push(("FTP_PASSWORD".into(), password.into()));
    let (inc, reference) = backup_paused(&env, &g, &[]);
    watch.assert_never_leaked();
    assert_eq!(
        env.read_run(&full).status.unwrap().type_,
        Some(BackupType::Full)
    );
    assert_eq!(
        env.read_run(&inc).status.unwrap().type_,
        Some(BackupType::Incremental)
    );
    let files = env.target_files_of(&g.name);
    assert!(
        files.iter().any(|f| f.starts_with("duplicity-full."))
            && files.iter().any(|f| f.starts_with("duplicity-inc.")),
        "the FTP server holds the chain: {files:?}"
    );
    assert_left_clean(
        &g,
        &env,
        true,
        &[env.read_run(&inc).status.unwrap().checkpoint.unwrap()],
    );
    env.extra_env.clear();
    let mut restore_args = vec!["--at", inc.as_str()];
    restore_args.extend_from_slice(&pw_arg);
    assert_restores_as_new_byte_exact(&env, &g.name, &restore_args, &reference);

    // A wrong password: refused by the server, said as TargetAuthFailed, nothing touched.
    let before = (g.checkpoints(), env.target_files_of(&g.name));
    let wrong = env.dir.join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let out = env.backup(
        &g.name,
        &[
            "--ftp-password-file",
            wrong.to_str().unwrap(),
            "--num-retries",
            "1",
        ],
    );
    out.assert_failed_with("TargetAuthFailed");
    assert_eq!((g.checkpoints(), env.target_files_of(&g.name)), before);

    // A user without any password is refused before duplicity could ask for one.
    env.backup(&g.name, &[])
        .assert_failed_with("TargetAuthFailed");

    // A password written in the URL is refused, and not repeated.
    let in_url = format!("ftp://backup:{password}@127.0.0.1:{}/vms", server.port);
    let out = env.snapback(&["backup", "--domain", &g.name, "--target", &in_url]);
    out.assert_failed_with("TargetInvalid");
    assert!(out.stderr.contains("password in the URL"), "{}", out.stderr);
    assert_secret_nowhere(&env, &[&full_out, &out], password);
    assert_eq!(env.target_files_of(&g.name), before.1);
}

#[test]
fn an_sftp_target_logs_in_with_a_key_checks_the_host_key_and_restores_byte_exact() {
    let env0 = Env::new();
    let server = SshServer::start(&env0.dir.join("sshd"));
    let g = Guest::new("sbt-sftp", GuestOpts::default());
    let mut env = env0;
    env.target_dir = env.dir.join("sftp-root");
    env.target = server.url(&env.target_dir);
    let key = server.dir.join("client_key");
    let key_text = std::fs::read_to_string(&key).unwrap();
    // A line from inside the private key: what must never leave its file.
    let key_line = key_text.lines().nth(1).unwrap().to_string();
    let known = server.known_hosts("known_hosts", "host_key");
    let login = |known_hosts: &Path| -> Vec<String> {
        vec![
            "--ssh-key-file".into(),
            key.display().to_string(),
            "--ssh-known-hosts-file".into(),
            known_hosts.display().to_string(),
        ]
    };
    let args = login(&known);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let watch = ArgvWatch::start(&key_line);
    let full_out = env.backup(&g.name, &args);
    let full = full_out.assert_ok();
    g.wait_for_writes(g.writes() + 3);
    let (inc, reference) = backup_paused(&env, &g, &args);
    watch.assert_never_leaked();
    assert_eq!(
        env.read_run(&full).status.unwrap().type_,
        Some(BackupType::Full)
    );
    assert_eq!(
        env.read_run(&inc).status.unwrap().type_,
        Some(BackupType::Incremental)
    );
    let files = env.target_files_of(&g.name);
    assert!(
        files.iter().any(|f| f.starts_with("duplicity-inc.")),
        "sshd's side holds the chain: {files:?}"
    );
    let mut restore_args = vec!["--at", inc.as_str()];
    restore_args.extend_from_slice(&args);
    assert_restores_as_new_byte_exact(&env, &g.name, &restore_args, &reference);
    assert_secret_nowhere(&env, &[&full_out], &key_line);

    // Another host key than the server's: HostKeyMismatch, and nothing reaches the target.
    let other_dir = env.dir.join("sftp-other");
    let mut other = Env::new();
    other.target = server.url(&other_dir);
    let before = g.checkpoints();
    let bad = login(&server.known_hosts("bad_known_hosts", "other_host_key"));
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    other
        .backup(&g.name, &[&bad[..], &["--num-retries", "1"]].concat())
        .assert_failed_with("HostKeyMismatch");
    assert!(!other_dir.exists(), "nothing may reach the target");
    assert_eq!(g.checkpoints(), before);

    // A known_hosts without the server: HostKeyUnknown, never trusted on first use.
    let unknown = server.dir.join("empty_known_hosts");
    std::fs::write(&unknown, "").unwrap();
    let unknown = login(&unknown);
    let unknown: Vec<&str> = unknown.iter().map(String::as_str).collect();
    other
        .backup(&g.name, &[&unknown[..], &["--num-retries", "1"]].concat())
        .assert_failed_with("HostKeyUnknown");
    assert!(!other_dir.exists(), "nothing may reach the target");
    assert_eq!(
        std::fs::read_to_string(server.dir.join("empty_known_hosts")).unwrap(),
        "",
        "the unknown key is not added to known_hosts"
    );
}
