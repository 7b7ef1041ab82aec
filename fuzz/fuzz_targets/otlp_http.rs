//! OTLP/HTTP request bodies (protobuf or JSON, plain or gzip) through the receiver's unpacking
//! and then the receive path (see [`usage_collector_fuzz::otlp_http`] for what it asserts).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| usage_collector_fuzz::otlp_http(data));
