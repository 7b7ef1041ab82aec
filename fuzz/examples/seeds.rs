//! Writes the checked-in seed corpus, `fuzz/seeds/<target>/`, from the test fixtures
//! (`usage-pipeline-tests`'s `fixtures` module) and the example settings file:
//!
//! ```text
//! cd fuzz && cargo run --example seeds
//! ```
//!
//! Run it again when the fixtures or the spool format change; the files are small on purpose.

use std::path::Path;

use prost::Message;
use usage_collector::catalog::Catalog;
use usage_collector::catalog::convert;
use usage_collector::spool::{Payload, Spool, SpoolSignal, rows};
use usage_collector_fuzz::{NOW, TempDir, folder, runtime};
use usage_pipeline_tests::fixtures::{
    SECOND, T0, event, kv, kvlist, logs_request, page_visits, span, strings, traces_request,
};
use usage_pipeline_tests::otlp_http::{Encoding, gzip};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).expect("seeds folder");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

/// `otlp_http` seeds of one request: protobuf and JSON, plain and gzip (the first byte's flags:
/// gzip 1, JSON 2, traces 4).
fn http_seeds<T: Message + serde::Serialize>(name: &str, request: &T, signal: u8) {
    for (suffix, flags, body) in [
        ("protobuf", 0, Encoding::Protobuf.encode(request)),
        ("json", 2, Encoding::Json.encode(request)),
        (
            "protobuf_gzip",
            1,
            gzip(&Encoding::Protobuf.encode(request)),
        ),
        ("json_gzip", 3, gzip(&Encoding::Json.encode(request))),
    ] {
        let mut bytes = vec![flags | signal];
        bytes.extend_from_slice(&body);
        write("otlp_http", &format!("{name}_{suffix}"), &bytes);
    }
}

