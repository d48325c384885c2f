//! The Noise Protocol Framework (revision 34) as r2 speaks it: the
//! handshake patterns XX (links, where neither end need know the other),
//! IK and XK (tunnels, whose caller knows the far node's key), all as
//! `Noise_*_25519_ChaChaPoly_BLAKE2s`, with no I/O.
//!
//! The primitives are RustCrypto's and dalek's (X25519, ChaCha20-Poly1305,
//! BLAKE2s, HMAC); this module composes them exactly as the spec's
//! sections 5 (CipherState, SymmetricState, HandshakeState) and 7
//! (patterns) say, and its tests check it against `snow`, an independent
//! implementation. After the handshake each end has a key per direction;
//! [`seal`] protects messages with them.

pub mod seal;

use crate::key::KeyPair;
use blake2::{Blake2s256, Digest};
use hmac::{Mac, SimpleHmac};
use std::fmt;

/// Bytes of a public key, a hash and an authentication tag.
pub const DHLEN: usize = 32;
pub const HASHLEN: usize = 32;
pub const TAGLEN: usize = 16;
/// The longest Noise message (spec section 3).
pub const MAX_MESSAGE: usize = 65535;

/// A handshake pattern's tokens (spec section 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    E,
    S,
    Ee,
    Es,
    Se,
    Ss,
}

use Token::*;

/// A handshake pattern: its protocol name, which static keys the other end
/// knows beforehand (pre-messages), and its messages, the initiator's first.
#[derive(Debug)]
pub struct Pattern {
    pub name: &'static str,
    /// `-> s` before the first message.
    pub initiator_known: bool,
    /// `<- s` before the first message.
    pub responder_known: bool,
    pub messages: &'static [&'static [Token]],
}

/// Links: each end proves its key to the other, unknown beforehand.
pub const XX: Pattern = Pattern {
    name: "Noise_XX_25519_ChaChaPoly_BLAKE2s",
    initiator_known: false,
    responder_known: false,
    messages: &[&[E], &[E, Ee, S, Es], &[S, Se]],
};

/// A caller that knows the far end's key, sending its own in the first
/// message (one round trip).
pub const IK: Pattern = Pattern {
    name: "Noise_IK_25519_ChaChaPoly_BLAKE2s",
    initiator_known: false,
    responder_known: true,
    messages: &[&[E, Es, S, Ss], &[E, Ee, Se]],
};

/// A caller that knows the far end's key and sends its own only once the
/// far end has proven its (forward secrecy for the caller's id).
pub const XK: Pattern = Pattern {
    name: "Noise_XK_25519_ChaChaPoly_BLAKE2s",
    initiator_known: false,
    responder_known: true,
    messages: &[&[E, Es], &[E, Ee], &[S, Se]],
};

/// Why a handshake failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoiseError {
    /// A message shorter than its pattern's tokens need.
    Short { len: usize, need: usize },
    /// A message longer than [`MAX_MESSAGE`].
    TooLong(usize),
    /// A message whose authentication tag does not verify: altered,
    /// replayed into another handshake, or from a peer without the key.
    Decrypt,
    /// A public key of small order (every Diffie-Hellman result zero).
    WeakKey,
    /// A message out of turn, or after the handshake ended.
    OutOfTurn,
    /// A pattern whose responder is known, started without its key.
    NoRemoteKey,
}

impl fmt::Display for NoiseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoiseError::Short { len, need } => write!(f, "handshake message of {len} bytes, shorter than {need}"),
            NoiseError::TooLong(n) => write!(f, "handshake message of {n} bytes"),
            NoiseError::Decrypt => f.write_str(
                "a handshake message failed authentication (altered, replayed, or the key is not the peer's)",
            ),
            NoiseError::WeakKey => f.write_str("the peer sent a key of small order"),
            NoiseError::OutOfTurn => f.write_str("a handshake message out of turn"),
            NoiseError::NoRemoteKey => f.write_str("the far end's key is needed for this pattern"),
        }
    }
}

/// Noise's nonce for ChaChaPoly: 32 bits of zeros, then `n` little-endian.
pub fn nonce(n: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_le_bytes());
    b
}

