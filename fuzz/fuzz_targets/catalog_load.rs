//! Fuzz target: see `keyward_core::fuzzing::catalog_load`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyward_core::fuzzing::catalog_load(data));
