//! A tunnel's end-to-end protection, with no I/O: the Noise IK handshake
//! between the caller's daemon and the daemon at the end of the path, and
//! the sealing of every tunnel message after it (r2.7, "Sealed tunnels").
//!
//! ```text
//! Handshake = 7 noise    IK's first message (caller) or second (node 0)
//! Sealed    = 8 sealed   one tunnel message, sealed as noise::seal does
//! ```
//!
//! The caller knows the far id, which is the far daemon's key, so IK's
//! first message already proves the caller's key to it, and the second
//! proves the far end's to the caller: a relay can neither read what
//! follows, nor alter, reorder, drop undetected or inject it, nor answer as
//! the far end. The prologue binds the caller's endpoint id and the far
//! id, so a handshake moved to another endpoint fails. A Datagram is
//! sealed as an unordered message (it may be lost on a robust link), the
//! other messages in order.

use crate::key::KeyPair;
use crate::noise::seal::{OpenError, Opener, Sealer};
use crate::noise::{Handshake, NoiseError, IK};
use crate::wire::tunnel::{DATAGRAM, HANDSHAKE, SEALED};
use crate::wire::{NodeId, Packet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What the prologue starts with, before the endpoint's id and the far id.
const PROLOGUE: &[u8] = b"r2 tunnel";

/// Why a tunnel's end-to-end protection failed: the tunnel is over.
#[derive(Debug, PartialEq, Eq)]
pub enum E2eError {
    /// The handshake failed (a forged or altered message, or the far end
    /// is not the key its id names).
    Noise(NoiseError),
    /// A sealed message failed to open.
    Open(OpenError),
    /// A message came in the clear where only sealed ones belong.
    Unsealed(u8),
    /// A sealed message held another Handshake or Sealed message.
    Nested(u8),
}

impl fmt::Display for E2eError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            E2eError::Noise(e) => write!(f, "the end-to-end handshake failed: {e}"),
            E2eError::Open(e) => write!(f, "altered on the way: {e}"),
            E2eError::Unsealed(t) => write!(f, "altered on the way: a tunnel message (tag {t}) in the clear"),
            E2eError::Nested(t) => write!(f, "a sealed message held a message of tag {t}"),
        }
    }
}

impl From<NoiseError> for E2eError {
    fn from(e: NoiseError) -> E2eError {
        E2eError::Noise(e)
    }
}

fn prologue(endpoint: NodeId, far: NodeId) -> Vec<u8> {
    [PROLOGUE, &endpoint.0, &far.0].concat()
}

/// The caller's side, its first message sent, waiting for the answer.
pub struct Calling {
    hs: Box<Handshake>,
}

/// Starts the caller's handshake from the endpoint `endpoint` to the far
/// daemon `far`, with fresh random bytes for the ephemeral key: returns
/// the state and the Handshake tunnel message to send.
pub fn call(own: KeyPair, endpoint: NodeId, far: NodeId, ephemeral: [u8; 32]) -> Result<(Calling, Vec<u8>), E2eError> {
    let mut hs = Box::new(Handshake::new(&IK, true, &prologue(endpoint, far), own, ephemeral, Some(far.0))?);
    let mut msg = vec![HANDSHAKE];
    hs.write_message(&[], &mut msg)?;
    Ok((Calling { hs }, msg))
}

impl Calling {
    /// Takes the far end's answer: the noise message after the Handshake
    /// tag.
    pub fn finish(mut self, noise: &[u8]) -> Result<Sealed, E2eError> {
        self.hs.read_message(noise, &mut Vec::new())?;
        Sealed::of(&self.hs)
    }
}

/// The far end's answer to a caller's first message, `noise` (after the
/// Handshake tag), from endpoint `endpoint`: the sealed state, the
/// caller's proven node id, and the Handshake tunnel message to send back.
pub fn answer(
    own: KeyPair,
    endpoint: NodeId,
    noise: &[u8],
    ephemeral: [u8; 32],
) -> Result<(Sealed, NodeId, Vec<u8>), E2eError> {
    let far = own.id;
    let mut hs = Handshake::new(&IK, false, &prologue(endpoint, far), own, ephemeral, None)?;
    hs.read_message(noise, &mut Vec::new())?;
    let caller = NodeId(hs.remote_static().ok_or(NoiseError::NoRemoteKey)?);
    let mut msg = vec![HANDSHAKE];
    hs.write_message(&[], &mut msg)?;
    Ok((Sealed::of(&hs)?, caller, msg))
}

