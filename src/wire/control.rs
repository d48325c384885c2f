//! The control protocol between the manager (`r2`) and its daemon (`r2d`)
//! over the UNIX socket.
//!
//! ```text
//! control frame = length:u32be tag:u8 fields      (length = 1 + size of fields)
//! string        = length:u16be utf8
//! ```
//!
//! The client sends one request; file descriptors travel with it as
//! `SCM_RIGHTS`. After an `Endpoint` reply the connection carries link frames
//! (message.rs) both ways instead of control frames.

use super::id::{NodeId, ID_LEN};
use std::fmt;

/// The largest control frame.
pub const MAX_CONTROL: usize = 256 * 1024;

/// What a client asks of the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The daemon's id.
    Id,
    /// The daemon's links, with their labels.
    List,
    /// Use the two passed fds (read, write) as a link. `expect`: the id the
    /// neighbour must have. `label`: what the link is, for `r2 ls`.
    Connect { expect: Option<NodeId>, label: String },
    /// Host an endpoint for this connection: it speaks link frames.
    Endpoint,
    /// Join the program on the two passed fds (read its output, write its
    /// input) to the tunnel process of the node at the end of `path`.
    /// `packet`: the fds are packet pipes.
    Tunnel { path: Vec<NodeId>, packet: bool },
}

/// What the daemon answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Id(NodeId),
    List(Vec<(NodeId, String)>),
    /// The link is up: the neighbour said Hello with this id.
    Linked(NodeId),
    /// The link or tunnel has ended; `error` is None for a clean end.
    Ended {
        error: Option<String>,
    },
    /// The endpoint's id, and the daemon's.
    Endpoint {
        daemon: NodeId,
        endpoint: NodeId,
    },
    /// The request is refused.
    Error(String),
    /// The tunnel has ended normally: the far tunnel process's exit status.
    Exit(u8),
}

/// A control frame that does not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlError(pub String);

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad control message: {}", self.0)
    }
}

struct Enc(Vec<u8>);

impl Enc {
    fn new(tag: u8) -> Enc {
        Enc(vec![0, 0, 0, 0, tag])
    }
    fn id(mut self, id: &NodeId) -> Enc {
        self.0.extend_from_slice(&id.0);
        self
    }
    fn byte(mut self, b: u8) -> Enc {
        self.0.push(b);
        self
    }
    fn str(mut self, s: &str) -> Enc {
        let mut end = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.0.extend_from_slice(&(end as u16).to_be_bytes());
        self.0.extend_from_slice(&s.as_bytes()[..end]);
        self
    }
    fn done(mut self) -> Vec<u8> {
        let n = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&n.to_be_bytes());
        self.0
    }
}

struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ControlError> {
        if self.0.len() < n {
            return Err(ControlError("truncated".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn byte(&mut self) -> Result<u8, ControlError> {
        Ok(self.take(1)?[0])
    }
    fn id(&mut self) -> Result<NodeId, ControlError> {
        NodeId::from_slice(self.take(ID_LEN)?).ok_or_else(|| ControlError("short id".into()))
    }
    fn u16(&mut self) -> Result<u16, ControlError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn str(&mut self) -> Result<String, ControlError> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| ControlError("string is not UTF-8".into()))
    }
    fn end(&self) -> Result<(), ControlError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ControlError("trailing bytes".into()))
        }
    }
}

const T_ID: u8 = 1;
const T_LIST: u8 = 2;
const T_CONNECT: u8 = 3;
const T_ENDPOINT: u8 = 4;
const T_TUNNEL: u8 = 5;

const R_ID: u8 = 0x81;
const R_LIST: u8 = 0x82;
const R_LINKED: u8 = 0x83;
const R_ENDED: u8 = 0x84;
const R_ENDPOINT: u8 = 0x85;
const R_ERROR: u8 = 0x86;
const R_EXIT: u8 = 0x87;

/// The length of the control frame whose 4-byte prefix is `prefix`.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, ControlError> {
    let n = u32::from_be_bytes(prefix) as usize;
    if n == 0 || n > MAX_CONTROL {
        return Err(ControlError(format!("length {n}")));
    }
    Ok(n)
}

