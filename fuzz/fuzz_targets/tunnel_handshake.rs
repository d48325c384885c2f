//! Fuzzes a tunnel's end-to-end handshake and sealed tunnel messages:
//! arbitrary first messages and answers, a real handshake with a byte
//! altered, and an opener fed made-up messages beside real ones.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    r2::daemon::fuzz::tunnel_handshake(data);
});