/// Both directions' keys of a finished handshake. Clones share them: a
/// tunnel end's reader seals what it sends by shortcut, and a link's reader
/// opens what it delivers by one, with the same counters as the loop.
#[derive(Clone)]
pub struct Sealed {
    sealer: Arc<Mutex<Sealer>>,
    opener: Arc<Mutex<Opener>>,
}

/// The sealing of one tunnel end's messages, held: while it is, nobody
/// else seals one, so messages leave in the order of their counters if
/// each is sent before the hold ends (or the senders agree on who sends).
pub struct SealHold<'a>(MutexGuard<'a, Sealer>);

impl SealHold<'_> {
    /// Turns the tunnel message in `p` into a Sealed one, in place.
    pub fn seal(&mut self, p: &mut Packet) {
        let unordered = p.bytes().first() == Some(&DATAGRAM);
        self.0.seal(p, unordered);
        p.prepend(&[SEALED]);
    }
}

impl Sealed {
    fn of(hs: &Handshake) -> Result<Sealed, E2eError> {
        let k = hs.keys()?;
        let (sealer, opener) = (Sealer::new(k.send), Opener::new(k.recv));
        Ok(Sealed { sealer: Arc::new(Mutex::new(sealer)), opener: Arc::new(Mutex::new(opener)) })
    }

