//! The fuzz target for the framings' decoders, kept in the crate so that
//! the saved corpus is replayed by an ordinary test on stable
//! (tests/fuzz_corpus.rs). It panics when a property fails.

use super::framing::{Decoded, Framing};
use super::stream::Stream;
use crate::wire::message::MAX_MESSAGE;

/// Splits `data` into frames as a link's reader does, in every framing,
/// and checks what a decoder promises: a message lies within the frame,
/// within the caps, and encodes back to the same frame.
pub fn framings(data: &[u8]) {
    let framings: [&dyn Framing; 1] = [&Stream];
    for f in framings {
        let mut input = data.to_vec();
        let mut at = 0;
        while at < input.len() {
            match f.decode(&mut input[at..]) {
                Ok(Decoded::Message { used, msg }) => {
                    assert!(msg.start <= msg.end && msg.end <= used && at + used <= input.len());
                    assert!(msg.len() <= MAX_MESSAGE, "{} bytes: over the cap", msg.len());
                    let m = input[at + msg.start..at + msg.end].to_vec();
                    let mut again = Vec::new();
                    f.encode(&m, &mut again);
                    let mut copy = again.clone();
                    assert_eq!(f.decode(&mut copy), Ok(Decoded::Message { used: again.len(), msg: msg.clone() }));
                    at += used;
                }
                Ok(Decoded::Skip(n)) => {
                    assert!(n > 0 && at + n <= input.len(), "skip {n} of {}", input.len() - at);
                    at += n;
                }
                Ok(Decoded::Partial(size)) => {
                    assert!(!matches!(size, Some(n) if n <= input.len() - at), "partial of a whole frame");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// The robust framing on arbitrary bytes, and on a frame of its own with
/// one bit flipped where `data` says: every decode stays in bounds, and
/// what it takes from a damaged frame is the packet sent or nothing. Each
/// packet it takes goes to a reliability state machine too, which may
/// refuse it but never panics.
pub fn robust(data: &[u8]) {
    use super::reliable::{Reliable, Sizes};
    use super::robust::{Found, Robust, MAX_PACKET, MIN_PACKET};
    let (rx, tx) = (Robust::new(1), Robust::new(2));
    let taken = |bytes: &[u8]| {
        let mut input = bytes.to_vec();
        let (mut at, mut got) = (0, Vec::new());
        while at < input.len() {
            match rx.decode(&mut input[at..]) {
                Found::Frame { used, tag, packet } => {
                    assert!(packet.end <= used && at + used <= input.len() && packet.len() <= MAX_PACKET);
                    assert_ne!(tag, 1, "its own echo");
                    got.push(input[at + packet.start..at + packet.end].to_vec());
                    at += used;
                }
                Found::Skip(n) => {
                    assert!(n > 0 && at + n <= input.len(), "skip {n} of {}", input.len() - at);
                    at += n;
                }
                Found::Partial => break,
            }
        }
        got
    };
    let mut r = Reliable::new(Sizes { base: 1200, max: 8192 }, 0);
    for (i, p) in taken(data).iter().enumerate() {
        let _ = r.on_packet(i as u64 * 1000, p);
        while r.deliver().is_some() {}
    }
    if (MIN_PACKET..=MAX_PACKET).contains(&data.len()) {
        let mut frame = Vec::new();
        tx.encode(data, &mut frame);
        assert_eq!(taken(&frame), vec![data.to_vec()], "round trip");
        let bit = data.iter().fold(0usize, |a, &b| a.wrapping_mul(31).wrapping_add(b as usize)) % (frame.len() * 8);
        frame[bit / 8] ^= 1 << (bit % 8);
        assert!(taken(&frame).iter().all(|m| m == data), "a damaged frame gave a packet not sent");
    }
}

/// The reliability state machine fed arbitrary packets, messages and
/// times, and packets of a real peer's with bytes changed where `data`
/// says: it never panics, keeps its memory within its windows, and what
/// it delivers are messages (each at least a header long).
pub fn reliable(data: &[u8]) {
    use super::reliable::{Reliable, Sizes, WINDOW};
    use crate::wire::message::{Kind, HEADER};
    use crate::wire::{NodeId, Packet};
    let sizes = Sizes { base: 1200, max: 4000 };
    let (mut a, mut b) = (Reliable::new(sizes, 0), Reliable::new(sizes, 0));
    let mut now = 0u64;
    let mut pkt = Vec::new();
    let mut ops = data.chunks(3);
    while let Some(op) = ops.next() {
        let arg = op.get(1).copied().unwrap_or(0) as u64 * 256 + op.get(2).copied().unwrap_or(0) as u64;
        match op[0] % 6 {
            0 => now += arg * 37,
            1 => a.push(Packet::new(Kind::To, NodeId([op[0]; 32]), &vec![op[0]; arg as usize % 9000])),
            2 => {
                let _ = a.push_best_effort(Packet::new(Kind::To, NodeId::TUNNEL, &vec![6; arg as usize % 9000]));
            }
            3 => {
                // A packet of a's to b, perhaps damaged, perhaps twice.
                if a.transmit(now, &mut pkt) {
                    if op[0] & 0x40 != 0 && !pkt.is_empty() {
                        let i = arg as usize % pkt.len();
                        pkt[i] ^= op.get(2).copied().unwrap_or(1) | 1;
                    }
                    let _ = b.on_packet(now, &pkt);
                    if op[0] & 0x80 != 0 {
                        let _ = b.on_packet(now, &pkt);
                    }
                }
                // b's acknowledgement alone, as a link's reader sends it,
                // or lost on the way out and due again.
                if op[0] & 0x20 != 0 && b.acknowledge(now, &mut pkt) {
                    if op[0] & 0x10 != 0 {
                        b.acknowledge_again(now);
                    } else {
                        let _ = a.on_packet(now, &pkt);
                    }
                }
                if b.transmit(now, &mut pkt) {
                    let _ = a.on_packet(now, &pkt);
                }
            }
            4 => {
                a.on_timeout(now);
                b.on_timeout(now);
            }
            _ => {
                // Arbitrary bytes as a packet.
                let n = (arg as usize % 64).min(ops.len() * 3);
                let raw: Vec<u8> = ops.by_ref().take(n / 3 + 1).flatten().copied().collect();
                let _ = b.on_packet(now, &raw);
            }
        }
        while let Some(m) = b.deliver() {
            assert!(m.len() >= HEADER, "a message shorter than a header");
        }
        for r in [&a, &b] {
            assert!(r.unacked_bytes() <= WINDOW + 9100, "{} unacknowledged", r.unacked_bytes());
            assert!(r.out_of_order() <= 2 * WINDOW);
        }
    }
}

/// The link's handshake and its sealed messages: a fresh end fed
/// arbitrary messages; a real handshake between two ends with one byte of
/// one message altered, which must not complete with agreeing keys; and an
/// opener fed arbitrary sealed messages beside real ones, which must never
/// take a forged one.
pub fn handshake(data: &[u8]) {
    use super::handshake::LinkHandshake;
    use crate::key::KeyPair;
    use crate::noise::seal::{Opener, Sealer};
    use crate::wire::Packet;
    let Some((&mode, rest)) = data.split_first() else { return };
    let key = |b: u8| KeyPair::from_secret([b; 32]);
    match mode % 3 {
        // Arbitrary messages, each a length byte and that many bytes.
        0 => {
            let (mut end, _) = LinkHandshake::new(key(1), mode & 8 != 0, [7; 32], [8; 32]);
            let mut rest = rest;
            while let Some((&n, tail)) = rest.split_first() {
                let n = (n as usize).min(tail.len());
                let (m, tail) = tail.split_at(n);
                rest = tail;
                if end.on_message(&Packet::from_bytes(m)).is_err() {
                    return;
                }
            }
        }
        // Two ends; message number `which` has byte `at` xored with `x`.
        1 => {
            let [which, at_hi, at_lo, x, ..] = *rest else { return };
            let (which, at, x) = (which % 5, (at_hi as usize) << 8 | at_lo as usize, x.max(1));
            let (mut a, ha) = LinkHandshake::new(key(1), false, [1; 32], [11; 32]);
            let (mut b, hb) = LinkHandshake::new(key(2), false, [2; 32], [12; 32]);
            let (mut to_a, mut to_b) = (vec![hb], vec![ha]);
            let (mut keys_a, mut keys_b) = (None, None);
            let (mut n, mut altered) = (0u8, false);
            let mut alter = |mut p: Packet| {
                if n == which && at < p.len() {
                    p.bytes_mut()[at] ^= x;
                    altered = true;
                }
                n += 1;
                p
            };
            for _ in 0..4 {
                for m in std::mem::take(&mut to_a) {
                    let Ok(p) = a.on_message(&alter(m)) else { return check(altered, &keys_a, &keys_b) };
                    to_b.extend(p.send);
                    keys_a = keys_a.or(p.done.and_then(|d| d.keys));
                }
                for m in std::mem::take(&mut to_b) {
                    let Ok(p) = b.on_message(&alter(m)) else { return check(altered, &keys_a, &keys_b) };
                    to_a.extend(p.send);
                    keys_b = keys_b.or(p.done.and_then(|d| d.keys));
                }
            }
            check(altered, &keys_a, &keys_b);
        }
        // Sealed messages: real ones, then arbitrary ones.
        _ => {
            let (mut s, mut o) = (Sealer::new([3; 32]), Opener::new([3; 32]));
            for (i, chunk) in rest.chunks(40).enumerate() {
                let mut real = Packet::from_bytes(chunk);
                s.seal(&mut real, i % 2 == 1);
                let sealed = real.clone();
                assert!(o.open(&mut real).is_ok(), "a real sealed message opens");
                assert_eq!(real.bytes(), chunk);
                let mut forged = sealed.clone();
                let at = chunk.first().copied().unwrap_or(0) as usize % forged.len();
                forged.bytes_mut()[at] ^= 1;
                assert!(o.open(&mut forged).is_err(), "an altered message never opens");
                assert!(o.open(&mut Packet::from_bytes(chunk)).is_err(), "arbitrary bytes never open");
            }
        }
    }

    /// Where a byte was altered, the two ends never both finish with
    /// keys that agree.
    fn check(altered: bool, a: &Option<crate::noise::Keys>, b: &Option<crate::noise::Keys>) {
        if let (true, Some(a), Some(b)) = (altered, a, b) {
            assert!(a.send != b.recv || a.recv != b.send, "an altered handshake agreed on keys");
        }
        if let (false, Some(a), Some(b)) = (altered, a, b) {
            assert!(a.send == b.recv && a.recv == b.send, "an honest handshake disagrees");
        }
    }
}
