//! What each service sent (usage events, and records that were not), and what was written for
//! it, in the last minute, for
//! `usage-collector status`: counts in five-second buckets, so the window slides in steps of
//! five seconds and costs a few words per service.
//!
//! Services are bounded like the metrics' labels: past [`super::metrics::MAX_SERVICES`] a new
//! service counts under `other`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::metrics::{MAX_LABEL_BYTES, MAX_SERVICES, OTHER, bounded};

/// Length of one bucket.
const BUCKET: Duration = Duration::from_secs(5);
/// Buckets in the window (one minute).
const BUCKETS: usize = 12;

/// Counts of one bucket: accepted, written, not usage events.
type Tally = [u64; 3];

/// The counts of one service, per bucket.
#[derive(Debug, Default, Clone)]
struct Counts {
    /// (bucket number since `start`, counts), newest last, at most [`BUCKETS`].
    buckets: Vec<(u64, Tally)>,
}

impl Counts {
    fn add(&mut self, bucket: u64, tally: Tally) {
        match self.buckets.last_mut() {
            Some((b, counts)) if *b == bucket => {
                for (sum, n) in counts.iter_mut().zip(tally) {
                    *sum += n;
                }
            }
            _ => self.buckets.push((bucket, tally)),
        }
        self.buckets
            .retain(|(b, _)| bucket.saturating_sub(*b) < BUCKETS as u64);
    }

    /// The counts within the window ending at bucket `now`.
    fn sum(&self, now: u64) -> Tally {
        self.buckets
            .iter()
            .filter(|(b, _)| now.saturating_sub(*b) < BUCKETS as u64)
            .fold([0; 3], |mut sum, (_, counts)| {
                for (s, n) in sum.iter_mut().zip(counts) {
                    *s += n;
                }
                sum
            })
    }
}

/// Per-service counts of the last minute.
#[derive(Debug)]
pub struct LastMinute {
    start: Instant,
    services: Mutex<BTreeMap<String, Counts>>,
}

impl Default for LastMinute {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            services: Mutex::default(),
        }
    }
}

/// One service's counts of the last minute.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceMinute {
    /// `service.name` (cut and bounded like the metrics' labels).
    pub service: String,
    /// Records accepted (spooled) for it in the last minute.
    pub accepted_last_minute: u64,
    /// Events written to the database for it in the last minute.
    pub written_last_minute: u64,
    /// Records it sent that are not usage events (docs/usage-events.md), in the last minute.
    pub not_usage_last_minute: u64,
}

impl LastMinute {
    fn bucket(&self, at: Instant) -> u64 {
        at.duration_since(self.start).as_secs() / BUCKET.as_secs()
    }

    fn add(&self, service: &str, tally: Tally) {
        let bucket = self.bucket(Instant::now());
        let service = bounded(service, MAX_LABEL_BYTES);
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let key = if services.contains_key(service) || services.len() < MAX_SERVICES {
            service
        } else {
            OTHER
        };
        services
            .entry(key.to_owned())
            .or_default()
            .add(bucket, tally);
    }

    /// Counts `n` records of `service` accepted now.
    pub fn accepted(&self, service: &str, n: u64) {
        self.add(service, [n, 0, 0]);
    }

    /// Counts `n` events of `service` written now.
    pub fn written(&self, service: &str, n: u64) {
        self.add(service, [0, n, 0]);
    }

    /// Counts `n` records of `service` that were not usage events, now.
    pub fn not_usage(&self, service: &str, n: u64) {
        self.add(service, [0, 0, n]);
    }

    /// Every service with something in the last minute, by name.
    pub fn snapshot(&self) -> Vec<ServiceMinute> {
        let now = self.bucket(Instant::now());
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services
            .iter()
            .map(|(service, counts)| {
                let [accepted, written, not_usage] = counts.sum(now);
                ServiceMinute {
                    service: service.clone(),
                    accepted_last_minute: accepted,
                    written_last_minute: written,
                    not_usage_last_minute: not_usage,
                }
            })
            .filter(|s| {
                s.accepted_last_minute + s.written_last_minute + s.not_usage_last_minute > 0
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_leaves_the_window_after_a_minute() {
        let mut counts = Counts::default();
        counts.add(0, [5, 0, 1]);
        counts.add(0, [1, 2, 0]);
        counts.add(3, [0, 4, 0]);
        assert_eq!(counts.sum(3), [6, 6, 1]);
        assert_eq!(counts.sum(11), [6, 6, 1]);
        assert_eq!(counts.sum(12), [0, 4, 0], "bucket 0 is a minute old");
        counts.add(20, [1, 1, 0]);
        assert_eq!(counts.buckets.len(), 1, "old buckets are dropped");
    }

    #[test]
    fn services_are_counted_and_bounded() {
        let window = LastMinute::default();
        window.accepted("web-ide", 3);
        window.written("web-ide", 2);
        for i in 0..MAX_SERVICES + 3 {
            window.accepted(&format!("s{i}"), 1);
        }
        let snapshot = window.snapshot();
        let ide = snapshot.iter().find(|s| s.service == "web-ide").unwrap();
        assert_eq!((ide.accepted_last_minute, ide.written_last_minute), (3, 2));
        assert!(snapshot.iter().any(|s| s.service == OTHER));
        assert!(snapshot.len() <= MAX_SERVICES + 1);
    }
}