    /// Holds the sealing (see [`SealHold`]).
    pub fn hold(&self) -> SealHold<'_> {
        SealHold(self.sealer.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Turns the tunnel message in `p` into a Sealed one, in place.
    pub fn seal(&self, p: &mut Packet) {
        self.hold().seal(p);
    }

    /// Turns the Sealed message in `p` back into the tunnel message it
    /// holds, in place. Ok(false): a Datagram seen already or too old, to
    /// be dropped.
    pub fn open(&self, p: &mut Packet) -> Result<bool, E2eError> {
        match p.bytes().first() {
            Some(&SEALED) => {}
            t => return Err(E2eError::Unsealed(t.copied().unwrap_or(0))),
        }
        p.advance(1);
        let opened = self.opener.lock().unwrap_or_else(PoisonError::into_inner).open(p);
        match opened {
            Ok(_) => {}
            Err(OpenError::Replayed(_)) => return Ok(false),
            Err(e) => return Err(E2eError::Open(e)),
        }
        match p.bytes().first() {
            Some(&t) if t == HANDSHAKE || t == SEALED => Err(E2eError::Nested(t)),
            _ => Ok(true),
        }
    }
}

/// Both ends of a finished handshake between two made-up keys: the
/// caller's keys and the far end's.
#[cfg(test)]
pub fn test_pair() -> (Sealed, Sealed) {
    let kp = |n: u8| KeyPair::from_secret([n; 32]);
    let endpoint = NodeId([7; 32]);
    let (calling, m1) = call(kp(1), endpoint, kp(2).id, [3; 32]).expect("call");
    let (far, _, m2) = answer(kp(2), endpoint, &m1[1..], [4; 32]).expect("answer");
    (calling.finish(&m2[1..]).expect("finish"), far)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tunnel::TunnelMsg;

    fn keys(n: u8) -> KeyPair {
        KeyPair::from_secret([n; 32])
    }

    const X: NodeId = NodeId([7; 32]);

    /// A finished handshake between caller key 1 and far key 2.
    fn pair() -> (Sealed, Sealed) {
        let (calling, m1) = call(keys(1), X, keys(2).id, [3; 32]).unwrap();
        assert_eq!(m1[0], HANDSHAKE);
        let (far, caller, m2) = answer(keys(2), X, &m1[1..], [4; 32]).unwrap();
        assert_eq!(caller, keys(1).id, "the far end learns the caller's key");
        assert_eq!(m2[0], HANDSHAKE);
        (calling.finish(&m2[1..]).unwrap(), far)
    }

    fn sealed(s: &Sealed, m: TunnelMsg) -> Packet {
        let mut p = Packet::from_parts(m.encode(), 0);
        s.seal(&mut p);
        p
    }

    #[test]
    fn messages_go_both_ways_sealed() {
        let (a, b) = pair();
        let mut p = sealed(&a, TunnelMsg::Data(b"marker-xyz"));
        assert_eq!(p.bytes()[0], SEALED);
        assert!(!p.bytes().windows(6).any(|w| w == b"marker"), "data in the clear");
        assert_eq!(b.open(&mut p), Ok(true));
        assert_eq!(TunnelMsg::decode(p.bytes()), Ok(TunnelMsg::Data(b"marker-xyz")));
        let mut q = sealed(&b, TunnelMsg::Exit(3));
        assert_eq!(a.open(&mut q), Ok(true));
        assert_eq!(TunnelMsg::decode(q.bytes()), Ok(TunnelMsg::Exit(3)));
    }

    #[test]
    fn a_flipped_bit_or_a_clear_message_is_refused() {
        let (a, b) = pair();
        let mut p = sealed(&a, TunnelMsg::Data(b"abc"));
        p.bytes_mut()[10] ^= 1;
        assert_eq!(b.open(&mut p), Err(E2eError::Open(OpenError::Forged)));
        let mut clear = Packet::from_parts(TunnelMsg::Data(b"abc").encode(), 0);
        assert!(matches!(b.open(&mut clear), Err(E2eError::Unsealed(2))));
    }

    #[test]
    fn ordered_messages_cannot_be_dropped_or_repeated() {
        let (a, b) = pair();
        let first = sealed(&a, TunnelMsg::Data(b"1"));
        let mut second = sealed(&a, TunnelMsg::Data(b"2"));
        // The first is taken out on the way: the second does not open.
        assert!(matches!(b.open(&mut second), Err(E2eError::Open(OpenError::OutOfOrder { .. }))));
        let mut again = first.clone();
        let mut first = first;
        assert_eq!(b.open(&mut first), Ok(true));
        assert!(matches!(b.open(&mut again), Err(E2eError::Open(OpenError::OutOfOrder { .. }))));
    }

    #[test]
    fn datagrams_may_be_lost_or_late_but_not_repeated() {
        let (a, b) = pair();
        let d = |o| TunnelMsg::Datagram { offset: o, data: b"pkt" };
        let mut d0 = sealed(&a, d(0));
        let _lost = sealed(&a, d(3));
        let mut d2 = sealed(&a, d(6));
        let repeat = d2.clone();
        assert_eq!(b.open(&mut d2), Ok(true));
        assert_eq!(b.open(&mut d0), Ok(true), "late is taken");
        assert_eq!(b.open(&mut repeat.clone()), Ok(false), "a repeat is dropped");
        // One was lost: an ordered message after the datagrams still opens.
        let mut e = sealed(&a, TunnelMsg::Eof);
        assert_eq!(b.open(&mut e), Ok(true));
    }

    #[test]
    fn a_relay_cannot_answer_for_the_far_end() {
        // The relay (key 9) answers the caller's handshake to key 2.
        let (calling, m1) = call(keys(1), X, keys(2).id, [3; 32]).unwrap();
        assert!(answer(keys(9), X, &m1[1..], [4; 32]).is_err(), "IK's first message is for key 2 only");
        // Nor can it make up a second message of its own.
        let (_, _, forged) = {
            let (c2, m1b) = call(keys(9), X, keys(9).id, [5; 32]).unwrap();
            drop(c2);
            answer(keys(9), X, &m1b[1..], [6; 32]).unwrap()
        };
        assert!(calling.finish(&forged[1..]).is_err());
    }

    #[test]
    fn a_handshake_moved_to_another_endpoint_fails() {
        let (_calling, m1) = call(keys(1), X, keys(2).id, [3; 32]).unwrap();
        assert!(answer(keys(2), NodeId([8; 32]), &m1[1..], [4; 32]).is_err());
    }

    #[test]
    fn a_sealed_handshake_inside_is_refused() {
        let (a, b) = pair();
        let mut p = Packet::from_parts(vec![HANDSHAKE, 1, 2, 3], 0);
        a.seal(&mut p);
        assert_eq!(b.open(&mut p), Err(E2eError::Nested(HANDSHAKE)));
    }
}
