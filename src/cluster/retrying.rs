//! A store that tries again what failed for a passing reason. An apiserver restarting, a
//! load balancer dropping a connection, priority-and-fairness throttling (429): each passes in
//! seconds, and a status write lost to one of them would otherwise fail a backup or skip a
//! pass. Only `Unavailable` is retried: a Conflict, NotFound, Invalid or Forbidden answer
//! would be the same the second time. Waits grow exponentially with jitter (so agents that
//! lost the API together do not come back together), and the total time of a call is capped
//! so that no pass and no run hangs on a dead API.

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::api::core::v1::ObjectReference;

use super::store::{ApiError, ApiErrorKind, ApiResult, EventType, Listing, Object, Store};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first wait; each next one doubles, plus jitter, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// The most one call spends, its attempts and waits together, before its error is
    /// returned.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            budget: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Millisecond waits within `budget`, for tests.
    pub fn quick(budget: Duration) -> Self {
        Self {
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            budget,
        }
    }
}

/// The wait before the next attempt: the backoff's, or longer when the apiserver asked for
/// longer (`Retry-After`); none when the attempt after it would start past `end`, so the
/// error goes back to the caller in time.
pub fn next_wait(
    e: &ApiError,
    backoff: Option<Duration>,
    now: Instant,
    end: Instant,
) -> Option<Duration> {
    let wait = backoff?.max(e.retry_after.unwrap_or_default());
    (now + wait <= end).then_some(wait)
}

#[derive(Clone)]
pub struct Retrying<S> {
    inner: S,
    policy: RetryPolicy,
    /// When set, no retry of this copy goes past it: the calls of one controller pass share
    /// one budget, so a pass against a failing API ends in bounded time.
    deadline: Option<Instant>,
}

