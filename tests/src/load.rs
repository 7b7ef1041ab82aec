//! Steady load from concurrent OTLP clients that retry refusals the way the SDKs do, and a
//! record of every event the collector acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

use crate::db::TestDb;
use crate::fixtures::{event, kv, logs_request};
use crate::loadgen::retryable;

/// What a load run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Events in requests sent (each counted once, however often retried).
    pub sent: u64,
    /// Events the collector acknowledged.
    pub acknowledged: u64,
    /// Retryable refusals the clients saw (and retried).
    pub refusals: u64,
    /// Of those, refusals that carried RetryInfo.
    pub with_retry_info: u64,
    /// Events given up on when the run ended (sent, never acknowledged).
    pub abandoned: u64,
    /// Requests refused for good.
    pub failed: u64,
}

#[derive(Default)]
struct Shared {
    acked: Mutex<Vec<String>>,
    sent: AtomicU64,
    refusals: AtomicU64,
    with_retry_info: AtomicU64,
    abandoned: AtomicU64,
    failed: AtomicU64,
    stop_new: AtomicBool,
    give_up: AtomicBool,
}

/// A running load.
pub struct Load {
    shared: Arc<Shared>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

/// What a load sends, and where.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Collectors' OTLP/gRPC endpoints: each request goes to every one of them at once, as a
    /// client retrying against another replica sends the same request twice.
    pub endpoints: Vec<String>,
    /// Concurrent clients.
    pub clients: usize,
    /// Events per request.
    pub events: usize,
    /// Pause between a client's requests.
    pub pause: Duration,
    /// `Some(n)`: every client writes into the same `n` sessions (`shared-0` …), so
    /// transactions of different clients and collectors meet on the same session rows;
    /// `None`: each client has sessions of its own, a new one every ten requests.
    pub shared_sessions: Option<usize>,
    /// Service name of the requests.
    pub service: String,
}

impl Plan {
    /// `clients` clients sending requests of `events` events to `endpoint`, pausing `pause`
    /// between requests, each in sessions of its own.
    pub fn new(endpoint: &str, clients: usize, events: usize, pause: Duration) -> Self {
        Self {
            endpoints: vec![endpoint.to_owned()],
            clients,
            events,
            pause,
            shared_sessions: None,
            service: "load".to_owned(),
        }
    }
}

/// Sends `request` to one collector until it is acknowledged (true), refused for good, or
/// the load gives up.
async fn deliver(
    mut client: LogsServiceClient<Channel>,
    request: opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest,
    shared: Arc<Shared>,
) -> Option<bool> {
    // The collector's own schedule, as an SDK would retry.
    let mut waits =
        usage_collector::backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        match client.export(request.clone()).await {
            Ok(_) => return Some(true),
            Err(status) if retryable(status.code()) => {
                shared.refusals.fetch_add(1, Ordering::SeqCst);
                let hinted = status.get_details_retry_info().and_then(|r| r.retry_delay);
                if hinted.is_some() {
                    shared.with_retry_info.fetch_add(1, Ordering::SeqCst);
                }
                if shared.give_up.load(Ordering::SeqCst) {
                    return None;
                }
                let wait = waits.next().unwrap_or(Duration::from_secs(2));
                tokio::time::sleep(hinted.unwrap_or(wait).min(Duration::from_secs(2))).await;
            }
            Err(status) => {
                eprintln!("load client: request failed for good: {status:?}");
                shared.failed.fetch_add(1, Ordering::SeqCst);
                return Some(false);
            }
        }
    }
}

impl Load {
    /// Starts `clients` clients, each sending requests of `events` events in a loop, pausing
    /// `pause` between requests. Every fourth event is a program run (every other run failed),
    /// the rest page visits; all carry the client's current session, a new one every ten
    /// requests, so session counters are kept up to date under the load.
    pub fn start(endpoint: &str, clients: usize, events: usize, pause: Duration) -> Load {
        Self::run(Plan::new(endpoint, clients, events, pause))
    }

    /// Starts the load `plan` describes (see [`Load::start`] for the events). An event counts
    /// as acknowledged when one of the collectors acknowledged it.
    pub fn run(plan: Plan) -> Load {
        let shared = Arc::new(Shared::default());
        let channels: Vec<Channel> = plan
            .endpoints
            .iter()
            .map(|endpoint| {
                Endpoint::from_shared(endpoint.clone())
                    .expect("endpoint")
                    .timeout(Duration::from_secs(5))
                    .connect_timeout(Duration::from_secs(1))
                    .connect_lazy()
            })
            .collect();
        let plan = Arc::new(plan);
        let clients = (0..plan.clients)
            .map(|c| {
                let shared = shared.clone();
                let plan = plan.clone();
                let clients: Vec<LogsServiceClient<Channel>> = channels
                    .iter()
                    .map(|channel| LogsServiceClient::new(channel.clone()))
                    .collect();
                tokio::spawn(async move {
                    let events = plan.events;
                    let mut n = 0u64;
                    while !shared.stop_new.load(Ordering::SeqCst) {
                        let ids: Vec<String> = (0..events)
                            .map(|_| uuid::Uuid::now_v7().to_string())
                            .collect();
                        let session = match plan.shared_sessions {
                            Some(sessions) => format!("shared-{}", (n as usize + c) % sessions),
                            None => format!("load-{c}-{}", n / 10),
                        };
                        let records = ids
                            .iter()
                            .enumerate()
                            .map(|(i, id)| record(id, &session, n, i, c))
                            .collect();
                        n += 1;
                        let request = logs_request(&plan.service, records);
                        shared.sent.fetch_add(events as u64, Ordering::SeqCst);
                        let mut sends = tokio::task::JoinSet::new();
                        for client in &clients {
                            sends.spawn(deliver(client.clone(), request.clone(), shared.clone()));
                        }
                        let answers: Vec<Option<bool>> = sends.join_all().await;
                        if answers.contains(&Some(true)) {
                            shared
                                .acked
                                .lock()
                                .expect("acked")
                                .extend(ids.iter().cloned());
                        } else if answers.iter().any(Option::is_none) {
                            shared.abandoned.fetch_add(events as u64, Ordering::SeqCst);
                            return;
                        }
                        tokio::time::sleep(plan.pause).await;
                    }
                })
            })
            .collect();
        Load { shared, clients }
    }

