//! Inputs the fuzz targets (`fuzz/`, docs/fuzzing.md) found crashing, each kept under
//! `tests/fuzz/<target>/` and replayed here through the same code path and assertion as its
//! target, so a fix cannot quietly come undone.

use std::path::{Path, PathBuf};

use usage_collector::spool::{Payload, Spool};

/// A fresh folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("fuzz-regression-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// The `spool_folder` target's input: the checkpoint file's content, then each segment
/// (numbered from 1), joined by this separator; an empty checkpoint part means no file.
fn write_folder(dir: &Path, data: &[u8]) {
    const SEPARATOR: &[u8] = b"\n--segment--\n";
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        parts.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    parts.push(rest);
    if !parts[0].is_empty() {
        std::fs::write(dir.join("checkpoint"), parts[0]).unwrap();
    }
    for (n, segment) in parts[1..].iter().enumerate() {
        std::fs::write(dir.join(format!("{:020}.wal", n + 1)), segment).unwrap();
    }
}

/// Every record after the checkpoint, read as the writer reads.
async fn read_all(spool: &Spool) -> Vec<Payload> {
    let mut from = spool.checkpoint();
    let mut out = Vec::new();
    loop {
        let batch = spool
            .read(from, 1000)
            .await
            .expect("a recovered spool reads");
        if batch.records.is_empty() && batch.end == from {
            return out;
        }
        out.extend(batch.records);
        from = batch.end;
    }
}

/// The `spool_folder` target's assertions on one input.
async fn spool_folder(data: &[u8]) -> Vec<Payload> {
    let dir = TempDir::new();
    write_folder(&dir.0, data);
    let (spool, recovery) = Spool::open(&dir.0, u64::MAX).expect("recovery never fails");
    let records = read_all(&spool).await;
    assert_eq!(records.len() as u64, recovery.records, "{recovery:?}");
    drop(spool);
    let (spool, again) = Spool::open(&dir.0, u64::MAX).expect("a second open");
    assert!(
        again.quarantined.is_empty() && again.torn_bytes == 0,
        "{again:?}"
    );
    assert_eq!(read_all(&spool).await, records);
    records
}

/// A checkpoint that parses but points inside a record (`1 5`: five bytes into the first of
/// two heartbeats) made every read fail with "record length … is impossible", so the writer
/// retried forever and the spool filled; a restart did not help. Now its segment is replayed
/// from the start.
#[tokio::test]
async fn a_checkpoint_inside_a_record_replays_its_segment() {
    let records = spool_folder(include_bytes!(
        "fuzz/spool_folder/checkpoint_inside_a_record"
    ))
    .await;
    let bodies: Vec<&[u8]> = records.iter().map(|r| &r.body[..]).collect();
    assert_eq!(bodies, [&b"heartbeat-1"[..], b"heartbeat-2"]);
}
