//! Fuzzes the decoders of `wire`: the layers of a message, tunnel, list and
//! control messages, paths. (The framings have a target of their own.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    r2::wire::fuzz::decoders(data);
});
