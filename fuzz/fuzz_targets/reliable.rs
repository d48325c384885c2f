//! Fuzzes the reliability state machine: arbitrary packets, messages and
//! times, and a real peer's packets damaged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    r2::link::fuzz::reliable(data);
});
