//! Progress on stderr: phase changes, and bytes done of total at most once a second.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lifecycle::{Event, Reporter};
use crate::units::human_bytes;

pub fn stderr_reporter(run: String) -> Reporter {
    let last: Mutex<Option<Instant>> = Mutex::new(None);
    Box::new(move |ev| match ev {
        Event::Phase(p) => eprintln!("{run}: {p}"),
        Event::Note(n) => eprintln!("{run}: {n}"),
        Event::Progress { stage, done, total } => {
            let mut l = last.lock().unwrap();
            if l.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) && done < total {
                return;
            }
            *l = Some(Instant::now());
            let pct = if total > 0 {
                done.min(total) as f64 * 100.0 / total as f64
            } else {
                0.0
            };
            eprintln!(
                "{run}: {stage} {} / {} ({pct:.0}%)",
                human_bytes(done.min(total)),
                human_bytes(total)
            );
        }
    })
}
