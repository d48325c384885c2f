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

/// The largest control frame (a Stats reply of many links and tunnels).
pub const MAX_CONTROL: usize = 16 * 1024 * 1024;

/// What a client asks of the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The daemon's id.
    Id,
    /// The daemon's links, with their labels.
    List,
    /// Use the two passed fds (read, write) as a link. `expect`: the id the
    /// neighbour must have. `label`: what the link is, for `r2 ls`.
    /// `layer`: the link layer to speak (`link::Layer::encode`), and `why`.
    /// `returns`: for a link that `r2 connect -r` keeps, how often it has
    /// come back before this one. `plaintext`: this end asks that the link
    /// not be sealed (it is plaintext only if the neighbour asks too).
    Connect { expect: Option<NodeId>, label: String, layer: String, why: String, returns: Option<u64>, plaintext: bool },
    /// Host an endpoint for this connection: it speaks link frames.
    Endpoint,
    /// Counters: per link, per tunnel, and the daemon's totals.
    Stats,
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
    Stats(Stats),
}

/// Traffic one way: bytes and frames (or messages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub bytes: u64,
    pub frames: u64,
}

impl Traffic {
    pub fn add(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
        self.frames += 1;
    }
}

/// One link's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStats {
    pub id: NodeId,
    pub label: String,
    /// The link's layer and why it speaks it.
    pub layer: String,
    pub up_ms: u64,
    pub rx: Traffic,
    pub tx: Traffic,
    /// For a link kept by `r2 connect -r`, how often it has come back.
    pub returns: Option<u64>,
}

/// One tunnel end's counters: `input` is what its program was given,
/// `output` what it produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelStats {
    pub server: bool,
    pub id: NodeId,
    pub up_ms: u64,
    pub input: Traffic,
    pub output: Traffic,
}

/// The daemon's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub links: Vec<LinkStats>,
    pub tunnels: Vec<TunnelStats>,
    pub counters: Vec<(String, u64)>,
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
    fn u64(mut self, n: u64) -> Enc {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    fn traffic(self, t: &Traffic) -> Enc {
        self.u64(t.bytes).u64(t.frames)
    }
    fn opt_u64(self, n: Option<u64>) -> Enc {
        match n {
            Some(n) => self.byte(1).u64(n),
            None => self.byte(0),
        }
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
    fn u64(&mut self) -> Result<u64, ControlError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn traffic(&mut self) -> Result<Traffic, ControlError> {
        Ok(Traffic { bytes: self.u64()?, frames: self.u64()? })
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, ControlError> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(self.u64()?)),
            x => Err(ControlError(format!("flag {x}"))),
        }
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
const T_STATS: u8 = 6;

const R_ID: u8 = 0x81;
const R_LIST: u8 = 0x82;
const R_LINKED: u8 = 0x83;
const R_ENDED: u8 = 0x84;
const R_ENDPOINT: u8 = 0x85;
const R_ERROR: u8 = 0x86;
const R_EXIT: u8 = 0x87;
const R_STATS: u8 = 0x88;

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
            Request::Stats => Enc::new(T_STATS).done(),
            Request::Connect { expect, label, layer, why, returns, plaintext } => {
                let e = Enc::new(T_CONNECT);
                let e = match expect {
                    Some(id) => e.byte(1).id(id),
                    None => e.byte(0),
                };
                e.str(label).str(layer).str(why).opt_u64(*returns).byte(*plaintext as u8).done()
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
            T_STATS => Request::Stats,
            T_CONNECT => {
                let expect = match d.byte()? {
                    0 => None,
                    1 => Some(d.id()?),
                    x => return Err(ControlError(format!("flag {x}"))),
                };
                let (label, layer, why) = (d.str()?, d.str()?, d.str()?);
                let returns = d.opt_u64()?;
                let plaintext = match d.byte()? {
                    0 => false,
                    1 => true,
                    x => return Err(ControlError(format!("plaintext flag {x}"))),
                };
                Request::Connect { expect, label, layer, why, returns, plaintext }
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
            Reply::Stats(st) => {
                let mut e = Enc::new(R_STATS).u64(st.links.len() as u64);
                for l in &st.links {
                    e = e.id(&l.id).str(&l.label).str(&l.layer).u64(l.up_ms).traffic(&l.rx).traffic(&l.tx);
                    e = e.opt_u64(l.returns);
                }
                e = e.u64(st.tunnels.len() as u64);
                for t in &st.tunnels {
                    e = e.byte(t.server as u8).id(&t.id).u64(t.up_ms).traffic(&t.input).traffic(&t.output);
                }
                e = e.u64(st.counters.len() as u64);
                for (name, v) in &st.counters {
                    e = e.str(name).u64(*v);
                }
                e.done()
            }
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
            R_STATS => {
                let mut st = Stats::default();
                let n = d.u64()?.min(MAX_CONTROL as u64);
                for _ in 0..n {
                    let (id, label, layer, up_ms) = (d.id()?, d.str()?, d.str()?, d.u64()?);
                    let (rx, tx, returns) = (d.traffic()?, d.traffic()?, d.opt_u64()?);
                    st.links.push(LinkStats { id, label, layer, up_ms, rx, tx, returns });
                }
                let n = d.u64()?.min(MAX_CONTROL as u64);
                for _ in 0..n {
                    let (server, id, up_ms) = (d.byte()? != 0, d.id()?, d.u64()?);
                    st.tunnels.push(TunnelStats { server, id, up_ms, input: d.traffic()?, output: d.traffic()? });
                }
                let n = d.u64()?.min(MAX_CONTROL as u64);
                for _ in 0..n {
                    st.counters.push((d.str()?, d.u64()?));
                }
                Reply::Stats(st)
            }
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
            Request::Stats,
            Request::Connect {
                expect: None,
                label: "stdio".into(),
                layer: "adapt".into(),
                why: String::new(),
                returns: None,
                plaintext: false,
            },
            Request::Connect {
                expect: Some(a),
                label: "socat tcp:x:1 -".into(),
                layer: "stream".into(),
                why: "a TCP socket".into(),
                returns: Some(7),
                plaintext: true,
            },
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
            Reply::Stats(Stats {
                links: vec![LinkStats {
                    id: a,
                    label: "stdio".into(),
                    layer: "robust (datagrams): adapted to the peer".into(),
                    up_ms: 5,
                    rx: Traffic { bytes: 1, frames: 2 },
                    tx: Traffic { bytes: 3, frames: 4 },
                    returns: Some(2),
                }],
                tunnels: vec![TunnelStats {
                    server: true,
                    id: a,
                    up_ms: 9,
                    input: Traffic::default(),
                    output: Traffic { bytes: 7, frames: 1 },
                }],
                counters: vec![("links_up".into(), 3)],
            }),
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
        assert!(Request::decode(&[T_CONNECT, 0, 0, 0, 0, 0, 0, 0, 2]).is_err(), "returns flag 2");
        assert!(Reply::decode(&[R_ENDED, 1, 0, 9]).is_err());
        assert!(frame_len([0, 0, 0, 0]).is_err());
        assert!(frame_len([0xff, 0, 0, 0]).is_err());
    }
}
