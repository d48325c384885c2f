//! A link's first messages, with no I/O: each end's Hello, then a Noise
//! XX handshake in which each end proves the key that is its node id, and
//! agrees whether the link is sealed or, where both ends asked, plaintext.
//!
//! ```text
//! hello     = Hello(nonce, "r2" version)       kind 0; 32 fresh random bytes
//!                                               where a node id would be
//! handshake = Handshake(nonce, noise message)  kind 4; the sender's nonce
//! payload   = flags:u8                         in XX's second and third
//!                                               messages; bit 0: plaintext asked
//! ```
//!
//! Both ends send their Hello at once; the end whose nonce is the smaller
//! is XX's initiator. The prologue is both Hellos, the initiator's first,
//! so a Hello altered on the way (a version, a nonce) fails the handshake,
//! and the nonces make every link's handshake its own: bytes recorded from
//! another link do not complete it. The flags travel encrypted and
//! authenticated: no one in between can make a link plaintext.

use crate::key::KeyPair;
use crate::noise::{Handshake, Keys, NoiseError, XX};
use crate::wire::message::{Kind, WireError, HELLO_MAGIC, VERSION};
use crate::wire::{NodeId, Packet};
use std::fmt;

/// What the prologue starts with, before the two Hellos.
const PROLOGUE: &[u8] = b"r2 link";
/// The payload flag of an end that asks for a plaintext link.
const PLAINTEXT: u8 = 1;

/// A finished handshake: who the peer proved to be, and the keys, unless
/// both ends asked for plaintext.
pub struct Established {
    pub peer: NodeId,
    pub keys: Option<Keys>,
}

/// What a message moved the handshake on to: a message to send, and the
/// end of it (both at once for XX's initiator reading the second message).
#[derive(Default)]
pub struct Progress {
    pub send: Option<Packet>,
    pub done: Option<Established>,
}

