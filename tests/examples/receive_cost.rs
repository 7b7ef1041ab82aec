//! The receive path of one 512-record logs request, run a given number of times, for counting
//! instructions (`valgrind --tool=callgrind`), which the machine's other load does not change
//! as it changes times: `receive_cost N [derived]` reads the shape of, decodes and maps the
//! request N times (with `event.id` on every record, or on none: derived ids).

use prost::Message as _;
use usage_collector::catalog::{Catalog, convert};
use usage_collector::event::Signal;
use usage_collector::receiver::ingest::Violations;
use usage_collector::receiver::shape::{Limits, Shape};
use usage_pipeline_tests::fixtures::{T0, event, kv, logs_request};

fn main() {
    let mut args = std::env::args().skip(1);
    let times: usize = args
        .next()
        .map_or(Ok(100), |n| n.parse())
        .expect("a number of times");
    let derived = args.next().as_deref() == Some("derived");
    let bytes = request(512, !derived).encode_to_vec();
    let catalog = Catalog::built_in();
    let limits = Limits {
        max_records: 10_000,
        max_attributes: 128,
        max_value_bytes: 64 * 1024,
    };
    let mut rows = 0;
    for _ in 0..times {
        let shape = Shape::of(&bytes, Signal::Log, &limits).expect("shape");
        let converted =
            convert::logs(&bytes, &catalog, 500, Violations::new(&shape)).expect("request");
        rows += converted.events.len();
    }
    println!("{rows} events mapped");
}

/// As the `decode_map` bench's request: page visits, program runs, feature use and custom
/// events, with or without `event.id`.
fn request(
    records: u64,
    ids: bool,
) -> opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
    let events = (0..records)
        .map(|i| {
            let session = format!("session-{}", i % 64);
            let id = uuid::Uuid::now_v7().to_string();
            let time = T0 + i * 1_000_000;
            let mut record = match i % 4 {
                0 => event(
                    "page_visit",
                    time,
                    vec![
                        kv("event.id", id.as_str()),
                        kv("session.id", session.as_str()),
                        kv("url.path", "/ide/programs/42"),
                        kv(
                            "user_agent.original",
                            "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0",
                        ),
                        kv("client.address", "203.0.113.7"),
                    ],
                ),
                1 => event(
                    "program_execution",
                    time,
                    vec![
                        kv("event.id", id.as_str()),
                        kv("session.id", session.as_str()),
                        kv("program.lines", 40i64),
                        kv("program.lines_executed", 1200i64),
                        kv("program.duration_ms", 12i64),
                        kv("program.success", true),
                    ],
                ),
                2 => event(
                    "feature_use",
                    time,
                    vec![
                        kv("event.id", id.as_str()),
                        kv("session.id", session.as_str()),
                        kv("feature.name", "autosave"),
                        kv("feature.data", "{\"interval\":30}"),
                    ],
                ),
                _ => event(
                    "export_pdf",
                    time,
                    vec![
                        kv("event.id", id.as_str()),
                        kv("pages", 3i64),
                        kv("format", "a4"),
                    ],
                ),
            };
            if !ids {
                record.attributes.retain(|kv| kv.key != "event.id");
            }
            record
        })
        .collect();
    logs_request("web-ide", events)
}
