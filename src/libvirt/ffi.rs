//! The libvirt calls the `virt` crate does not wrap: backup jobs, checkpoints, filesystem
//! freeze/thaw and the guest agent timeout. All unsafe code of the project lives here.
//!
//! Every function must be called on the same thread that reads the error afterwards (libvirt
//! keeps its last error per thread); callers run each whole operation in one `spawn_blocking`.

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_uint};
use std::ptr;

use virt::domain::Domain;
use virt::error::Error;
use virt::sys;

fn cstring(s: &str) -> Result<CString, Error> {
    // An interior NUL byte cannot reach libvirt; the crate turns it into a libvirt-style error.
    Ok(CString::new(s)?)
}

/// Takes ownership of a string libvirt allocated and frees it.
unsafe fn owned_string(p: *mut c_char) -> String {
    let s = CStr::from_ptr(p).to_string_lossy().into_owned();
    libc::free(p as *mut libc::c_void);
    s
}

/// virDomainBackupBegin: starts a push-mode backup job and, when `checkpoint_xml` is given,
/// creates the checkpoint atomically with the job's point in time.
pub fn backup_begin(
    dom: &Domain,
    backup_xml: &str,
    checkpoint_xml: Option<&str>,
) -> Result<(), Error> {
    let b = cstring(backup_xml)?;
    let c = checkpoint_xml.map(cstring).transpose()?;
    let cp = c.as_ref().map_or(ptr::null(), |c| c.as_ptr());
    let rc = unsafe { sys::virDomainBackupBegin(dom.as_ptr(), b.as_ptr(), cp, 0) };
    if rc < 0 {
        return Err(Error::last_error());
    }
    Ok(())
}

/// virDomainAbortJob: aborts the domain's current job (our backup job).
pub fn abort_job(dom: &Domain) -> Result<(), Error> {
    let rc = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
    if rc < 0 {
        return Err(Error::last_error());
    }
    Ok(())
}

/// A checkpoint handle, freed on drop.
struct Checkpoint(sys::virDomainCheckpointPtr);

impl Drop for Checkpoint {
    fn drop(&mut self) {
        unsafe {
            sys::virDomainCheckpointFree(self.0);
        }
    }
}

impl Checkpoint {
    fn name(&self) -> String {
        unsafe {
            CStr::from_ptr(sys::virDomainCheckpointGetName(self.0))
                .to_string_lossy()
                .into_owned()
        }
    }

    fn xml(&self, flags: c_uint) -> Result<String, Error> {
        let p = unsafe { sys::virDomainCheckpointGetXMLDesc(self.0, flags) };
        if p.is_null() {
            return Err(Error::last_error());
        }
        Ok(unsafe { owned_string(p) })
    }
}

fn lookup_checkpoint(dom: &Domain, name: &str) -> Result<Checkpoint, Error> {
    let n = cstring(name)?;
    let p = unsafe { sys::virDomainCheckpointLookupByName(dom.as_ptr(), n.as_ptr(), 0) };
    if p.is_null() {
        return Err(Error::last_error());
    }
    Ok(Checkpoint(p))
}

/// The names of the domain's checkpoints, parents before children.
pub fn list_checkpoints(dom: &Domain) -> Result<Vec<String>, Error> {
    let mut list: *mut sys::virDomainCheckpointPtr = ptr::null_mut();
    let n = unsafe {
        sys::virDomainListAllCheckpoints(
            dom.as_ptr(),
            &mut list,
            sys::VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL,
        )
    };
    if n < 0 {
        return Err(Error::last_error());
    }
    let mut names = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // Wrapping each pointer frees it when the wrapper drops.
        let cp = Checkpoint(unsafe { *list.add(i) });
        names.push(cp.name());
    }
    unsafe { libc::free(list as *mut libc::c_void) };
    Ok(names)
}

/// The checkpoint's XML. With `with_domain`, the full form needed for redefinition.
pub fn checkpoint_xml(dom: &Domain, name: &str, with_domain: bool) -> Result<String, Error> {
    let flags = if with_domain {
        0
    } else {
        sys::VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN
    };
    lookup_checkpoint(dom, name)?.xml(flags)
}

/// Redefines a checkpoint from its XML and, with `validate`, makes libvirt check that every
/// disk's bitmap exists and is consistent. That check is how a lost bitmap is detected.
pub fn checkpoint_redefine(dom: &Domain, xml: &str, validate: bool) -> Result<(), Error> {
    let x = cstring(xml)?;
    let mut flags = sys::VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE;
    if validate {
        flags |= sys::VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE;
    }
    let p = unsafe { sys::virDomainCheckpointCreateXML(dom.as_ptr(), x.as_ptr(), flags) };
    if p.is_null() {
        return Err(Error::last_error());
    }
    drop(Checkpoint(p));
    Ok(())
}

