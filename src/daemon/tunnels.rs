//! The tunnel ends of a daemon, on both sides, and the processes of the
//! far side.
//!
//! The caller's side of a tunnel (`r2 tunnel`) is an endpoint whose
//! messages travel along a path to node 0 of a far daemon; the far side is
//! that daemon's instance of its tunnel process, one per caller, started
//! by the caller's Open and ended when the caller ends. Each end is a
//! [`Session`] (its state) and a [`TunnelEnd`] (its program's pipes); this
//! room turns what arrives for an end into what it does, and into the
//! router events that carry its messages, which it hands back to the loop
//! rather than calling the router itself. It also starts the instances'
//! processes, ends them (SIGTERM, then SIGKILL) and reaps them.
//!
//! A tunnel of more than one hop is sealed end to end (`e2e`): the caller
//! starts with a Handshake instead of Open, and the far side keeps the
//! answered handshake until the sealed Open that follows starts an
//! instance for the caller's proven node id. A one-hop tunnel relies on
//! its link's protection, and its caller is the neighbour it came from.
//! A sealed end's keys are shared with its reader and with the link reader
//! that delivers to it (`shortcuts`); what this room seals stays pending
//! for the end's reader until the router has sent it on
//! ([`Tunnels::release_held`]).

use super::e2e::{self, Calling, E2eError, Sealed};
use super::input::Input;
use super::session::{Key, Session, Step};
use super::shortcuts::{Outbound, Registry};
use super::tunnel::TunnelEnd;
use crate::key::KeyPair;
use crate::link::{Sent, SharedOutput};
use crate::router::{Event, PortId};
use crate::sys::channel::Sender;
use crate::wire::control::TunnelStats;
use crate::wire::message::{Kind, HEADER};
use crate::wire::path::{describe_end, describe_fail, interpret, PathReply};
use crate::wire::tunnel::{TunnelMsg, DATA, DATAGRAM, DEFAULT_WINDOW, HANDSHAKE, SEALED};
use crate::wire::{FailCode, NodeId, Packet};
use log::{debug, info, warn};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a tunnel process has between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);

/// The end-to-end handshakes answered in one second for the callers that
/// come through one neighbour: each costs four X25519 operations, and a
/// neighbour must not make this daemon spend its time on them.
const HANDSHAKES_PER_SECOND: u32 = 100;

/// How long an answered handshake waits for its Open.
const ANSWERED_WAIT: Duration = Duration::from_secs(30);

/// The far side's tunnel process, as `r2d CMD` was told.
#[derive(Clone, Debug, Default)]
pub struct Instances {
    /// Run with `sh -c` once per caller.
    pub cmd: Option<String>,
    /// Give it packet pipes (O_DIRECT).
    pub packet: bool,
    /// The most running at once.
    pub max: usize,
    /// If not empty: only for callers with these node ids.
    pub allow: Vec<NodeId>,
}

/// What the tunnel ends have done, for `r2 stats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub tunnels_opened: u64,
    pub tunnels_closed: u64,
    pub instances_started: u64,
    pub instances_ended: u64,
    pub instances_refused: u64,
    pub processes_reaped: u64,
    /// Datagram bytes that never came (lost on robust links).
    pub datagram_bytes_lost: u64,
    /// End-to-end handshakes answered (or failed) by node 0.
    pub tunnel_handshakes: u64,
    /// End-to-end handshakes refused unread: beyond the rate limit.
    pub tunnel_handshakes_rate_limited: u64,
}

/// Which side an end is on.
enum Side {
    /// The caller: `path` leads to the far daemon.
    Caller { path: Vec<NodeId> },
    /// An instance of the tunnel process; None once reaped.
    Instance { child: Option<Child> },
}

/// What protects an end's messages.
enum Guard {
    /// Its link: a one-hop tunnel.
    Link,
    /// The caller's handshake is sent; the answer is due.
    Calling(Calling),
    /// Sealed end to end.
    Sealed(Sealed),
}

/// The bytes sealing adds before a tunnel message: the Sealed tag and the
/// counter.
const SEALED_HEAD: usize = 1 + 8;

