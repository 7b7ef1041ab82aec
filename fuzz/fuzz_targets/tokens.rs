//! The bearer tokens file through `Tokens::load` and a token check: `Ok` or an error, never a
//! panic, and no error quotes a token.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| usage_collector_fuzz::tokens(data));
