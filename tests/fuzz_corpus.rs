//! Replays the fuzzers' saved corpus and every crash they found (fuzz/) on
//! stable, plus a run of pseudo-random inputs, through the same entry points
//! as the fuzz targets.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in [root.join("corpus").join(target), root.join("artifacts").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).unwrap();
            f(&data);
            n += 1;
        }
    }
    n
}

/// xorshift: the same inputs on every run.
fn random_inputs(seed: u64, count: usize, f: fn(&[u8])) {
    let mut x = seed;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..count {
        let len = (next() % 300) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        f(&data);
    }
}

#[test]
fn frames_corpus_and_random_inputs() {
    let n = replay("frames", r2::wire::fuzz::decoders);
    random_inputs(0x9E3779B97F4A7C15, 20_000, r2::wire::fuzz::decoders);
    eprintln!("replayed {n} saved inputs for frames");
}

#[test]
fn router_corpus_and_random_inputs() {
    let n = replay("router", r2::router::fuzz::events);
    random_inputs(0xD1B54A32D192ED03, 20_000, r2::router::fuzz::events);
    eprintln!("replayed {n} saved inputs for router");
}

#[test]
fn framing_corpus_and_random_inputs() {
    let n = replay("framing", r2::link::fuzz::framings);
    random_inputs(0x2545F4914F6CDD1D, 20_000, r2::link::fuzz::framings);
    eprintln!("replayed {n} saved inputs for framing");
}

#[test]
fn robust_corpus_and_random_inputs() {
    let n = replay("robust", r2::link::fuzz::robust);
    random_inputs(0x94D049BB133111EB, 20_000, r2::link::fuzz::robust);
    eprintln!("replayed {n} saved inputs for robust");
}

#[test]
fn reliable_corpus_and_random_inputs() {
    let n = replay("reliable", r2::link::fuzz::reliable);
    random_inputs(0xD1B54A32D192ED03, 20_000, r2::link::fuzz::reliable);
    eprintln!("replayed {n} saved inputs for reliable");
}

#[test]
fn hosts_corpus_and_random_inputs() {
    let n = replay("hosts", r2::cli::fuzz_hosts);
    random_inputs(0xBF58476D1CE4E5B9, 20_000, r2::cli::fuzz_hosts);
    eprintln!("replayed {n} saved inputs for hosts");
}

#[test]
fn handshake_corpus_and_random_inputs() {
    let n = replay("handshake", r2::link::fuzz::handshake);
    random_inputs(0x94D049BB133111EB, 20_000, r2::link::fuzz::handshake);
    eprintln!("replayed {n} saved inputs for handshake");
}

#[test]
fn tunnel_handshake_corpus_and_random_inputs() {
    let n = replay("tunnel_handshake", r2::daemon::fuzz::tunnel_handshake);
    random_inputs(0xD6E8FEB86659FD93, 20_000, r2::daemon::fuzz::tunnel_handshake);
    eprintln!("replayed {n} saved inputs for tunnel_handshake");
}
