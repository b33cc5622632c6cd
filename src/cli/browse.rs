//! `snapback browse`: mount a local point's guest filesystems read-only under
//! `DIR/@GMT-...`, unmount them, list them, and write the Samba and nfs-ganesha snippets
//! that serve them.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::api::FailureReason;
use crate::browse::{self, image, nfs, samba, servers, Disk, PointRef, Settings};
use crate::error::StepError;
use crate::libvirt::LibvirtHost;

#[derive(Args, Debug)]
pub struct BrowseArgs {
    #[command(subcommand)]
    pub action: BrowseAction,
}

#[derive(Subcommand, Debug)]
pub enum BrowseAction {
    /// Mount a point (an internal snapshot of the domain's qcow2 disks) under DIR/@GMT-...
    Mount(MountArgs),
    /// Unmount points under DIR and stop what served them
    Unmount(UnmountArgs),
    /// List the points mounted under DIR
    List(DirArg),
    /// Write a Samba share snippet (shadow_copy2) showing DIR's points as previous versions
    Samba(SambaArgs),
    /// Write an nfs-ganesha EXPORT block (NFSv4, FSAL VFS) serving DIR read-only
    Nfs(NfsArgs),
}

#[derive(Args, Debug)]
pub struct DirArg {
    /// The domain's browse dir
    #[arg(long)]
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    #[arg(long)]
    pub domain: String,
    /// The internal snapshot to mount
    #[arg(long)]
    pub snapshot: String,
    #[arg(long)]
    pub dir: PathBuf,
    /// Also put a symlink to the point here
    #[arg(long)]
    pub link_dir: Option<PathBuf>,
    /// The point's time (RFC 3339); default: the snapshot's time in the first disk's image
    #[arg(long)]
    pub time: Option<jiff::Timestamp>,
    /// libvirt connection URI
    #[arg(long, default_value = "qemu:///system", env = "SNAPBACK_CONNECT")]
    pub connect: String,
}

