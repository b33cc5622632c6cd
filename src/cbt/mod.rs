//! Changed-block tracking for raw files and block devices: `snapback cbt enable | disable |
//! status`. Enabling puts a qcow2 overlay over each raw disk (its data stays in the device,
//! `data_file_raw`) and redefines the domain on it; from the domain's next start, libvirt
//! keeps bitmaps for the disk and backups of it are incremental. The device is never written
//! by snapback, and each step leaves a domain that boots: the overlay is made whole before
//! the definition names it, and one define switches every disk at once.

pub mod plan;

use std::path::{Path, PathBuf};

use crate::api::FailureReason;
use crate::error::StepError;
use crate::libvirt::domain_xml::parse_domain;
use crate::libvirt::xml_edit::{rewrite, Placement, XmlEdit};
use crate::libvirt::{DomainState, DomainView};
use crate::qemu_img;
use crate::source::Source;
use plan::{is_overlay, overlay_path, states, to_enable, CbtState};

/// One disk as `snapback cbt status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskCbt {
    pub disk: String,
    /// The disk's source in the persistent definition.
    pub source: String,
    pub state: CbtState,
}

fn invalid(message: impl Into<String>) -> StepError {
    StepError::new(FailureReason::InvalidSpec, message)
}

fn internal(message: impl Into<String>) -> StepError {
    StepError::new(FailureReason::Internal, message)
}

/// Changed-block tracking of the domains of one source, remembering the overlays it made in
/// `state_dir/cbt/<uuid>` so one no definition names any more is removed, even after a crash.
pub struct Cbt<'a, S: Source> {
    pub source: &'a S,
    pub state_dir: &'a Path,
}

