//! The fuzz target for the router, kept in the crate so that the saved
//! corpus is replayed by an ordinary test on stable. Bytes become a
//! sequence of events over a few ports and a small set of ids (so that ids
//! collide); the invariants must hold after every event, no frame may leave
//! over the cap, and once every port has closed the router holds nothing.

use super::{Action, Event, PortId, Router, Timers};
use crate::wire::message::{Kind, MAX_MESSAGE};
use crate::wire::{FailCode, NodeId, Packet};

const OWN: NodeId = NodeId([0xAA; 32]);

fn id(b: u8) -> NodeId {
    match b % 8 {
        0 => OWN,
        1 => NodeId::TUNNEL,
        2 => NodeId::LIST,
        n => NodeId([n; 32]),
    }
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// A message from a few bytes of input: a chain of layers, then a body.
fn message(b: &mut Bytes) -> Packet {
    let layers = b.byte().unwrap_or(0) % 6;
    let body_len = b.byte().unwrap_or(0) as usize % 48;
    let body = b.take(body_len).to_vec();
    let mut p = Packet::from_bytes(&body);
    for _ in 0..layers {
        let kind = match b.byte().unwrap_or(0) % 5 {
            0 => Kind::To,
            1 => Kind::From,
            2 => Kind::Fail,
            3 => Kind::Hello,
            _ => Kind::To,
        };
        p.push_header(kind, id(b.byte().unwrap_or(0)));
    }
    p
}

/// Runs the router on the events `data` describes.
pub fn events(data: &[u8]) {
    let mut b = Bytes(data);
    let mut r = Router::new(OWN, Timers::default());
    if b.byte().unwrap_or(0) & 1 == 1 {
        r = r.with_tunnels();
    }
    let (mut now, mut next, mut open): (u64, PortId, Vec<PortId>) = (0, 0, Vec::new());
    let mut out = Vec::new();
    let pick = |b: &mut Bytes, open: &Vec<PortId>| -> Option<PortId> {
        let i = b.byte()? as usize;
        open.get(i % open.len().max(1)).copied()
    };
    while let Some(op) = b.byte() {
        let ev = match op % 9 {
            0 => {
                next += 1;
                open.push(next);
                let expect = b.byte().filter(|x| x & 8 != 0).map(id);
                Event::LinkOpened { port: next, expect }
            }
            1 => {
                next += 1;
                open.push(next);
                Event::EndpointOpened { port: next, id: id(b.byte().unwrap_or(3)) }
            }
            2..=4 => {
                let Some(port) = pick(&mut b, &open) else { continue };
                let packet = if op % 9 == 2 { Packet::hello(id(b.byte().unwrap_or(3))) } else { message(&mut b) };
                Event::Received { port, packet }
            }
            5 => {
                let Some(port) = pick(&mut b, &open) else { continue };
                Event::Closed { port, error: None }
            }
            6 => {
                now += 100 * b.byte().unwrap_or(1) as u64;
                Event::Tick
            }
            7 => Event::FromTunnel { to: id(b.byte().unwrap_or(3)), packet: message(&mut b) },
            _ => Event::TunnelFail { to: id(b.byte().unwrap_or(3)), code: FailCode::Refused, text: "x".into() },
        };
        r.handle(now, ev, &mut out);
        for a in out.drain(..) {
            match a {
                Action::Send { packet, .. } => assert!(packet.len() <= MAX_MESSAGE),
                Action::Close { port, .. } => open.retain(|&p| p != port),
                _ => {}
            }
        }
        if let Err(e) = r.check() {
            panic!("invariant broken: {e}");
        }
    }
    for port in open {
        r.handle(now, Event::Closed { port, error: None }, &mut out);
        out.clear();
    }
    assert_eq!(r.held(), (0, 0), "state left after every port closed");
}
