//! Fuzzes the router with arbitrary event sequences; its invariants must
//! hold after every event, and once every port has closed it holds nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    r2::router::fuzz::events(data);
});
