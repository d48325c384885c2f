//! Fuzzes every decoder of bytes from outside: frames as a link reader
//! splits them, the layers of a message, tunnel and control messages.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    r2::wire::fuzz::decoders(data);
});
