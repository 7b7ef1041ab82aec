//! Waiting for a condition to hold instead of sleeping for a guessed time.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

/// How often a condition is observed again.
pub const EVERY: Duration = Duration::from_millis(50);

/// Observes `observe` every [`EVERY`] until `accept` takes what it saw, and returns that.
/// Panics after `limit`, naming `what` was awaited and the last value observed.
pub async fn until<T, F>(
    what: &str,
    limit: Duration,
    mut observe: impl FnMut() -> F,
    mut accept: impl FnMut(&T) -> bool,
) -> T
where
    T: Debug,
    F: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let seen = observe().await;
        if accept(&seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not so after {limit:?}; last observed: {seen:?}"
        );
        tokio::time::sleep(EVERY).await;
    }
}