#[derive(Args, Debug)]
pub struct UnmountArgs {
    #[arg(long)]
    pub dir: PathBuf,
    /// The point: its directory name (@GMT-...) or its time (RFC 3339)
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    pub point: Option<String>,
    /// Every point under DIR
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct SambaArgs {
    #[arg(long)]
    pub dir: PathBuf,
    /// The share's name
    #[arg(long)]
    pub share: String,
    /// What the share serves now (its tree shaped like a point's: vdb/...)
    #[arg(long)]
    pub path: PathBuf,
    /// Write the snippet here (for smb.conf's `include =`) instead of stdout
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct NfsArgs {
    #[arg(long)]
    pub dir: PathBuf,
    /// ganesha's Export_Id, unique on the host (1-65535)
    #[arg(long)]
    pub export_id: u32,
    /// The path NFSv4 clients mount (ganesha's pseudo filesystem)
    #[arg(long)]
    pub pseudo: String,
    /// A client allowed to read (repeatable); none: any client
    #[arg(long = "client")]
    pub clients: Vec<String>,
    /// Write the block here (for ganesha.conf's `%include`) instead of stdout
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn fail(e: &StepError) -> i32 {
    eprintln!("{}: {}", e.reason, e.message);
    1
}

pub async fn execute(args: BrowseArgs) -> i32 {
    match args.action {
        BrowseAction::Mount(a) => match mount(a).await {
            Ok(()) => 0,
            Err(e) => fail(&e),
        },
        BrowseAction::Unmount(a) => match unmount(a).await {
            Ok(()) => 0,
            Err(e) => fail(&e),
        },
        BrowseAction::List(a) => {
            print!("{}", list_table(&browse::list_points(&absolute(&a.dir))));
            0
        }
        BrowseAction::Samba(a) => {
            let (dir, path) = (absolute(&a.dir), absolute(&a.path));
            let text = samba::share_snippet(&samba::SambaShare {
                name: &a.share,
                path: &path,
                snapdir: &dir,
            });
            write_snippet(text, a.out.as_deref(), servers::samba_missing())
        }
        BrowseAction::Nfs(a) => {
            let dir = absolute(&a.dir);
            let text = nfs::export_block(&nfs::NfsExport {
                export_id: a.export_id,
                path: &dir,
                pseudo: &a.pseudo,
                clients: &a.clients,
            });
            write_snippet(text, a.out.as_deref(), servers::nfs_server_missing())
        }
    }
}

/// Prints or writes a snippet; a host without its server gets a warning with the reason word.
fn write_snippet(
    text: Result<String, String>,
    out: Option<&Path>,
    missing: Option<(&str, String)>,
) -> i32 {
    let text = match text {
        Ok(t) => t,
        Err(m) => return fail(&StepError::new(FailureReason::InvalidSpec, m)),
    };
    if let Some((reason, why)) = missing {
        eprintln!("warning: {reason}: {why}");
    }
    match out {
        None => {
            print!("{text}");
            0
        }
        Some(f) => match std::fs::write(f, text) {
            Ok(()) => 0,
            Err(e) => fail(&StepError::new(
                FailureReason::InvalidSpec,
                format!("--out {}: {e}", f.display()),
            )),
        },
    }
}

async fn mount(a: MountArgs) -> Result<(), StepError> {
    let host = LibvirtHost::connect(&a.connect).await?;
    let view = host.domain(&a.domain).await?;
    // Internal snapshots live in qcow2 images; other disks have no point to mount.
    let mut disks = Vec::new();
    for d in &view.facts.disks {
        if d.format() == "qcow2" && d.kind == crate::libvirt::domain_xml::DiskKind::File {
            disks.push(Disk {
                target: d.name.clone(),
                path: PathBuf::from(d.source()),
            });
        } else {
            eprintln!(
                "warning: {}: a {} disk holds no internal snapshot; left out",
                d.name,
                d.format()
            );
        }
    }
    let time = match (a.time, disks.first()) {
        (Some(t), _) => t,
        (None, Some(d)) => {
            image::internal_snapshot_time(&d.path.display().to_string(), &a.snapshot).await?
        }
        (None, None) => {
            return Err(StepError::new(
                FailureReason::InvalidSpec,
                format!("domain {} has no qcow2 disk", a.domain),
            ))
        }
    };
    let settings = Settings {
        dir: absolute(&a.dir),
        link_dir: a.link_dir.as_deref().map(absolute),
    };
    let started = std::time::Instant::now();
    let m = browse::mount_point(
        &settings,
        &PointRef {
            domain: view.facts.name.clone(),
            snapshot: a.snapshot,
            time,
            disks,
        },
    )
    .await?;
    eprintln!(
        "mounted {} ({}) in {:.2}s",
        m.dir.display(),
        m.filesystems.join(", "),
        started.elapsed().as_secs_f64()
    );
    println!("{}", m.dir.display());
    Ok(())
}

async fn unmount(a: UnmountArgs) -> Result<(), StepError> {
    let dir = absolute(&a.dir);
    if a.all {
        for name in browse::unmount_all(&dir).await? {
            println!("{name}");
        }
        return Ok(());
    }
    let p = a.point.unwrap_or_default();
    let time = browse::parse_gmt_name(&p)
        .or_else(|| p.parse::<jiff::Timestamp>().ok())
        .ok_or_else(|| {
            StepError::new(
                FailureReason::InvalidSpec,
                format!("--point {p:?}: neither @GMT-%Y.%m.%d-%H.%M.%S nor an RFC 3339 time"),
            )
        })?;
    if browse::unmount_point(&dir, time).await? {
        println!("{}", browse::gmt_name(time));
    } else {
        eprintln!(
            "nothing mounted at {}",
            dir.join(browse::gmt_name(time)).display()
        );
    }
    Ok(())
}

/// POINT, DOMAIN, SNAPSHOT, FILESYSTEMS, STATE.
pub fn list_table(points: &[browse::MountedPoint]) -> String {
    let rows: Vec<[String; 5]> = points
        .iter()
        .map(|p| {
            let (domain, snapshot) = p
                .point
                .as_ref()
                .map(|r| (r.domain.clone(), r.snapshot.clone()))
                .unwrap_or_default();
            [
                p.name.clone(),
                domain,
                snapshot,
                p.filesystems.join(","),
                if p.complete { "Mounted" } else { "Partial" }.to_string(),
            ]
        })
        .collect();
    crate::table::table(
        ["POINT", "DOMAIN", "SNAPSHOT", "FILESYSTEMS", "STATE"],
        rows,
    )
}
