//! Link messages.
//!
//! ```text
//! message = kind:u8 id:[u8;32] body       (body: the rest, may be empty)
//! ```
//!
//! How a link delimits messages is its framing's business (`link`).
//!
//! A `To`/`From` body is itself a message (or empty: ε, "I have ended"), so
//! nested messages carry no length of their own and are decoded one layer at a
//! time, never recursively. A [`Packet`] owns one message with spare room in
//! front, so a router can peel or add a 33-byte header without copying.

use super::id::{NodeId, ID_LEN, MAX_HOPS};
use std::fmt;

/// Size of a message header: kind and id.
pub const HEADER: usize = 1 + ID_LEN;
/// The most data one message carries.
pub const MAX_DATA: usize = 64 * 1024;
/// What sealing a tunnel message end to end adds to it: the Sealed tag,
/// the counter and the authentication tag (`daemon::e2e`).
pub const E2E_OVERHEAD: usize = 1 + 8 + 16;
/// The largest message: the data, a tunnel message's tag, its end-to-end
/// sealing, and a header for each hop, the tunnel node and one spare layer.
pub const MAX_MESSAGE: usize = MAX_DATA + 1 + E2E_OVERHEAD + HEADER * (MAX_HOPS + 2);
/// Room kept in front of a received message for headers added on the way.
pub const HEADROOM: usize = 2 * HEADER;

/// Hello magic and the protocol version this build speaks.
pub const HELLO_MAGIC: &[u8; 2] = b"r2";
pub const VERSION: u8 = 2;

/// The kind byte of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 0,
    To = 1,
    From = 2,
    Fail = 3,
    /// A link's handshake message (`link/handshake.rs`), before any other.
    Handshake = 4,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Hello,
            1 => Kind::To,
            2 => Kind::From,
            3 => Kind::Fail,
            4 => Kind::Handshake,
            _ => return None,
        })
    }
}

/// Why bytes are not a frame or a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// A message shorter than its header.
    Short(usize),
    UnknownKind(u8),
    /// A Hello with the wrong magic or version.
    BadHello(String),
    /// A Fail without a code.
    BadFail,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Short(n) => write!(f, "message of {n} bytes is shorter than a header"),
            WireError::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            WireError::BadHello(s) => write!(f, "bad hello: {s}"),
            WireError::BadFail => write!(f, "fail message without a code"),
        }
    }
}

/// Why a node could not be reached (the code of a Fail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FailCode {
    NoRoute = 1,
    IdInUse = 2,
    Refused = 3,
    NoTunnelProcess = 4,
    TooManyTunnels = 5,
    TooBig = 6,
    BadMessage = 7,
    Overload = 8,
    RateLimited = 9,
    Other = 255,
}

impl FailCode {
    pub fn from_u8(b: u8) -> FailCode {
        match b {
            1 => FailCode::NoRoute,
            2 => FailCode::IdInUse,
            3 => FailCode::Refused,
            4 => FailCode::NoTunnelProcess,
            5 => FailCode::TooManyTunnels,
            6 => FailCode::TooBig,
            7 => FailCode::BadMessage,
            8 => FailCode::Overload,
            9 => FailCode::RateLimited,
            _ => FailCode::Other,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            FailCode::NoRoute => "no route",
            FailCode::IdInUse => "id in use",
            FailCode::Refused => "refused",
            FailCode::NoTunnelProcess => "no tunnel process",
            FailCode::TooManyTunnels => "too many tunnels",
            FailCode::TooBig => "message too big",
            FailCode::BadMessage => "bad message",
            FailCode::Overload => "overload",
            FailCode::RateLimited => "rate limited",
            FailCode::Other => "failed",
        }
    }
}

/// A borrowed view of one message: its kind, id and body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg<'a> {
    pub kind: Kind,
    pub id: NodeId,
    pub body: &'a [u8],
}

