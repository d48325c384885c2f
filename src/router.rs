//! The router: the state machine of the r2 protocol, with no I/O.
//!
//! It applies the one rule — `To(n1, m)` received from `n0` is delivered as
//! `From(n0, m)` to `n1` — and keeps exactly the state of r2.7: neighbours
//! (physical links, local endpoints, virtual neighbours bound by their first
//! `From` over a carrier link) and, for each, the neighbours it has passed
//! traffic with, so that an ending reaches everyone with `ε`.
//!
//! The daemon feeds it [`Event`]s stamped with the time and gets [`Action`]s
//! back. It owns no fds, threads, clocks or randomness, so the tests drive it
//! with values alone.

use crate::wire::id::MAX_HOPS;
use crate::wire::list;
use crate::wire::message::{Kind, Msg, Packet, HEADER, MAX_MESSAGE};
use crate::wire::tunnel::{DATA, DATAGRAM, SEALED};
use crate::wire::{FailCode, NodeId};
use log::{debug, info, warn};
use std::collections::{BTreeSet, HashMap, HashSet};

/// The daemon's handle for one fd-owning thing: a link or an endpoint.
pub type PortId = u64;

/// Time in milliseconds, from any fixed origin.
pub type Millis = u64;

/// The timers of r2d.8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// A link that has not said Hello after this long is dropped.
    pub hello: Millis,
    /// A link silent this long is pinged, and again after as long.
    pub keepalive: Millis,
    /// A link silent for `keepalive * misses` is dead.
    pub misses: u32,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers { hello: 5_000, keepalive: 2_000, misses: 3 }
    }
}

/// What a daemon lets its neighbours do (r2d.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Relay between two neighbours that are not local endpoints.
    pub transit: bool,
    /// The most virtual neighbours one link may carry.
    pub max_virtual: usize,
    /// The most Fails answered per second on one port; the rest are dropped.
    pub fails_per_second: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { transit: true, max_virtual: 4096, fails_per_second: 100 }
    }
}

/// Counters of what the router has done, for `r2 stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub links_up: u64,
    pub links_down: u64,
    pub links_refused: u64,
    pub endpoints_opened: u64,
    pub endpoints_closed: u64,
    pub virtual_bound: u64,
    pub virtual_freed: u64,
    pub messages_routed: u64,
    pub fails_sent: u64,
    pub dropped_malformed: u64,
    pub dropped_rate_limited: u64,
    pub dropped_no_transit: u64,
    pub dropped_too_many_virtual: u64,
    pub dropped_id_in_use: u64,
}

impl Counters {
    /// Name and value of each counter.
    pub fn list(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("links_up", self.links_up),
            ("links_down", self.links_down),
            ("links_refused", self.links_refused),
            ("endpoints_opened", self.endpoints_opened),
            ("endpoints_closed", self.endpoints_closed),
            ("virtual_bound", self.virtual_bound),
            ("virtual_freed", self.virtual_freed),
            ("messages_routed", self.messages_routed),
            ("fails_sent", self.fails_sent),
            ("dropped_malformed", self.dropped_malformed),
            ("dropped_rate_limited", self.dropped_rate_limited),
            ("dropped_no_transit", self.dropped_no_transit),
            ("dropped_too_many_virtual", self.dropped_too_many_virtual),
            ("dropped_id_in_use", self.dropped_id_in_use),
        ]
    }
}

/// What happened, as the daemon tells it.
#[derive(Debug)]
pub enum Event {
    /// A new physical link, whose handshake proved the neighbour holds
    /// the key `proven`; `expect` is the id `r2 connect -n` asked for.
    LinkOpened { port: PortId, expect: Option<NodeId>, proven: NodeId },
    /// A new local endpoint with a fresh random id.
    EndpointOpened { port: PortId, id: NodeId },
    /// One message arrived on a port.
    Received { port: PortId, packet: Packet },
    /// A port's reader reached end-of-file (`error: None`), failed, or its
    /// client went away.
    Closed { port: PortId, error: Option<String> },
    /// The tunnel node sends a tunnel message (the packet holds just it) to
    /// neighbour `to`.
    FromTunnel { to: NodeId, packet: Packet },
    /// The tunnel node cannot serve `to`: it gets `Fail(0, code, text)`.
    TunnelFail { to: NodeId, code: FailCode, text: String },
    /// A link's reader forwarded messages by a shortcut: the link is
    /// alive, as if they had come here.
    Heard { port: PortId },
    /// Time passed: check timers.
    Tick,
}

