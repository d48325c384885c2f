//! Shortcuts: a link's reader relays transit messages itself.
//!
//! The router decides where every message goes. When it relays one from a
//! link to a link, it also says how any later message with the same
//! leading headers would go ([`Action::Shortcut`]); the loop puts that in
//! the incoming link's table. The link's reader then rewrites such messages
//! and writes them to the outgoing link's output itself, so a relay costs
//! one thread hand-over per hop instead of two.
//!
//! Two rules keep this the router's decision: the reader takes a shortcut
//! only while none of its earlier messages waits for the loop (so nothing
//! overtakes), and every ending of a neighbour or a connection empties all
//! tables ([`Action::ForgetShortcuts`]) before the loop lets that reader go
//! on (so no shortcut outlives the state it came from).
//!
//! A tunnel's reader has a shortcut of its own ([`Outbound`]): every Data
//! message of a tunnel end gets the same headers on its way out, so once
//! the loop has seen where the router sends one, the reader adds those
//! headers and writes the next itself, by the same two rules.
//!
//! The other way, once the loop has given a far-side tunnel end Data that
//! came over a link, that link's reader learns where the end's Data goes
//! (its inbound table): it reads the headers of a large Data message,
//! splices the data into a body and writes it to the program itself, and
//! tells the loop how much, for the end's flow control. The same two rules
//! hold.
//!
//! [`Action::Shortcut`]: crate::router::Action::Shortcut
//! [`Action::ForgetShortcuts`]: crate::router::Action::ForgetShortcuts

use super::output::{Output, Sent};
use super::tunnel::Key;
use super::Input;
use crate::router::relay_key;
use crate::sys::splice::Body;
use crate::wire::control::Traffic;
use crate::wire::message::{Kind, HEADER, LEN_PREFIX, MAX_MESSAGE};
use crate::wire::tunnel::DATA;
use crate::wire::NodeId;
use crate::wire::Packet;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// An output that the loop and link readers write to.
pub type SharedOutput = Arc<Mutex<Output>>;

/// The most shortcuts one link keeps; past it, messages take the long way.
const MAX_ROUTES: usize = 4096;

/// Messages sent by shortcut in this process, links' and tunnels' alike.
static TAKEN: AtomicU64 = AtomicU64::new(0);

/// How many messages went by shortcut.
pub fn taken() -> u64 {
    TAKEN.load(Ordering::Relaxed)
}

/// Locks a mutex; a thread that panicked holding it left nothing half done
/// that matters here, so its poison is ignored.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Route {
    out: Weak<Mutex<Output>>,
    head: Vec<u8>,
    /// The output takes messages with a body.
    splices: bool,
}

impl Route {
    fn new(out: &SharedOutput, head: Vec<u8>) -> Route {
        Route { out: Arc::downgrade(out), head, splices: lock(out).splices() }
    }

    /// Sends `p` with its first `skip` bytes replaced by the head, if that
    /// is within the cap and the output is still there.
    fn send(&self, p: Packet, skip: usize) -> Result<(), Packet> {
        self.send_with(p, skip, None).map_err(|(p, _)| p)
    }