    /// Events acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.shared.acked.lock().expect("acked").len() as u64
    }

    /// Refusals so far.
    pub fn refusals(&self) -> u64 {
        self.shared.refusals.load(Ordering::SeqCst)
    }

    /// Stops sending new requests, lets retries finish for up to `patience`, then gives up.
    pub async fn stop(self, patience: Duration) -> (Report, Vec<String>) {
        self.shared.stop_new.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + patience;
        for client in self.clients {
            let abort = client.abort_handle();
            if tokio::time::timeout_at(deadline, client).await.is_err() {
                self.shared.give_up.store(true, Ordering::SeqCst);
                abort.abort();
            }
        }
        let acked = self.shared.acked.lock().expect("acked").clone();
        let s = &self.shared;
        let report = Report {
            sent: s.sent.load(Ordering::SeqCst),
            acknowledged: acked.len() as u64,
            refusals: s.refusals.load(Ordering::SeqCst),
            with_retry_info: s.with_retry_info.load(Ordering::SeqCst),
            abandoned: s.abandoned.load(Ordering::SeqCst),
            failed: s.failed.load(Ordering::SeqCst),
        };
        (report, acked)
    }
}

/// Event `i` of client `c`'s request `n`: a program run for every fourth, else a page visit.
fn record(id: &str, session: &str, n: u64, i: usize, c: usize) -> LogRecord {
    let time = 1_772_600_767_000_000_000 + n;
    let mut attributes = vec![kv("event.id", id), kv("session.id", session)];
    if i % 4 != 3 {
        attributes.push(kv("url.path", format!("/load/{c}/{n}")));
        return event("page_visit", time, attributes);
    }
    attributes.push(kv("program.lines", 10i64));
    attributes.push(kv("program.lines_executed", (n % 50) as i64 + i as i64));
    if i % 8 == 7 {
        attributes.push(kv("error.message", "?SYNTAX ERROR"));
    }
    event("program_execution", time, attributes)
}

/// How many acknowledged events are in `page_visits` or `program_executions`, and how many
/// of them more than once.
pub async fn check_present(db: &TestDb, acked: &[String]) -> (u64, u64) {
    let rows = db
        .texts(
            "SELECT LOWER(HEX(event_id)), CAST(COUNT(*) AS CHAR) FROM \
             (SELECT event_id FROM page_visits UNION ALL SELECT event_id FROM program_executions) AS e \
             GROUP BY event_id",
        )
        .await;
    let counts: HashMap<String, u64> = rows
        .into_iter()
        .map(|row| {
            let id = row[0].clone().expect("event id");
            let count = row[1].as_deref().expect("count").parse().expect("number");
            (id, count)
        })
        .collect();
    let mut present = 0;
    let mut duplicated = 0;
    for id in acked {
        match counts.get(&id.replace('-', "")) {
            Some(1) => present += 1,
            Some(_) => {
                present += 1;
                duplicated += 1;
            }
            None => {}
        }
    }
    (present, duplicated)
}

/// The sessions' counters against their program runs, after a load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Sessions in `ide_sessions`.
    pub sessions: u64,
    /// Rows in `program_executions`.
    pub runs: u64,
    /// Sessions whose stored counters differ from their runs: session id, stored
    /// (programs run, lines executed, errors), then the same counted from `program_executions`.
    pub wrong: Vec<(String, [i64; 3], [i64; 3])>,
}

/// Compares every session's `programs_run`, `lines_executed` and `errors_encountered` with
/// what its rows in `program_executions` add up to.
pub async fn check_session_counters(db: &TestDb) -> SessionCounters {
    let rows = db
        .texts(
            "SELECT s.session_id, CAST(s.programs_run AS CHAR), CAST(s.lines_executed AS CHAR), \
             CAST(s.errors_encountered AS CHAR), CAST(COUNT(p.event_id) AS CHAR), \
             CAST(COALESCE(SUM(p.lines_executed), 0) AS CHAR), \
             CAST(COALESCE(SUM(CASE WHEN p.event_id IS NULL OR p.success THEN 0 ELSE 1 END), 0) \
             AS CHAR) \
             FROM ide_sessions s LEFT JOIN program_executions p \
             ON p.session_id = s.session_id AND p.service = s.service \
             GROUP BY s.session_id, s.service, s.programs_run, s.lines_executed, s.errors_encountered",
        )
        .await;
    let number = |text: &Option<String>| -> i64 {
        text.as_deref()
            .unwrap_or("0")
            .parse()
            .expect("a counter or a count")
    };
    let mut counters = SessionCounters::default();
    for row in &rows {
        let stored = [number(&row[1]), number(&row[2]), number(&row[3])];
        let counted = [number(&row[4]), number(&row[5]), number(&row[6])];
        counters.sessions += 1;
        counters.runs += counted[0] as u64;
        if stored != counted {
            let session = row[0].clone().expect("session id");
            counters.wrong.push((session, stored, counted));
        }
    }
    counters
}