/// What the daemon must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Queue a message on a port.
    Send { port: PortId, packet: Packet },
    /// A link's neighbour said Hello and was accepted.
    LinkUp { port: PortId, peer: NodeId },
    /// Close a port after what was queued on it; `error: None` is a clean end.
    Close { port: PortId, error: Option<String> },
    /// A tunnel message (the packet holds just it) from neighbour `peer`,
    /// reached through the physical neighbour `via` (None: a local endpoint).
    Tunnel { peer: NodeId, via: Option<NodeId>, packet: Packet },
    /// Neighbour `peer` has ended, or ended its tunnel: end its instance.
    TunnelGone { peer: NodeId },
    /// The message just routed went the way that any later one read on
    /// `from` would go if it starts with the bytes `key` and goes on with a
    /// non-empty rest: to `to`, as `head` followed by that rest (if that is
    /// within [`MAX_MESSAGE`]). The reader of `from` may send such messages
    /// on itself until [`Action::ForgetShortcuts`] (r2d.8, "Shortcuts").
    Shortcut(Shortcut),
    /// A link neighbour or a connection has ended: every shortcut is void.
    ForgetShortcuts,
    /// Virtual neighbour or endpoint `n`, or its connection to the tunnel
    /// node, has ended: the shortcuts whose key or head names it, or that
    /// lead to or from its tunnel end, are void. The others stay: nothing
    /// they depend on changed (a virtual neighbour or an endpoint is a
    /// leaf, reached through its carrier or on its own port, carrying no
    /// other node, and all that goes to or from it names it).
    ForgetShortcutsOf(NodeId),
}

/// A way for a reader to send messages on without the router, as the
/// router would: see [`Action::Shortcut`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortcut {
    pub from: Lane,
    pub key: Vec<u8>,
    pub to: Exit,
    pub head: Vec<u8>,
}

/// Where the messages of a shortcut are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// A link's reader: transit messages (keyed by [`relay_key`]), the
    /// Data of far-side tunnel ends (keyed by [`delivery_key`]) and that of
    /// callers' ends one hop away (keyed by [`caller_delivery_key`]).
    Link(PortId),
    /// The reader of the endpoint on this port, when it is the caller's
    /// end of a tunnel: the Data messages it makes of its program's output.
    Endpoint(PortId),
    /// The reader of the tunnel node's instance for this neighbour: the
    /// Data messages it makes of its program's output.
    Tunnel(NodeId),
}

/// Where the messages of a shortcut go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Out on this link; or, for a key read on a link that is a
    /// [`caller_delivery_key`], to the caller's tunnel end on this
    /// endpoint port.
    Port(PortId),
    /// To the tunnel node's instance for this neighbour, as the packet of
    /// an [`Action::Tunnel`].
    Tunnel(NodeId),
}

/// The first bytes of a message read on a link that decide where a relay
/// sends it: a `To(n1, …)` header, or `From(n0, To(n1, …))`'s two. None
/// when the message has nothing after them (ε), or another shape. What a
/// link's reader looks up among its relay shortcuts.
pub fn relay_key(msg: &[u8]) -> Option<&[u8]> {
    let n = match (msg.first(), msg.get(HEADER)) {
        (Some(&k), _) if k == Kind::To as u8 => HEADER,
        (Some(&k), Some(&k2)) if k == Kind::From as u8 && k2 == Kind::To as u8 => 2 * HEADER,
        _ => return None,
    };
    (msg.len() > n).then(|| &msg[..n])
}

/// Whether a tunnel message with this tag is data, which goes by
/// shortcut: Data, a packet-mode Datagram, or a Sealed message (of a tunnel
/// sealed end to end, mostly its data).
pub fn is_shortcut_tag(tag: u8) -> bool {
    tag == DATA || tag == DATAGRAM || tag == SEALED
}

/// Whether shortcut bytes (a key or a head) name node `n`: what
/// [`Action::ForgetShortcutsOf`] voids. A false match only voids one more.
pub fn names(bytes: &[u8], n: NodeId) -> bool {
    bytes.windows(n.0.len()).any(|w| w == n.0)
}

/// What an ending of neighbour `n` (reached by `via`), or of its tunnel,
/// voids: the shortcuts that name it if it is a leaf (virtual, or an
/// endpoint), else all (a link may carry any number of ways).
fn forget_for(n: NodeId, via: Via) -> Action {
    match via {
        Via::Virtual(_) | Via::Endpoint(_) => Action::ForgetShortcutsOf(n),
        Via::Link(_) => Action::ForgetShortcuts,
    }
}

/// The length of a [`delivery_key`].
pub const DELIVERY_KEY: usize = 2 * HEADER + 1;

/// The first bytes of a message read on a link that decide where the Data
/// of a far-side tunnel end goes: `From(n0, To(0, Data …` up to the Data
/// tag, or the Sealed tag of a tunnel sealed end to end. None for anything
/// else, or a tag alone. What a link's reader looks up among its delivery
/// shortcuts.
pub fn delivery_key(msg: &[u8]) -> Option<&[u8]> {
    let ok = msg.len() > DELIVERY_KEY
        && msg[0] == Kind::From as u8
        && msg[HEADER] == Kind::To as u8
        && msg[HEADER + 1..2 * HEADER] == NodeId::TUNNEL.0
        && (msg[2 * HEADER] == DATA || msg[2 * HEADER] == SEALED);
    ok.then(|| &msg[..DELIVERY_KEY])
}

