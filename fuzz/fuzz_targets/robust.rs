//! Fuzzes the robust framing's decoder: arbitrary bytes, and frames of its
//! own with a bit flipped.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    r2::link::fuzz::robust(data);
});