/// Why the handshake failed: the link is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The peer's first message is no Hello of this protocol version.
    NotR2(String),
    /// The peer's Hello is this end's own: the transport loops back.
    Echo,
    /// A message of a kind the handshake has no place for.
    Unexpected(u8),
    /// The peer refused the link, with its reason.
    Refused(String),
    /// The Noise handshake failed.
    Noise(NoiseError),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::NotR2(e) => write!(f, "the neighbour's first message: {e}"),
            HandshakeError::Echo => f.write_str("the transport echoes this end's own messages back (a loop)"),
            HandshakeError::Unexpected(k) => {
                write!(
                    f,
                    "handshake failed: a message of kind {k} where the neighbour's next handshake message was due"
                )
            }
            HandshakeError::Refused(why) => write!(f, "refused by the neighbour: {why}"),
            HandshakeError::Noise(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

impl From<NoiseError> for HandshakeError {
    fn from(e: NoiseError) -> HandshakeError {
        HandshakeError::Noise(e)
    }
}

enum State {
    /// This end's Hello is sent; waiting for the peer's.
    Hello {
        hello: Packet,
        ephemeral: [u8; 32],
    },
    /// Hellos exchanged; XX under way.
    Noise {
        hs: Box<Handshake>,
        peer_nonce: NodeId,
    },
    Over,
}

/// One end of a link's handshake.
pub struct LinkHandshake {
    own: KeyPair,
    nonce: NodeId,
    plaintext: bool,
    state: State,
}

/// `Hello(nonce)`: the link's first message.
pub fn hello(nonce: NodeId) -> Packet {
    let mut body = HELLO_MAGIC.to_vec();
    body.push(VERSION);
    Packet::new(Kind::Hello, nonce, &body)
}

impl LinkHandshake {
    /// Starts with the node's key, whether this end asks for plaintext,
    /// and fresh random bytes for the nonce and the ephemeral key; returns
    /// the Hello to send first.
    pub fn new(own: KeyPair, plaintext: bool, nonce: [u8; 32], ephemeral: [u8; 32]) -> (LinkHandshake, Packet) {
        let nonce = NodeId(nonce);
        let hello = hello(nonce);
        let state = State::Hello { hello: hello.clone(), ephemeral };
        (LinkHandshake { own, nonce, plaintext, state }, hello)
    }

    /// This end's nonce, as its handshake messages carry it.
    pub fn nonce(&self) -> NodeId {
        self.nonce
    }

    fn flags(&self) -> [u8; 1] {
        [if self.plaintext { PLAINTEXT } else { 0 }]
    }

    /// Takes the peer's next message.
    pub fn on_message(&mut self, p: &Packet) -> Result<Progress, HandshakeError> {
        let m = p.msg().map_err(|e| HandshakeError::NotR2(e.to_string()))?;
        if m.kind == Kind::Fail {
            let why = m.fail().map(|f| f.1).unwrap_or_default();
            self.state = State::Over;
            return Err(HandshakeError::Refused(why));
        }
        match std::mem::replace(&mut self.state, State::Over) {
            State::Hello { hello, ephemeral } => {
                if m.kind != Kind::Hello {
                    return Err(HandshakeError::NotR2(format!("expected Hello, got kind {}", m.kind as u8)));
                }
                m.check_hello().map_err(|e: WireError| HandshakeError::NotR2(e.to_string()))?;
                if m.id == self.nonce {
                    return Err(HandshakeError::Echo);
                }
                let initiator = self.nonce.0 < m.id.0;
                let (first, second) = if initiator { (hello.bytes(), p.bytes()) } else { (p.bytes(), hello.bytes()) };
                let prologue = [PROLOGUE, first, second].concat();
                let mut hs = Handshake::new(&XX, initiator, &prologue, self.own.clone(), ephemeral, None)?;
                let mut progress = Progress::default();
                if initiator {
                    progress.send = Some(self.write(&mut hs, &[])?);
                }
                self.state = State::Noise { hs: Box::new(hs), peer_nonce: m.id };
                Ok(progress)
            }
            State::Noise { mut hs, peer_nonce } => {
                if m.kind != Kind::Handshake {
                    return Err(HandshakeError::Unexpected(m.kind as u8));
                }
                if m.id != peer_nonce {
                    return Err(HandshakeError::NotR2("a handshake message of another link".into()));
                }
                let mut payload = Vec::new();
                hs.read_message(m.body, &mut payload)?;
                let mut progress = Progress::default();
                if hs.my_turn() {
                    let flags = self.flags();
                    progress.send = Some(self.write(&mut hs, &flags)?);
                }
                // The peer's flags come in each message that carries its
                // static key (XX's second and third); the first has none.
                let peer_plain = payload.first().is_some_and(|f| f & PLAINTEXT != 0);
                if !hs.is_finished() {
                    self.state = State::Noise { hs, peer_nonce };
                    return Ok(progress);
                }
                let peer = NodeId(hs.remote_static().ok_or(NoiseError::OutOfTurn)?);
                let keys = match self.plaintext && peer_plain {
                    true => None,
                    false => Some(hs.keys()?),
                };
                progress.done = Some(Established { peer, keys });
                Ok(progress)
            }
            State::Over => Err(HandshakeError::Unexpected(m.kind as u8)),
        }
    }

    fn write(&self, hs: &mut Handshake, payload: &[u8]) -> Result<Packet, NoiseError> {
        let mut body = Vec::with_capacity(128);
        hs.write_message(payload, &mut body)?;
        Ok(Packet::new(Kind::Handshake, self.nonce, &body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(key: u8, nonce: u8, plaintext: bool) -> (LinkHandshake, Packet) {
        LinkHandshake::new(KeyPair::from_secret([key; 32]), plaintext, [nonce; 32], [key + 100; 32])
    }

    /// Runs two ends to the end, passing each message as it is made;
    /// returns what each established.
    fn run(a: (LinkHandshake, Packet), b: (LinkHandshake, Packet)) -> (Established, Established) {
        let ((mut a, ha), (mut b, hb)) = (a, b);
        let (mut to_a, mut to_b) = (vec![hb], vec![ha]);
        let (mut done_a, mut done_b) = (None, None);
        while done_a.is_none() || done_b.is_none() {
            assert!(!to_a.is_empty() || !to_b.is_empty(), "stalled");
            for m in std::mem::take(&mut to_a) {
                let p = a.on_message(&m).unwrap();
                to_b.extend(p.send);
                done_a = done_a.or(p.done);
            }
            for m in std::mem::take(&mut to_b) {
                let p = b.on_message(&m).unwrap();
                to_a.extend(p.send);
                done_b = done_b.or(p.done);
            }
        }
        (done_a.unwrap(), done_b.unwrap())
    }

    #[test]
    fn each_end_learns_the_other_s_key_and_they_share_keys() {
        for (na, nb) in [(1, 2), (2, 1)] {
            let (a, b) = run(end(1, na, false), end(2, nb, false));
            assert_eq!(a.peer, KeyPair::from_secret([2; 32]).id);
            assert_eq!(b.peer, KeyPair::from_secret([1; 32]).id);
            let (ka, kb) = (a.keys.unwrap(), b.keys.unwrap());
            assert_eq!((ka.send, ka.recv), (kb.recv, kb.send));
            assert_ne!(ka.send, ka.recv);
        }
    }

    #[test]
    fn plaintext_only_when_both_ends_ask() {
        for (pa, pb, plain) in [(true, true, true), (true, false, false), (false, true, false), (false, false, false)] {
            let (a, b) = run(end(1, 1, pa), end(2, 2, pb));
            assert_eq!((a.keys.is_none(), b.keys.is_none()), (plain, plain), "{pa} {pb}");
        }
    }

    #[test]
    fn an_echo_a_stranger_and_an_old_version_are_refused() {
        let (mut a, ha) = end(1, 1, false);
        assert_eq!(a.on_message(&ha).err(), Some(HandshakeError::Echo));
        let (mut a, _) = end(1, 1, false);
        let old = Packet::new(Kind::Hello, NodeId([2; 32]), b"r2\x01");
        assert!(matches!(a.on_message(&old), Err(HandshakeError::NotR2(_))));
        let (mut a, _) = end(1, 1, false);
        let to = Packet::new(Kind::To, NodeId([2; 32]), b"");
        assert!(matches!(a.on_message(&to), Err(HandshakeError::NotR2(_))));
        let (mut a, _) = end(1, 1, false);
        let fail = Packet::fail(NodeId([1; 32]), crate::wire::FailCode::Refused, "no");
        assert_eq!(a.on_message(&fail).err(), Some(HandshakeError::Refused("no".into())));
    }

    /// A replay: the messages one end sent on an earlier link, played to a
    /// new end of the same node (same key, fresh nonce and ephemeral key),
    /// do not complete a handshake.
    #[test]
    fn a_recorded_link_played_back_fails() {
        // The recording: a (initiator, nonce 1) with b (nonce 9).
        let (mut a, ha) = end(1, 1, false);
        let (mut b, hb) = end(2, 9, false);
        let m1 = a.on_message(&hb).unwrap().send.unwrap();
        assert!(b.on_message(&ha).unwrap().send.is_none());
        let m2 = b.on_message(&m1).unwrap().send.unwrap();
        let m3 = a.on_message(&m2).unwrap().send.unwrap();
        // Later, b again, with a fresh nonce and ephemeral key.
        let (mut b2, _) = LinkHandshake::new(KeyPair::from_secret([2; 32]), false, [9; 32], [77; 32]);
        b2.on_message(&ha).unwrap();
        let _m2 = b2.on_message(&m1).unwrap().send.unwrap();
        assert!(matches!(b2.on_message(&m3), Err(HandshakeError::Noise(NoiseError::Decrypt))));
    }

    #[test]
    fn a_message_of_another_link_is_refused() {
        let (mut a, _) = end(1, 1, false);
        let (_, hb) = end(2, 9, false);
        a.on_message(&hb).unwrap();
        let other = Packet::new(Kind::Handshake, NodeId([8; 32]), &[0; 97]);
        assert!(matches!(a.on_message(&other), Err(HandshakeError::NotR2(_))));
    }
}
