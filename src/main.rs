use clap::Parser;

use snapback::cli::{backup, get, Cli, Command, Kind};
use snapback::store::FileStore;

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SNAPBACK_LOG")
        .unwrap_or_else(|_| "warn".into());
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    let code = match cli.command {
        Command::Backup(args) => backup::execute(args).await,
        Command::Resume(args) => resume(args).await,
        Command::Crd(a) if a.reference => {
            print!("{}", snapback::api::reference::markdown());
            0
        }
        Command::Crd(_) => match snapback::api::crds::all_yaml() {
            Ok(y) => {
                print!("{y}");
                0
            }
            Err(e) => {
                eprintln!("Internal: {e}");
                1
            }
        },
        Command::Restore(args) => snapback::cli::restore::execute(args).await,
        Command::List(args) => snapback::cli::restore::list(args).await,
        Command::Browse(args) => snapback::cli::browse::execute(args).await,
        Command::Verify(args) => snapback::cli::verify::execute(args).await,
        Command::Cbt(args) => snapback::cli::cbt::execute(args).await,
        Command::Label(args) => snapback::cli::label::label(args).await,
        Command::Unlabel(args) => snapback::cli::label::unlabel(args).await,
        Command::Local(args) => snapback::cli::local::local(args).await,
        Command::Revert(args) => snapback::cli::local::revert_cmd(args).await,
        Command::Prune(args) => snapback::cli::prune::execute(args).await,
        Command::Controller(args) => snapback::cli::cluster::controller(args).await,
        Command::Agent(args) => snapback::cli::cluster::agent(args).await,
        Command::KubevirtWorker(args) => {
            snapback::cli::kubevirt_worker::kubevirt_worker(args).await
        }
        Command::ReleaseFinalizers(args) => snapback::cli::release::execute(args).await,
        Command::Standalone(args) => snapback::cli::standalone::execute(args).await,
        Command::Describe(args) => describe(args),
        Command::Get(args) => match args.kind {
            Kind::Backupruns => match FileStore::new(&args.state_dir).backup_runs() {
                Ok(runs) => {
                    print!("{}", get::backup_runs_table(&runs));
                    0
                }
                Err(e) => {
                    eprintln!("Internal: {e}");
                    1
                }
            },
            Kind::Restorerequests => {
                match FileStore::new(&args.state_dir).list("restorerequests") {
                    Ok(reqs) => {
                        print!("{}", snapback::cli::restore::restore_table(&reqs));
                        0
                    }
                    Err(e) => {
                        eprintln!("Internal: {e}");
                        1
                    }
                }
            }
        },
    };
    std::process::exit(code);
}

async fn resume(mut args: snapback::cli::ResumeArgs) -> i32 {
    args.common.absolutize();
    let store = FileStore::new(&args.common.state_dir);
    let host = match snapback::libvirt::LibvirtHost::connect(&args.common.connect).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("LibvirtUnavailable: {e}");
            return 1;
        }
    };
    let cancel = snapback::process::cancel_on_signal();
    let mut failed = 0;
    match backup::resume_stale(
        &host,
        &store,
        &args.target,
        &args.common.state_dir,
        None,
        &cancel,
    )
    .await
    {
        Ok(runs) => {
            for r in &runs {
                println!("{}", r.metadata.name.clone().unwrap_or_default());
            }
            failed += runs
                .iter()
                .filter(|r| {
                    r.status
                        .as_ref()
                        .is_some_and(|s| s.phase == snapback::api::BackupPhase::Failed)
                })
                .count();
        }
        Err(e) => {
            eprintln!("{}: {}", e.reason, e.message);
            return 1;
        }
    }
    match snapback::cli::restore::resume_stale(
        &host,
        &store,
        &args.target,
        &args.common.state_dir,
        &cancel,
    )
    .await
    {
        Ok(reqs) => {
            for r in &reqs {
                println!("{}", r.metadata.name.clone().unwrap_or_default());
            }
            failed += reqs
                .iter()
                .filter(|r| {
                    r.status
                        .as_ref()
                        .is_some_and(|s| s.phase != snapback::api::RestorePhase::Succeeded)
                })
                .count();
        }
        Err(e) => {
            eprintln!("{}: {}", e.reason, e.message);
            return 1;
        }
    }
    i32::from(failed > 0)
}

fn describe(args: snapback::cli::DescribeArgs) -> i32 {
    let store = FileStore::new(&args.state_dir);
    let text = match args.kind {
        Kind::Backupruns => store
            .read::<snapback::api::BackupRun>("backupruns", &args.name)
            .map(|r| snapback::cli::describe::describe_backup_run(&r)),
        // A restore's status is short and nested: its YAML reads best.
        Kind::Restorerequests => store
            .read::<snapback::api::RestoreRequest>("restorerequests", &args.name)
            .map(|r| serde_saphyr::to_string(&r).unwrap_or_default()),
    };
    match text {
        Ok(t) => {
            print!("{t}");
            0
        }
        Err(e) => {
            eprintln!("NotFound: {e}");
            1
        }
    }
}
