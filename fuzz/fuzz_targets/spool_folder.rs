//! A spool folder made of fuzz input (a checkpoint file and segment files, see
//! [`usage_collector_fuzz::folder`]) opened by `Spool::open`, which recovers it, then read to
//! the end as the writer does.
//!
//! Asserts: opening never fails or panics (recovery never needs a person); every record
//! recovery counts is read back, with no read error; a second open finds nothing left to
//! repair and reads the same records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usage_collector::spool::Spool;
use usage_collector_fuzz::{TempDir, folder, read_all};

fuzz_target!(|data: &[u8]| {
    let dir = TempDir::new("fuzz-spool-folder");
    folder::write(dir.path(), data);
    let (spool, recovery) =
        Spool::open(dir.path(), u64::MAX).unwrap_or_else(|e| panic!("open failed: {e}"));
    let records = read_all(&spool);
    assert_eq!(
        records.len() as u64,
        recovery.records,
        "recovery counted {} records, the reader found {}: {recovery:?}",
        recovery.records,
        records.len()
    );
    drop(spool);
    let (spool, again) =
        Spool::open(dir.path(), u64::MAX).unwrap_or_else(|e| panic!("second open failed: {e}"));
    assert!(
        again.quarantined.is_empty() && again.torn_bytes == 0,
        "recovery repaired the folder again: {again:?} after {recovery:?}"
    );
    assert_eq!(again.records, recovery.records);
    assert_eq!(
        read_all(&spool),
        records,
        "a second open reads other records"
    );
});
