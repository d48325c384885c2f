//! Between a link's layer and its [`Sink`]: the handshake, then every
//! message opened on the way in (and sealed on the way out, by the
//! output).
//!
//! The layer hands this what it reads, as it would a sink. Until the
//! handshake ([`handshake`](super::handshake)) is done, messages go to it
//! and its answers to the output; the sink hears nothing. Once done, the
//! output seals with the sending key, the sink is told the link is ready
//! with the peer's proven id, and each message read is opened before the
//! sink sees it. A message that fails to open ends the link: no byte of
//! it reaches the sink. A link on which both ends asked for plaintext
//! passes messages unchanged, and may splice.

use super::handshake::{Established, HandshakeError, LinkHandshake};
use super::{engine, lock, Layer, LinkError, Peer, SharedOutput, Sink};
use crate::key::KeyPair;
use crate::noise::seal::{OpenError, Opener, Sealer};
use crate::sys::splice::Body;
use crate::wire::message::Kind;
use crate::wire::{FailCode, NodeId, Packet};
use log::debug;
use std::sync::{Arc, Mutex};

enum Phase {
    /// A local endpoint's, before its layer is known.
    Local,
    /// Not yet on the output: the handshake and the Hello it sends first.
    Starting(Box<LinkHandshake>, Packet),
    Handshake {
        hs: Box<LinkHandshake>,
        output: SharedOutput,
        layer: Layer,
        watch: Option<engine::Watch>,
    },
    Sealed(Box<Opener>),
    Plaintext,
    /// Failed: what more comes is dropped.
    Over,
}

/// A link's security: its handshake, then its opening of messages.
pub struct Secure {
    sink: Arc<dyn Sink>,
    phase: Mutex<Phase>,
}

/// What to do once the phase's lock is released.
enum Then {
    Nothing,
    Ready(SharedOutput, Layer, Option<engine::Watch>, Option<Peer>),
    Fail(Option<SharedOutput>, NodeId, HandshakeError),
}

impl Secure {
    /// The security of a link whose node has key `own`, asking for
    /// plaintext or not, handing what it reads to `sink` once proven.
    pub fn new(sink: Arc<dyn Sink>, own: KeyPair, plaintext: bool) -> std::io::Result<Secure> {
        let (nonce, ephemeral) = (crate::sys::random::bytes32()?, crate::sys::random::bytes32()?);
        let (hs, hello) = LinkHandshake::new(own, plaintext, nonce, ephemeral);
        Ok(Secure { sink, phase: Mutex::new(Phase::Starting(Box::new(hs), hello)) })
    }

    /// A local endpoint's link (`r2 ping`, `r2 ls` on the control socket):
    /// no handshake, and nothing to prove.
    pub fn local(sink: Arc<dyn Sink>) -> Secure {
        Secure { sink, phase: Mutex::new(Phase::Local) }
    }

    /// The layer is known and may be sent on: the handshake starts.
    pub fn ready(&self, output: SharedOutput, layer: Layer, watch: Option<engine::Watch>) {
        let mut ph = lock(&self.phase);
        match std::mem::replace(&mut *ph, Phase::Over) {
            Phase::Starting(hs, hello) => {
                lock(&output).send(hello);
                *ph = Phase::Handshake { hs, output, layer, watch };
            }
            Phase::Local => {
                *ph = Phase::Plaintext;
                drop(ph);
                self.sink.ready(output, layer, watch, None);
            }
            other => *ph = other,
        }
    }

    /// A message arrived. False: stop reading.
    pub fn message(&self, mut p: Packet) -> bool {
        let then = {
            let mut ph = lock(&self.phase);
            match &mut *ph {
                Phase::Sealed(opener) => match opener.open(&mut p) {
                    Ok(_) => Then::Nothing,
                    Err(OpenError::Replayed(c)) => {
                        debug!("dropped a replayed datagram ({c:#x})");
                        return true;
                    }
                    Err(e) => {
                        *ph = Phase::Over;
                        drop(ph);
                        self.sink.ended(Some(forged(&p, e)));
                        return false;
                    }
                },
                Phase::Plaintext => Then::Nothing,
                Phase::Handshake { .. } => step(&mut ph, &p),
                Phase::Starting(..) | Phase::Local | Phase::Over => return false,
            }
        };
        match then {
            Then::Nothing => self.sink.message(p),
            then => self.then(then),
        }
    }