impl<'a> Msg<'a> {
    /// Decodes the outer layer of a message.
    pub fn parse(b: &'a [u8]) -> Result<Msg<'a>, WireError> {
        if b.len() < HEADER {
            return Err(WireError::Short(b.len()));
        }
        let kind = Kind::from_u8(b[0]).ok_or(WireError::UnknownKind(b[0]))?;
        let id = NodeId::from_slice(&b[1..]).ok_or(WireError::Short(b.len()))?;
        Ok(Msg { kind, id, body: &b[HEADER..] })
    }

    /// The code and text of a Fail.
    pub fn fail(&self) -> Result<(FailCode, String), WireError> {
        let (&code, text) = self.body.split_first().ok_or(WireError::BadFail)?;
        Ok((FailCode::from_u8(code), String::from_utf8_lossy(text).into_owned()))
    }

    /// Checks a Hello's magic and version.
    pub fn check_hello(&self) -> Result<(), WireError> {
        let b = self.body;
        if b.len() < 3 || &b[..2] != HELLO_MAGIC {
            return Err(WireError::BadHello("not an r2 peer (wrong magic)".into()));
        }
        if b[2] != VERSION {
            return Err(WireError::BadHello(format!("protocol version {} (this node speaks {VERSION})", b[2])));
        }
        Ok(())
    }
}

/// One owned message, with room in front for headers.
#[derive(Clone)]
pub struct Packet {
    buf: Vec<u8>,
    start: usize,
}

/// Packets are equal when their messages are, whatever their headroom holds.
impl PartialEq for Packet {
    fn eq(&self, other: &Packet) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Packet {}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.msg() {
            Ok(m) => write!(f, "{:?}({}, {} bytes)", m.kind, m.id, m.body.len()),
            Err(_) => write!(f, "Packet({:?})", self.bytes()),
        }
    }
}

impl Packet {
    /// A packet holding a copy of `msg`, with headroom.
    pub fn from_bytes(msg: &[u8]) -> Packet {
        let mut buf = Vec::with_capacity(HEADROOM + msg.len());
        buf.resize(HEADROOM, 0);
        buf.extend_from_slice(msg);
        Packet { buf, start: HEADROOM }
    }

    /// A new message `kind(id, body)`.
    pub fn new(kind: Kind, id: NodeId, body: &[u8]) -> Packet {
        let mut buf = Vec::with_capacity(HEADROOM + HEADER + body.len());
        buf.resize(HEADROOM, 0);
        buf.push(kind as u8);
        buf.extend_from_slice(&id.0);
        buf.extend_from_slice(body);
        Packet { buf, start: HEADROOM }
    }

    /// A packet from a buffer whose message starts at `start`.
    pub fn from_parts(buf: Vec<u8>, start: usize) -> Packet {
        let start = start.min(buf.len());
        Packet { buf, start }
    }

    /// The buffer, for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Drops the first `n` bytes of the message.
    pub fn advance(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
    }

    /// Takes back the last `n` bytes that [`Packet::advance`] dropped: they
    /// are still in the buffer as they were, if nothing was put in front
    /// of the message since.
    pub fn unadvance(&mut self, n: usize) {
        self.start = self.start.saturating_sub(n);
    }

    /// `Hello(own)`.
    pub fn hello(own: NodeId) -> Packet {
        let mut body = HELLO_MAGIC.to_vec();
        body.push(VERSION);
        Packet::new(Kind::Hello, own, &body)
    }

    /// `Fail(about, code, text)`.
    pub fn fail(about: NodeId, code: FailCode, text: &str) -> Packet {
        let mut body = vec![code as u8];
        let mut end = text.len().min(200);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        body.extend_from_slice(&text.as_bytes()[..end]);
        Packet::new(Kind::Fail, about, &body)
    }

    /// The message bytes (without the frame's length prefix).
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes the outer layer.
    pub fn msg(&self) -> Result<Msg<'_>, WireError> {
        Msg::parse(self.bytes())
    }

    /// Drops the outer header, so the packet holds its body. The caller has
    /// checked that there is a header.
    pub fn strip(&mut self) {
        self.start = (self.start + HEADER).min(self.buf.len());
    }

    /// Rewrites the outer header in place. The caller has checked that there
    /// is a header.
    pub fn set_header(&mut self, kind: Kind, id: NodeId) {
        if let Some(h) = self.buf.get_mut(self.start..self.start + HEADER) {
            h[0] = kind as u8;
            h[1..].copy_from_slice(&id.0);
        }
    }

    /// Wraps the packet in one more header: it becomes `kind(id, old)`.
    pub fn push_header(&mut self, kind: Kind, id: NodeId) {
        self.make_room(HEADER);
        self.start -= HEADER;
        self.set_header(kind, id);
    }

    /// Puts `head` in front of the message.
    pub fn prepend(&mut self, head: &[u8]) {
        self.make_room(head.len());
        self.start -= head.len();
        self.buf[self.start..self.start + head.len()].copy_from_slice(head);
    }

    /// The message bytes, to be rewritten in place (sealed or opened).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }

    /// Keeps the first `len` bytes of the message.
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(self.start + len);
    }

    /// Appends `tail` to the message.
    pub fn extend(&mut self, tail: &[u8]) {
        self.buf.extend_from_slice(tail);
    }

    /// Makes sure there are `n` bytes of headroom (copying the message
    /// into a new buffer only if there are not).
    fn make_room(&mut self, n: usize) {
        if self.start < n {
            let mut buf = Vec::with_capacity(HEADROOM + n + self.len());
            buf.resize(HEADROOM + n, 0);
            buf.extend_from_slice(self.bytes());
            self.buf = buf;
            self.start = HEADROOM + n;
        }
    }
}

