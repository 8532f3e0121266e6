//! Fuzz target: see `keyward_server::fuzzing::json_bodies`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_server::fuzzing::json_bodies(data));