    /// Messages arrived together; `ps` is left empty. False: stop reading.
    pub fn messages(&self, ps: &mut Vec<Packet>) -> bool {
        let mut ph = lock(&self.phase);
        match &mut *ph {
            Phase::Plaintext => {
                drop(ph);
                self.sink.messages(ps)
            }
            Phase::Sealed(opener) => {
                let mut failed = None;
                let mut kept = 0;
                for i in 0..ps.len() {
                    match opener.open(&mut ps[i]) {
                        Ok(_) => {
                            ps.swap(kept, i);
                            kept += 1;
                        }
                        Err(OpenError::Replayed(_)) => {}
                        Err(e) => {
                            failed = Some(forged(&ps[i], e));
                            break;
                        }
                    }
                }
                if failed.is_some() {
                    *ph = Phase::Over;
                }
                drop(ph);
                ps.truncate(kept);
                // What opened before the failure is whole and goes on.
                let go_on = ps.is_empty() || self.sink.messages(ps);
                ps.clear();
                match failed {
                    Some(e) => {
                        self.sink.ended(Some(e));
                        false
                    }
                    None => go_on,
                }
            }
            _ => {
                drop(ph);
                ps.drain(..).all(|p| self.message(p))
            }
        }
    }

    pub fn body_key(&self) -> Option<usize> {
        self.sink.body_key()
    }

    /// Bodies only on a plaintext link: a sealed message is opened whole.
    pub fn wants_body(&self, key: &[u8]) -> bool {
        matches!(*lock(&self.phase), Phase::Plaintext) && self.sink.wants_body(key)
    }

    pub fn message_with_body(&self, p: Packet, body: Body) -> bool {
        self.sink.message_with_body(p, body)
    }

    pub fn ended(&self, error: Option<LinkError>) {
        let mut ph = lock(&self.phase);
        let handshaking = matches!(*ph, Phase::Handshake { .. } | Phase::Starting(..));
        *ph = Phase::Over;
        drop(ph);
        let error = match (handshaking, error) {
            (true, None) => Some(LinkError::Refused("the link ended during the handshake".into())),
            (_, e) => e,
        };
        self.sink.ended(error)
    }

    fn then(&self, then: Then) -> bool {
        match then {
            Then::Nothing => true,
            Then::Ready(output, layer, watch, peer) => {
                self.sink.ready(output, layer, watch, peer);
                true
            }
            Then::Fail(output, about, e) => {
                // Say why to the peer, in the clear: it has no key yet, or
                // the link's keys are what failed.
                if let (Some(o), false) = (output, matches!(e, HandshakeError::Refused(_))) {
                    lock(&o).send(Packet::fail(about, FailCode::Refused, &e.to_string()));
                }
                self.sink.ended(Some(LinkError::Refused(e.to_string())));
                false
            }
        }
    }
}

/// Moves the handshake on by `p`; the phase's lock is held.
fn step(ph: &mut Phase, p: &Packet) -> Then {
    let Phase::Handshake { hs, output, .. } = ph else { return Then::Nothing };
    let nonce = hs.nonce();
    let progress = match hs.on_message(p) {
        Ok(progress) => progress,
        Err(e) => {
            let output = output.clone();
            *ph = Phase::Over;
            return Then::Fail(Some(output), nonce, e);
        }
    };
    if let Some(m) = progress.send {
        lock(output).send(m);
    }
    let Some(Established { peer, keys }) = progress.done else { return Then::Nothing };
    let Phase::Handshake { output, layer, watch, .. } = std::mem::replace(ph, Phase::Over) else {
        return Then::Nothing;
    };
    let sealed = keys.is_some();
    *ph = match keys {
        Some(k) => {
            lock(&output).seal_with(Sealer::new(k.send));
            Phase::Sealed(Box::new(Opener::new(k.recv)))
        }
        None => Phase::Plaintext,
    };
    Then::Ready(output, layer, watch, Some(Peer { id: peer, sealed }))
}

/// The error of a message that failed to open: what the peer said, where
/// it is a refusal it sent in the clear (its end of the handshake
/// failed), else the failure.
fn forged(p: &Packet, e: OpenError) -> LinkError {
    if let Ok(m) = p.msg() {
        if m.kind == Kind::Fail {
            if let Ok((_, why)) = m.fail() {
                return LinkError::Refused(format!("refused by the neighbour: {why}"));
            }
        }
    }
    LinkError::Forged(e.to_string())
}