/// The first bytes of a message read on a link that decide where the Data
/// for the caller's end of a one-hop tunnel goes: `To(e, From(0, Data …`
/// up to the Data tag, where `e` is the caller's endpoint. None for
/// anything else, or a tag alone. A link's reader looks these up among its
/// delivery shortcuts too (the same length as a [`delivery_key`]).
pub fn caller_delivery_key(msg: &[u8]) -> Option<&[u8]> {
    let key = msg.get(..DELIVERY_KEY)?;
    (msg.len() > DELIVERY_KEY && is_caller_delivery(key)).then_some(key)
}

/// Whether `key` is a [`caller_delivery_key`].
pub fn is_caller_delivery(key: &[u8]) -> bool {
    key.len() == DELIVERY_KEY
        && key[0] == Kind::To as u8
        && key[HEADER] == Kind::From as u8
        && key[HEADER + 1..2 * HEADER] == NodeId::TUNNEL.0
        && key[2 * HEADER] == DATA
}

/// The first bytes of a message from an endpoint that is a tunnel's Data
/// (or Datagram, in packet mode): its `To` headers, the last to node 0,
/// and the tag. None for anything else, or a tag alone. A Data message of
/// the caller's tunnel end starts with just these bytes, whatever its data.
pub fn tunnel_data_key(msg: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    for _ in 0..=MAX_HOPS + 1 {
        let m = Msg::parse(&msg[at..]).ok()?;
        if m.kind != Kind::To {
            return None;
        }
        at += HEADER;
        if m.id == NodeId::TUNNEL {
            let ok = msg.len() > at + 1 && is_shortcut_tag(msg[at]);
            return ok.then(|| &msg[..at + 1]);
        }
    }
    None
}

#[derive(Debug)]
enum Port {
    Hello {
        since: Millis,
        expect: Option<NodeId>,
        /// The key the link's handshake proved the neighbour holds.
        proven: NodeId,
    },
    /// The neighbour said Hello as `peer`, who is still linked on a port
    /// gone silent (a caller restarted over UDP, which has no end of
    /// file): accepted once that link is found dead.
    Waiting {
        since: Millis,
        peer: NodeId,
    },
    Link {
        peer: NodeId,
        last_rx: Millis,
        last_ping: Millis,
    },
    Endpoint {
        id: NodeId,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Link(PortId),
    Endpoint(PortId),
    /// A virtual neighbour, reached through the physical neighbour named.
    Virtual(NodeId),
}

#[derive(Debug)]
struct Node {
    via: Via,
    /// Neighbours this one has passed traffic with (kept symmetric; the
    /// tunnel node, which has no entry of its own, is listed one-sided).
    conns: HashSet<NodeId>,
    /// For a physical neighbour: the virtual neighbours it carries.
    carried: HashSet<NodeId>,
}

/// The router of one daemon.
pub struct Router {
    own: NodeId,
    /// Whether this node runs a tunnel process (is node 0 there).
    tunnels: bool,
    policy: Policy,
    counters: Counters,
    /// Fails answered per port in the current second: (second, count).
    fail_budget: HashMap<PortId, (u64, u32)>,
    timers: Timers,
    now: Millis,
    ports: HashMap<PortId, Port>,
    nodes: HashMap<NodeId, Node>,
}

/// A message that is ε or a Fail gets no Fail in answer.
fn is_quiet(body: &[u8]) -> bool {
    body.is_empty() || body[0] == Kind::Fail as u8
}

impl Router {
    pub fn new(own: NodeId, timers: Timers) -> Router {
        Router {
            own,
            tunnels: false,
            policy: Policy::default(),
            counters: Counters::default(),
            fail_budget: HashMap::new(),
            timers,
            now: 0,
            ports: HashMap::new(),
            nodes: HashMap::new(),
        }
    }

