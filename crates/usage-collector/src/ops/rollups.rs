//! `usage-collector rollups rebuild --from DATE [--to DATE]`: the daily rollup and the session
//! counters of those days recomputed from the raw rows, one day at a time, while collectors
//! write ([`crate::sink::rebuild`] says how each day stays exact).

use time::Date;

use crate::catalog::Catalog;
use crate::sink::rebuild::DayRebuilt;
use crate::sink::{ErrorKind, Sink, SinkError};

/// Attempts per day when another writer's transaction collides with the rebuild's (a
/// deadlock, or a certification conflict on a Galera cluster): the day is rebuilt again.
const ATTEMPTS: u32 = 5;

/// Rebuilds each day from `from` to `to` (both included), in order; stops at the first day that
/// fails for another reason than a collision, with the days done so far.
pub async fn rebuild(
    sink: &Sink,
    catalog: &Catalog,
    from: Date,
    to: Date,
) -> Result<Vec<DayRebuilt>, (Vec<DayRebuilt>, SinkError)> {
    let mut done = Vec::new();
    let mut day = from;
    while day <= to {
        let mut attempt = 1;
        let rebuilt = loop {
            match sink.rebuild_day(catalog, day).await {
                Ok(rebuilt) => break rebuilt,
                Err(e) if e.kind == ErrorKind::Conflict && attempt < ATTEMPTS => {
                    tracing::info!(%day, attempt, reason = e.reason, "rollup rebuild met a writer; trying the day again");
                    tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(attempt)))
                        .await;
                    attempt += 1;
                }
                Err(e) => return Err((done, e)),
            }
        };
        tracing::info!(
            date = %rebuilt.date,
            services = rebuilt.services,
            sessions = rebuilt.sessions,
            "rollups rebuilt for the day"
        );
        done.push(rebuilt);
        match day.next_day() {
            Some(next) => day = next,
            None => break,
        }
    }
    Ok(done)
}