fn main() {
    let logs = [
        ("page_visits", page_visits("web", "/editor", 0..3)),
        (
            "session_and_runs",
            logs_request(
                "ide",
                vec![
                    event(
                        "session_start",
                        T0,
                        vec![kv("session.id", "s-1"), kv("user.id", "u-1")],
                    ),
                    event(
                        "program_execution",
                        T0 + SECOND,
                        vec![
                            kv("session.id", "s-1"),
                            kv("program.lines", 12i64),
                            kv("program.duration_ms", 3.5),
                            kv("program.success", false),
                            kv("error.message", "division by zero"),
                        ],
                    ),
                    event(
                        "session_end",
                        T0 + 2 * SECOND,
                        vec![kv("session.id", "s-1")],
                    ),
                ],
            ),
        ),
        (
            "feature_and_other",
            logs_request(
                "ide",
                vec![
                    event(
                        "feature_use",
                        T0,
                        vec![
                            kv("feature.name", "autocomplete"),
                            kv(
                                "feature.data",
                                kvlist(vec![kv("lang", "basic"), kv("tags", strings(&["a", "b"]))]),
                            ),
                        ],
                    ),
                    event("custom_thing", 0, vec![kv("nested", kvlist(vec![]))]),
                ],
            ),
        ),
    ];
    let catalog = Catalog::built_in();
    let mut bodies = Vec::new();
    for (name, request) in logs {
        let bytes = request.encode_to_vec();
        write("otlp_logs", name, &bytes);
        http_seeds(name, &request, 0);
        let converted = convert::logs_request(&request, &catalog, NOW, ()).expect("a request");
        let mut body = Vec::new();
        rows::encode(&catalog, &converted.events, &mut body);
        bodies.push(body);
    }
    let traces = [
        (
            "program_span",
            traces_request(
                "ide",
                vec![span(
                    "program_execution",
                    1,
                    T0,
                    T0 + SECOND,
                    None,
                    vec![kv("session.id", "s-1"), kv("program.lines", 3i64)],
                )],
            ),
        ),
        (
            "error_span",
            traces_request(
                "ide",
                vec![
                    span(
                        "run",
                        2,
                        T0,
                        T0 + 2 * SECOND,
                        Some("out of memory"),
                        vec![kv("event.name", "program_execution")],
                    ),
                    span("page_visit", 3, T0, T0, None, vec![kv("url.path", "/")]),
                ],
            ),
        ),
    ];
    for (name, request) in traces {
        let bytes = request.encode_to_vec();
        write("otlp_traces", name, &bytes);
        http_seeds(name, &request, 4);
        let converted = convert::traces_request(&request, &catalog, NOW, ()).expect("a request");
        let mut body = Vec::new();
        rows::encode(&catalog, &converted.events, &mut body);
        bodies.push(body);
    }

    // Spool folders written by the real spool: rows records, a heartbeat, a committed prefix.
    for (name, commit) in [("fresh", 0), ("committed_two", 2)] {
        let dir = TempDir::new("fuzz-seeds");
        let (spool, _) = Spool::open(dir.path(), u64::MAX).expect("open");
        runtime().block_on(async {
            for body in &bodies {
                spool
                    .append(Payload {
                        signal: SpoolSignal::Rows,
                        received_unix_nano: NOW,
                        body: body.clone().into(),
                    })
                    .await
                    .expect("append");
            }
            spool
                .append(Payload {
                    signal: SpoolSignal::Heartbeat,
                    received_unix_nano: NOW,
                    body: b"collector-0".to_vec().into(),
                })
                .await
                .expect("append");
            if commit > 0 {
                let batch = spool.read(spool.checkpoint(), commit).await.expect("read");
                spool
                    .commit(batch.end, commit as u64)
                    .await
                    .expect("commit");
            }
        });
        drop(spool);
        let mut ids: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".wal"))
            .collect();
        ids.sort();
        // Renumbered from 1, as the input format numbers them; the checkpoint follows.
        let segments: Vec<Vec<u8>> = ids
            .iter()
            .map(|n| std::fs::read(dir.path().join(n)).unwrap())
            .filter(|s| !s.is_empty())
            .collect();
        let checkpoint = std::fs::read_to_string(dir.path().join("checkpoint"))
            .ok()
            .map(|text| {
                let offset = text.split_whitespace().nth(1).unwrap_or("0").to_owned();
                format!("1 {offset}\n")
            })
            .unwrap_or_default();
        write(
            "spool_folder",
            name,
            &folder::join(checkpoint.as_bytes(), &segments),
        );
    }

    // Structured input: any bytes make one; a few of different lengths start the search.
    for len in [32usize, 256, 1024] {
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect();
        write("spool_damage", &format!("pattern_{len}"), &bytes);
    }

    // The settings: the example file, and the forms the config tests use.
    let example = include_str!("../../deploy/collector.example.toml");
    write("config", "example", example.as_bytes());
    write(
        "config",
        "variables",
        b"[database]\nurl = \"mysql://u:${DB_PASS}@${HOST}:3306/x\"\n# ${UNSET} in a comment\ninstance = \"$5\"\n",
    );
    write(
        "config",
        "layers",
        b"grpc_listen = \"127.0.0.1:${PORT}\"\n[writer]\nbatch_size = 50\n[database]\ndisable_ssl = true\ntls = \"required\"\n",
    );
    write("config", "unknown_key", b"[writer]\nbatchsize = 5\n");

    // Tracking plans: the built-in one, a site's with every column type, and a broken one.
    write(
        "tracking_plan",
        "built_in",
        usage_tracker::catalog::plan::BUILT_IN_TOML.as_bytes(),
    );
    write(
        "tracking_plan",
        "debugger",
        br#"version = 1
[[events]]
name = "debugger_step"
table = "debugger_steps"
counts = [{ daily = "other_events" }, { session = "lines_executed", add = "line" }]
columns = [
    { column = "line", attribute = "debugger.line", type = "int32", required = true },
    { column = "breakpoints", attribute = "debugger.breakpoints", type = "int" },
    { column = "file", attribute = "code.file.path", type = "string", max_chars = 4000, first_of_array = true },
    { column = "ratio", attribute = "debugger.ratio", type = "float" },
    { column = "paused", attribute = "debugger.paused", type = "bool", true_unless = "file" },
    { column = "at", attribute = "debugger.at", type = "time" },
    { column = "watch", attribute = "debugger.watch", type = "json" },
    { column = "took_ms", attribute = "debugger.took_ms", type = "int", from_span = "duration_ms" },
]
[[events]]
name = "debugger_stop"
table = "debugger_steps"
ends_session = true
counts = [{ daily = "other_events" }, { session = "lines_executed", add = "line" }]
columns = [{ column = "line", attribute = "debugger.stop_line", type = "int32" }]
"#,
    );
    write(
        "tracking_plan",
        "broken",
        b"version = 1\n[[events]]\nname = \"\"\ntable = \"Bad\"\ncolumns = [{ column = \"id\", attribute = \"event.id\", type = \"text\" }]\n",
    );
}
