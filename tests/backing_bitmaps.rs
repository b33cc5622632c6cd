//! Stray snapback bitmaps in backing images: an image that held checkpoint bitmaps becomes a
//! backing image when an overlay is put over it (an external snapshot, `qemu-img create -b`),
//! and its bitmaps stay there. Reconcile of a shut-off domain removes snapback's stray ones
//! from every image of the chain, on a real qcow2 chain.

mod common;

use common::*;
use snapback::api::BackupPhase;

/// The bitmaps of one image only (not its backing chain).
fn own_bitmaps(image: &std::path::Path) -> Vec<String> {
    snapback::libvirt::bitmaps::parse_image_bitmaps(&run_ok(
        "qemu-img",
        &["info", "-U", "--output=json", image.to_str().unwrap()],
    ))
    .unwrap()
}

/// Records a run of the domain as the run journal does, copied from `from`, with this phase
/// and checkpoint, `later` seconds after it on the target.
fn record_run(env: &Env, from: &str, name: &str, phase: BackupPhase, checkpoint: &str, later: i64) {
    let mut run = env.read_run(from);
    run.metadata.name = Some(name.to_string());
    let s = run.status.as_mut().unwrap();
    s.phase = phase;
    s.checkpoint = Some(checkpoint.to_string());
    s.target_time = s
        .target_time
        .map(|t| t + jiff::SignedDuration::from_secs(later));
    std::fs::write(
        env.state.join("backupruns").join(format!("{name}.yaml")),
        serde_saphyr::to_string(&run).unwrap(),
    )
    .unwrap();
}

#[test]
fn reconcile_of_a_shut_off_domain_removes_snapback_stray_bitmaps_from_every_image_of_the_chain() {
    let g = Guest::new(
        "sbt-bbmp",
        GuestOpts {
            start: false,
            ..Default::default()
        },
    );
    // The disk becomes the backing image of a new top image.
    let base = g.dir.join("base.qcow2");
    std::fs::rename(&g.disk, &base).unwrap();
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            g.disk.to_str().unwrap(),
        ],
    );
    let env = Env::new();
    let first = env.backup(&g.name, &[]).assert_ok();

    // A failed run whose bitmap stayed in both images, as it does once its image has an
    // overlay; a succeeded newer run whose checkpoint a chain still needs; another tool's.
    let stray_run = format!("{first}-x");
    let stray = format!("snapback-{stray_run}");
    record_run(&env, &first, &stray_run, BackupPhase::Failed, &stray, 0);
    let keep_run = format!("{first}-k");
    let keep = format!("snapback-{keep_run}");
    // The newest success on the target: its checkpoint is the one a chain continues from.
    record_run(&env, &first, &keep_run, BackupPhase::Succeeded, &keep, 1);
    for image in [&base, &g.disk] {
        for b in [&stray, &keep, &"other-tool".to_string()] {
            run_ok("qemu-img", &["bitmap", "--add", image.to_str().unwrap(), b]);
        }
    }
    assert!(own_bitmaps(&base).contains(&stray));

    // The next run of the shut-off domain reconciles first.
    env.backup(&g.name, &[]).assert_ok();
    for image in [&base, &g.disk] {
        let left = own_bitmaps(image);
        assert!(
            !left.contains(&stray),
            "{}: the stray bitmap is gone: {left:?}",
            image.display()
        );
        assert!(
            left.contains(&keep),
            "{}: a needed checkpoint's bitmap stays: {left:?}",
            image.display()
        );
        assert!(
            left.contains(&"other-tool".to_string()),
            "{}: another tool's bitmap is never touched: {left:?}",
            image.display()
        );
    }
}
