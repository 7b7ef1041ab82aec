//! The one backoff schedule every retry loop uses (the writer, start-up verification, the
//! test clients): exponential, capped, with jitter so that collectors and clients do not retry
//! in step. Built on `backon`'s exponential builder, used as a plain iterator of waits so each
//! loop keeps its own stop conditions and logging.

use std::time::Duration;

use backon::BackoffBuilder;

/// Waits of `first`, then doubling up to `max`, each stretched by a random 0–100 % (so a wait
/// is at most twice `max`); never ends.
pub fn exponential(first: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send {
    backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_with_jitter_and_never_end() {
        let first = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let waits: Vec<Duration> = exponential(first, max).take(20).collect();
        assert_eq!(waits.len(), 20);
        assert!(waits[0] >= first && waits[0] < first * 2, "{waits:?}");
        assert!(waits[19] >= max && waits[19] < max * 2, "{waits:?}");
        assert!(waits.windows(2).any(|w| w[0] != w[1]), "{waits:?}");
    }
}
