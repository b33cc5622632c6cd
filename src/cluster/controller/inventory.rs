//! What the agents report, as the controller sees it: which node holds which domain, which
//! agents are alive, and which domains a policy's selectors match (pure).

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::api::{BackupPolicySpec, DomainSelector, HostDomain, VirtHost};
use crate::selector;

#[derive(Clone, Debug)]
pub struct HostEntry {
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub heartbeat: Option<Timestamp>,
    /// The heartbeat is recent enough that the agent is taken to be alive.
    pub fresh: bool,
    pub domains: Vec<HostDomain>,
}

#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub hosts: Vec<HostEntry>,
}

impl Inventory {
    /// `node_labels` are the Node objects' labels, which policies' nodeSelectors match.
    pub fn build(
        hosts: &[VirtHost],
        node_labels: &BTreeMap<String, BTreeMap<String, String>>,
        now: Timestamp,
        heartbeat_timeout_secs: i64,
    ) -> Self {
        let mut out: Vec<HostEntry> = hosts
            .iter()
            .map(|h| {
                let status = h.status.clone().unwrap_or_default();
                let heartbeat = status
                    .heartbeat_time
                    .as_deref()
                    .and_then(|t| t.parse::<Timestamp>().ok());
                let fresh = heartbeat
                    .is_some_and(|t| now.as_second() - t.as_second() <= heartbeat_timeout_secs);
                HostEntry {
                    node: h.spec.node_name.clone(),
                    labels: node_labels
                        .get(&h.spec.node_name)
                        .cloned()
                        .unwrap_or_default(),
                    heartbeat,
                    fresh,
                    domains: status.domains,
                }
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Self { hosts: out }
    }

    pub fn host(&self, node: &str) -> Option<&HostEntry> {
        self.hosts.iter().find(|h| h.node == node)
    }
}

pub fn domain_matches(sel: &DomainSelector, d: &HostDomain) -> bool {
    selector::selects(sel, &d.name, &d.metadata)
}

fn labels_match(sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Which node backs up each domain a policy selects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matching {
    /// (domain, node), sorted by domain.
    pub assigned: Vec<(String, String)>,
    /// Selected domains seen only on hosts whose agent is not answering.
    pub unreachable: Vec<String>,
    /// Names listed in the selector that no host reports.
    pub missing: Vec<String>,
}

/// A domain seen on several nodes (shared storage, a migration) goes to the node where it
/// runs, then to the freshest heartbeat, then to the first node by name: a stable choice, so
/// a pass repeated a second later assigns the same node.
pub fn match_domains(spec: &BackupPolicySpec, inv: &Inventory) -> Matching {
    let mut best: BTreeMap<&str, (&HostEntry, &HostDomain)> = BTreeMap::new();
    let mut stale: BTreeMap<&str, ()> = BTreeMap::new();
    for h in inv
        .hosts
        .iter()
        .filter(|h| labels_match(&spec.node_selector, &h.labels))
    {
        for d in h
            .domains
            .iter()
            .filter(|d| domain_matches(&spec.domain_selector, d))
        {
            if !h.fresh {
                stale.insert(&d.name, ());
                continue;
            }
            let better = match best.get(d.name.as_str()) {
                None => true,
                Some((oh, od)) => {
                    let run = |x: &HostDomain| x.state == "Running";
                    (run(d), h.heartbeat) > (run(od), oh.heartbeat)
                }
            };
            if better {
                best.insert(&d.name, (h, d));
            }
        }
    }
    let assigned: Vec<(String, String)> = best
        .iter()
        .map(|(d, (h, _))| (d.to_string(), h.node.clone()))
        .collect();
    let unreachable = stale
        .keys()
        .filter(|d| !best.contains_key(*d))
        .map(|d| d.to_string())
        .collect();
    let mut missing: Vec<String> = spec
        .domain_selector
        .names
        .iter()
        .filter(|n| !best.contains_key(n.as_str()) && !stale.contains_key(n.as_str()))
        .cloned()
        .collect();
    missing.sort();
    Matching {
        assigned,
        unreachable,
        missing,
    }
}