/// Builds `To(h1, To(h2, … To(hk, inner)))` for a path of hops.
pub fn nest_to(path: &[NodeId], inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() * HEADER + inner.len());
    for h in path {
        out.push(Kind::To as u8);
        out.extend_from_slice(&h.0);
    }
    out.extend_from_slice(inner);
    out
}

/// What came back along a path: `From(h1, … From(hj, inner))`.
#[derive(Debug, PartialEq, Eq)]
pub struct Unnested<'a> {
    /// The hops the reply came through, outermost first.
    pub via: Vec<NodeId>,
    /// The first message that is not a `From`, or the empty body (ε).
    pub inner: &'a [u8],
}

/// Peels `From` layers iteratively (never recursively), at most `max` of
/// them; stops at the first thing that is not a `From`.
pub fn unnest_from(mut b: &[u8], max: usize) -> Unnested<'_> {
    let mut via = Vec::new();
    while via.len() < max {
        match Msg::parse(b) {
            Ok(m) if m.kind == Kind::From => {
                via.push(m.id);
                b = m.body;
            }
            _ => break,
        }
    }
    Unnested { via, inner: b }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    #[test]
    fn garbage_messages() {
        assert_eq!(Msg::parse(&[1; 10]), Err(WireError::Short(10)));
        assert_eq!(Msg::parse(&[9; 40]), Err(WireError::UnknownKind(9)));
        let mut seed = 12345u32;
        for _ in 0..10_000 {
            let len = (seed % 80) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            let _ = Msg::parse(&bytes).map(|m| (m.fail(), m.check_hello()));
            let _ = unnest_from(&bytes, MAX_HOPS);
        }
    }

    #[test]
    fn hello_checks() {
        let h = Packet::hello(id(1));
        assert_eq!(h.msg().unwrap().check_hello(), Ok(()));
        let bad = Packet::new(Kind::Hello, id(1), b"r3\x01");
        assert!(bad.msg().unwrap().check_hello().is_err());
        let v9 = Packet::new(Kind::Hello, id(1), b"r2\x09");
        assert!(v9.msg().unwrap().check_hello().is_err());
    }

    #[test]
    fn headers_in_place() {
        let mut p = Packet::from_bytes(&nest_to(&[id(1), id(2)], b"x"));
        p.strip();
        assert_eq!(p.msg().unwrap().id, id(2));
        p.set_header(Kind::From, id(7));
        p.push_header(Kind::To, id(8));
        p.push_header(Kind::To, id(9));
        p.push_header(Kind::To, id(10)); // beyond the headroom: reallocates
        let u = unnest_from(p.bytes(), 10);
        assert!(u.via.is_empty());
        let m = p.msg().unwrap();
        assert_eq!((m.kind, m.id), (Kind::To, id(10)));
        let mut q = p.clone();
        for want in [id(10), id(9), id(8)] {
            assert_eq!(q.msg().unwrap().id, want);
            q.strip();
        }
        let m = q.msg().unwrap();
        assert_eq!((m.kind, m.id, m.body), (Kind::From, id(7), &b"x"[..]));
    }

    #[test]
    fn prepend_within_and_beyond_the_headroom() {
        let mut p = Packet::from_bytes(b"body");
        p.prepend(&[1; HEADROOM]);
        assert_eq!(p.bytes(), [&[1; HEADROOM][..], b"body"].concat());
        p.prepend(b"more"); // beyond the headroom: reallocates
        assert_eq!(p.bytes(), [&b"more"[..], &[1; HEADROOM], b"body"].concat());
        p.advance(4 + HEADROOM);
        p.prepend(b"h");
        assert_eq!(p.bytes(), b"hbody");
    }

    #[test]
    fn unnest_replies() {
        let mut p = Packet::fail(id(4), FailCode::NoRoute, "x");
        p.push_header(Kind::From, id(2));
        p.push_header(Kind::From, id(1));
        let u = unnest_from(p.bytes(), MAX_HOPS);
        assert_eq!(u.via, vec![id(1), id(2)]);
        let m = Msg::parse(u.inner).unwrap();
        assert_eq!(m.kind, Kind::Fail);
        assert_eq!(m.fail().unwrap(), (FailCode::NoRoute, "x".to_string()));
        // ε at the end of a chain
        let mut e = Packet::new(Kind::From, id(5), b"");
        e.push_header(Kind::From, id(6));
        let u = unnest_from(e.bytes(), MAX_HOPS);
        assert_eq!((u.via, u.inner), (vec![id(6), id(5)], &b""[..]));
    }
}
