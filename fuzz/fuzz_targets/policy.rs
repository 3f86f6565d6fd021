//! Fuzz target: arbitrary bytes as an isolation profile (`warden policy check`); see `warden::fuzzing::policy`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| warden::fuzzing::policy(data));
