//! Fuzzes the reader of hosts files (names for nodes): lines, names, paths
//! of names, and the renaming of ids in messages.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    r2::cli::fuzz_hosts(data);
});
