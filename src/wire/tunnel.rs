//! Tunnel messages: the bodies of `To(0, ·)` and `From(0, ·)`.
//!
//! ```text
//! tunnel message = tag:u8 rest
//! Open   = 1 window:u32be   the caller starts CMD and grants window bytes
//! Data   = 2 bytes          never empty; one read on one side, one write on the other
//! Eof    = 3                this direction has ended (half-close)
//! Credit = 4 n:u32be        the sender may send n more bytes of data
//! Exit   = 5 status:u8      CMD's exit status (128+N when killed by signal N)
//! Datagram = 6 offset:u64be bytes
//!                           never empty; one packet of a packet-mode program,
//!                           best-effort: a robust link may drop it. offset
//!                           counts the data of the datagrams sent before, so
//!                           the receiver grants back the credit of the lost
//! Handshake = 7 noise       an end-to-end handshake message
//! Sealed = 8 counter:u64be ciphertext tag
//!                           one of the messages above, sealed end to end
//!                           (`daemon::e2e`); the counter's top bit is set
//!                           for a sealed Datagram
//! ```

use super::message::{Kind, HEADER};
use super::NodeId;
use std::fmt;

pub const OPEN: u8 = 1;
pub const DATA: u8 = 2;
pub const EOF: u8 = 3;
pub const CREDIT: u8 = 4;
pub const EXIT: u8 = 5;
pub const DATAGRAM: u8 = 6;
pub const HANDSHAKE: u8 = 7;
pub const SEALED: u8 = 8;

/// The bytes before the data of a tunnel message with this tag: the tag,
/// and a Datagram's offset.
pub fn data_head(tag: u8) -> usize {
    if tag == DATAGRAM {
        1 + 8
    } else {
        1
    }
}

/// The default flow-control window of a tunnel direction.
pub const DEFAULT_WINDOW: u32 = 1024 * 1024;
/// The largest window a peer may grant.
pub const MAX_WINDOW: u32 = 1024 * 1024;

/// One decoded tunnel message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelMsg<'a> {
    Open { window: u32 },
    Data(&'a [u8]),
    Eof,
    Credit(u32),
    Exit(u8),
    Datagram { offset: u64, data: &'a [u8] },
}

/// A tunnel message that does not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadTunnelMsg(pub String);

impl fmt::Display for BadTunnelMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad tunnel message: {}", self.0)
    }
}

fn u32_of(b: &[u8]) -> Result<u32, BadTunnelMsg> {
    let a: [u8; 4] = b.try_into().map_err(|_| BadTunnelMsg(format!("{} bytes where 4 belong", b.len())))?;
    Ok(u32::from_be_bytes(a))
}

impl<'a> TunnelMsg<'a> {
    pub fn decode(b: &'a [u8]) -> Result<TunnelMsg<'a>, BadTunnelMsg> {
        let (&tag, rest) = b.split_first().ok_or_else(|| BadTunnelMsg("empty".into()))?;
        let m = match tag {
            OPEN => {
                let window = u32_of(rest)?;
                if window == 0 || window > MAX_WINDOW {
                    return Err(BadTunnelMsg(format!("window {window}")));
                }
                TunnelMsg::Open { window }
            }
            DATA if rest.is_empty() => return Err(BadTunnelMsg("empty data".into())),
            DATA => TunnelMsg::Data(rest),
            DATAGRAM if rest.len() <= 8 => return Err(BadTunnelMsg("empty datagram".into())),
            DATAGRAM => {
                let (o, data) = rest.split_at(8);
                TunnelMsg::Datagram { offset: u64::from_be_bytes(o.try_into().unwrap_or([0; 8])), data }
            }
            EOF if rest.is_empty() => TunnelMsg::Eof,
            CREDIT => TunnelMsg::Credit(u32_of(rest)?),
            EXIT if rest.len() == 1 => TunnelMsg::Exit(rest[0]),
            t => return Err(BadTunnelMsg(format!("tag {t} with {} bytes", rest.len()))),
        };
        Ok(m)
    }

    pub fn encode(&self) -> Vec<u8> {
        match *self {
            TunnelMsg::Open { window } => [&[OPEN][..], &window.to_be_bytes()].concat(),
            TunnelMsg::Data(d) => [&[DATA][..], d].concat(),
            TunnelMsg::Eof => vec![EOF],
            TunnelMsg::Credit(n) => [&[CREDIT][..], &n.to_be_bytes()].concat(),
            TunnelMsg::Exit(s) => vec![EXIT, s],
            TunnelMsg::Datagram { offset, data } => [&[DATAGRAM][..], &offset.to_be_bytes(), data].concat(),
        }
    }
}

/// Whether `msg` is a best-effort message: a packet-mode tunnel's data
/// (tag DATAGRAM right after the tunnel node's header, however many
/// To/From headers are around it, or a Sealed one whose counter has its
/// top bit set).
pub fn best_effort(mut msg: &[u8]) -> bool {
    while msg.len() > HEADER && (msg[0] == Kind::To as u8 || msg[0] == Kind::From as u8) {
        if msg[1..HEADER] == NodeId::TUNNEL.0 {
            return msg[HEADER] == DATAGRAM
                || (msg[HEADER] == SEALED && msg.get(HEADER + 1).is_some_and(|c| c & 0x80 != 0));
        }
        msg = &msg[HEADER..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Packet;

    #[test]
    fn round_trip() {
        for m in [
            TunnelMsg::Open { window: 4096 },
            TunnelMsg::Data(b"x"),
            TunnelMsg::Eof,
            TunnelMsg::Credit(99),
            TunnelMsg::Exit(130),
        ] {
            assert_eq!(TunnelMsg::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn rejects() {
        for bad in [&[][..], &[DATA], &[OPEN, 0, 0, 0, 0], &[OPEN, 1], &[EOF, 1], &[EXIT], &[9, 9], &[CREDIT, 1, 2]] {
            assert!(TunnelMsg::decode(bad).is_err(), "{bad:?}");
        }
        let too_big = TunnelMsg::Open { window: MAX_WINDOW + 1 }.encode();
        assert!(TunnelMsg::decode(&too_big).is_err());
    }

    #[test]
    fn packet_mode_tunnel_data_is_best_effort_and_nothing_else() {
        let peer = NodeId([7; 32]);
        let mut p = Packet::new(Kind::To, NodeId::TUNNEL, &[DATAGRAM, 1, 2, 3]);
        assert!(best_effort(p.bytes()));
        p.push_header(Kind::To, peer);
        p.push_header(Kind::From, peer);
        assert!(best_effort(p.bytes()));
        let data = Packet::new(Kind::To, NodeId::TUNNEL, &[DATA, 1]);
        assert!(!best_effort(data.bytes()));
        assert!(!best_effort(Packet::hello(peer).bytes()));
        assert!(!best_effort(Packet::new(Kind::To, peer, &[DATAGRAM]).bytes()));
        // Sealed end to end: best-effort when the counter is unordered.
        let mut sealed = Packet::new(Kind::To, NodeId::TUNNEL, &[SEALED, 0x80, 0, 0, 0, 0, 0, 0, 5, 9, 9]);
        sealed.push_header(Kind::To, peer);
        assert!(best_effort(sealed.bytes()));
        let ordered = Packet::new(Kind::To, NodeId::TUNNEL, &[SEALED, 0, 0, 0, 0, 0, 0, 0, 5, 9, 9]);
        assert!(!best_effort(ordered.bytes()));
        assert!(!best_effort(Packet::new(Kind::To, NodeId::TUNNEL, &[SEALED]).bytes()));
    }
}
