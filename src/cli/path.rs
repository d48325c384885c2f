//! PATH arguments, and what comes back along a path.

use super::{Error, Result};
use crate::wire::id::{parse_path, MAX_HOPS};
use crate::wire::message::{unnest_from, Kind, Msg};
use crate::wire::{FailCode, NodeId};

/// Parses PATH; a bad one is a usage error, before any daemon is contacted.
pub fn parse(s: &str) -> Result<Vec<NodeId>> {
    parse_path(s).map_err(|e| Error::Usage(format!("bad PATH {s:?}: {e}")))
}

/// A reply that came back along a path.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// The expected answer: `via` matched, and this is what is inside.
    Answer(&'a [u8]),
    /// A hop could not deliver: `at` is the hop that failed (None: the local
    /// daemon), `about` what it could not reach.
    Fail { at: Option<NodeId>, about: NodeId, code: FailCode, text: String },
    /// The node at `at` has ended its side (its link went down).
    Ended { at: Option<NodeId> },
    /// Anything else (a stray or malformed message).
    Other,
}

/// Reads a reply to a message sent along `path` to `last` (the agreed node or
/// endpoint at the far end): `From(path…, From(last, answer))`.
pub fn interpret<'a>(msg: &'a [u8], path: &[NodeId], last: NodeId) -> Reply<'a> {
    let mut full = path.to_vec();
    full.push(last);
    let u = unnest_from(msg, full.len().min(MAX_HOPS + 1));
    let at = u.via.last().copied();
    if u.via == full {
        return Reply::Answer(u.inner);
    }
    if !full.starts_with(&u.via) {
        return Reply::Other;
    }
    if u.inner.is_empty() {
        return Reply::Ended { at };
    }
    match Msg::parse(u.inner) {
        Ok(m) if m.kind == Kind::Fail => {
            let (code, text) = m.fail().unwrap_or((FailCode::Other, String::new()));
            Reply::Fail { at, about: m.id, code, text }
        }
        _ => Reply::Other,
    }
}

/// Says what a Fail means, naming the hop.
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
        c if text.is_empty() => format!("{} at {at} ({what})", c.describe()),
        c => format!("{} at {at} ({what}): {text}", c.describe()),
    }
}

/// Explains an ending along the path.
pub fn describe_end(at: Option<NodeId>, local: NodeId) -> String {
    format!("the path broke at {}", at.unwrap_or(local))
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
        assert_eq!(interpret(p.bytes(), &[a, b], x), Reply::Answer(b"pong"));
        let mut f = Packet::fail(b, FailCode::NoRoute, "");
        f.push_header(Kind::From, a);
        match interpret(f.bytes(), &[a, b], x) {
            Reply::Fail { at, about, code, .. } => {
                assert_eq!((at, about, code), (Some(a), b, FailCode::NoRoute));
                assert_eq!(describe_fail(at, about, code, "", x), format!("no route to {b} at {a}"));
            }
            r => panic!("{r:?}"),
        }
        let e = Packet::new(Kind::From, a, b"");
        assert_eq!(interpret(e.bytes(), &[a, b], x), Reply::Ended { at: Some(a) });
        assert!(matches!(parse("").unwrap_err(), Error::Usage(_)));
    }
}
