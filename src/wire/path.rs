//! What comes back along a path: `From(h1, … From(hk, From(last, answer)))`,
//! a Fail from the hop that could not deliver, or ε from a hop whose link
//! ended — and how to say so in one line.

use super::id::{NodeId, MAX_HOPS};
use super::message::{unnest_from, Kind, Msg};
use super::FailCode;

/// A reply that came back along a path.
#[derive(Debug, PartialEq, Eq)]
pub enum PathReply<'a> {
    /// The expected answer from `last`: the bytes inside all the layers.
    Answer(&'a [u8]),
    /// A hop could not deliver: `at` is the hop that failed (None: the local
    /// daemon), `about` what it could not reach.
    Fail { at: Option<NodeId>, about: NodeId, code: FailCode, text: String },
    /// The node `at` has ended its side (its link went down).
    Ended { at: Option<NodeId> },
    /// Anything else (a stray or malformed message).
    Other,
}

/// Reads a reply to a message sent along `path` to `last` (an agreed node, or
/// the sender itself for a ping).
pub fn interpret<'a>(msg: &'a [u8], path: &[NodeId], last: NodeId) -> PathReply<'a> {
    let layers = path.len() + 1;
    let u = unnest_from(msg, layers.min(MAX_HOPS + 1));
    let at = u.via.last().copied();
    if u.via.len() == layers && u.via[..path.len()] == *path && u.via[path.len()] == last {
        return PathReply::Answer(u.inner);
    }
    if u.via.len() > path.len() || u.via[..] != path[..u.via.len()] {
        return PathReply::Other;
    }
    if u.inner.is_empty() {
        return PathReply::Ended { at };
    }
    match Msg::parse(u.inner) {
        Ok(m) if m.kind == Kind::Fail => {
            let (code, text) = m.fail().unwrap_or((FailCode::Other, String::new()));
            PathReply::Fail { at, about: m.id, code, text }
        }
        _ => PathReply::Other,
    }
}

/// Says what a Fail means, naming the hop (`local`: the local daemon's id).
pub fn describe_fail(at: Option<NodeId>, about: NodeId, code: FailCode, text: &str, local: NodeId) -> String {
    let at = at.unwrap_or(local);
    let what = if about == NodeId::TUNNEL {
        "the tunnel process".to_string()
    } else if about == NodeId::LIST {
        "the neighbour list".to_string()
    } else {
        about.to_string()
    };
    match code {
        FailCode::NoRoute => format!("no route to {what} at {at}"),
        FailCode::IdInUse => format!("refused at {at}: the path revisits a node ({what} is in use there)"),
        FailCode::NoTunnelProcess => format!("{at} runs no tunnel process"),
        c if text.is_empty() => format!("{} at {at} ({what})", c.describe()),
        c => format!("{} at {at} ({what}): {text}", c.describe()),
    }
}

/// Explains an ending along the path.
pub fn describe_end(at: Option<NodeId>, local: NodeId) -> String {
    format!("the path broke: {} is gone", at.unwrap_or(local))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Packet;

    #[test]
    fn reads_replies() {
        let (a, b, x) = (NodeId([1; 32]), NodeId([2; 32]), NodeId([9; 32]));
        let mut p = Packet::new(Kind::From, x, b"pong");
        p.push_header(Kind::From, b);
        p.push_header(Kind::From, a);
        assert_eq!(interpret(p.bytes(), &[a, b], x), PathReply::Answer(b"pong"));
        let mut f = Packet::fail(b, FailCode::NoRoute, "");
        f.push_header(Kind::From, a);
        match interpret(f.bytes(), &[a, b], x) {
            PathReply::Fail { at, about, code, .. } => {
                assert_eq!((at, about, code), (Some(a), b, FailCode::NoRoute));
                assert_eq!(describe_fail(at, about, code, "", x), format!("no route to {b} at {a}"));
            }
            r => panic!("{r:?}"),
        }
        let e = Packet::new(Kind::From, a, b"");
        assert_eq!(interpret(e.bytes(), &[a, b], x), PathReply::Ended { at: Some(a) });
        let stray = Packet::new(Kind::From, b, b"");
        assert_eq!(interpret(stray.bytes(), &[a, b], x), PathReply::Other);
    }
}
