//! The fuzz target for the decoders, kept in the crate so that the saved
//! corpus is replayed by an ordinary test on stable (tests/fuzz_corpus.rs).
//! It panics when a property fails.

use super::control::{Reply, Request};
use super::id::{parse_path, MAX_HOPS};
use super::message::{unnest_from, Kind, Msg, Packet};
use super::tunnel::TunnelMsg;

/// Runs every decoder on `data` and checks what they promise.
pub fn decoders(data: &[u8]) {
    message(data);
    if let Ok(m) = TunnelMsg::decode(data) {
        assert_eq!(m.encode(), data, "tunnel message round trip");
    }
    if let Ok(r) = Request::decode(data) {
        assert_eq!(&r.encode()[4..], data, "request round trip");
    }
    if let Some(ids) = super::list::decode(data) {
        assert_eq!(super::list::encode(ids.into_iter()), data, "list round trip");
    }
    if let Ok(r) = Reply::decode(data) {
        let _ = r.encode();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(p) = parse_path(s) {
            assert!(!p.is_empty() && p.len() <= MAX_HOPS && p.iter().all(|h| !h.is_reserved()));
        }
    }
}

/// One message: its layers, and the in-place header operations.
fn message(msg: &[u8]) {
    if let Ok(m) = Msg::parse(msg) {
        let _ = m.fail();
        let _ = m.check_hello();
        let mut p = Packet::from_bytes(msg);
        p.set_header(m.kind, m.id);
        assert_eq!(p.bytes(), msg);
        p.push_header(Kind::To, m.id);
        p.push_header(Kind::From, m.id);
        p.push_header(Kind::To, m.id); // beyond the headroom
        p.strip();
        p.strip();
        p.strip();
        assert_eq!(p.bytes(), msg);
    }
    let u = unnest_from(msg, usize::MAX);
    assert!(u.inner.len() + u.via.len() * 33 == msg.len());
}
