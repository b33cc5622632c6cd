//! `snapback label` and `unlabel` on real libvirt: the labels land in the domain's running and
//! persistent XML, a policy's `domainSelector.metadata` picks the domain by them at its next
//! look (no restart), other tools' metadata stays, and bad keys change nothing.

mod common;

use std::collections::BTreeMap;

use common::*;
use snapback::api::DomainSelector;
use snapback::libvirt::domain_xml::snapback_metadata;
use snapback::libvirt::LibvirtHost;

fn labels(xml: &str) -> Vec<(String, String)> {
    snapback_metadata(xml).into_iter().collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Which domains a selector on `tier=gold` picks, the way the daemon and the agent ask.
fn gold_picks(name: &str) -> bool {
    let sel = DomainSelector {
        metadata: BTreeMap::from([("tier".to_string(), "gold".to_string())]),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let host = LibvirtHost::connect(&connect_uri()).await.unwrap();
        snapback::selector::on_host(&host, &sel).await.unwrap()
    })
    .contains(&name.to_string())
}

#[test]
fn labels_put_a_running_domain_under_a_policy_and_unlabel_takes_it_out_again() {
    let env = Env::new();
    let g = Guest::new("sbt-label", GuestOpts::default());
    virsh_ok(&[
        "metadata",
        &g.name,
        "urn:other-tool",
        "--key",
        "other",
        "--set",
        "<x keep='1'/>",
        "--config",
        "--live",
    ]);
    assert!(!gold_picks(&g.name));

    let out = env.snapback(&["label", &g.name, "tier=gold", "owner=ops team"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let want = pairs(&[("owner", "ops team"), ("tier", "gold")]);
    assert_eq!(labels(&virsh_ok(&["dumpxml", &g.name])), want, "live");
    assert_eq!(
        labels(&virsh_ok(&["dumpxml", "--inactive", &g.name])),
        want,
        "persistent"
    );
    assert!(gold_picks(&g.name), "picked with no restart");

    // A bad key is refused, and nothing changes.
    let bad = env.snapback(&["label", &g.name, "bad:key=x"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("InvalidSpec"), "{}", bad.stderr);
    assert_eq!(labels(&virsh_ok(&["dumpxml", &g.name])), want);

    let out = env.snapback(&["unlabel", &g.name, "tier"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        labels(&virsh_ok(&["dumpxml", &g.name])),
        pairs(&[("owner", "ops team")])
    );
    assert!(!gold_picks(&g.name), "out of the policy");

    // The last label gone, snapback's element goes; the other tool's stays.
    let out = env.snapback(&["unlabel", &g.name, "owner", "absent"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for flags in [&[][..], &["--inactive"][..]] {
        let mut args = vec!["dumpxml"];
        args.extend_from_slice(flags);
        args.push(&g.name);
        let xml = virsh_ok(&args);
        assert!(!xml.contains("snapback.dev/xmlns"), "{xml}");
        assert!(
            xml.contains("urn:other-tool") && xml.contains("keep"),
            "{xml}"
        );
    }
    assert_eq!(g.state(), "running");
}
