//! Messages after a handshake: each sealed with ChaCha20-Poly1305 under
//! its direction's key, its counter sent with it as the nonce, and checked
//! on arrival against replay, with no I/O.
//!
//! ```text
//! sealed = counter:u64 (big-endian)  ciphertext  tag:[u8;16]
//! ```
//!
//! The counter's top bit is the message's class. Ordered messages (0)
//! count 0, 1, 2, … and each must arrive as the next: one that is missing,
//! repeated or early ends the link, so nothing can be taken out of a
//! stream that must be whole. Unordered ones (1: best-effort datagrams,
//! which a robust link may lose or deliver out of order) have a count of
//! their own, and each is taken at most once within a window of the last
//! [`WINDOW`] (RFC 6479's sliding window, as WireGuard and IPsec keep); an
//! older one or a repeat is dropped. Nonces are the counter in Noise's
//! form ([`super::nonce`]), so no key ever seals two messages under one
//! nonce; a counter never wraps (2^63 messages is beyond any link).

use super::{nonce, TAGLEN};
use crate::wire::Packet;
use std::fmt;

/// The counter bit of unordered messages.
pub const UNORDERED: u64 = 1 << 63;
/// Bytes that sealing adds to a message.
pub const OVERHEAD: usize = 8 + TAGLEN;
/// How many unordered counters behind the newest are still taken.
pub const WINDOW: u64 = 4096;

/// Seals one direction's messages.
pub struct Sealer {
    aead: r2_aead::Key,
    next: [u64; 2],
}

impl Sealer {
    pub fn new(key: [u8; 32]) -> Sealer {
        Sealer { aead: r2_aead::Key::new(&key), next: [0, UNORDERED] }
    }

    /// Seals `p` in place, as an unordered message or the next ordered one.
    pub fn seal(&mut self, p: &mut Packet, unordered: bool) {
        let class = unordered as usize;
        let counter = self.next[class];
        // 2^63 messages of either class would take centuries: saturate
        // rather than reuse a nonce (the peer then refuses the repeats).
        self.next[class] = (counter + 1).min(counter | (UNORDERED - 1));
        let Some(tag) = self.aead.seal(&nonce(counter), &[], p.bytes_mut()) else {
            unreachable!("ChaCha20-Poly1305 encrypts any length under 256 GiB")
        };
        p.extend(&tag);
        p.prepend(&counter.to_be_bytes());
    }
}

/// Why a sealed message was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Shorter than a counter and a tag.
    Short(usize),
    /// Its tag does not verify: altered, forged, or not sealed with the
    /// peer's key.
    Forged,
    /// An ordered message that is not the next one: one was taken out,
    /// repeated or moved.
    OutOfOrder { expected: u64, got: u64 },
    /// An unordered message already taken, or older than the window:
    /// dropped, the link goes on.
    Replayed(u64),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Short(n) => write!(f, "a sealed message of {n} bytes, shorter than {OVERHEAD}"),
            OpenError::Forged => f.write_str("a message failed authentication (altered, forged or corrupted)"),
            OpenError::OutOfOrder { expected, got } => {
                write!(f, "message {got} where {expected} was next (taken out, repeated or replayed)")
            }
            OpenError::Replayed(c) => write!(f, "unordered message {} again or too old", c & !UNORDERED),
        }
    }
}

/// Opens the other direction's messages.
pub struct Opener {
    aead: r2_aead::Key,
    next_ordered: u64,
    window: Window,
}

impl Opener {
    pub fn new(key: [u8; 32]) -> Opener {
        Opener { aead: r2_aead::Key::new(&key), next_ordered: 0, window: Window::default() }
    }

    /// Opens `p` in place; true if it was unordered. On an error `p` is
    /// left as it came, and nothing of this opener changes.
    pub fn open(&mut self, p: &mut Packet) -> Result<bool, OpenError> {
        let len = p.len();
        if len < OVERHEAD {
            return Err(OpenError::Short(len));
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&p.bytes()[..8]);
        let counter = u64::from_be_bytes(c);
        let unordered = counter & UNORDERED != 0;
        match unordered {
            false if counter != self.next_ordered => {
                return Err(OpenError::OutOfOrder { expected: self.next_ordered, got: counter });
            }
            true if !self.window.fresh(counter & !UNORDERED) => return Err(OpenError::Replayed(counter)),
            _ => {}
        }
        let mut tag = [0u8; TAGLEN];
        tag.copy_from_slice(&p.bytes()[len - TAGLEN..]);
        let body = &mut p.bytes_mut()[8..len - TAGLEN];
        // The tag is checked before anything is decrypted: a forged
        // message is left as it came.
        if self.aead.open(&nonce(counter), &[], body, &tag).is_err() {
            return Err(OpenError::Forged);
        }
        match unordered {
            false => self.next_ordered += 1,
            true => self.window.take(counter & !UNORDERED),
        }
        p.truncate(len - TAGLEN);
        p.advance(8);
        Ok(unordered)
    }
}

/// The unordered counters taken lately: the newest, and a bit for each of
/// the [`WINDOW`] before it (a ring indexed by counter).
#[derive(Default)]
struct Window {
    /// One more than the newest counter taken (0: none yet).
    end: u64,
    bits: Vec<u64>,
}

