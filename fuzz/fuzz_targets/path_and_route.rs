//! Fuzz target: see `keyward_core::fuzzing::path_and_route`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_core::fuzzing::path_and_route(data));
