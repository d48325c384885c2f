//! The fuzz target for the router, kept in the crate so that the saved
//! corpus is replayed by an ordinary test on stable. Bytes become a
//! sequence of events over a few ports and a small set of ids (so that ids
//! collide); the invariants must hold after every event, no frame may leave
//! over the cap, every shortcut must predict exactly what the router does,
//! and once every port has closed the router holds nothing.

use super::{
    caller_delivery_key, delivery_key, is_shortcut_tag, names, relay_key, tunnel_data_key, Action, Event, Exit, Lane,
    PortId, Router, Shortcut, Timers,
};
use crate::wire::message::{Kind, MAX_MESSAGE};
use crate::wire::{FailCode, NodeId, Packet};
use std::collections::HashMap;

type Table = HashMap<Vec<u8>, (Exit, Vec<u8>)>;

/// The shortcuts a daemon keeps, as the router's actions make and void
/// them; before each message, what the shortcut its reader would take says
/// must happen, and afterwards [`ShortcutModel::check`] that the router did
/// just that. All kinds: relays and deliveries read on links, and the Data
/// of both tunnel ends.
#[derive(Default)]
pub struct ShortcutModel {
    /// Per lane: key -> (exit, head).
    tables: HashMap<Lane, Table>,
    /// How many messages a shortcut predicted.
    pub checked: usize,
}

impl ShortcutModel {
    /// Where a reader would send `ev`'s message, and the bytes, if a
    /// shortcut says: the lane and key it would look it up by, as the
    /// daemon's readers do.
    pub fn predict(&self, ev: &Event) -> Option<(Exit, Vec<u8>)> {
        let (lane, key, bytes) = match ev {
            Event::Received { port, packet } => {
                let b = packet.bytes();
                let on_link = self.tables.get(&Lane::Link(*port));
                let lane = if on_link.is_some() { Lane::Link(*port) } else { Lane::Endpoint(*port) };
                let key = match lane {
                    Lane::Link(_) => delivery_key(b)
                        .or(caller_delivery_key(b))
                        .filter(|k| on_link.is_some_and(|t| t.contains_key(*k)))
                        .or(relay_key(b)),
                    _ => tunnel_data_key(b),
                };
                (lane, key?, b)
            }
            Event::FromTunnel { to, packet } => {
                let b = packet.bytes();
                let data = b.first().is_some_and(|&t| is_shortcut_tag(t)) && b.len() > 1;
                (Lane::Tunnel(*to), data.then(|| &b[..1])?, b)
            }
            _ => return None,
        };
        let (to, head) = self.tables.get(&lane)?.get(key)?;
        let bytes = [&head[..], &bytes[key.len()..]].concat();
        (bytes.len() <= MAX_MESSAGE).then_some((*to, bytes))
    }

    /// The kinds of lane that hold shortcuts now.
    pub fn lanes(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self
            .tables
            .keys()
            .map(|l| match l {
                Lane::Link(_) => "link",
                Lane::Endpoint(_) => "endpoint",
                Lane::Tunnel(_) => "tunnel",
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Checks that the router's `actions` for a message were the one send
    /// or tunnel message predicted (and at most shortcuts again), then
    /// learns from them.
    pub fn check(&mut self, predicted: Option<(Exit, Vec<u8>)>, actions: &[Action]) {
        if let Some((to, bytes)) = predicted {
            let did: Vec<(Exit, &[u8])> = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Send { port, packet } => Some((Exit::Port(*port), packet.bytes())),
                    Action::Tunnel { peer, packet, .. } => Some((Exit::Tunnel(*peer), packet.bytes())),
                    Action::Shortcut(_) => None,
                    other => panic!("a shortcut's message made the router do {other:?}"),
                })
                .collect();
            assert_eq!(did, vec![(to, &bytes[..])], "a shortcut predicted another outcome");
            self.checked += 1;
        }
        for a in actions {
            match a {
                Action::Shortcut(Shortcut { from, key, to, head }) => {
                    self.tables.entry(*from).or_default().insert(key.clone(), (*to, head.clone()));
                }
                Action::ForgetShortcuts => self.tables.clear(),
                Action::ForgetShortcutsOf(n) => {
                    self.tables.remove(&Lane::Tunnel(*n));
                    for t in self.tables.values_mut() {
                        t.retain(|k, (to, head)| !names(k, *n) && !names(head, *n) && *to != Exit::Tunnel(*n));
                    }
                }
                _ => {}
            }
        }
    }
}

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
    let mut model = ShortcutModel::default();
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
                let proven = id(b.byte().unwrap_or(3));
                Event::LinkOpened { port: next, expect, proven }
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
        let predicted = model.predict(&ev);
        r.handle(now, ev, &mut out);
        model.check(predicted, &out);
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
