//! A VM destroyed during a backup, and bitmaps that earlier runs left behind: nothing keeps
//! tracking writes for a checkpoint no chain needs.

mod common;

use common::*;
use snapback::api::{BackupPhase, BackupType};

fn hooks_file(env: &Env, yaml: &str) -> String {
    let p = env.dir.join(unique("hooks")).with_extension("yaml");
    std::fs::write(&p, yaml).unwrap();
    p.display().to_string()
}

#[test]
fn a_vm_destroyed_during_a_backup_keeps_no_checkpoint_or_bitmap_of_the_failed_run() {
    let g = Guest::new(
        "sbt-destroyed",
        GuestOpts {
            prefill_mib: 32,
            ..Default::default()
        },
    );
    let env = Env::new();
    let first = env.backup(&g.name, &[]).assert_ok();
    let cp = env.read_run(&first).status.unwrap().checkpoint.unwrap();

    // The onSnapshot hook runs while the job is active: it destroys the VM under the job.
    let destroy = hooks_file(
        &env,
        &format!(
            "onSnapshot:\n- command: [virsh, -c, '{}', destroy, '{}']\n",
            connect_uri(),
            g.name
        ),
    );
    let out = env.backup(&g.name, &["--hooks-file", &destroy]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    let failed = out.name();
    let s = env.read_run(&failed).status.unwrap();
    assert_eq!(s.phase, BackupPhase::Failed);
    let failed_cp = s.checkpoint.unwrap();
    assert_eq!(g.state(), "shut off");
    // libvirt cannot delete an inactive domain's checkpoint itself: cleanup removed the
    // bitmap from the image and then the record.
    assert_eq!(g.checkpoints(), vec![cp.clone()]);
    assert!(
        !image_bitmaps(&g.disk).contains(&failed_cp),
        "{:?}",
        image_bitmaps(&g.disk)
    );

    g.start();
    g.wait_for_writes(g.writes() + 2);
    let next = env.backup(&g.name, &[]).assert_ok();
    let s = env.read_run(&next).status.unwrap();
    assert_eq!(s.phase, BackupPhase::Succeeded);
    let newest = s.checkpoint.clone().unwrap();
    assert_left_clean(&g, &env, true, std::slice::from_ref(&newest));
    let mut left = image_bitmaps(&g.disk);
    left.retain(|b| b.starts_with("snapback-"));
    assert!(
        left.iter().all(|b| *b == newest || *b == cp),
        "only the chain's bitmaps may stay in the image: {left:?}"
    );
}

#[test]
fn a_bitmap_a_failed_run_left_without_a_checkpoint_is_removed_by_the_next_run() {
    let g = Guest::new(
        "sbt-stray",
        GuestOpts {
            prefill_mib: 16,
            ..Default::default()
        },
    );
    let env = Env::new();
    let first = env.backup(&g.name, &[]).assert_ok();

    // What earlier versions left: a failed run whose bitmap stayed in the image after only its
    // checkpoint record was dropped. Recorded as the run journal records a failed run.
    let mut run = env.read_run(&first);
    let stray_run = format!("{first}-x");
    let stray = format!("snapback-{stray_run}");
    run.metadata.name = Some(stray_run.clone());
    let s = run.status.as_mut().unwrap();
    s.phase = BackupPhase::Failed;
    s.checkpoint = Some(stray.clone());
    std::fs::write(
        env.state
            .join("backupruns")
            .join(format!("{stray_run}.yaml")),
        serde_saphyr::to_string(&run).unwrap(),
    )
    .unwrap();
    virsh_ok(&["destroy", &g.name]);
    run_ok(
        "qemu-img",
        &["bitmap", "--add", g.disk.to_str().unwrap(), &stray],
    );
    // Another tool's bitmap, which snapback must never touch.
    run_ok(
        "qemu-img",
        &["bitmap", "--add", g.disk.to_str().unwrap(), "other-tool"],
    );
    g.start();
    assert!(image_bitmaps(&g.disk).contains(&stray));

    g.wait_for_writes(g.writes() + 2);
    let next = env.backup(&g.name, &[]).assert_ok();
    let s = env.read_run(&next).status.unwrap();
    assert_eq!(s.type_, Some(BackupType::Incremental));
    let bitmaps = image_bitmaps(&g.disk);
    assert!(!bitmaps.contains(&stray), "{bitmaps:?}");
    assert!(bitmaps.contains(&"other-tool".to_string()), "{bitmaps:?}");
    assert_left_clean(&g, &env, true, &[s.checkpoint.clone().unwrap()]);
}

#[test]
fn a_vm_whose_qemu_is_killed_during_a_backup_gets_a_clean_full_next_time() {
    let g = Guest::new(
        "sbt-qkill",
        GuestOpts {
            prefill_mib: 16,
            ..Default::default()
        },
    );
    let env = Env::new();
    env.backup(&g.name, &[]).assert_ok();
    // qemu dies under the running job: nothing is flushed, the bitmaps of this qemu session
    // are lost with it.
    let kill = hooks_file(
        &env,
        &format!(
            "onSnapshot:\n- command: [pkill, '-9', '-f', 'guest={},']\n",
            g.name
        ),
    );
    let out = env.backup(&g.name, &["--hooks-file", &kill]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    let failed = env.read_run(&out.name()).status.unwrap();
    assert_eq!(failed.phase, BackupPhase::Failed);
    let failed_cp = failed.checkpoint.unwrap();
    assert!(
        !g.checkpoints().contains(&failed_cp),
        "{:?}",
        g.checkpoints()
    );
    assert!(!image_bitmaps(&g.disk).contains(&failed_cp));

    g.start();
    g.wait_for_writes(g.writes() + 2);
    let next = env.backup(&g.name, &[]).assert_ok();
    let s = env.read_run(&next).status.unwrap();
    assert_eq!(s.type_, Some(BackupType::Full), "{:?}", s.full_reason);
    assert_left_clean(&g, &env, true, &[s.checkpoint.clone().unwrap()]);
    let v = env.verify(&g.name, &["--all"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
}
