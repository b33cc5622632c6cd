//! Whether this controller may act as the leader now, decided purely.
//!
//! kube-lease-manager acquires and renews the Lease, and says on a channel when this process
//! became or stopped being its holder. But when a renewal fails it only logs and tries again:
//! while the API is unreachable its channel keeps saying "leader" long after the Lease ran
//! out and another replica may have taken it. So the controller also reads the Lease itself
//! and acts only while the Lease, as last read, names it and has not run out by its own clock,
//! less a margin for the clocks of other nodes. A read that fails extends nothing: the
//! leadership then runs out by itself, on time, however long the API stays away.

use std::future::Future;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

/// What one read of the Lease showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    pub renewed: Option<Timestamp>,
    pub duration_secs: Option<i32>,
}

/// Until when the Lease, as read, is `me`'s to act on: its renewal plus its duration, less
/// `margin`. `None` when someone else holds it, or no one.
pub fn held_until(view: &LeaseView, me: &str, margin: Duration) -> Option<Timestamp> {
    if view.holder.as_deref() != Some(me) {
        return None;
    }
    let secs = i64::from(view.duration_secs?);
    let margin = SignedDuration::try_from(margin).ok()?;
    view.renewed?
        .checked_add(SignedDuration::from_secs(secs))
        .ok()?
        .checked_sub(margin)
        .ok()
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    until: Option<Timestamp>,
}

impl Leadership {
    /// A successful read of the Lease: the deadline becomes what it shows (none if the Lease
    /// is another's). A failed read is not reported here: the deadline stands.
    pub fn observed(&mut self, view: &LeaseView, me: &str, margin: Duration) {
        self.until = held_until(view, me, margin);
    }

    /// The Lease is gone (deleted): nobody's, ours neither.
    pub fn forget(&mut self) {
        self.until = None;
    }

    /// Leading now: the lease manager says so (`elected`) and the Lease read last says so
    /// until a time not yet past.
    pub fn leading(&self, elected: bool, now: Timestamp) -> bool {
        elected && self.until.is_some_and(|u| now < u)
    }

    /// When the leadership runs out unless a renewal is seen first.
    pub fn ends_at(&self) -> Option<Timestamp> {
        self.until
    }
}

/// Runs `work` while `leading` stays true. `None` when leadership was lost first: `work` is
/// dropped wherever it was, which is safe for a pass, whose every write is idempotent and
/// which the next leader simply runs again.
pub async fn while_leading<F: Future>(
    leading: &watch::Receiver<bool>,
    work: F,
) -> Option<F::Output> {
    let mut lost = leading.clone();
    tokio::select! {
        // Checked first: work is never started, or polled again, once leadership is gone.
        biased;
        // A closed channel (no election any more) is a loss too.
        _ = lost.wait_for(|l| !*l) => None,
        out = work => Some(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn view(holder: &str, renewed: &str) -> LeaseView {
        LeaseView {
            holder: Some(holder.into()),
            renewed: Some(t(renewed)),
            duration_secs: Some(20),
        }
    }

    const MARGIN: Duration = Duration::from_secs(3);

    #[test]
    fn the_controller_leads_only_while_the_lease_names_it_and_has_not_run_out() {
        let mut l = Leadership::default();
        assert!(
            !l.leading(true, t("2025-01-01T00:00:00Z")),
            "not before a read"
        );
        l.observed(&view("me", "2025-01-01T00:00:00Z"), "me", MARGIN);
        assert!(l.leading(true, t("2025-01-01T00:00:16Z")));
        assert!(
            !l.leading(true, t("2025-01-01T00:00:17Z")),
            "20 s of lease, less 3 s for other clocks"
        );
        assert!(
            !l.leading(false, t("2025-01-01T00:00:01Z")),
            "the lease manager's word is needed too"
        );
    }

    #[test]
    fn a_lease_that_cannot_be_read_runs_out_by_itself_and_a_renewal_extends_it() {
        let mut l = Leadership::default();
        l.observed(&view("me", "2025-01-01T00:00:00Z"), "me", MARGIN);
        // Reads fail from here on: nothing is observed, the deadline stands.
        assert!(!l.leading(true, t("2025-01-01T00:00:30Z")));
        l.observed(&view("me", "2025-01-01T00:00:28Z"), "me", MARGIN);
        assert!(l.leading(true, t("2025-01-01T00:00:30Z")), "renewed");
    }

    #[test]
    fn another_holder_or_a_deleted_lease_ends_the_leadership_at_once() {
        let now = t("2025-01-01T00:00:01Z");
        let mut l = Leadership::default();
        l.observed(&view("me", "2025-01-01T00:00:00Z"), "me", MARGIN);
        l.observed(&view("other", "2025-01-01T00:00:00Z"), "me", MARGIN);
        assert!(!l.leading(true, now));
        l.observed(&view("me", "2025-01-01T00:00:00Z"), "me", MARGIN);
        l.forget();
        assert!(!l.leading(true, now));
        let released = LeaseView::default();
        l.observed(&released, "me", MARGIN);
        assert!(!l.leading(true, now), "a released Lease names no one");
    }

    #[tokio::test]
    async fn work_is_dropped_when_leadership_is_lost_and_finishes_while_it_holds() {
        let (tx, rx) = watch::channel(true);
        assert_eq!(while_leading(&rx, async { 7 }).await, Some(7));
        let flip = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(false).unwrap();
        };
        let (out, ()) = tokio::join!(while_leading(&rx, std::future::pending::<()>()), flip);
        assert_eq!(
            out, None,
            "the pass never ends by itself; losing the lease ends it"
        );
        assert_eq!(
            while_leading(&rx, async { 7 }).await,
            None,
            "not leading: not started"
        );
    }
}
