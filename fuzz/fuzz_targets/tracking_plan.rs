//! The tracking plan file (`--catalog-file`) through the plan's checks, the catalogue made from
//! it, and the schema changes `migrate` would make: every problem named, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| usage_collector_fuzz::tracking_plan(data));