    /// A router with this policy.
    pub fn with_policy(mut self, policy: Policy) -> Router {
        self.policy = policy;
        self
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// A router whose node runs a tunnel process.
    pub fn with_tunnels(mut self) -> Router {
        self.tunnels = true;
        self
    }

    pub fn own(&self) -> NodeId {
        self.own
    }

    /// The established links: port and neighbour id, ordered by id.
    pub fn links(&self) -> Vec<(PortId, NodeId)> {
        let mut v: Vec<_> = self
            .ports
            .iter()
            .filter_map(|(&p, s)| match s {
                Port::Link { peer, .. } => Some((p, *peer)),
                _ => None,
            })
            .collect();
        v.sort_by_key(|&(_, id)| id);
        v
    }

    /// Ports and neighbours held; both zero once everything has ended.
    pub fn held(&self) -> (usize, usize) {
        (self.ports.len(), self.nodes.len())
    }

    /// The id of the endpoint on `port`.
    pub fn endpoint_id(&self, port: PortId) -> Option<NodeId> {
        match self.ports.get(&port)? {
            Port::Endpoint { id } => Some(*id),
            _ => None,
        }
    }

    /// The number of virtual neighbours held.
    pub fn virtual_count(&self) -> usize {
        self.nodes.values().filter(|n| matches!(n.via, Via::Virtual(_))).count()
    }

    /// Handles one event at time `now`, appending the actions to `out`.
    pub fn handle(&mut self, now: Millis, event: Event, out: &mut Vec<Action>) {
        self.now = now;
        match event {
            Event::LinkOpened { port, expect, proven } => {
                self.ports.insert(port, Port::Hello { since: now, expect, proven });
                out.push(Action::Send { port, packet: Packet::hello(self.own) });
            }
            Event::EndpointOpened { port, id } => {
                if id == self.own || id.is_reserved() || self.nodes.contains_key(&id) {
                    out.push(Action::Close { port, error: Some(format!("id {id} in use")) });
                    return;
                }
                self.ports.insert(port, Port::Endpoint { id });
                self.nodes.insert(id, Node::new(Via::Endpoint(port)));
                self.counters.endpoints_opened += 1;
            }
            Event::Received { port, packet } => match self.ports.get_mut(&port) {
                None => {}
                Some(Port::Hello { expect, proven, .. }) => {
                    let (expect, proven) = (*expect, *proven);
                    self.on_hello(port, expect, proven, packet, out)
                }
                Some(Port::Link { peer, last_rx, .. }) => {
                    *last_rx = now;
                    let peer = *peer;
                    self.on_link(port, peer, packet, out)
                }
                Some(Port::Endpoint { id }) => {
                    let id = *id;
                    self.on_endpoint(port, id, packet, out)
                }
                // Not accepted yet: what the neighbour sends is dropped.
                Some(Port::Waiting { .. }) => {}
            },
            Event::Closed { port, error } => self.close(port, error, out),
            Event::FromTunnel { to, mut packet } => {
                if self.nodes.get(&to).is_some_and(|n| n.conns.contains(&NodeId::TUNNEL)) {
                    let tag = packet.bytes().first().copied().filter(|&t| is_shortcut_tag(t) && packet.len() > 1);
                    let origin = tag.map(|t| Origin { lane: Lane::Tunnel(to), key: vec![t], rest: packet.len() - 1 });
                    packet.push_header(Kind::From, NodeId::TUNNEL);
                    let sent = out.len() + 1;
                    if self.send_to(to, &mut packet, out).is_ok() && out.len() == sent {
                        if let Some(o) = origin {
                            self.shortcut(o, out);
                        }
                    }
                }
            }
            Event::TunnelFail { to, code, text } => self.fail(to, NodeId::TUNNEL, code, &text, out),
            Event::Heard { port } => {
                if let Some(Port::Link { last_rx, .. }) = self.ports.get_mut(&port) {
                    *last_rx = now;
                }
            }
            Event::Tick => self.tick(out),
        }
    }

    fn on_hello(&mut self, port: PortId, expect: Option<NodeId>, proven: NodeId, p: Packet, out: &mut Vec<Action>) {
        let m = match p.msg() {
            Ok(m) => m,
            Err(e) => return self.close(port, Some(format!("malformed first frame: {e}")), out),
        };
        if m.kind == Kind::Fail && m.id == self.own {
            let text = m.fail().map(|f| f.1).unwrap_or_default();
            return self.close(port, Some(format!("refused by the neighbour: {text}")), out);
        }
        if m.kind != Kind::Hello {
            return self.close(port, Some(format!("expected Hello, got {:?}", m.kind)), out);
        }
        let peer = m.id;
        let refusal = if let Err(e) = m.check_hello() {
            Some(e.to_string())
        } else if peer != proven {
            Some(format!("the neighbour says it is {peer} but proved the key of {proven}"))
        } else if peer == self.own {
            Some(format!("the neighbour claims this node's own id {peer}"))
        } else if peer.is_reserved() {
            Some(format!("the neighbour claims the reserved id {peer}"))
        } else if expect.is_some_and(|x| x != peer) {
            let x = expect.unwrap_or(peer);
            Some(format!("node id mismatch: expected {x}, the neighbour proved it is {peer}"))
        } else if let Some(old) = self.silent_link_of(peer) {
            info!("link {port}: {peer} said Hello, linked on port {old}, which is silent: waiting for it to be found dead");
            self.ports.insert(port, Port::Waiting { since: self.now, peer });
            return;
        } else if self.nodes.contains_key(&peer) {
            Some(format!("already linked to {peer}"))
        } else {
            None
        };
        if let Some(text) = refusal {
            info!("link {port}: refusing {peer}: {text}");
            self.counters.links_refused += 1;
            out.push(Action::Send { port, packet: Packet::fail(peer, FailCode::Refused, &text) });
            return self.close(port, Some(text), out);
        }
        self.accept(port, peer, out);
    }

    /// The port on which `peer` is linked, if that link has been silent
    /// for a keepalive period.
    fn silent_link_of(&self, peer: NodeId) -> Option<PortId> {
        let Via::Link(p) = self.nodes.get(&peer)?.via else { return None };
        match self.ports.get(&p)? {
            Port::Link { last_rx, .. } if self.now.saturating_sub(*last_rx) >= self.timers.keepalive => Some(p),
            _ => None,
        }
    }

    /// The neighbour on `port` is `peer`, from now on.
    fn accept(&mut self, port: PortId, peer: NodeId, out: &mut Vec<Action>) {
        info!("link {port}: neighbour {peer} is up");
        let now = self.now;
        self.ports.insert(port, Port::Link { peer, last_rx: now, last_ping: now });
        self.nodes.insert(peer, Node::new(Via::Link(port)));
        self.counters.links_up += 1;
        out.push(Action::LinkUp { port, peer });
    }

    fn on_link(&mut self, port: PortId, peer: NodeId, mut p: Packet, out: &mut Vec<Action>) {
        let m = match p.msg() {
            Ok(m) => m,
            Err(e) => {
                self.counters.dropped_malformed += 1;
                return self.close(port, Some(format!("malformed frame from {peer}: {e}")), out);
            }
        };
        match m.kind {
            Kind::Hello => self.close(port, Some(format!("{peer} said Hello twice")), out),
            Kind::Handshake => {
                self.close(port, Some(format!("{peer} sent a handshake message after the handshake")), out)
            }
            Kind::Fail => {
                let (code, text) = m.fail().unwrap_or((FailCode::Other, String::new()));
                if m.id == self.own && code == FailCode::Refused {
                    let why = format!("refused by {peer}: {text}");
                    return self.close(port, Some(why), out);
                }
                debug!("fail from {peer} about {}: {} {text}", m.id, code.describe());
            }
            Kind::To => {
                if m.id.is_reserved() {
                    if !is_quiet(m.body) {
                        let text = "agreed nodes take messages from endpoints and virtual neighbours";
                        self.fail(peer, m.id, FailCode::Refused, text, out);
                    }
                    return;
                }
                let origin = Origin::of(Lane::Link(port), &p, relay_key(p.bytes()).filter(|k| k.len() == HEADER));
                self.route(peer, p, origin, out)
            }
            Kind::From => {
                let n0 = m.id;
                if n0 == self.own || n0.is_reserved() {
                    return; // our keepalive echo, or nonsense: consumed
                }
                if m.body.is_empty() {
                    if self.nodes.get(&n0).is_some_and(|n| n.via == Via::Virtual(peer)) {
                        debug!("{n0} via {peer} has ended");
                        self.end_node(n0, out);
                    }
                    return;
                }
                let inner = match Msg::parse(m.body) {
                    Ok(i) if matches!(i.kind, Kind::To | Kind::Fail) => i,
                    _ => {
                        let mut f =
                            Packet::fail(self.own, FailCode::BadMessage, "a neighbour sends To, Fail or nothing");
                        f.push_header(Kind::To, n0);
                        self.reply_on(port, f, out);
                        return;
                    }
                };
                match self.nodes.get(&n0).map(|n| n.via) {
                    None if inner.kind == Kind::Fail => {
                        debug!("fail from unknown {n0} via {peer} about {}", inner.id);
                        return;
                    }
                    None => {
                        let carried = self.nodes.get(&peer).map_or(0, |c| c.carried.len());
                        if carried >= self.policy.max_virtual {
                            self.counters.dropped_too_many_virtual += 1;
                            if inner.kind != Kind::Fail {
                                let text = "too many virtual neighbours on this link";
                                let mut f = Packet::fail(n0, FailCode::Refused, text);
                                f.push_header(Kind::To, n0);
                                self.reply_on(port, f, out);
                            }
                            return;
                        }
                        self.nodes.insert(n0, Node::new(Via::Virtual(peer)));
                        self.counters.virtual_bound += 1;
                        if let Some(c) = self.nodes.get_mut(&peer) {
                            c.carried.insert(n0);
                        }
                    }
                    Some(Via::Virtual(c)) if c == peer => {}
                    Some(_) => {
                        self.counters.dropped_id_in_use += 1;
                        if inner.kind != Kind::Fail {
                            debug!("{n0} via {peer} refused: id in use");
                            let text = "id in use here (a path may not revisit a node)";
                            let mut f = Packet::fail(n0, FailCode::IdInUse, text);
                            f.push_header(Kind::To, n0);
                            self.reply_on(port, f, out);
                        }
                        return;
                    }
                }
                if inner.kind == Kind::Fail {
                    debug!("fail from {n0} via {peer} about {}", inner.id);
                    return;
                }
                let key = delivery_key(p.bytes()).or(relay_key(p.bytes()).filter(|k| k.len() == 2 * HEADER));
                let origin = Origin::of(Lane::Link(port), &p, key);
                p.strip();
                self.route(n0, p, origin, out)
            }
        }
    }

    fn on_endpoint(&mut self, port: PortId, id: NodeId, p: Packet, out: &mut Vec<Action>) {
        match p.msg() {
            Err(e) => {
                self.counters.dropped_malformed += 1;
                self.close(port, Some(format!("malformed frame from endpoint: {e}")), out)
            }
            Ok(m) if m.kind != Kind::To => {
                self.fail(id, self.own, FailCode::BadMessage, "an endpoint sends only To", out)
            }
            Ok(_) if to_layers(p.bytes(), MAX_HOPS + 2) > MAX_HOPS + 1 => {
                let text = format!("a path has at most {MAX_HOPS} hops");
                self.fail(id, self.own, FailCode::Refused, &text, out)
            }
            Ok(_) => {
                let origin = Origin::of(Lane::Endpoint(port), &p, tunnel_data_key(p.bytes()));
                self.route(id, p, origin, out)
            }
        }
    }

    /// `p` is `To(to, body)` from neighbour `from`: deliver `From(from, body)`
    /// to `to`, or answer with a Fail. `origin`: where it was read, if a
    /// shortcut may send the next like it.
    fn route(&mut self, from: NodeId, mut p: Packet, origin: Option<Origin>, out: &mut Vec<Action>) {
        let Ok(m) = p.msg() else { return };
        let (to, quiet, eps) = (m.id, is_quiet(m.body), m.body.is_empty());
        if to == NodeId::LIST {
            if !quiet {
                let list = self.list_body();
                let mut r = Packet::new(Kind::From, NodeId::LIST, &list);
                if self.send_to(from, &mut r, out).is_err() {
                    self.fail(from, to, FailCode::TooBig, "list too big", out);
                }
            }
            return;
        }
        if to == NodeId::TUNNEL {
            return self.route_to_tunnel(from, p, origin, out);
        }
        if to.is_reserved() || to == self.own || !self.nodes.contains_key(&to) {
            if !quiet {
                let text = if to == self.own { "a node is not its own neighbour" } else { "no such neighbour" };
                self.fail(from, to, FailCode::NoRoute, text, out);
            }
            return;
        }
        if !self.policy.transit && from != to && !self.is_endpoint(from) && !self.is_endpoint(to) {
            self.counters.dropped_no_transit += 1;
            if !quiet {
                self.fail(from, to, FailCode::Refused, "this node does not relay (no transit)", out);
            }
            return;
        }
        self.counters.messages_routed += 1;
        p.set_header(Kind::From, from);
        if eps {
            self.disconnect(from, to);
            out.push(Action::ForgetShortcuts);
        } else {
            self.connect(from, to);
        }
        let sent = out.len() + 1;
        if self.send_to(to, &mut p, out).is_err() {
            if !quiet {
                self.fail(from, to, FailCode::TooBig, "message over the size cap", out);
            }
            return;
        }
        if let (Some(o), false, true) = (origin, quiet, out.len() == sent) {
            self.shortcut(o, out);
        }
    }

    /// After sending the message that `o` was read as, as the one send
    /// just pushed: if it left by a link, tell the daemon how to send the
    /// next like it; if it is the Data of a one-hop tunnel read on a link
    /// for an endpoint (the caller's end), how to deliver the next, keyed
    /// by its [`caller_delivery_key`].
    fn shortcut(&self, mut o: Origin, out: &mut Vec<Action>) {
        let Some(Action::Send { port, packet }) = out.last() else { return };
        match self.ports.get(port) {
            Some(Port::Link { .. }) => {}
            Some(Port::Endpoint { .. }) if matches!(o.lane, Lane::Link(_)) => {
                // Sent as From(n0, From(0, Data …): the key reads the
                // message as it came, To(e, From(0, Data ….
                let b = packet.bytes();
                if o.key.len() != HEADER || b.len() <= DELIVERY_KEY {
                    return;
                }
                o.key.extend_from_slice(&b[HEADER..DELIVERY_KEY]);
                if !is_caller_delivery(&o.key) {
                    return;
                }
                o.rest -= DELIVERY_KEY - HEADER;
            }
            _ => return,
        }
        let Some(head) = packet.len().checked_sub(o.rest).and_then(|n| packet.bytes().get(..n)) else { return };
        let (to, head) = (Exit::Port(*port), head.to_vec());
        out.push(Action::Shortcut(Shortcut { from: o.lane, key: o.key, to, head }));
    }

    /// `p` is `To(0, m)` from neighbour `from`: hand the tunnel message `m`
    /// to the tunnel node, or say why not. A Data message read on a link
    /// (its `origin`) teaches that link's reader to deliver the next ones.
    fn route_to_tunnel(&mut self, from: NodeId, mut p: Packet, origin: Option<Origin>, out: &mut Vec<Action>) {
        let Ok(m) = p.msg() else { return };
        if m.body.is_empty() {
            if let Some(n) = self.nodes.get_mut(&from) {
                if n.conns.remove(&NodeId::TUNNEL) {
                    out.push(forget_for(from, n.via));
                    out.push(Action::TunnelGone { peer: from });
                }
            }
            return;
        }
        if !self.tunnels {
            return self.fail(from, NodeId::TUNNEL, FailCode::NoTunnelProcess, "", out);
        }
        let Some(node) = self.nodes.get_mut(&from) else { return };
        node.conns.insert(NodeId::TUNNEL);
        let via = match node.via {
            Via::Virtual(c) => Some(c),
            _ => None,
        };
        p.strip();
        out.push(Action::Tunnel { peer: from, via, packet: p });
        if let Some(o) = origin.filter(|o| matches!(o.lane, Lane::Link(_)) && o.key.len() == DELIVERY_KEY) {
            let to = Exit::Tunnel(from);
            out.push(Action::Shortcut(Shortcut { from: o.lane, key: o.key, to, head: vec![DATA] }));
        }
    }

    /// Sends message `p` to neighbour `n`: as it is on n's own port, or as
    /// `To(n, p)` on its carrier. Err if that frame would be over the cap.
    fn send_to(&mut self, n: NodeId, p: &mut Packet, out: &mut Vec<Action>) -> Result<(), ()> {
        let port = match self.nodes.get(&n).map(|x| x.via) {
            Some(Via::Link(port) | Via::Endpoint(port)) => port,
            Some(Via::Virtual(carrier)) => {
                let Some(Via::Link(port)) = self.nodes.get(&carrier).map(|c| c.via) else {
                    return Ok(());
                };
                p.push_header(Kind::To, n);
                port
            }
            None => return Ok(()),
        };
        if p.len() > MAX_MESSAGE {
            return Err(());
        }
        out.push(Action::Send { port, packet: std::mem::replace(p, Packet::from_bytes(&[])) });
        Ok(())
    }

    fn is_endpoint(&self, n: NodeId) -> bool {
        self.nodes.get(&n).is_some_and(|x| matches!(x.via, Via::Endpoint(_)))
    }

    /// The port a message to neighbour `n` leaves by.
    pub fn port_of(&self, n: NodeId) -> Option<PortId> {
        match self.nodes.get(&n)?.via {
            Via::Link(p) | Via::Endpoint(p) => Some(p),
            Via::Virtual(c) => self.port_of(c),
        }
    }

    /// Takes one Fail from a port's budget for this second; false when it
    /// is spent (the Fail is dropped).
    fn fail_allowed(&mut self, port: PortId) -> bool {
        let second = self.now / 1000;
        let b = self.fail_budget.entry(port).or_insert((second, 0));
        if b.0 != second {
            *b = (second, 0);
        }
        if b.1 >= self.policy.fails_per_second {
            self.counters.dropped_rate_limited += 1;
            return false;
        }
        b.1 += 1;
        self.counters.fails_sent += 1;
        true
    }

    /// Sends a Fail (already addressed) on `port`, within the rate limit.
    fn reply_on(&mut self, port: PortId, f: Packet, out: &mut Vec<Action>) {
        if self.fail_allowed(port) {
            out.push(Action::Send { port, packet: f });
        }
    }

    fn fail(&mut self, to: NodeId, about: NodeId, code: FailCode, text: &str, out: &mut Vec<Action>) {
        let Some(port) = self.port_of(to) else { return };
        if self.fail_allowed(port) {
            let mut f = Packet::fail(about, code, text);
            let _ = self.send_to(to, &mut f, out);
        }
    }

    fn connect(&mut self, a: NodeId, b: NodeId) {
        if a == b {
            return;
        }
        if let Some(n) = self.nodes.get_mut(&a) {
            n.conns.insert(b);
        }
        if let Some(n) = self.nodes.get_mut(&b) {
            n.conns.insert(a);
        }
    }

    fn disconnect(&mut self, a: NodeId, b: NodeId) {
        if let Some(n) = self.nodes.get_mut(&a) {
            n.conns.remove(&b);
        }
        if let Some(n) = self.nodes.get_mut(&b) {
            n.conns.remove(&a);
        }
    }

    /// Frees neighbour `n` and tells everyone it was connected with.
    fn end_node(&mut self, n: NodeId, out: &mut Vec<Action>) {
        let Some(node) = self.nodes.remove(&n) else { return };
        out.push(forget_for(n, node.via));
        match node.via {
            Via::Link(_) => self.counters.links_down += 1,
            Via::Endpoint(_) => self.counters.endpoints_closed += 1,
            Via::Virtual(_) => self.counters.virtual_freed += 1,
        }
        if let Via::Virtual(c) = node.via {
            if let Some(c) = self.nodes.get_mut(&c) {
                c.carried.remove(&n);
            }
        }
        for v in node.carried {
            self.end_node(v, out);
        }
        for c in node.conns {
            if c == NodeId::TUNNEL {
                out.push(Action::TunnelGone { peer: n });
                continue;
            }
            if let Some(cn) = self.nodes.get_mut(&c) {
                cn.conns.remove(&n);
            }
            let mut eps = Packet::new(Kind::From, n, &[]);
            let _ = self.send_to(c, &mut eps, out);
        }
    }

    fn close(&mut self, port: PortId, error: Option<String>, out: &mut Vec<Action>) {
        let Some(state) = self.ports.remove(&port) else { return };
        self.fail_budget.remove(&port);
        let error = match (&state, error) {
            (Port::Hello { .. }, None) => Some("the link ended before the neighbour said Hello".to_string()),
            (Port::Waiting { peer, .. }, None) => {
                Some(format!("the link ended while {peer}'s old link was not yet found dead"))
            }
            (_, e) => e,
        };
        match state {
            Port::Hello { .. } | Port::Waiting { .. } => {}
            Port::Link { peer, .. } => {
                match &error {
                    None => info!("link {port}: neighbour {peer} has ended"),
                    Some(e) => warn!("link {port}: neighbour {peer} dropped: {e}"),
                }
                self.end_node(peer, out)
            }
            Port::Endpoint { id } => self.end_node(id, out),
        }
        out.push(Action::Close { port, error });
    }

    fn tick(&mut self, out: &mut Vec<Action>) {
        let now = self.now;
        let t = self.timers;
        let mut dead = Vec::new();
        let (mut ready, mut refused) = (Vec::new(), Vec::new());
        for (&port, state) in self.ports.iter_mut() {
            match state {
                Port::Hello { since, .. } if now.saturating_sub(*since) >= t.hello => {
                    dead.push((port, format!("no Hello within {} ms", t.hello)));
                }
                Port::Waiting { since, peer } => {
                    if !self.nodes.contains_key(peer) {
                        ready.push((port, *peer));
                    } else if now.saturating_sub(*since) >= t.hello + t.keepalive * t.misses as u64 {
                        refused.push((port, *peer));
                    }
                }
                Port::Link { last_rx, last_ping, .. } => {
                    let silent = now.saturating_sub(*last_rx);
                    if silent >= t.keepalive * t.misses as u64 {
                        dead.push((port, format!("silent for {silent} ms (keepalive)")));
                    } else if silent >= t.keepalive && now.saturating_sub(*last_ping) >= t.keepalive {
                        *last_ping = now;
                        let ping = Packet::new(Kind::To, self.own, &now.to_be_bytes());
                        out.push(Action::Send { port, packet: ping });
                    }
                }
                _ => {}
            }
        }
        dead.sort();
        for (port, why) in dead {
            self.close(port, Some(why), out);
        }
        // Links found dead above free their ids for the ports waiting.
        let freed: Vec<(PortId, NodeId)> = self
            .ports
            .iter()
            .filter_map(|(&p, s)| match s {
                Port::Waiting { peer, .. } if !self.nodes.contains_key(peer) => Some((p, *peer)),
                _ => None,
            })
            .collect();
        ready.extend(freed);
        ready.sort();
        ready.dedup();
        for (port, peer) in ready {
            if !self.nodes.contains_key(&peer) {
                self.accept(port, peer, out);
            }
        }
        refused.sort();
        for (port, peer) in refused {
            let text = format!("already linked to {peer}");
            self.counters.links_refused += 1;
            out.push(Action::Send { port, packet: Packet::fail(peer, FailCode::Refused, &text) });
            self.close(port, Some(text), out);
        }
    }

    /// The ls reply of node 1: the physical neighbours, ordered by id.
    fn list_body(&self) -> Vec<u8> {
        let ids: BTreeSet<NodeId> =
            self.nodes.iter().filter(|(_, n)| matches!(n.via, Via::Link(_))).map(|(id, _)| *id).collect();
        list::encode(ids.into_iter())
    }

    /// Checks the state invariants; the tests and the fuzzer call it.
    pub fn check(&self) -> Result<(), String> {
        for (id, n) in &self.nodes {
            for c in n.conns.iter().filter(|&&c| c != NodeId::TUNNEL) {
                let ok = self.nodes.get(c).is_some_and(|cn| cn.conns.contains(id));
                if !ok {
                    return Err(format!("connection {id} -> {c} is one-sided"));
                }
            }
            match n.via {
                Via::Virtual(c) => {
                    let ok = self.nodes.get(&c).is_some_and(|cn| cn.carried.contains(id));
                    if !ok {
                        return Err(format!("{id} carried by {c}, which does not know"));
                    }
                }
                Via::Link(p) | Via::Endpoint(p) => {
                    let ok = match self.ports.get(&p) {
                        Some(Port::Link { peer, .. }) => peer == id,
                        Some(Port::Endpoint { id: e }) => e == id,
                        _ => false,
                    };
                    if !ok {
                        return Err(format!("{id} on port {p}, which is not its"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Where a message being routed was read, for [`Action::Shortcut`]: the
/// lane, the key its reader would look it up by, and how many bytes of the
/// message follow the key.
struct Origin {
    lane: Lane,
    key: Vec<u8>,
    rest: usize,
}

impl Origin {
    /// The origin of `p`, read on `lane`, whose key is `key` (a prefix of
    /// `p`'s bytes), if it has one.
    fn of(lane: Lane, p: &Packet, key: Option<&[u8]>) -> Option<Origin> {
        let key = key?;
        Some(Origin { lane, key: key.to_vec(), rest: p.len() - key.len() })
    }
}

impl Node {
    fn new(via: Via) -> Node {
        Node { via, conns: HashSet::new(), carried: HashSet::new() }
    }
}

/// How many `To` layers start a message, counting at most `max`.
fn to_layers(mut b: &[u8], max: usize) -> usize {
    let mut n = 0;
    while n < max {
        match Msg::parse(b) {
            Ok(m) if m.kind == Kind::To => {
                n += 1;
                b = m.body;
            }
            _ => break,
        }
    }
    n
}

pub mod fuzz;
#[cfg(test)]
mod tests;