impl Window {
    fn bit(c: u64) -> (usize, u64) {
        let i = c % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Whether `c` would be taken.
    fn fresh(&self, c: u64) -> bool {
        if c >= self.end {
            return true;
        }
        if self.end - c > WINDOW {
            return false;
        }
        let (w, b) = Window::bit(c);
        self.bits.get(w).map_or(true, |x| x & b == 0)
    }

    fn take(&mut self, c: u64) {
        if self.bits.is_empty() {
            self.bits = vec![0; (WINDOW / 64) as usize];
        }
        if c >= self.end {
            // Clear the bits of the counters skipped, which the ring reuses.
            if c - self.end >= WINDOW {
                self.bits.iter_mut().for_each(|w| *w = 0);
            } else {
                for skipped in self.end..c {
                    let (w, b) = Window::bit(skipped);
                    self.bits[w] &= !b;
                }
            }
            self.end = c + 1;
        }
        let (w, b) = Window::bit(c);
        self.bits[w] |= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::Kind;
    use crate::wire::NodeId;

    fn msg(i: u8) -> Packet {
        Packet::new(Kind::To, NodeId([i; 32]), &[i; 100])
    }

    fn pair() -> (Sealer, Opener) {
        (Sealer::new([5; 32]), Opener::new([5; 32]))
    }

    #[test]
    fn sealed_messages_open_in_order_and_hide_their_bytes() {
        let (mut s, mut o) = pair();
        for i in 0..5 {
            let mut p = msg(i);
            s.seal(&mut p, false);
            assert_eq!(p.len(), msg(i).len() + OVERHEAD);
            assert_eq!(&p.bytes()[..8], &(i as u64).to_be_bytes());
            assert!(!p.bytes().windows(20).any(|w| w == [i; 20]), "the body is not in the clear");
            assert_eq!(o.open(&mut p), Ok(false));
            assert_eq!(p, msg(i));
        }
    }

    #[test]
    fn an_ordered_message_missing_repeated_or_altered_is_refused() {
        let (mut s, mut o) = pair();
        let sealed: Vec<Packet> = (0..3)
            .map(|i| {
                let mut p = msg(i);
                s.seal(&mut p, false);
                p
            })
            .collect();
        // The second first: one was taken out.
        assert_eq!(o.open(&mut sealed[1].clone()), Err(OpenError::OutOfOrder { expected: 0, got: 1 }));
        assert_eq!(o.open(&mut sealed[0].clone()), Ok(false));
        assert_eq!(o.open(&mut sealed[0].clone()), Err(OpenError::OutOfOrder { expected: 1, got: 0 }));
        for bit in [64, 300, (sealed[1].len() * 8 - 1)] {
            let mut bad = sealed[1].clone();
            bad.bytes_mut()[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(o.open(&mut bad), Err(OpenError::Forged), "bit {bit}");
        }
        // A changed counter is a changed nonce: forged too.
        let mut bad = sealed[2].clone();
        bad.bytes_mut()[7] = 1;
        assert_eq!(o.open(&mut bad), Err(OpenError::Forged));
        assert_eq!(o.open(&mut sealed[1].clone()), Ok(false), "a refusal changes nothing");
        assert_eq!(o.open(&mut Packet::from_bytes(&[0; 23])), Err(OpenError::Short(23)));
        // Another key's message.
        let mut other = msg(9);
        Sealer::new([6; 32]).seal(&mut other, false);
        other.bytes_mut()[..8].copy_from_slice(&2u64.to_be_bytes());
        assert_eq!(o.open(&mut other), Err(OpenError::Forged));
    }

    #[test]
    fn unordered_messages_are_taken_once_in_any_order_within_the_window() {
        let (mut s, mut o) = pair();
        let sealed: Vec<Packet> = (0..WINDOW as usize + 10)
            .map(|i| {
                let mut p = Packet::from_bytes(&(i as u32).to_be_bytes());
                s.seal(&mut p, true);
                p
            })
            .collect();
        // An ordered one between them has a count of its own.
        let mut ordered = msg(1);
        s.seal(&mut ordered, false);
        assert_eq!(&ordered.bytes()[..8], &0u64.to_be_bytes());
        for i in [5, 3, 4, 0, 9] {
            assert_eq!(o.open(&mut sealed[i].clone()), Ok(true), "{i}");
        }
        assert_eq!(o.open(&mut sealed[3].clone()), Err(OpenError::Replayed(UNORDERED | 3)));
        assert_eq!(o.open(&mut ordered), Ok(false));
        // Far ahead: the window moves, and what fell out of it is old.
        let last = WINDOW as usize + 9;
        assert_eq!(o.open(&mut sealed[last].clone()), Ok(true));
        assert_eq!(o.open(&mut sealed[1].clone()), Err(OpenError::Replayed(UNORDERED | 1)));
        assert_eq!(o.open(&mut sealed[9].clone()), Err(OpenError::Replayed(UNORDERED | 9)), "taken before");
        assert_eq!(o.open(&mut sealed[10].clone()), Ok(true), "within the window, never taken");
        assert_eq!(o.open(&mut sealed[10].clone()), Err(OpenError::Replayed(UNORDERED | 10)));
        // A jump beyond the whole window clears it.
        let mut far = Packet::from_bytes(b"far");
        let mut s2 = Sealer::new([5; 32]);
        s2.next[1] = UNORDERED | (10 * WINDOW);
        s2.seal(&mut far, true);
        assert_eq!(o.open(&mut far), Ok(true));
        assert_eq!(o.open(&mut sealed[last].clone()), Err(OpenError::Replayed(UNORDERED | last as u64)));
    }
}
