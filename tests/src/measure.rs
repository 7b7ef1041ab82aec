//! Measuring a collector process from outside, for the benches and the bounded-memory tests:
//! the machine, a process's CPU time and peak memory, and the slowest `/health/live` answer
//! while something else happens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A bench's setting from the environment variable `name`, or `default` when it is unset or not
/// a number.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The machine a measurement ran on, for a bench's header.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}; load generator, collector and MariaDB share them")
}

/// (CPU seconds used, peak resident MiB) of process `pid` so far (Linux `/proc`).
pub fn usage(pid: u32) -> (f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            Some(
                (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
                    / ticks,
            )
        })
        .unwrap_or(0.0);
    (cpu, peak_rss_mib(pid))
}

/// Peak resident memory of process `pid` so far, in MiB (`VmHWM`; 0 if unreadable).
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Asks `/health/live` every 20 ms in the background and keeps the slowest answer.
#[derive(Debug)]
pub struct LivenessProbe {
    slowest_us: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl LivenessProbe {
    /// Starts probing the admin port at `admin`.
    pub fn start(admin: SocketAddr) -> Self {
        let slowest_us = Arc::new(AtomicU64::new(0));
        let slowest = slowest_us.clone();
        let task = tokio::spawn(async move {
            loop {
                let started = Instant::now();
                let answered = tokio::time::timeout(
                    Duration::from_secs(30),
                    crate::fixtures::http_get(admin, "/health/live"),
                )
                .await;
                let took = started.elapsed().as_micros() as u64;
                slowest.fetch_max(
                    if answered.is_ok() { took } else { u64::MAX },
                    Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { slowest_us, task }
    }

    /// Stops probing; the slowest answer seen.
    pub fn stop(self) -> Duration {
        self.task.abort();
        Duration::from_micros(self.slowest_us.load(Ordering::Relaxed))
    }
}
