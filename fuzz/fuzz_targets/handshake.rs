//! Fuzzes a link's handshake and sealed messages: arbitrary messages to a
//! fresh end, a real handshake with a byte altered, and an opener fed
//! forged messages beside real ones.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    r2::link::fuzz::handshake(data);
});
