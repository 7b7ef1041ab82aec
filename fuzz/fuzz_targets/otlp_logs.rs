//! OTLP logs request bytes through the receive path and the spool record round trip
//! (see [`usage_collector_fuzz::otlp`] for what it asserts).
#![no_main]

use libfuzzer_sys::fuzz_target;
use usage_collector::event::Signal;

fuzz_target!(|data: &[u8]| usage_collector_fuzz::otlp(data, Signal::Log));
