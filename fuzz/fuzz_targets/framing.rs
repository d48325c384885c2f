//! Fuzzes the framings' decoders: a link's bytes split into frames as its
//! reader does, in every framing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    r2::link::fuzz::framings(data);
});
