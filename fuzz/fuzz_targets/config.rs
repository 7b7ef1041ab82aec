//! The settings file (TOML with `${VAR}` references) through `config::parse` with the
//! collector's real command line: `Ok` or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| usage_collector_fuzz::config(data));
