//! Fuzz target: see `keyward_core::fuzzing::limits`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_core::fuzzing::limits(data));
