//! Entry points for the fuzz targets of `fuzz/` (cargo-fuzz) that reach
//! the tunnel side: the end-to-end handshake and the opening of sealed
//! tunnel messages. Each must neither panic nor take what it should not;
//! tests/fuzz_corpus.rs replays the saved inputs on stable.

use super::e2e::{answer, call, Sealed};
use crate::key::KeyPair;
use crate::wire::tunnel::{TunnelMsg, SEALED};
use crate::wire::{NodeId, Packet};

const X: NodeId = NodeId([5; 32]);

fn key(b: u8) -> KeyPair {
    KeyPair::from_secret([b; 32])
}

/// A real pair of sealed ends, caller (key 1) and far (key 2).
fn pair() -> Option<(Sealed, Sealed)> {
    let (calling, m1) = call(key(1), X, key(2).id, [3; 32]).ok()?;
    let (far, _, m2) = answer(key(2), X, m1.get(1..)?, [4; 32]).ok()?;
    Some((calling.finish(m2.get(1..)?).ok()?, far))
}

/// The tunnel handshake and sealed tunnel messages, by the first byte:
/// an arbitrary first message to the far end; an arbitrary answer to a
/// caller; a real handshake with one byte altered, which must then fail;
/// arbitrary sealed messages beside real ones, of which only the real
/// ones may open.
pub fn tunnel_handshake(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        // Whatever the first message, the far end answers or refuses
        // (one that works is a caller's, whoever made it).
        0 => {
            let _ = answer(key(2), X, rest, [4; 32]);
        }
        1 => {
            if let Ok((calling, _)) = call(key(1), X, key(2).id, [3; 32]) {
                assert!(calling.finish(rest).is_err(), "an answer not from key 2 finished the handshake");
            }
        }
        2 => {
            let [which, at, x, ..] = *rest else { return };
            let x = x.max(1);
            let Ok((calling, mut m1)) = call(key(1), X, key(2).id, [3; 32]) else { return };
            let at1 = 1 + at as usize;
            if which % 2 == 0 && at1 < m1.len() {
                m1[at1] ^= x;
                assert!(answer(key(2), X, &m1[1..], [4; 32]).is_err(), "an altered first message was taken");
                return;
            }
            let Ok((_, _, mut m2)) = answer(key(2), X, &m1[1..], [4; 32]) else {
                panic!("a real first message failed")
            };
            let at2 = 1 + (at as usize % (m2.len() - 1));
            m2[at2] ^= x;
            assert!(calling.finish(&m2[1..]).is_err(), "an altered answer was taken");
        }
        _ => {
            let Some((a, b)) = pair() else { panic!("a real handshake failed") };
            let mut rest = rest;
            let mut sent = 0u32;
            // Each input a length byte and that many bytes; a zero length
            // sends a real message instead, which must open.
            while let Some((&n, tail)) = rest.split_first() {
                if n == 0 {
                    sent += 1;
                    let msg = TunnelMsg::Credit(sent).encode();
                    let mut p = Packet::from_parts(msg.clone(), 0);
                    a.seal(&mut p);
                    assert_eq!(b.open(&mut p), Ok(true), "a real message failed to open");
                    assert_eq!(p.bytes(), &msg[..]);
                    rest = tail;
                    continue;
                }
                let n = (n as usize).min(tail.len());
                let (m, tail) = tail.split_at(n);
                rest = tail;
                let mut p = Packet::from_bytes(&[&[SEALED][..], m].concat());
                // A forger holds no key: a made-up message never opens.
                assert!(!matches!(b.open(&mut p), Ok(true)), "a made-up message opened");
            }
        }
    }
}
