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
//! [`Action::Shortcut`]: crate::router::Action::Shortcut
//! [`Action::ForgetShortcuts`]: crate::router::Action::ForgetShortcuts

use super::output::Output;
use crate::router::shortcut_key;
use crate::wire::control::Traffic;
use crate::wire::message::{LEN_PREFIX, MAX_MESSAGE};
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
}

impl Route {
    /// Sends `p` with its first `skip` bytes replaced by the head, if that
    /// is within the cap and the output is still there.
    fn send(&self, mut p: Packet, skip: usize) -> Result<(), Packet> {
        if self.head.len() + p.len() - skip > MAX_MESSAGE {
            return Err(p);
        }
        let Some(out) = self.out.upgrade() else { return Err(p) };
        p.advance(skip);
        p.prepend(&self.head);
        lock(&out).send(p);
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

    fn none(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }
}

/// One link's shortcuts, and what its reader counts.
#[derive(Default)]
pub struct Shortcuts {
    pub pending: Pending,
    routes: Mutex<HashMap<Vec<u8>, Route>>,
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
        self.rx_bytes.fetch_add((p.len() + LEN_PREFIX) as u64, Ordering::Relaxed);
        self.rx_frames.fetch_add(1, Ordering::Relaxed);
        if !self.pending.none() {
            return Err(p);
        }
        let Some(k) = shortcut_key(p.bytes()).map(<[u8]>::len) else { return Err(p) };
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
            routes.insert(key, Route { out: Arc::downgrade(out), head });
        }
    }

    pub fn forget(&self) {
        lock(&self.routes).clear();
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
        self.read_bytes.fetch_add(p.len().saturating_sub(1) as u64, Ordering::Relaxed);
        self.read_frames.fetch_add(1, Ordering::Relaxed);
        if !self.pending.none() {
            return Err(p);
        }
        match lock(&self.route).as_ref() {
            Some(r) => r.send(p, 0),
            None => Err(p),
        }
    }

    /// Whether the way out is known.
    pub fn known(&self) -> bool {
        lock(&self.route).is_some()
    }

    /// Data messages go to `out`, after `head`.
    pub fn learn(&self, out: &SharedOutput, head: Vec<u8>) {
        *lock(&self.route) = Some(Route { out: Arc::downgrade(out), head });
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