struct End {
    io: TunnelEnd,
    side: Side,
    guard: Guard,
}

/// A far-side handshake answered, waiting for the caller's sealed Open.
struct Answered {
    sealed: Sealed,
    /// The caller's node id, proven by the handshake.
    caller: NodeId,
    since: Instant,
}

/// Every tunnel end of the daemon.
pub struct Tunnels {
    instances: Instances,
    ends: HashMap<Key, End>,
    /// Handshakes answered, by the caller's endpoint id; at most
    /// `instances.max` with the instances running.
    answered: HashMap<NodeId, Answered>,
    /// This node's key, for the end-to-end handshakes.
    key: KeyPair,
    /// Handshakes answered this second (the second, the count), by the
    /// neighbour they came through.
    handshake_budget: HashMap<Option<NodeId>, (u64, u32)>,
    start: Instant,
    /// Tunnel processes told to end, with when to stop asking nicely.
    reaping: Vec<(Child, Instant)>,
    totals: Totals,
    inputs: Sender<Input>,
    /// The ends whose messages the loop sealed since the router last sent
    /// everything on: their readers take no shortcut until then
    /// ([`Tunnels::release_held`]).
    held: Vec<Arc<Outbound>>,
}

/// The first bytes of a Data message of the caller's end on `path`, as the
/// router gets it: the path's `To` headers, node 0's, and the Data tag (the
/// Sealed tag of a tunnel sealed end to end).
fn caller_key(path: &[NodeId], packet: bool, sealed: bool) -> Vec<u8> {
    let tag = if sealed { SEALED } else { data_tag(packet) };
    let mut p = Packet::from_bytes(&[tag]);
    p.push_header(Kind::To, NodeId::TUNNEL);
    for h in path.iter().rev() {
        p.push_header(Kind::To, *h);
    }
    p.bytes().to_vec()
}

/// The tag of a tunnel end's data: Datagram in packet mode, else Data.
fn data_tag(packet: bool) -> u8 {
    if packet {
        DATAGRAM
    } else {
        DATA
    }
}