impl Request {
    /// The whole frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Id => Enc::new(T_ID).done(),
            Request::List => Enc::new(T_LIST).done(),
            Request::Endpoint => Enc::new(T_ENDPOINT).done(),
            Request::Connect { expect, label } => {
                let e = Enc::new(T_CONNECT);
                let e = match expect {
                    Some(id) => e.byte(1).id(id),
                    None => e.byte(0),
                };
                e.str(label).done()
            }
            Request::Tunnel { path, packet } => {
                let mut e = Enc::new(T_TUNNEL).byte(*packet as u8).byte(path.len() as u8);
                for id in path {
                    e = e.id(id);
                }
                e.done()
            }
        }
    }

    /// Decodes a frame's contents (after the length prefix).
    pub fn decode(b: &[u8]) -> Result<Request, ControlError> {
        let mut d = Dec(b);
        let r = match d.byte()? {
            T_ID => Request::Id,
            T_LIST => Request::List,
            T_ENDPOINT => Request::Endpoint,
            T_CONNECT => {
                let expect = match d.byte()? {
                    0 => None,
                    1 => Some(d.id()?),
                    x => return Err(ControlError(format!("flag {x}"))),
                };
                Request::Connect { expect, label: d.str()? }
            }
            T_TUNNEL => {
                let packet = match d.byte()? {
                    0 => false,
                    1 => true,
                    x => return Err(ControlError(format!("packet flag {x}"))),
                };
                let n = d.byte()? as usize;
                let path = (0..n).map(|_| d.id()).collect::<Result<Vec<_>, _>>()?;
                Request::Tunnel { path, packet }
            }
            t => return Err(ControlError(format!("unknown request {t}"))),
        };
        d.end()?;
        Ok(r)
    }
}

impl Reply {
    /// The whole frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Id(id) => Enc::new(R_ID).id(id).done(),
            Reply::List(list) => {
                let mut e = Enc::new(R_LIST);
                for (id, label) in list {
                    e = e.id(id).str(label);
                }
                e.done()
            }
            Reply::Linked(id) => Enc::new(R_LINKED).id(id).done(),
            Reply::Ended { error: None } => Enc::new(R_ENDED).byte(0).done(),
            Reply::Ended { error: Some(s) } => Enc::new(R_ENDED).byte(1).str(s).done(),
            Reply::Endpoint { daemon, endpoint } => Enc::new(R_ENDPOINT).id(daemon).id(endpoint).done(),
            Reply::Error(s) => Enc::new(R_ERROR).str(s).done(),
            Reply::Exit(s) => Enc::new(R_EXIT).byte(*s).done(),
        }
    }

    /// Decodes a frame's contents (after the length prefix).
    pub fn decode(b: &[u8]) -> Result<Reply, ControlError> {
        let mut d = Dec(b);
        let r = match d.byte()? {
            R_ID => Reply::Id(d.id()?),
            R_LIST => {
                let mut list = Vec::new();
                while !d.0.is_empty() {
                    list.push((d.id()?, d.str()?));
                }
                Reply::List(list)
            }
            R_LINKED => Reply::Linked(d.id()?),
            R_ENDED => match d.byte()? {
                0 => Reply::Ended { error: None },
                _ => Reply::Ended { error: Some(d.str()?) },
            },
            R_ENDPOINT => Reply::Endpoint { daemon: d.id()?, endpoint: d.id()? },
            R_ERROR => Reply::Error(d.str()?),
            R_EXIT => Reply::Exit(d.byte()?),
            t => return Err(ControlError(format!("unknown reply {t}"))),
        };
        d.end()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let a = NodeId([5; 32]);
        let reqs = [
            Request::Id,
            Request::List,
            Request::Endpoint,
            Request::Connect { expect: None, label: "stdio".into() },
            Request::Connect { expect: Some(a), label: "socat tcp:x:1 -".into() },
            Request::Tunnel { path: vec![a, a], packet: true },
            Request::Tunnel { path: vec![a], packet: false },
        ];
        for r in reqs {
            let f = r.encode();
            let n = frame_len(f[..4].try_into().unwrap()).unwrap();
            assert_eq!(n, f.len() - 4);
            assert_eq!(Request::decode(&f[4..]), Ok(r));
        }
        let replies = [
            Reply::Id(a),
            Reply::List(vec![]),
            Reply::List(vec![(a, "stdio".into()), (a, "ü".into())]),
            Reply::Linked(a),
            Reply::Ended { error: None },
            Reply::Ended { error: Some("refused".into()) },
            Reply::Endpoint { daemon: a, endpoint: NodeId([1; 32]) },
            Reply::Error("no".into()),
            Reply::Exit(130),
        ];
        for r in replies {
            let f = r.encode();
            assert_eq!(Reply::decode(&f[4..]), Ok(r));
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(Request::decode(&[]).is_err());
        assert!(Request::decode(&[99]).is_err());
        assert!(Request::decode(&[T_ID, 0]).is_err());
        assert!(Request::decode(&[T_CONNECT, 1, 2]).is_err());
        assert!(Reply::decode(&[R_ENDED, 1, 0, 9]).is_err());
        assert!(frame_len([0, 0, 0, 0]).is_err());
        assert!(frame_len([0xff, 0, 0, 0]).is_err());
    }
}
