//! Records appended through the spool's real append path (one or more collector runs, each
//! writing its own segment), then bytes damaged at fuzz-chosen offsets and the last segment
//! possibly cut short; then `Spool::open` recovers and the writer's reads replay.
//!
//! Asserts the recovery rules: every record whose bytes were not damaged is replayed, in order;
//! every record that is not replayed was damaged and is accounted for, its bytes inside a
//! range copied to `quarantine/` or inside the torn tail cut from the last segment (or already
//! gone with the cut); nothing that was never appended is replayed; a second open repairs
//! nothing more.
#![no_main]

use std::num::NonZeroU8;
use std::path::PathBuf;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use usage_collector::spool::{Payload, Spool, SpoolSignal};
use usage_collector_fuzz::{TempDir, read_all, runtime};

#[derive(Debug, Arbitrary)]
struct Input {
    /// Collector runs: each opens the spool (a fresh segment) and appends these.
    runs: Vec<Vec<Record>>,
    /// Bytes changed after the last run.
    damage: Vec<Damage>,
    /// The last non-empty segment cut to this many bytes (modulo its length).
    cut: Option<u32>,
}

#[derive(Debug, Arbitrary)]
struct Record {
    kind: Kind,
    body: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
enum Kind {
    Logs,
    Traces,
    Heartbeat,
    Rows,
}

#[derive(Debug, Arbitrary)]
struct Damage {
    /// Which non-empty segment (modulo their number).
    segment: u8,
    /// Where in it (modulo its length).
    offset: u32,
    /// What the byte is XORed with.
    xor: NonZeroU8,
}

/// An appended record: its payload and where its bytes are.
struct Placed {
    payload: Payload,
    segment: u64,
    start: u64,
    end: u64,
}

fn segment_path(dir: &std::path::Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

fuzz_target!(|input: Input| {
    let dir = TempDir::new("fuzz-spool-damage");
    let mut placed = Vec::new();
    for run in input.runs.iter().take(4) {
        let (spool, _) =
            Spool::open(dir.path(), u64::MAX).unwrap_or_else(|e| panic!("open failed: {e}"));
        for record in run.iter().take(16) {
            let payload = Payload {
                signal: match record.kind {
                    Kind::Logs => SpoolSignal::Logs,
                    Kind::Traces => SpoolSignal::Traces,
                    Kind::Heartbeat => SpoolSignal::Heartbeat,
                    Kind::Rows => SpoolSignal::Rows,
                },
                // Unique, so a replayed record names the appended one.
                received_unix_nano: placed.len() as u64,
                body: record.body.clone().into(),
            };
            let end = runtime()
                .block_on(spool.append(payload.clone()))
                .unwrap_or_else(|e| panic!("append failed: {e}"));
            placed.push(Placed {
                start: end.offset - payload.record_len() as u64,
                end: end.offset,
                segment: end.segment,
                payload,
            });
        }
    }
    // The segments that hold records, and their lengths after the damage.
    let mut segments: Vec<u64> = placed.iter().map(|p| p.segment).collect();
    segments.dedup();
    let mut damaged: Vec<(u64, u64)> = Vec::new();
    let mut lengths = std::collections::HashMap::new();
    for &id in &segments {
        lengths.insert(
            id,
            std::fs::metadata(segment_path(dir.path(), id))
                .unwrap()
                .len(),
        );
    }
    if !segments.is_empty() {
        for damage in input.damage.iter().take(8) {
            let id = segments[usize::from(damage.segment) % segments.len()];
            let path = segment_path(dir.path(), id);
            let mut data = std::fs::read(&path).unwrap();
            let at = damage.offset as usize % data.len();
            data[at] ^= damage.xor.get();
            std::fs::write(&path, &data).unwrap();
            damaged.push((id, at as u64));
        }
        if let Some(cut) = input.cut {
            let id = *segments.last().unwrap();
            let len = lengths[&id];
            let cut = u64::from(cut) % len;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(segment_path(dir.path(), id))
                .unwrap();
            file.set_len(cut).unwrap();
            lengths.insert(id, cut);
        }
    }
    let any_damage = !damaged.is_empty() || input.cut.is_some();
    // The last segment file before recovery (an empty one of a run that appended nothing may
    // come after the last with records): the torn tail is cut from it.
    let last = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".wal")
                .and_then(|n| n.parse::<u64>().ok())
        })
        .max();

    let (spool, recovery) =
        Spool::open(dir.path(), u64::MAX).unwrap_or_else(|e| panic!("recovery failed: {e}"));
    let replayed = read_all(&spool);
    assert_eq!(replayed.len() as u64, recovery.records, "{recovery:?}");

    // (segment, start, end) of every range recovery copied to quarantine or cut as torn.
    let mut removed: Vec<(u64, u64, u64)> = recovery
        .quarantined
        .iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            let mut parts = name.rsplitn(3, '.');
            let (_stamp, offset, segment) = (parts.next(), parts.next(), parts.next());
            let segment: u64 = segment
                .unwrap()
                .strip_suffix(".wal")
                .unwrap()
                .parse()
                .unwrap();
            let offset: u64 = offset.unwrap().parse().unwrap();
            let len = std::fs::metadata(path).unwrap().len();
            (segment, offset, offset + len)
        })
        .collect();
    if let Some(last) = last
        && recovery.torn_bytes > 0
    {
        let len = lengths.get(&last).copied().unwrap_or(0);
        removed.push((last, len - recovery.torn_bytes, len));
    }
    let mut next = 0;
    for p in &placed {
        if replayed.get(next) == Some(&p.payload) {
            next += 1;
            continue;
        }
        let was_damaged = p.end > lengths[&p.segment]
            || damaged
                .iter()
                .any(|(id, at)| *id == p.segment && (p.start..p.end).contains(at));
        assert!(
            was_damaged,
            "an undamaged record (segment {}, bytes {}..{}) was not replayed: {recovery:?}",
            p.segment, p.start, p.end
        );
        let gone = p.start >= lengths[&p.segment];
        let accounted = gone
            || removed
                .iter()
                .any(|(id, from, to)| *id == p.segment && *from < p.end && p.start < *to);
        assert!(
            accounted,
            "a lost record (segment {}, bytes {}..{}) is neither quarantined nor torn: {recovery:?}",
            p.segment, p.start, p.end
        );
    }
    assert_eq!(
        next,
        replayed.len(),
        "replayed a record that was never appended (or out of order): {:?}",
        replayed.get(next)
    );
    if !any_damage {
        assert!(recovery.quarantined.is_empty() && recovery.torn_bytes == 0);
    }
    drop(spool);
    let (spool, again) =
        Spool::open(dir.path(), u64::MAX).unwrap_or_else(|e| panic!("second open failed: {e}"));
    assert!(
        again.quarantined.is_empty() && again.torn_bytes == 0,
        "repaired again: {again:?}"
    );
    assert_eq!(read_all(&spool), replayed);
});