impl<S: Source> Cbt<'_, S> {
    async fn view(&self, vm: &str) -> Result<DomainView, StepError> {
        Ok(self.source.domain(vm).await?)
    }

    fn record(&self, uuid: &str) -> PathBuf {
        self.state_dir.join("cbt").join(uuid)
    }

    fn recorded(&self, uuid: &str) -> Vec<String> {
        std::fs::read_to_string(self.record(uuid))
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn write_record(&self, uuid: &str, overlays: &[String]) -> Result<(), StepError> {
        let path = self.record(uuid);
        let dir = path.parent().expect("the record has a directory");
        std::fs::create_dir_all(dir)
            .map_err(|e| internal(format!("cannot create {}: {e}", dir.display())))?;
        let tmp = path.with_extension("tmp");
        let mut text = overlays.join("\n");
        text.push('\n');
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| internal(format!("cannot write {}: {e}", path.display())))
    }

    /// Each disk's state, after removing overlays this host made that no definition names.
    pub async fn status(&self, vm: &str) -> Result<Vec<DiskCbt>, StepError> {
        let view = self.view(vm).await?;
        self.tidy(&view)?;
        report(&view)
    }

    /// Gives every raw disk an overlay in `dir` and redefines the domain on them.
    pub async fn enable(&self, vm: &str, dir: &Path) -> Result<Vec<DiskCbt>, StepError> {
        if !dir.is_dir() {
            return Err(invalid(format!(
                "the overlay directory {} does not exist",
                dir.display()
            )));
        }
        let view = self.view(vm).await?;
        let persistent = parse_domain(&view.inactive_xml)
            .map_err(|e| internal(format!("the domain's definition: {e}")))?;
        let uuid = persistent.uuid.clone();
        let in_use = live_sources(&view);
        let mut edit = XmlEdit::default();
        for d in to_enable(&persistent) {
            let overlay = overlay_path(dir, &persistent.name, &d.name);
            let path = overlay.display().to_string();
            if in_use.contains(&path) {
                // Enabled again before the restart that would have dropped it: the running
                // domain still writes through it, so it is named again as it is.
                edit.disk_paths.insert(d.name.clone(), path);
                continue;
            }
            let size = size_of(&view, &d.name, d.source())?;
            let mut recorded = self.recorded(&uuid);
            if !recorded.contains(&path) {
                recorded.push(path.clone());
                self.write_record(&uuid, &recorded)?;
            }
            let _ = std::fs::remove_file(&overlay); // a crash's leftover, named by nothing
            qemu_img::create_raw_overlay(&overlay, d.source(), size).await?;
            crate::process::crash_point("cbt:overlay-created");
            edit.disk_paths.insert(d.name.clone(), path);
        }
        if !edit.disk_paths.is_empty() {
            let xml = rewrite(&view.inactive_xml, &edit).map_err(internal)?;
            self.source.define(xml).await?;
            crate::process::crash_point("cbt:defined");
        }
        self.status(vm).await
    }

    /// Redefines the domain on each overlay's own file or device again. An overlay the running
    /// domain still uses is removed by the first `disable` or `status` after it stops using it.
    pub async fn disable(&self, vm: &str) -> Result<Vec<DiskCbt>, StepError> {
        let view = self.view(vm).await?;
        let persistent = parse_domain(&view.inactive_xml)
            .map_err(|e| internal(format!("the domain's definition: {e}")))?;
        let mut edit = XmlEdit::default();
        for d in persistent.disks.iter().filter(|d| is_overlay(d.source())) {
            let data = qemu_img::data_file(d.source())
                .await?
                .ok_or_else(|| invalid(format!("{} has no data file to go back to", d.source())))?;
            let block = std::fs::metadata(&data)
                .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
                .map_err(|e| invalid(format!("{data}, the data file of {}: {e}", d.source())))?;
            let placement = if block {
                Placement::RawBlock
            } else {
                Placement::RawFile
            };
            edit.placements.insert(d.name.clone(), placement);
            edit.disk_paths.insert(d.name.clone(), data);
        }
        if !edit.disk_paths.is_empty() {
            let xml = rewrite(&view.inactive_xml, &edit).map_err(internal)?;
            self.source.define(xml).await?;
            crate::process::crash_point("cbt:undefined");
        }
        self.status(vm).await
    }

    /// Removes the overlays this host made for the domain that neither its persistent nor its
    /// live definition names.
    fn tidy(&self, view: &DomainView) -> Result<(), StepError> {
        let Ok(persistent) = parse_domain(&view.inactive_xml) else {
            return Ok(());
        };
        let recorded = self.recorded(&persistent.uuid);
        if recorded.is_empty() {
            return Ok(());
        }
        let mut named = live_sources(view);
        named.extend(persistent.disks.iter().map(|d| d.source().to_string()));
        let (keep, gone): (Vec<String>, Vec<String>) =
            recorded.into_iter().partition(|p| named.contains(p));
        for p in &gone {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(internal(format!("cannot remove {p}: {e}"))),
            }
        }
        if !gone.is_empty() {
            self.write_record(&persistent.uuid, &keep)?;
        }
        Ok(())
    }
}

/// The sources a running domain uses now (nothing when it is shut off).
fn live_sources(view: &DomainView) -> Vec<String> {
    if running(view) {
        view.facts
            .disks
            .iter()
            .map(|d| d.source().to_string())
            .collect()
    } else {
        Vec::new()
    }
}

/// Whether a qemu may hold the disks now: anything but shut off (a domain shutting down,
/// crashed or suspended still has its live definition).
fn running(view: &DomainView) -> bool {
    view.state != DomainState::ShutOff
}

/// The disk's size: libvirt's, else (a disk only the persistent definition has) the file's
/// or device's own.
fn size_of(view: &DomainView, disk: &str, source: &str) -> Result<u64, StepError> {
    if let Some(i) = view.facts.disks.iter().position(|d| d.name == disk) {
        if let Some(s) = view.sizes.get(i) {
            return Ok(*s);
        }
    }
    use std::io::{Seek, SeekFrom};
    std::fs::File::open(source)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(|e| invalid(format!("cannot read the size of {source}: {e}")))
}

fn report(view: &DomainView) -> Result<Vec<DiskCbt>, StepError> {
    let persistent = parse_domain(&view.inactive_xml)
        .map_err(|e| internal(format!("the domain's definition: {e}")))?;
    let live = running(view).then_some(&view.facts);
    Ok(states(&persistent, live)
        .into_iter()
        .zip(&persistent.disks)
        .map(|((disk, state), d)| DiskCbt {
            disk,
            source: d.source().to_string(),
            state,
        })
        .collect())
}