fn hash(parts: &[&[u8]]) -> [u8; HASHLEN] {
    let mut h = Blake2s256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; HASHLEN] {
    // A key of any length is valid for HMAC: this never fails.
    let mut m = <SimpleHmac<Blake2s256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// HKDF with two outputs (spec section 4.3).
fn hkdf2(ck: &[u8; HASHLEN], ikm: &[u8]) -> ([u8; HASHLEN], [u8; HASHLEN]) {
    let temp = hmac(ck, &[ikm]);
    let one = hmac(&temp, &[&[1]]);
    let two = hmac(&temp, &[&one, &[2]]);
    (one, two)
}

/// A key and its nonce counter (spec section 5.1).
struct CipherState {
    key: Option<r2_aead::Key>,
    n: u64,
}

/// The chaining key, the handshake hash and the current cipher (spec
/// section 5.2).
struct SymmetricState {
    ck: [u8; HASHLEN],
    h: [u8; HASHLEN],
    cipher: CipherState,
}

impl SymmetricState {
    fn new(name: &str) -> SymmetricState {
        let h = if name.len() <= HASHLEN {
            let mut h = [0; HASHLEN];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h
        } else {
            hash(&[name.as_bytes()])
        };
        SymmetricState { ck: h, h, cipher: CipherState { key: None, n: 0 } }
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.h = hash(&[&self.h, data]);
    }

    fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, k) = hkdf2(&self.ck, ikm);
        self.ck = ck;
        self.cipher = CipherState { key: Some(r2_aead::Key::new(&k)), n: 0 };
    }

    /// Appends `plain`, encrypted once there is a key, to `out`.
    fn encrypt_and_hash(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(plain);
        if let Some(k) = &self.cipher.key {
            let Some(tag) = k.seal(&nonce(self.cipher.n), &self.h, &mut out[start..]) else {
                unreachable!("ChaCha20-Poly1305 encrypts any length under 256 GiB")
            };
            out.extend_from_slice(&tag);
            self.cipher.n += 1;
        }
        let h = hash(&[&self.h, &out[start..]]);
        self.h = h;
    }

    /// Appends `cipher`, decrypted once there is a key, to `out`.
    fn decrypt_and_hash(&mut self, cipher: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        let start = out.len();
        match &self.cipher.key {
            None => out.extend_from_slice(cipher),
            Some(k) => {
                let Some(body) = cipher.len().checked_sub(TAGLEN) else {
                    return Err(NoiseError::Short { len: cipher.len(), need: TAGLEN });
                };
                out.extend_from_slice(&cipher[..body]);
                let mut tag = [0u8; TAGLEN];
                tag.copy_from_slice(&cipher[body..]);
                if k.open(&nonce(self.cipher.n), &self.h, &mut out[start..], &tag).is_err() {
                    out.truncate(start);
                    return Err(NoiseError::Decrypt);
                }
                self.cipher.n += 1;
            }
        }
        self.mix_hash(cipher);
        Ok(())
    }

    fn has_key(&self) -> bool {
        self.cipher.key.is_some()
    }
}

/// The two keys of a finished handshake: the one this end sends with and
/// the one it receives with.
pub struct Keys {
    pub send: [u8; 32],
    pub recv: [u8; 32],
}

/// One end of a handshake in progress (spec section 5.3).
pub struct Handshake {
    sym: SymmetricState,
    pattern: &'static Pattern,
    initiator: bool,
    s: KeyPair,
    /// This end's ephemeral key, made from the secret given at the start.
    e: KeyPair,
    rs: Option<[u8; DHLEN]>,
    re: Option<[u8; DHLEN]>,
    step: usize,
}

impl Handshake {
    /// Starts `pattern` as the initiator or the responder, with `prologue`
    /// (bytes both ends must have seen alike), the static key `s`, the
    /// secret of a fresh ephemeral key, and the far end's static key where
    /// the pattern has it known beforehand.
    pub fn new(
        pattern: &'static Pattern,
        initiator: bool,
        prologue: &[u8],
        s: KeyPair,
        ephemeral: [u8; 32],
        rs: Option<[u8; DHLEN]>,
    ) -> Result<Handshake, NoiseError> {
        let mut sym = SymmetricState::new(pattern.name);
        sym.mix_hash(prologue);
        // Pre-messages: the initiator's key first (spec section 7.1).
        for (known, theirs) in [(pattern.initiator_known, !initiator), (pattern.responder_known, initiator)] {
            if !known {
                continue;
            }
            let key = match theirs {
                true => rs.ok_or(NoiseError::NoRemoteKey)?,
                false => s.id.0,
            };
            sym.mix_hash(&key);
        }
        let e = KeyPair::from_secret(ephemeral);
        Ok(Handshake { sym, pattern, initiator, s, e, rs, re: None, step: 0 })
    }

    /// Whether the next message is this end's to write.
    pub fn my_turn(&self) -> bool {
        !self.is_finished() && (self.step % 2 == 0) == self.initiator
    }