/// Deletes a checkpoint. libvirt merges its bitmap into the parent's, so the parent stays a
/// valid base. `metadata_only` drops just libvirt's record (used when the bitmap is already gone).
pub fn checkpoint_delete(dom: &Domain, name: &str, metadata_only: bool) -> Result<(), Error> {
    let cp = lookup_checkpoint(dom, name)?;
    let flags = if metadata_only {
        sys::VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
    } else {
        0
    };
    let rc = unsafe { sys::virDomainCheckpointDelete(cp.0, flags) };
    if rc < 0 {
        return Err(Error::last_error());
    }
    Ok(())
}

/// virDomainFSFreeze on all mounted filesystems; returns how many were frozen.
pub fn fs_freeze(dom: &Domain) -> Result<u32, Error> {
    let rc = unsafe { sys::virDomainFSFreeze(dom.as_ptr(), ptr::null_mut(), 0, 0) };
    if rc < 0 {
        return Err(Error::last_error());
    }
    Ok(rc as u32)
}

/// virDomainFSThaw on all filesystems; returns how many were thawed.
pub fn fs_thaw(dom: &Domain) -> Result<u32, Error> {
    let rc = unsafe { sys::virDomainFSThaw(dom.as_ptr(), ptr::null_mut(), 0, 0) };
    if rc < 0 {
        return Err(Error::last_error());
    }
    Ok(rc as u32)
}

/// Bounds how long libvirt waits for the guest agent, so a hung agent cannot hang a freeze.
pub fn agent_set_timeout(dom: &Domain, seconds: c_int) -> Result<(), Error> {
    let rc = unsafe { sys::virDomainAgentSetResponseTimeout(dom.as_ptr(), seconds, 0) };
    if rc < 0 {
        return Err(Error::last_error());
    }
    Ok(())
}

/// What virDomainGetJobStats says about the current or the last completed job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobStats {
    /// virDomainJobType: 0 none, 1 bounded, 2 unbounded, 3 completed, 4 failed, 5 cancelled.
    pub job_type: i32,
    pub operation: Option<i32>,
    pub data_processed: Option<u64>,
    pub data_total: Option<u64>,
    pub error_message: Option<String>,
}

/// virDomainGetJobStats, read field by field. (The `virt` crate's wrapper builds a Vec from a
/// null pointer when libvirt returns no parameters, which aborts the process.)
pub fn job_stats(dom: &Domain, completed: bool) -> Result<JobStats, Error> {
    let mut job_type: c_int = 0;
    let mut params: sys::virTypedParameterPtr = ptr::null_mut();
    let mut n: c_int = 0;
    // KEEP_COMPLETED: reading the completed job's stats must not erase them, or a second look
    // (observe, then wait) would find no job at all.
    let flags = if completed {
        sys::VIR_DOMAIN_JOB_STATS_COMPLETED | sys::VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
    } else {
        0
    };
    let rc = unsafe {
        sys::virDomainGetJobStats(dom.as_ptr(), &mut job_type, &mut params, &mut n, flags)
    };
    if rc < 0 {
        return Err(Error::last_error());
    }
    let mut stats = JobStats {
        job_type,
        ..Default::default()
    };
    if !params.is_null() && n > 0 {
        let ull = |key: &CStr| {
            let mut v: u64 = 0;
            (unsafe { sys::virTypedParamsGetULLong(params, n, key.as_ptr(), &mut v) } == 1)
                .then_some(v)
        };
        // Backup jobs report their progress as disk_*; other jobs as data_*.
        stats.data_processed = ull(c"disk_processed").or_else(|| ull(c"data_processed"));
        stats.data_total = ull(c"disk_total").or_else(|| ull(c"data_total"));
        let mut op: c_int = 0;
        if unsafe { sys::virTypedParamsGetInt(params, n, c"operation".as_ptr(), &mut op) } == 1 {
            stats.operation = Some(op);
        }
        let mut s: *const c_char = ptr::null();
        if unsafe { sys::virTypedParamsGetString(params, n, c"errmsg".as_ptr(), &mut s) } == 1
            && !s.is_null()
        {
            stats.error_message = Some(unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned());
        }
    }
    if !params.is_null() {
        unsafe { sys::virTypedParamsFree(params, n) };
    }
    Ok(stats)
}