    /// Sends `p`, followed by `body`, as [`Route::send`] does, if the
    /// output takes bodies.
    fn send_with(&self, mut p: Packet, skip: usize, body: Option<Body>) -> Result<(), (Packet, Option<Body>)> {
        let len = p.len() + body.as_ref().map_or(0, Body::len);
        if self.head.len() + len - skip > MAX_MESSAGE || (body.is_some() && !self.splices) {
            return Err((p, body));
        }
        let Some(out) = self.out.upgrade() else { return Err((p, body)) };
        p.advance(skip);
        p.prepend(&self.head);
        lock(&out).send_with(p, body);
        TAKEN.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The messages a reader has handed to the loop that the loop has not yet
/// handled and acted on: while there are any, the reader takes no shortcut.
#[derive(Default)]
pub struct Pending(AtomicUsize);

impl Pending {
    pub fn handing_over(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    pub fn handled(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn none(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }
}

/// Where a link's reader delivers the Data messages of one far-side tunnel
/// end itself: that end's program input.
struct Inbound {
    out: Weak<Mutex<Output>>,
    key: Key,
}

/// The first bytes of a Data message for a far-side tunnel end, as a link
/// brings it: `From(peer, To(0, …` and the Data tag. The key of the
/// inbound table.
pub const INBOUND_KEY: usize = 2 * HEADER + 1;

/// The inbound key of the tunnel end of `peer`.
pub fn inbound_key(peer: NodeId) -> Vec<u8> {
    let mut k = Packet::new(Kind::From, peer, &[]).bytes().to_vec();
    k.extend_from_slice(Packet::new(Kind::To, NodeId::TUNNEL, &[DATA]).bytes());
    k
}

/// One link's shortcuts, and what its reader counts.
#[derive(Default)]
pub struct Shortcuts {
    pub pending: Pending,
    routes: Mutex<HashMap<Vec<u8>, Route>>,
    inbound: Mutex<HashMap<Vec<u8>, Inbound>>,
    relayed: AtomicU64,
    rx_bytes: AtomicU64,
    rx_frames: AtomicU64,
}

impl Shortcuts {
    pub fn new() -> Arc<Shortcuts> {
        Arc::new(Shortcuts::default())
    }

    /// The reader read message `p`: relays it if a shortcut says how, else
    /// gives it back, to be handed to the loop.
    pub fn relay(&self, p: Packet) -> Result<(), Packet> {
        self.count(p.len());
        if !self.pending.none() {
            return Err(p);
        }
        let Some(k) = relay_key(p.bytes()).map(<[u8]>::len) else { return Err(p) };
        let routes = lock(&self.routes);
        let Some(r) = routes.get(&p.bytes()[..k]) else { return Err(p) };
        r.send(p, k)?;
        self.relayed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Messages starting with `key` go to `out`, with `head` for `key`.
    pub fn add(&self, key: Vec<u8>, out: &SharedOutput, head: Vec<u8>) {
        let mut routes = lock(&self.routes);
        if routes.len() < MAX_ROUTES {
            routes.insert(key, Route::new(out, head));
        }
    }

    pub fn forget(&self) {
        lock(&self.routes).clear();
        lock(&self.inbound).clear();
    }

    /// Data messages that start with `key` (see [`inbound_key`]) go to
    /// `out`, the program input of tunnel end `end`.
    pub fn add_inbound(&self, key: Vec<u8>, out: &SharedOutput, end: Key) {
        let mut table = lock(&self.inbound);
        if table.len() < MAX_ROUTES && !table.contains_key(&key) {
            table.insert(key, Inbound { out: Arc::downgrade(out), key: end });
        }
    }

    /// Whether the reader delivers a message that starts with `key` itself
    /// (so may splice its data): the table says where, and none of its
    /// messages waits for the loop.
    pub fn delivers(&self, key: &[u8]) -> bool {
        self.pending.none() && lock(&self.inbound).contains_key(key)
    }

    /// The reader read a large message whose first bytes are `p` and
    /// whose rest is in `body`: delivers its data to a tunnel end's
    /// program if the inbound table says where, and returns what to tell
    /// the loop; else gives them back.
    pub fn deliver(&self, mut p: Packet, body: Body) -> Result<Input, (Packet, Body)> {
        if !self.pending.none() {
            return Err((p, body));
        }
        let out = {
            let table = lock(&self.inbound);
            match p.bytes().get(..INBOUND_KEY).and_then(|k| table.get(k)) {
                Some(i) => i.out.upgrade().map(|o| (o, i.key)),
                None => None,
            }
        };
        let Some((out, key)) = out else { return Err((p, body)) };
        let mut out = lock(&out);
        if !out.splices() {
            return Err((p, body));
        }
        self.count(p.len() + body.len());
        p.advance(INBOUND_KEY);
        let n = p.len() + body.len();
        let done = match out.send_with(p, Some(body)) {
            Sent::Queued => false,
            Sent::Written | Sent::Discarded => true,
        };
        TAKEN.fetch_add(1, Ordering::Relaxed);
        Ok(Input::TunnelDelivered { key, n, done })
    }

    fn count(&self, len: usize) {
        self.rx_bytes.fetch_add((len + LEN_PREFIX) as u64, Ordering::Relaxed);
        self.rx_frames.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages relayed by shortcut so far.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    /// What the reader has read.
    pub fn received(&self) -> Traffic {
        Traffic { bytes: self.rx_bytes.load(Ordering::Relaxed), frames: self.rx_frames.load(Ordering::Relaxed) }
    }
}

/// A tunnel reader's way out: the headers its Data messages get and the
/// output they leave by, and what it has read.
#[derive(Default)]
pub struct Outbound {
    pub pending: Pending,
    route: Mutex<Option<Route>>,
    /// Data read from the program (not counting the Data tag).
    read_bytes: AtomicU64,
    read_frames: AtomicU64,
}

impl Outbound {
    pub fn new() -> Arc<Outbound> {
        Arc::new(Outbound::default())
    }

    /// The reader read the Data message `p`: sends it if it knows the way,
    /// else gives it back, to be handed to the loop.
    pub fn send(&self, p: Packet) -> Result<(), Packet> {
        self.send_with(p, None).map_err(|(p, _)| p)
    }

    /// The reader read the Data message `p` whose data is in `body`: sends
    /// them if it knows the way and that output takes bodies, else gives
    /// them back.
    pub fn send_with(&self, p: Packet, body: Option<Body>) -> Result<(), (Packet, Option<Body>)> {
        let len = p.len() + body.as_ref().map_or(0, Body::len);
        self.read_bytes.fetch_add(len.saturating_sub(1) as u64, Ordering::Relaxed);
        self.read_frames.fetch_add(1, Ordering::Relaxed);
        if !self.pending.none() {
            return Err((p, body));
        }
        match lock(&self.route).as_ref() {
            // The head ends in the Data tag the packet starts with.
            Some(r) => r.send_with(p, 1, body),
            None => Err((p, body)),
        }
    }

    /// Whether the way out is known.
    pub fn known(&self) -> bool {
        lock(&self.route).is_some()
    }

    /// Whether the way out is known and takes messages with a body.
    pub fn splices(&self) -> bool {
        lock(&self.route).as_ref().is_some_and(|r| r.splices)
    }

    /// Data messages go to `out`, after `head`.
    pub fn learn(&self, out: &SharedOutput, head: Vec<u8>) {
        *lock(&self.route) = Some(Route::new(out, head));
    }

    pub fn forget(&self) {
        *lock(&self.route) = None;
    }

    /// What the reader has read from the program.
    pub fn read(&self) -> Traffic {
        Traffic { bytes: self.read_bytes.load(Ordering::Relaxed), frames: self.read_frames.load(Ordering::Relaxed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::frames::FrameReader;
    use crate::wire::message::Kind;
    use crate::wire::NodeId;

    fn to(n: u8, body: &[u8]) -> Packet {
        Packet::new(Kind::To, NodeId([n; 32]), body)
    }

    /// A relay rewrites the key into the head; other messages, and all
    /// while one waits for the loop or after `forget`, come back.
    #[test]
    fn relays_by_the_table_only() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let (out, _writer) = super::super::output::output(w, true);
        let out = Arc::new(Mutex::new(out));
        let s = Shortcuts::new();
        let key = to(5, b"").bytes().to_vec();
        let head = Packet::new(Kind::From, NodeId([9; 32]), b"").bytes().to_vec();
        s.add(key, &out, head);
        assert!(s.relay(to(6, b"other")).is_err());
        assert!(s.relay(to(5, b"")).is_err(), "ε takes the long way");
        s.relay(to(5, b"first")).unwrap();
        s.pending.handing_over();
        assert!(s.relay(to(5, b"behind one in the loop")).is_err());
        s.pending.handled();
        s.relay(to(5, b"second")).unwrap();
        s.forget();
        assert!(s.relay(to(5, b"third")).is_err());
        assert_eq!((s.relayed(), s.received().frames), (2, 6));
        drop(out);
        drop(_writer);
        let mut fr = FrameReader::new(r, None);
        for body in [&b"first"[..], b"second"] {
            let p = fr.next_packet().unwrap().unwrap();
            let m = p.msg().unwrap();
            assert_eq!((m.kind, m.id, m.body), (Kind::From, NodeId([9; 32]), body));
        }
        assert!(fr.next_packet().unwrap().is_none());
    }
}