    pub fn is_finished(&self) -> bool {
        self.step >= self.pattern.messages.len()
    }

    /// The far end's static key, once a message has carried it (or from
    /// the start, if known).
    pub fn remote_static(&self) -> Option<[u8; DHLEN]> {
        self.rs
    }

    /// The handshake hash: the same at both ends of a finished handshake,
    /// and unique to it.
    pub fn hash(&self) -> [u8; HASHLEN] {
        self.sym.h
    }

    fn dh(&self, token: Token) -> Result<[u8; 32], NoiseError> {
        // Each token names the initiator's key first.
        let (mine_initiator_side, theirs) = match (token, self.initiator) {
            (Ee, _) => (&self.e, self.re),
            (Ss, _) => (&self.s, self.rs),
            (Es, true) => (&self.e, self.rs),
            (Es, false) => (&self.s, self.re),
            (Se, true) => (&self.s, self.re),
            (Se, false) => (&self.e, self.rs),
            (E | S, _) => return Err(NoiseError::OutOfTurn),
        };
        let theirs = theirs.ok_or(NoiseError::OutOfTurn)?;
        mine_initiator_side.dh(&theirs).ok_or(NoiseError::WeakKey)
    }

    /// Writes this end's next message, carrying `payload`, to `out`.
    pub fn write_message(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        if !self.my_turn() {
            return Err(NoiseError::OutOfTurn);
        }
        let start = out.len();
        for &t in self.pattern.messages[self.step] {
            match t {
                E => {
                    out.extend_from_slice(&self.e.id.0);
                    let e = self.e.id.0;
                    self.sym.mix_hash(&e);
                }
                S => {
                    let s = self.s.id.0;
                    self.sym.encrypt_and_hash(&s, out);
                }
                t => {
                    let k = self.dh(t)?;
                    self.sym.mix_key(&k);
                }
            }
        }
        self.sym.encrypt_and_hash(payload, out);
        if out.len() - start > MAX_MESSAGE {
            return Err(NoiseError::TooLong(out.len() - start));
        }
        self.step += 1;
        Ok(())
    }

    /// Reads the far end's next message, appending its payload to
    /// `payload`. It is checked before anything is allocated: a payload is
    /// never longer than its message.
    pub fn read_message(&mut self, msg: &[u8], payload: &mut Vec<u8>) -> Result<(), NoiseError> {
        if self.is_finished() || self.my_turn() {
            return Err(NoiseError::OutOfTurn);
        }
        if msg.len() > MAX_MESSAGE {
            return Err(NoiseError::TooLong(msg.len()));
        }
        let mut rest = msg;
        let take = |n: usize, rest: &mut &[u8]| -> Result<[u8; DHLEN], NoiseError> {
            if rest.len() < n {
                return Err(NoiseError::Short { len: msg.len(), need: msg.len() - rest.len() + n });
            }
            let (a, b) = rest.split_at(n);
            *rest = b;
            let mut k = [0; DHLEN];
            k.copy_from_slice(&a[..DHLEN]);
            Ok(k)
        };
        for &t in self.pattern.messages[self.step] {
            match t {
                E => {
                    let re = take(DHLEN, &mut rest)?;
                    self.sym.mix_hash(&re);
                    self.re = Some(re);
                }
                S => {
                    let n = DHLEN + if self.sym.has_key() { TAGLEN } else { 0 };
                    let before = rest;
                    take(n, &mut rest)?;
                    let mut plain = Vec::with_capacity(DHLEN);
                    self.sym.decrypt_and_hash(&before[..n], &mut plain)?;
                    let mut rs = [0; DHLEN];
                    rs.copy_from_slice(&plain);
                    if crate::key::is_weak(&crate::wire::NodeId(rs)) {
                        return Err(NoiseError::WeakKey);
                    }
                    self.rs = Some(rs);
                }
                t => {
                    let k = self.dh(t)?;
                    self.sym.mix_key(&k);
                }
            }
        }
        self.sym.decrypt_and_hash(rest, payload)?;
        self.step += 1;
        Ok(())
    }

    /// The keys of the finished handshake (spec section 5.2, Split): the
    /// initiator sends with the first.
    pub fn keys(&self) -> Result<Keys, NoiseError> {
        if !self.is_finished() {
            return Err(NoiseError::OutOfTurn);
        }
        let (k1, k2) = hkdf2(&self.sym.ck, &[]);
        Ok(match self.initiator {
            true => Keys { send: k1, recv: k2 },
            false => Keys { send: k2, recv: k1 },
        })
    }
}

#[cfg(test)]
mod tests;