impl Tunnels {
    pub fn new(instances: Instances, key: KeyPair, inputs: Sender<Input>) -> Tunnels {
        let (ends, answered, reaping) = (HashMap::new(), HashMap::new(), Vec::new());
        let (handshake_budget, start) = (HashMap::new(), Instant::now());
        let (totals, held) = (Totals::default(), Vec::new());
        Tunnels { instances, ends, answered, key, handshake_budget, start, reaping, totals, inputs, held }
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Ends open, and processes still being reaped.
    pub fn counts(&self) -> (usize, usize) {
        (self.ends.len(), self.reaping.len())
    }

    /// The program input of end `key`, while it takes data, and the end's
    /// keys if it is sealed end to end: where a link's reader may deliver
    /// its Data.
    pub fn delivery(&self, key: Key) -> Option<(SharedOutput, Option<Sealed>)> {
        let e = self.ends.get(&key)?;
        let sealed = match &e.guard {
            Guard::Sealed(s) => Some(s.clone()),
            _ => None,
        };
        Some((e.io.program_input()?.clone(), sealed))
    }

    /// Everything the loop sealed is sent on (the router has acted on all
    /// it was given): the readers of those ends may take shortcuts again.
    pub fn release_held(&mut self) {
        for o in self.held.drain(..) {
            o.pending.handled();
        }
    }

    /// The loop has acted on a read of end `key`'s reader: the reader may
    /// take its shortcut again.
    pub fn handled(&self, key: Key) {
        if let Some(e) = self.ends.get(&key) {
            e.io.handled();
        }
    }

    // --- the caller's side ---------------------------------------------

    /// Starts the caller's end of a tunnel along `path`, for the endpoint
    /// `endpoint` on `port`, on the program's fds; then it sends Open, or
    /// the end-to-end Handshake on a path of more than one hop.
    #[allow(clippy::too_many_arguments)]
    pub fn open_caller(
        &mut self,
        port: PortId,
        endpoint: NodeId,
        path: Vec<NodeId>,
        rfd: OwnedFd,
        wfd: OwnedFd,
        packet: bool,
        shortcuts: &mut Registry,
        out: &mut Vec<Event>,
    ) -> std::io::Result<()> {
        let key = Key::Caller(port);
        let (guard, first) = match path.last() {
            Some(&far) if path.len() > 1 => {
                let (calling, msg) = e2e::call(self.key.clone(), endpoint, far, crate::sys::random::bytes32()?)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                (Guard::Calling(calling), msg)
            }
            _ => (Guard::Link, TunnelMsg::Open { window: DEFAULT_WINDOW }.encode()),
        };
        let headroom = (path.len() + 1) * HEADER + SEALED_HEAD;
        let sealed = matches!(guard, Guard::Calling(_));
        let outbound = shortcuts.open_tunnel(key, caller_key(&path, packet, sealed));
        let session = Session::new(true, DEFAULT_WINDOW);
        let io = TunnelEnd::start(key, session, rfd, wfd, headroom, packet, outbound, &self.inputs)?;
        self.ends.insert(key, End { io, side: Side::Caller { path }, guard });
        self.totals.tunnels_opened += 1;
        self.send(key, &first, out);
        Ok(())
    }

    /// The caller's endpoint on `port` is closed: its end goes, with the
    /// exit status it was told, if any.
    pub fn close_caller(&mut self, port: PortId) -> Option<Option<u8>> {
        let end = self.ends.remove(&Key::Caller(port))?;
        self.totals.tunnels_closed += 1;
        Some(end.io.session.exit())
    }

    /// A message for the caller's endpoint on `port`: what came back along
    /// its path. `own`: this node, for the messages of a broken path.
    pub fn caller_receive(&mut self, port: PortId, mut packet: Packet, own: NodeId, out: &mut Vec<Event>) {
        let key = Key::Caller(port);
        let Some(End { side: Side::Caller { path }, .. }) = self.ends.get(&key) else { return };
        let far = path.last().copied().unwrap_or(NodeId::TUNNEL);
        let offset = match interpret(packet.bytes(), path, NodeId::TUNNEL) {
            PathReply::Answer(inner) => packet.len() - inner.len(),
            PathReply::Fail { at, about, code, text } => {
                let why = describe_fail(at, about, code, &text, own);
                return out.push(Event::Closed { port, error: Some(why) });
            }
            PathReply::Ended { at } => {
                let why = describe_end(at, own);
                return out.push(Event::Closed { port, error: Some(why) });
            }
            PathReply::Other => return,
        };
        packet.advance(offset);
        match self.caller_unseal(key, packet, out) {
            Ok(Some(p)) => self.receive(key, p, out),
            Ok(None) => {}
            Err(e) => {
                warn!("tunnel {key:?} to {far}: {e}");
                let why = format!("the tunnel to {far}: {e}");
                return out.push(Event::Closed { port, error: Some(why) });
            }
        }
        self.caller_check_done(port, out);
    }

    /// The tunnel message that `packet` from the far end holds, opened if
    /// the tunnel is sealed; the answer to the caller's handshake moves it
    /// on to sealed and sends the Open.
    fn caller_unseal(
        &mut self,
        key: Key,
        mut packet: Packet,
        out: &mut Vec<Event>,
    ) -> Result<Option<Packet>, E2eError> {
        let Some(e) = self.ends.get_mut(&key) else { return Ok(None) };
        let tag = packet.bytes().first().copied().unwrap_or(0);
        match &mut e.guard {
            Guard::Link if tag == HANDSHAKE || tag == SEALED => Err(E2eError::Nested(tag)),
            Guard::Link => Ok(Some(packet)),
            Guard::Sealed(s) => Ok(s.open(&mut packet)?.then_some(packet)),
            Guard::Calling(_) if tag != HANDSHAKE => Err(E2eError::Unsealed(tag)),
            Guard::Calling(_) => {
                let Guard::Calling(calling) = std::mem::replace(&mut e.guard, Guard::Link) else { return Ok(None) };
                let sealed = calling.finish(&packet.bytes()[1..])?;
                e.io.outbound().seal_with(sealed.clone());
                e.guard = Guard::Sealed(sealed);
                debug!("tunnel {key:?}: sealed end to end");
                self.send(key, &TunnelMsg::Open { window: DEFAULT_WINDOW }.encode(), out);
                Ok(None)
            }
        }
    }

    /// The caller's side is done when the far side has exited and all its
    /// output is written out.
    fn caller_check_done(&mut self, port: PortId, out: &mut Vec<Event>) {
        if self.ends.get(&Key::Caller(port)).is_some_and(|e| e.io.session.caller_done()) {
            out.push(Event::Closed { port, error: None });
        }
    }

    // --- both sides ----------------------------------------------------

    /// The tunnel message in `packet` (it holds just that, and decodes)
    /// from the peer of `key`.
    fn receive(&mut self, key: Key, mut packet: Packet, out: &mut Vec<Event>) {
        let Some(e) = self.ends.get_mut(&key) else { return };
        let step = match TunnelMsg::decode(packet.bytes()) {
            Ok(m) => e.io.session.on_message(&m),
            Err(_) => return,
        };
        match step {
            Err(_) => self.beyond_credit(key, out),
            Ok(Step::Deliver(n)) => {
                packet.advance(1);
                e.io.count_input(n);
                if e.io.write(packet) != Sent::Queued {
                    self.written(key, n, out);
                }
            }
            Ok(Step::DeliverDatagram { n, lost, counted }) => {
                packet.advance(9);
                e.io.count_input(n);
                let sent = e.io.write(packet);
                match (counted, sent) {
                    (true, Sent::Queued) => {}
                    (true, _) => self.written(key, n, out),
                    (false, Sent::Queued) => e.io.session.datagram_queued(n),
                    (false, _) => {}
                }
                if lost > 0 {
                    self.totals.datagram_bytes_lost += lost;
                    self.written(key, lost.min(usize::MAX as u64) as usize, out);
                }
            }
            Ok(Step::CloseInput) => e.io.close_input(),
            Ok(Step::AddCredit(n)) => e.io.add_credit(n),
            Ok(Step::Nothing) => {}
        }
    }

    /// Sends a tunnel message from end `key` to its peer.
    fn send(&mut self, key: Key, msg: &[u8], out: &mut Vec<Event>) {
        self.send_packet(key, Packet::from_parts(msg.to_vec(), 0), out);
    }

    /// Sends a tunnel message from end `key` to its peer: for the caller,
    /// as its endpoint's message along the path; for an instance, as node
    /// 0's to the caller.
    fn send_packet(&mut self, key: Key, mut p: Packet, out: &mut Vec<Event>) {
        let Some(e) = self.ends.get_mut(&key) else { return };
        if let Guard::Sealed(s) = &e.guard {
            // Its reader may seal and send by shortcut: not before this
            // one is sent.
            e.io.outbound().hold_for_loop(s, &mut p);
            self.held.push(e.io.outbound().clone());
        }
        out.push(match (&e.side, key) {
            (Side::Caller { path }, Key::Caller(port)) => {
                p.push_header(Kind::To, NodeId::TUNNEL);
                for h in path.iter().rev() {
                    p.push_header(Kind::To, *h);
                }
                Event::Received { port, packet: p }
            }
            (_, Key::Instance(peer)) => Event::FromTunnel { to: peer, packet: p },
            (_, Key::Caller(_)) => return,
        });
    }

    /// A read of end `key`'s program output (None: its end).
    pub fn read(&mut self, key: Key, packet: Option<Packet>, out: &mut Vec<Event>) {
        let Some(e) = self.ends.get_mut(&key) else { return };
        match packet {
            Some(p) => self.send_packet(key, p, out),
            None => {
                e.io.session.output_ended();
                self.send(key, &TunnelMsg::Eof.encode(), out);
                self.instance_maybe_exit(key, out);
            }
        }
    }

    /// `n` bytes were written to end `key`'s program, or discarded.
    pub fn written(&mut self, key: Key, n: usize, out: &mut Vec<Event>) {
        if let Some(g) = self.ends.get_mut(&key).and_then(|e| e.io.session.written(n)) {
            self.send(key, &TunnelMsg::Credit(g).encode(), out);
        }
    }

    /// A link's reader gave `n` bytes of data to the program of end `key`
    /// itself: they count against the peer's credit as if they had come
    /// here, and are granted back once `done` (written out or discarded),
    /// else when its writer reports them.
    pub fn delivered(&mut self, key: Key, n: usize, done: bool, out: &mut Vec<Event>) {
        let Some(e) = self.ends.get_mut(&key) else { return };
        e.io.count_input(n);
        if e.io.session.delivered(n).is_err() {
            return self.beyond_credit(key, out);
        }
        if done {
            self.written(key, n, out);
        }
    }

    /// End `key`'s program input is closed, by `error` if any.
    pub fn writer_done(&mut self, key: Key, error: Option<String>, out: &mut Vec<Event>) {
        if let Some(e) = self.ends.get_mut(&key) {
            if let Some(err) = &error {
                debug!("tunnel {key:?}: its program's input: {err}");
            }
            e.io.session.input_closed(error.is_some());
        }
        match key {
            Key::Caller(port) => self.caller_check_done(port, out),
            Key::Instance(_) => self.instance_maybe_exit(key, out),
        }
    }

    /// The peer of end `key` sent data beyond its credit: the end is over.
    fn beyond_credit(&mut self, key: Key, out: &mut Vec<Event>) {
        match key {
            Key::Instance(peer) => {
                warn!("tunnel for {peer}: data beyond credit; ending it");
                self.end_instance(peer);
                let text = "data beyond credit".to_string();
                out.push(Event::TunnelFail { to: peer, code: FailCode::Overload, text });
            }
            Key::Caller(port) => {
                let why = "the tunnel process's side sent beyond its credit".to_string();
                out.push(Event::Closed { port, error: Some(why) });
            }
        }
    }

    // --- the far side: instances of the tunnel process -----------------

    /// A tunnel message from neighbour `peer` (the caller's endpoint),
    /// reached through `via`: a Handshake, a Sealed message of a tunnel
    /// sealed end to end, or a message of a one-hop tunnel, whose caller is
    /// `via`.
    pub fn instance_receive(
        &mut self,
        peer: NodeId,
        via: Option<NodeId>,
        mut packet: Packet,
        shortcuts: &mut Registry,
        out: &mut Vec<Event>,
    ) {
        let tag = packet.bytes().first().copied();
        if tag == Some(HANDSHAKE) {
            return match self.answered.contains_key(&peer) || self.ends.contains_key(&Key::Instance(peer)) {
                true => self.instance_broken(peer, E2eError::Nested(HANDSHAKE), out),
                false => self.answer(peer, via, &packet.bytes()[1..], out),
            };
        }
        match self.sealed_of(peer).map(|s| s.open(&mut packet)) {
            Some(Ok(true)) => self.instance_message(peer, via, packet, shortcuts, out),
            Some(Ok(false)) => {}
            Some(Err(e)) => self.instance_broken(peer, e, out),
            None if tag == Some(SEALED) => {
                let text = "a sealed tunnel message before any handshake".to_string();
                out.push(Event::TunnelFail { to: peer, code: FailCode::BadMessage, text });
            }
            None => self.instance_message(peer, via, packet, shortcuts, out),
        }
    }

    /// A tunnel message for the instance of `peer` that a link's reader
    /// opened (its tunnel is sealed end to end) and handed over, being no
    /// Data.
    pub fn instance_opened(&mut self, peer: NodeId, packet: Packet, shortcuts: &mut Registry, out: &mut Vec<Event>) {
        if self.ends.contains_key(&Key::Instance(peer)) {
            self.instance_message(peer, None, packet, shortcuts, out);
        }
    }

    /// The keys of `peer`'s tunnel if it is sealed end to end: its answered
    /// handshake's, or its instance's.
    fn sealed_of(&mut self, peer: NodeId) -> Option<&mut Sealed> {
        if let Some(a) = self.answered.get_mut(&peer) {
            return Some(&mut a.sealed);
        }
        match self.ends.get_mut(&Key::Instance(peer)) {
            Some(End { guard: Guard::Sealed(s), .. }) => Some(s),
            _ => None,
        }
    }

    /// Instances running and handshakes answered: what `--max-tunnels`
    /// bounds.
    fn busy(&self) -> usize {
        self.answered.len() + self.ends.keys().filter(|k| matches!(k, Key::Instance(_))).count()
    }

    /// A tunnel message for the instance of `peer`, in the clear (opened,
    /// or from a one-hop tunnel).
    fn instance_message(
        &mut self,
        peer: NodeId,
        via: Option<NodeId>,
        packet: Packet,
        shortcuts: &mut Registry,
        out: &mut Vec<Event>,
    ) {
        match TunnelMsg::decode(packet.bytes()) {
            Ok(TunnelMsg::Open { window }) => {
                let (guard, caller) = match self.answered.remove(&peer) {
                    Some(a) => (Guard::Sealed(a.sealed), a.caller),
                    None => (Guard::Link, via.unwrap_or(peer)),
                };
                self.start_instance(peer, caller, via, window, guard, shortcuts, out)
            }
            Ok(_) => self.receive(Key::Instance(peer), packet, out),
            Err(e) => {
                let text = e.to_string();
                out.push(Event::TunnelFail { to: peer, code: FailCode::BadMessage, text });
            }
        }
    }

    /// Answers the end-to-end handshake that `peer` starts with `noise`.
    fn answer(&mut self, peer: NodeId, via: Option<NodeId>, noise: &[u8], out: &mut Vec<Event>) {
        if self.instances.cmd.is_none() {
            return;
        }
        if !self.handshake_allowed(via) {
            self.totals.tunnel_handshakes_rate_limited += 1;
            let text = format!("more than {HANDSHAKES_PER_SECOND} tunnel handshakes a second");
            return self.refuse(peer, FailCode::TooManyTunnels, text, out);
        }
        if self.busy() >= self.instances.max {
            let text = format!("{} tunnels already", self.instances.max);
            warn!("tunnel for {peer} refused: {text}");
            return self.refuse(peer, FailCode::TooManyTunnels, text, out);
        }
        self.totals.tunnel_handshakes += 1;
        let ephemeral = match crate::sys::random::bytes32() {
            Ok(e) => e,
            Err(e) => return self.refuse(peer, FailCode::Refused, format!("no random bytes: {e}"), out),
        };
        let (sealed, caller, msg) = match e2e::answer(self.key.clone(), peer, noise, ephemeral) {
            Ok(a) => a,
            Err(e) => {
                warn!("tunnel for {peer} via {via:?}: {e}");
                return self.refuse(peer, FailCode::Refused, e.to_string(), out);
            }
        };
        if !self.allowed(caller) {
            warn!("tunnel for {peer} from node {caller} refused: not allowed");
            return self.refuse(peer, FailCode::Refused, "not allowed to open tunnels here".into(), out);
        }
        debug!("tunnel for {peer}: handshake from node {caller}");
        self.answered.insert(peer, Answered { sealed, caller, since: Instant::now() });
        out.push(Event::FromTunnel { to: peer, packet: Packet::from_bytes(&msg) });
    }

    /// Takes one handshake from the budget of this second for callers
    /// through `via`; false when it is spent.
    fn handshake_allowed(&mut self, via: Option<NodeId>) -> bool {
        let second = self.start.elapsed().as_secs();
        if self.handshake_budget.len() > 4096 {
            self.handshake_budget.retain(|_, b| b.0 == second);
        }
        let b = self.handshake_budget.entry(via).or_insert((second, 0));
        if b.0 != second {
            *b = (second, 0);
        }
        b.1 += 1;
        b.1 <= HANDSHAKES_PER_SECOND
    }

    /// Whether node `caller` may open tunnels here (r2d --allow).
    fn allowed(&self, caller: NodeId) -> bool {
        self.instances.allow.is_empty() || self.instances.allow.contains(&caller)
    }

    /// A message of `peer`'s sealed tunnel failed: the tunnel is over.
    fn instance_broken(&mut self, peer: NodeId, e: E2eError, out: &mut Vec<Event>) {
        warn!("tunnel for {peer}: {e}; ending it");
        self.answered.remove(&peer);
        self.end_instance(peer);
        out.push(Event::TunnelFail { to: peer, code: FailCode::BadMessage, text: e.to_string() });
    }

    fn refuse(&mut self, peer: NodeId, code: FailCode, text: String, out: &mut Vec<Event>) {
        self.totals.instances_refused += 1;
        out.push(Event::TunnelFail { to: peer, code, text });
    }

    /// Starts the instance for endpoint `peer` of node `caller`.
    #[allow(clippy::too_many_arguments)]
    fn start_instance(
        &mut self,
        peer: NodeId,
        caller: NodeId,
        via: Option<NodeId>,
        window: u32,
        guard: Guard,
        shortcuts: &mut Registry,
        out: &mut Vec<Event>,
    ) {
        let key = Key::Instance(peer);
        if self.ends.contains_key(&key) {
            return; // one instance per neighbour, ever
        }
        let Some(cmd) = self.instances.cmd.clone() else { return };
        if !self.allowed(caller) {
            warn!("tunnel for {peer} from node {caller} via {via:?} refused: not allowed");
            return self.refuse(peer, FailCode::Refused, "not allowed to open tunnels here".into(), out);
        }
        // A sealed tunnel's answered handshake, which held its place, is
        // gone by now.
        if self.busy() >= self.instances.max {
            let text = format!("{} tunnels already", self.instances.max);
            warn!("tunnel for {peer} refused: {text}");
            return self.refuse(peer, FailCode::TooManyTunnels, text, out);
        }
        match self.spawn(peer, caller, via, &cmd, guard, shortcuts) {
            Ok(end) => {
                info!("tunnel for {peer} of node {caller}: started {cmd:?}");
                self.totals.instances_started += 1;
                end.io.add_credit(window);
                self.ends.insert(key, end);
                self.send(key, &TunnelMsg::Credit(DEFAULT_WINDOW).encode(), out);
            }
            Err(e) => {
                warn!("tunnel for {peer}: cannot start {cmd:?}: {e}");
                self.refuse(peer, FailCode::Refused, format!("cannot start the tunnel process: {e}"), out);
            }
        }
    }

    fn spawn(
        &mut self,
        peer: NodeId,
        caller: NodeId,
        via: Option<NodeId>,
        cmd: &str,
        guard: Guard,
        shortcuts: &mut Registry,
    ) -> std::io::Result<End> {
        let key = Key::Instance(peer);
        let packet = self.instances.packet;
        let (in_r, in_w) = pipe(packet)?;
        let (out_r, out_w) = pipe(packet)?;
        let outbound = match &guard {
            Guard::Sealed(s) => {
                let o = shortcuts.open_tunnel(key, vec![SEALED]);
                o.seal_with(s.clone());
                o
            }
            _ => shortcuts.open_tunnel(key, vec![data_tag(packet)]),
        };
        let session = Session::new(false, DEFAULT_WINDOW);
        let headroom = 2 * HEADER + SEALED_HEAD;
        let io = TunnelEnd::start(key, session, out_r, in_w, headroom, packet, outbound, &self.inputs)?;
        // If this fails, dropping `io` stops its threads.
        let child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .env("R2_PEER", caller.to_string())
            .env("R2_VIA", via.map(|v| v.to_string()).unwrap_or_default())
            .stdin(Stdio::from(in_r))
            .stdout(Stdio::from(out_w))
            .process_group(0)
            .spawn()?;
        Ok(End { io, side: Side::Instance { child: Some(child) }, guard })
    }

    /// Sends Exit once the instance has exited and its output has ended.
    fn instance_maybe_exit(&mut self, key: Key, out: &mut Vec<Event>) {
        if let Some(s) = self.ends.get_mut(&key).and_then(|e| e.io.session.exit_due()) {
            self.send(key, &TunnelMsg::Exit(s).encode(), out);
        }
    }

    /// Neighbour `peer` has ended, or ended its tunnel: so does its
    /// instance.
    pub fn gone(&mut self, peer: NodeId) {
        self.answered.remove(&peer);
        if self.ends.contains_key(&Key::Instance(peer)) {
            debug!("tunnel for {peer} ended");
            self.end_instance(peer);
        }
    }

    /// Ends an instance: its pipes close, its process group gets SIGTERM,
    /// and it is reaped (SIGKILL if it lingers).
    fn end_instance(&mut self, peer: NodeId) {
        let Some(end) = self.ends.remove(&Key::Instance(peer)) else { return };
        self.totals.instances_ended += 1;
        self.kill(end);
    }

    fn kill(&mut self, end: End) {
        if let Side::Instance { child: Some(c) } = end.side {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            self.reaping.push((c, Instant::now() + KILL_GRACE));
        }
    }

    /// Collects exited tunnel processes (on SIGCHLD and every tick), and
    /// forgets answered handshakes whose Open has not come in time.
    pub fn reap(&mut self, out: &mut Vec<Event>) {
        self.answered.retain(|peer, a| {
            let keep = a.since.elapsed() < ANSWERED_WAIT;
            if !keep {
                debug!("tunnel for {peer}: no Open within {} s of the handshake", ANSWERED_WAIT.as_secs());
            }
            keep
        });
        let mut exited = Vec::new();
        for (key, e) in self.ends.iter_mut() {
            if let (Side::Instance { child: slot @ Some(_) }, Key::Instance(peer)) = (&mut e.side, key) {
                if let Some(Ok(Some(status))) = slot.as_mut().map(Child::try_wait) {
                    info!("tunnel for {peer}: process exited ({status})");
                    self.totals.processes_reaped += 1;
                    e.io.session.exited(status_byte(status));
                    *slot = None;
                    exited.push(*key);
                }
            }
        }
        for key in exited {
            self.instance_maybe_exit(key, out);
        }
        let now = Instant::now();
        let reaped = &mut self.totals.processes_reaped;
        self.reaping.retain_mut(|(c, deadline)| match c.try_wait() {
            Ok(Some(_)) | Err(_) => {
                *reaped += 1;
                false
            }
            Ok(None) => {
                if now > *deadline {
                    let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
                }
                true
            }
        });
    }

    /// Ends every instance and waits for their processes, at most
    /// [`KILL_GRACE`] before killing what is left.
    pub fn shutdown(&mut self) {
        let ends: Vec<End> = self.ends.drain().map(|(_, e)| e).collect();
        for e in ends {
            self.kill(e);
        }
        let deadline = Instant::now() + KILL_GRACE;
        while !self.reaping.is_empty() {
            if Instant::now() > deadline {
                for (c, _) in &mut self.reaping {
                    let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
                    let _ = c.wait();
                }
                break;
            }
            self.reaping.retain_mut(|(c, _)| matches!(c.try_wait(), Ok(None)));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every end, for `r2 stats`; `endpoint` names a caller's endpoint.
    pub fn stats(&self, endpoint: impl Fn(PortId) -> Option<NodeId>) -> Vec<TunnelStats> {
        self.ends
            .iter()
            .map(|(key, e)| {
                let (server, id) = match key {
                    Key::Instance(peer) => (true, *peer),
                    Key::Caller(port) => (false, endpoint(*port).unwrap_or(NodeId([0; 32]))),
                };
                let (up_ms, input, output) = e.io.traffic();
                TunnelStats { server, id, up_ms, input, output }
            })
            .collect()
    }
}

/// An exit status as one byte, as a shell reports it.
fn status_byte(s: std::process::ExitStatus) -> u8 {
    match (s.code(), s.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 255,
    }
}

/// A pipe, close-on-exec, packet mode if asked.
fn pipe(packet: bool) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    let mut flags = OFlag::O_CLOEXEC;
    if packet {
        flags |= OFlag::O_DIRECT;
    }
    let (r, w) = nix::unistd::pipe2(flags)?;
    crate::sys::grow_pipe(std::os::fd::AsFd::as_fd(&r));
    Ok((r, w))
}
