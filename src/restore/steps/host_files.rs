//! The host files a restored domain's devices name (see `libvirt::host_files`): a copy
//! restored as new gets its own, and says in a condition what it could not be given.

use crate::api::{reason, ConditionType, RestoreRequest};
use crate::error::StepError;
use crate::libvirt::host_files::{separate, Separation};
use crate::lifecycle::Journal;
use crate::restore::RestoreEngine;
use crate::source::Source;

impl<J: Journal<RestoreRequest>, S: Source> RestoreEngine<'_, J, S> {
    /// The copy `new`'s XML with no writable host file of the original's; the
    /// `HostFilesSeparate` condition names every change. Pure apart from the condition.
    pub(crate) fn separate_host_files(
        &mut self,
        xml: String,
        new: &str,
    ) -> Result<String, StepError> {
        // Only a libvirt domain XML names host files; a KubeVirt VM's definition (JSON) has
        // its volumes placed by the source, and no device of it points into a host.
        if !xml.trim_start().starts_with('<') {
            return Ok(xml);
        }
        // Serial and console output files are moved by the restore's rewrite already.
        let (out, done) = separate(&xml, new, true)
            .map_err(|m| StepError::new(crate::api::FailureReason::VerificationFailed, m))?;
        if done.is_empty() {
            return Ok(out);
        }
        let changed = done.iter().any(|d| !matches!(d, Separation::Moved { .. }));
        let said: Vec<String> = done
            .iter()
            .map(|d| match d {
                Separation::Moved { role, from, to } => format!("{role} {from} -> {to}"),
                Separation::MadeReadOnly { role, path } => {
                    format!("{role} {path} made read-only")
                }
                Separation::LeftOut { role, path } => {
                    format!(
                        "{role} {path} left out (add it back once the original no longer uses it)"
                    )
                }
            })
            .collect();
        let (ok, why) = if changed {
            (false, reason::DEVICES_CHANGED)
        } else {
            (true, reason::OWN_FILES)
        };
        self.lc.condition(
            ConditionType::HostFilesSeparate,
            ok,
            why,
            format!(
                "the copy shares no writable host file with the original: {}",
                said.join("; ")
            ),
        );
        Ok(out)
    }
}
