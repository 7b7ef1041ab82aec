//! A transaction's statements stay within what the server takes in one packet: a batch of
//! events whose rows add up to more than MariaDB's `max_allowed_packet` (16 MiB by default) is
//! written, in one transaction of several INSERTs, through the collector's own sink.

use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use usage_collector::catalog::{Catalog, RowBatch, convert};
use usage_collector::config::DatabaseSettings;
use usage_collector::sink::Sink;
use usage_pipeline_tests::db::TestDb;
use usage_pipeline_tests::fixtures::{event, kv, logs_request};

#[tokio::test]
async fn a_batch_larger_than_the_servers_packet_limit_is_written_in_several_statements() {
    let db = TestDb::mysql().await;
    let packet: i64 = db.texts("SELECT CAST(@@max_allowed_packet AS CHAR)").await[0][0]
        .as_deref()
        .and_then(|p| p.parse().ok())
        .expect("max_allowed_packet");
    let catalog = Arc::new(Catalog::built_in());
    let sink = Sink::open(&DatabaseSettings::new(db.url()), catalog.clone()).expect("sink");
    sink.migrate().await.expect("migrate");
    // Usage events (no table of their own: every attribute goes to `usage_events.attributes`)
    // of eight 60 KiB attributes each, about 480 KiB a row: enough rows for twice the packet
    // limit.
    let per_row = 8 * 60 * 1024;
    let rows = (2 * packet as usize).div_ceil(per_row);
    let now = usage_collector::event::now_unix_nano();
    let records = (0..rows)
        .map(|n| {
            let mut attributes: Vec<KeyValue> = (0..8)
                .map(|a| kv(&format!("blob.{a}"), format!("{n:06}").repeat(10 * 1024)))
                .collect();
            attributes.push(kv("event.id", format!("large-{n}")));
            event("editor_opened", now + n as u64, attributes)
        })
        .collect();
    let converted = convert::logs_request(&logs_request("ide", records), &catalog, now, ())
        .expect("the request decodes");
    assert_eq!(
        converted.rejected.count, 0,
        "{:?}",
        converted.rejected.first
    );
    let batch = RowBatch::of(catalog.tables().len(), &converted.events);
    let written = sink.write(&batch).await.expect("the batch is written");
    assert_eq!(written.rows, vec![("usage_events", rows as u64)]);
    assert_eq!(db.count("usage_events").await, rows as i64);
    let bytes = db
        .texts("SELECT CAST(SUM(LENGTH(attributes)) AS CHAR) FROM usage_events")
        .await[0][0]
        .as_deref()
        .and_then(|b| b.parse::<i64>().ok())
        .expect("a sum");
    assert!(
        bytes > packet,
        "the rows hold more than one packet: {bytes} bytes against {packet}"
    );
}
