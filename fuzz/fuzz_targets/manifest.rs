//! Fuzz target: arbitrary bytes as a tool package's `tool.toml` (the tool loader); see `warden::fuzzing::manifest`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| warden::fuzzing::manifest(data));