impl<S: Store> Retrying<S> {
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Self {
            inner,
            policy,
            deadline: None,
        }
    }

    /// A copy whose retries all end by `deadline` (each call still within its own budget).
    pub fn until(&self, deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
            ..self.clone()
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn call<T, Fut, F>(&self, verb: &'static str, f: F) -> ApiResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ApiResult<T>>,
    {
        let own_end = Instant::now() + self.policy.budget;
        let end = self.deadline.map_or(own_end, |d| d.min(own_end));
        let backoff = ExponentialBuilder::new()
            .with_min_delay(self.policy.first_delay)
            .with_max_delay(self.policy.max_delay)
            .with_jitter()
            .without_max_times();
        f.retry(backoff)
            .when(|e: &ApiError| e.is(ApiErrorKind::Unavailable))
            .adjust(move |e, next| next_wait(e, next, Instant::now(), end))
            .notify(|e, wait| {
                tracing::debug!(verb, "the API is unavailable ({e}); again in {wait:?}")
            })
            .await
    }
}

impl<S: Store> Store for Retrying<S> {
    async fn listing<K: Object>(
        &self,
        ns: Option<&str>,
        labels: &[(&str, &str)],
    ) -> ApiResult<Listing<K>> {
        self.call("list", || self.inner.listing(ns, labels)).await
    }

    async fn get<K: Object>(&self, ns: Option<&str>, name: &str) -> ApiResult<Option<K>> {
        self.call("get", || self.inner.get(ns, name)).await
    }

    /// A create whose answer was lost may have happened: the retry then gets AlreadyExists,
    /// which every caller already takes as "it is there".
    async fn create<K: Object>(&self, obj: &K) -> ApiResult<K> {
        self.call("create", || self.inner.create(obj)).await
    }

    /// Likewise a lost replace: its retry gets Conflict, and the caller reads again.
    async fn replace<K: Object>(&self, obj: &K) -> ApiResult<K> {
        self.call("replace", || self.inner.replace(obj)).await
    }

    async fn replace_status<K: Object>(&self, obj: &K) -> ApiResult<K> {
        self.call("replace status", || self.inner.replace_status(obj))
            .await
    }

    async fn apply_status<K: Object>(&self, obj: &K, manager: &str) -> ApiResult<K> {
        self.call("apply status", || self.inner.apply_status(obj, manager))
            .await
    }

    async fn delete<K: Object>(&self, ns: Option<&str>, name: &str) -> ApiResult<()> {
        self.call("delete", || self.inner.delete::<K>(ns, name))
            .await
    }

    /// Events are best effort: one is not worth holding up a pass or a run for.
    async fn event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) -> ApiResult<()> {
        self.inner.event(regarding, type_, reason, note).await
    }

    fn changes(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        self.inner.changes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackupRun, BackupRunSpec};
    use crate::cluster::mem::MemStore;
    use crate::cluster::mem_faults::Verb;

    async fn with_run() -> (MemStore, BackupRun) {
        let mem = MemStore::new();
        let mut r = BackupRun::new("r", BackupRunSpec::new("web", "t"));
        r.metadata.namespace = Some("ns".into());
        let r = mem.create(&r).await.unwrap();
        (mem, r)
    }

    fn quick(mem: &MemStore) -> Retrying<MemStore> {
        Retrying::new(mem.clone(), RetryPolicy::quick(Duration::from_secs(5)))
    }

    #[tokio::test]
    async fn a_call_that_fails_while_the_api_is_unavailable_is_tried_again_until_it_lands() {
        let (mem, mut r) = with_run().await;
        mem.fail_next::<BackupRun>(Verb::ReplaceStatus, ApiErrorKind::Unavailable, 4);
        r.status = Some(Default::default());

        quick(&mem).replace_status(&r).await.unwrap();

        assert_eq!(mem.faults_fired(), 4);
        let stored: BackupRun = mem.get(Some("ns"), "r").await.unwrap().unwrap();
        assert!(stored.status.is_some());
    }

    #[tokio::test]
    async fn conflicts_and_refusals_are_never_tried_again() {
        let (mem, r) = with_run().await;
        let store = quick(&mem);
        for (n, kind) in [
            ApiErrorKind::Conflict,
            ApiErrorKind::Invalid,
            ApiErrorKind::Forbidden,
            ApiErrorKind::NotFound,
            ApiErrorKind::Other,
        ]
        .into_iter()
        .enumerate()
        {
            mem.fail_next::<BackupRun>(Verb::Replace, kind, 2);
            let e = store.replace(&r).await.unwrap_err();
            assert_eq!(e.kind, kind);
            assert_eq!(mem.faults_fired(), n as u64 + 1, "{kind:?} once");
            mem.clear_faults();
        }
    }

    #[tokio::test]
    async fn a_call_gives_up_within_its_budget() {
        let (mem, _) = with_run().await;
        mem.fail_next::<BackupRun>(Verb::List, ApiErrorKind::Unavailable, u32::MAX);
        let store = Retrying::new(mem.clone(), RetryPolicy::quick(Duration::from_millis(50)));
        let t = Instant::now();

        let e = store.list::<BackupRun>(None, &[]).await.unwrap_err();

        assert!(e.is(ApiErrorKind::Unavailable));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(mem.faults_fired() > 2, "retried meanwhile");
    }

    #[tokio::test]
    async fn past_the_deadline_of_a_pass_each_call_is_tried_once() {
        let (mem, _) = with_run().await;
        mem.fail_next::<BackupRun>(Verb::Get, ApiErrorKind::Unavailable, u32::MAX);
        let store = quick(&mem).until(Instant::now());

        let e = store.get::<BackupRun>(Some("ns"), "r").await.unwrap_err();

        assert!(e.is(ApiErrorKind::Unavailable));
        assert_eq!(mem.faults_fired(), 1);
    }

    fn unavailable(after: Option<u64>) -> ApiError {
        ApiError::new(ApiErrorKind::Unavailable, "503")
            .with_retry_after(after.map(Duration::from_secs))
    }

    #[test]
    fn the_wait_is_the_backoffs_or_the_longer_one_the_apiserver_asked_for() {
        let now = Instant::now();
        let end = now + Duration::from_secs(30);
        let b = Some(Duration::from_millis(400));
        assert_eq!(next_wait(&unavailable(None), b, now, end), b);
        assert_eq!(
            next_wait(&unavailable(Some(2)), b, now, end),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn no_wait_goes_past_the_end_of_the_budget() {
        let now = Instant::now();
        let end = now + Duration::from_secs(1);
        let b = Some(Duration::from_millis(400));
        assert_eq!(next_wait(&unavailable(Some(5)), b, now, end), None);
        assert_eq!(
            next_wait(&unavailable(None), b, now + Duration::from_millis(700), end),
            None
        );
        assert_eq!(next_wait(&unavailable(None), None, now, end), None);
    }
}
