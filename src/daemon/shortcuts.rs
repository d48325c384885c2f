//! Shortcuts: readers that send messages on themselves, as the router
//! taught them, and the one registry that holds them.
//!
//! The router decides where every message goes. When it sends one on, it
//! also says how any later message with the same first bytes would go
//! ([`Action::Shortcut`]). The loop gives that to the [`Registry`], which
//! puts it in the table of the reader it is for: a link's reader relays
//! transit messages to another link ([`LinkRoutes::relay`]) and delivers
//! the Data of far-side tunnel ends, and of callers' ends one hop away, to
//! their programs itself, spliced where the input is a pipe
//! ([`LinkRoutes::deliver`]); a tunnel's reader sends the Data it reads
//! straight to the link it leaves by ([`Outbound`]). So a message costs one
//! thread hand-over per hop instead of two.
//!
//! The ends of a tunnel sealed end to end take these shortcuts with the
//! tunnel's keys ([`Sealed`], shared with the loop): a tunnel's reader
//! seals its Data as it sends it, and a link's reader opens the ordered
//! Sealed messages it delivers, handing the loop, opened, any that holds
//! another message ([`Delivery::Opened`]). The loop marks the messages it
//! seals itself as pending for that end's reader, under the same hold,
//! until they are sent on ([`Outbound::hold_for_loop`]), so counters leave
//! in order.
//!
//! Two rules keep this the router's decision: a reader takes a shortcut
//! only while none of its earlier messages waits for the loop (so nothing
//! overtakes), and every ending of a neighbour or a connection empties the
//! tables of what it may change ([`Action::ForgetShortcuts`],
//! [`Registry::forget`]: all; for a virtual neighbour, an endpoint or its
//! tunnel, `ForgetShortcutsOf`, [`Registry::forget_of`]: what names it) before the
//! loop lets that reader go on (so no shortcut outlives the state it came
//! from).
//!
//! [`Action::Shortcut`]: crate::router::Action::Shortcut
//! [`Action::ForgetShortcuts`]: crate::router::Action::ForgetShortcuts

use super::e2e::{SealHold, Sealed};
use super::session::Key;
use crate::link::{lock, Output, Sent, SharedOutput};
use crate::noise::seal::{OVERHEAD, UNORDERED};
use crate::router::{is_caller_delivery, names, relay_key, Exit, Lane, PortId, Shortcut, DELIVERY_KEY};
use crate::sys::splice::Body;
use crate::wire::control::Traffic;
use crate::wire::message::MAX_MESSAGE;
use crate::wire::tunnel::{data_head, DATA, SEALED};
use crate::wire::{NodeId, Packet};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// The most shortcuts one link keeps; past it, messages take the long way.
const MAX_ROUTES: usize = 4096;

/// Messages sent by shortcut in this process, links' and tunnels' alike.
static TAKEN: AtomicU64 = AtomicU64::new(0);

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

    /// Seals the tunnel message `p` under `hold` and sends it after the
    /// head (which ends in the Sealed tag), if that is within the cap and
    /// the output is still there; else gives it back unsealed.
    fn send_sealed(&self, mut p: Packet, hold: &mut SealHold<'_>) -> Result<(), Packet> {
        if self.head.len() + p.len() + OVERHEAD > MAX_MESSAGE {
            return Err(p);
        }
        let Some(out) = self.out.upgrade() else { return Err(p) };
        hold.seal(&mut p);
        p.advance(1);
        p.prepend(&self.head);
        lock(&out).send_with(p, None);
        TAKEN.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The messages a reader has handed to the loop that the loop has not yet
/// handled and acted on: while there are any, the reader takes no shortcut.
///
/// A link's reader with a message that a shortcut would deliver waits
/// first, up to [`CATCH_UP`], for the loop to act on those
/// ([`Pending::catch_up`]). Else, on a busy machine,
/// the loop is always behind a reader that keeps handing it messages, and
/// none of them ever goes by a shortcut again: with 100 tunnels through
/// one link, perf showed the far daemon's loop writing their data itself.
/// Waiting loses nothing: while any is pending, all go to the loop anyway.
/// Messages with no delivery shortcut (Credit, a packet-mode tunnel's
/// Datagrams, relayed ones) do not wait: the reader and the loop work on
/// those side by side.
#[derive(Default)]
pub struct Pending {
    count: AtomicUsize,
    /// The reader waiting in `catch_up`, woken when the count falls to 0.
    waiter: Mutex<Option<std::thread::Thread>>,
}

/// The longest a reader waits for the loop to catch up (it goes on the
/// slow way after that: a loop starting a process can take this long).
pub const CATCH_UP: std::time::Duration = std::time::Duration::from_millis(20);

impl Pending {
    pub fn handing_over(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    pub fn handled(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(t) = lock(&self.waiter).as_ref() {
                t.unpark();
            }
        }
    }

    pub fn none(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Waits, on the reader's thread, until the loop has acted on all of
    /// them or [`CATCH_UP`] has passed: whether none is pending.
    pub fn catch_up(&self) -> bool {
        if self.none() {
            return true;
        }
        *lock(&self.waiter) = Some(std::thread::current());
        let until = std::time::Instant::now() + CATCH_UP;
        let caught_up = loop {
            if self.none() {
                break true;
            }
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break false;
            }
            std::thread::park_timeout(left);
        };
        *lock(&self.waiter) = None;
        caught_up
    }
}

/// Where a link's reader delivers the Data messages of one tunnel end
/// itself (a far-side end, or the caller's end of a one-hop tunnel): that
/// end's program input; and for a tunnel sealed end to end, its keys, to
/// open the Sealed messages the Data is in.
struct Inbound {
    out: Weak<Mutex<Output>>,
    key: Key,
    sealed: Option<Sealed>,
    /// The input splices: the reader may move a large message's data
    /// into it without reading it (else it delivers messages read whole).
    splices: bool,
}

/// What a link's reader did with a whole message by a delivery shortcut.
#[derive(Debug)]
pub enum Delivery {
    /// Gave its data to a tunnel end's program.
    Data(Delivered),
    /// Opened it (a tunnel sealed end to end) and found another tunnel
    /// message than Data, for the loop and the far-side end of `peer`: it
    /// goes there in the clear, and before the reader takes another
    /// shortcut.
    Opened { peer: NodeId, packet: Packet },
}

/// What a link's reader gave a tunnel end's program itself: `n` bytes of
/// data, `done` if they are written out (or discarded) already. The loop
/// counts them for the end's flow control.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivered {
    pub key: Key,
    pub n: usize,
    pub done: bool,
}

/// One link reader's shortcuts.
#[derive(Default)]
pub struct LinkRoutes {
    pub pending: Pending,
    relays: Mutex<HashMap<Vec<u8>, Route>>,
    deliveries: Mutex<HashMap<Vec<u8>, Inbound>>,
    relayed: AtomicU64,
    /// `relayed` at the last [`Registry::heard`].
    heard: AtomicU64,
    /// The link is sealed: its reader opens every message already.
    link_sealed: AtomicBool,
}

/// The largest sealed tunnel message that a reader of a sealed link opens
/// and delivers itself: a larger one goes to the loop, which opens it while
/// the reader opens the next of the link's, so that bulk data's two
/// openings run on two threads (measured: a tunnel over two sealed links
/// moved about 10 % less with both in the reader); a round trip's small
/// ones save the hand-over.
const OPEN_IN_READER: usize = crate::sys::buffers::SMALL;

/// Gives tunnel end `key`'s program the data `p` and `body`, through its
/// input `out`: what the loop is told.
fn hand_over(out: &mut Output, key: Key, p: Packet, body: Option<Body>) -> Delivered {
    let n = p.len() + body.as_ref().map_or(0, Body::len);
    let done = match out.send_with(p, body) {
        Sent::Queued => false,
        Sent::Written | Sent::Discarded => true,
    };
    TAKEN.fetch_add(1, Ordering::Relaxed);
    Delivered { key, n, done }
}

impl LinkRoutes {
    /// The link's messages are sealed (its handshake is done).
    pub fn set_link_sealed(&self, sealed: bool) {
        self.link_sealed.store(sealed, Ordering::Relaxed);
    }

    /// The reader read message `p`: relays it if a shortcut says how, else
    /// gives it back, to be handed to the loop.
    pub fn relay(&self, p: Packet) -> Result<(), Packet> {
        if !self.pending.none() {
            return Err(p);
        }
        let Some(k) = relay_key(p.bytes()).map(<[u8]>::len) else { return Err(p) };
        let routes = lock(&self.relays);
        let Some(r) = routes.get(&p.bytes()[..k]) else { return Err(p) };
        r.send(p, k)?;
        self.relayed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether a shortcut says which tunnel end's program a message that
    /// starts with `bytes` is delivered to, whatever waits for the loop:
    /// whether it is worth waiting for the loop to catch up
    /// ([`Pending::catch_up`]). Messages that always go to the loop
    /// (Credit, Datagrams, also sealed end to end) are not, nor are relayed
    /// ones: readers that waited before those moved a VPN across three hops
    /// at half the speed.
    pub fn would_deliver(&self, bytes: &[u8]) -> bool {
        let Some(k) = bytes.get(..DELIVERY_KEY) else { return false };
        (k[DELIVERY_KEY - 1] != SEALED || self.opens_in_reader(bytes)) && lock(&self.deliveries).contains_key(k)
    }

    /// Whether the reader may open the Sealed message `bytes` itself: an
    /// ordered one (a Datagram, sealed unordered, goes to the loop, which
    /// keeps count of the lost), and on a sealed link only a small one.
    fn opens_in_reader(&self, bytes: &[u8]) -> bool {
        let counter = bytes.get(DELIVERY_KEY..DELIVERY_KEY + 8).and_then(|c| c.try_into().ok());
        counter.is_some_and(|c| u64::from_be_bytes(c) & UNORDERED == 0)
            && !(bytes.len() > OPEN_IN_READER && self.link_sealed.load(Ordering::Relaxed))
    }

    /// Whether the reader delivers a message that starts with `key` (the
    /// first [`DELIVERY_KEY`] bytes) itself, so may splice its data: the
    /// table says where, and none of its messages waits for the loop.
    pub fn delivers(&self, key: &[u8]) -> bool {
        self.pending.none() && lock(&self.deliveries).get(key).is_some_and(|i| i.sealed.is_none() && i.splices)
    }

    /// The reader read a large message whose first bytes are `p` and
    /// whose rest is in `body`: delivers its data to a tunnel end's
    /// program if a shortcut says where, and says what it did; else gives
    /// them back.
    pub fn deliver(&self, p: Packet, body: Body) -> Result<Delivered, (Packet, Option<Body>)> {
        self.deliver_with(p, Some(body))
    }

    /// The reader read a whole message `p` (a sealed link's, opened):
    /// delivers its data to a tunnel end's program if a shortcut says
    /// where, as [`LinkRoutes::deliver`] does a body; else gives it back.
    pub fn deliver_whole(&self, p: Packet) -> Result<Delivery, Packet> {
        if p.len() <= DELIVERY_KEY {
            return Err(p);
        }
        if p.bytes()[DELIVERY_KEY - 1] == SEALED {
            return self.deliver_sealed(p);
        }
        self.deliver_with(p, None).map(Delivery::Data).map_err(|(p, _)| p)
    }

    /// Opens the Sealed message `p` of a tunnel sealed end to end, if a
    /// shortcut says where it goes, and delivers the Data it holds; else
    /// gives it back as it was. Only ordered messages: a Datagram (an
    /// unordered one) goes to the loop, which keeps count of the lost; and
    /// on a sealed link only small ones ([`OPEN_IN_READER`]).
    fn deliver_sealed(&self, mut p: Packet) -> Result<Delivery, Packet> {
        if !self.pending.none() || !self.opens_in_reader(p.bytes()) {
            return Err(p);
        }
        let (out, peer, sealed) = {
            let table = lock(&self.deliveries);
            match table.get(&p.bytes()[..DELIVERY_KEY]) {
                Some(Inbound { out, key: Key::Instance(peer), sealed: Some(s), .. }) => match out.upgrade() {
                    Some(o) => (o, *peer, s.clone()),
                    None => return Err(p),
                },
                _ => return Err(p),
            }
        };
        p.advance(DELIVERY_KEY - 1);
        match sealed.open(&mut p) {
            Ok(true) => {}
            // An ordered message opens or fails, and a failed one is left
            // as it came (behind the key, which is still in front): the
            // loop finds it fails, and ends the tunnel.
            Ok(false) | Err(_) => {
                p.unadvance(DELIVERY_KEY);
                return Err(p);
            }
        }
        if p.len() < 2 || p.bytes()[0] != DATA {
            return Ok(Delivery::Opened { peer, packet: p });
        }
        p.advance(1);
        let mut out = lock(&out);
        Ok(Delivery::Data(hand_over(&mut out, Key::Instance(peer), p, None)))
    }

    /// Delivers `p`'s data, and `body` after it, where the table says;
    /// a body only to an output that splices.
    fn deliver_with(&self, mut p: Packet, body: Option<Body>) -> Result<Delivered, (Packet, Option<Body>)> {
        if !self.pending.none() {
            return Err((p, body));
        }
        let out = {
            let table = lock(&self.deliveries);
            // The packet may hold no more than the key: the rest is in the body.
            match p.bytes().get(..DELIVERY_KEY).and_then(|k| table.get(k)) {
                Some(i) if i.sealed.is_none() && (body.is_none() || i.splices) => i.out.upgrade().map(|o| (o, i.key)),
                _ => None,
            }
        };
        let Some((out, key)) = out else { return Err((p, body)) };
        let mut out = lock(&out);
        p.advance(DELIVERY_KEY);
        Ok(hand_over(&mut out, key, p, body))
    }

    fn forget(&self) {
        lock(&self.relays).clear();
        lock(&self.deliveries).clear();
    }

    /// Forgets the shortcuts that `names` says name a node, and the
    /// deliveries to tunnel end `end`.
    fn forget_naming(&self, names: &impl Fn(&[u8]) -> bool, end: Key) {
        lock(&self.relays).retain(|k, r| !names(k) && !names(&r.head));
        lock(&self.deliveries).retain(|k, i| !names(k) && i.key != end);
    }

    /// Messages relayed by shortcut so far.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }
}

/// A tunnel reader's way out: the headers its Data messages get and the
/// output they leave by, and what it has read.
pub struct Outbound {
    pub pending: Pending,
    /// The first bytes of the end's Data messages (Datagrams in packet
    /// mode) as the router sees them: the key of the shortcuts for it. For
    /// a tunnel sealed end to end it ends in the Sealed tag that they are
    /// sent in.
    key: Vec<u8>,
    route: Mutex<Option<Route>>,
    /// The end's keys, once its tunnel is sealed end to end: the reader
    /// seals what it sends by the shortcut, holding the sealing while it
    /// sees that none of its messages waits for the loop and sends; the
    /// loop marks its own sealed messages pending under the same hold
    /// until they are sent ([`Outbound::hold_for_loop`]).
    sealed: OnceLock<Sealed>,
    /// Data read from the program (not counting the Data tag).
    read_bytes: AtomicU64,
    read_frames: AtomicU64,
}

impl Outbound {
    /// The way out of a tunnel end whose Data messages start with `key`
    /// (up to the Data tag) when the router gets them.
    pub fn new(key: Vec<u8>) -> Arc<Outbound> {
        let (pending, route, sealed) = (Pending::default(), Mutex::new(None), OnceLock::new());
        let (read_bytes, read_frames) = (AtomicU64::new(0), AtomicU64::new(0));
        Arc::new(Outbound { pending, key, route, sealed, read_bytes, read_frames })
    }

    /// Whether the end's messages are sealed end to end: its key ends in
    /// the Sealed tag.
    fn sealed_key(&self) -> bool {
        self.key.last() == Some(&SEALED)
    }

    /// The end's tunnel is sealed end to end with `sealed`.
    pub fn seal_with(&self, sealed: Sealed) {
        let _ = self.sealed.set(sealed);
    }

    /// The loop seals a message of this end, `p`: under the sealing's
    /// hold, so that the reader cannot seal a later one and send it first,
    /// it counts as pending until the caller calls [`Pending::handled`]
    /// once it is sent.
    pub fn hold_for_loop(&self, sealed: &Sealed, p: &mut Packet) {
        let mut hold = sealed.hold();
        self.pending.handing_over();
        hold.seal(p);
    }

    /// The reader read the Data (or Datagram) message `p`: sends it if it
    /// knows the way, else gives it back, to be handed to the loop.
    pub fn send(&self, p: Packet) -> Result<(), Packet> {
        self.send_with(p, None).map_err(|(p, _)| p)
    }

    /// The reader read the Data message `p` whose data is in `body`: sends
    /// them if it knows the way and that output takes bodies, else gives
    /// them back.
    pub fn send_with(&self, p: Packet, body: Option<Body>) -> Result<(), (Packet, Option<Body>)> {
        let len = p.len() + body.as_ref().map_or(0, Body::len);
        let head = p.bytes().first().map_or(1, |&t| data_head(t));
        self.read_bytes.fetch_add(len.saturating_sub(head) as u64, Ordering::Relaxed);
        self.read_frames.fetch_add(1, Ordering::Relaxed);
        if self.sealed_key() {
            let Some(sealed) = self.sealed.get().filter(|_| body.is_none()) else { return Err((p, body)) };
            let mut hold = sealed.hold();
            if !self.pending.none() {
                return Err((p, None));
            }
            return match lock(&self.route).as_ref() {
                Some(r) => r.send_sealed(p, &mut hold).map_err(|p| (p, None)),
                None => Err((p, None)),
            };
        }
        if !self.pending.none() {
            return Err((p, body));
        }
        match lock(&self.route).as_ref() {
            // The head ends in the tag the packet starts with.
            Some(r) => r.send_with(p, 1, body),
            None => Err((p, body)),
        }
    }

    /// Whether the way out is known.
    #[cfg(test)]
    fn knows_the_way(&self) -> bool {
        lock(&self.route).is_some()
    }

    /// Whether the way out is known and takes messages with a body, and
    /// none of the reader's messages waits for the loop: whether a body
    /// read now would go on by the shortcut (else the reader reads the
    /// data into memory, as the loop needs it).
    pub fn splices(&self) -> bool {
        self.pending.none() && !self.sealed_key() && lock(&self.route).as_ref().is_some_and(|r| r.splices)
    }

    /// Data messages go to `out`, after `head`.
    fn learn(&self, out: &SharedOutput, head: Vec<u8>) {
        *lock(&self.route) = Some(Route::new(out, head));
    }

    fn forget(&self) {
        *lock(&self.route) = None;
    }

    /// Whether its key or its way out's head is one that `names` says
    /// names a node.
    fn naming(&self, names: &impl Fn(&[u8]) -> bool) -> bool {
        names(&self.key) || lock(&self.route).as_ref().is_some_and(|r| names(&r.head))
    }

    /// What the reader has read from the program.
    pub fn read(&self) -> Traffic {
        Traffic { bytes: self.read_bytes.load(Ordering::Relaxed), frames: self.read_frames.load(Ordering::Relaxed) }
    }
}

/// Every reader's shortcuts, and their forgetting and counters.
#[derive(Default)]
pub struct Registry {
    links: HashMap<PortId, Arc<LinkRoutes>>,
    /// Few, and looked up once per end between forgettings.
    tunnels: Vec<(Key, Weak<Outbound>)>,
    /// No reader holds a shortcut: none was made since they were last
    /// forgotten.
    forgotten: bool,
}

impl Registry {
    pub fn new() -> Registry {
        Registry { forgotten: true, ..Registry::default() }
    }

    /// The table of a new link's reader.
    pub fn open_link(&mut self, port: PortId) -> Arc<LinkRoutes> {
        let t = Arc::new(LinkRoutes::default());
        self.links.insert(port, t.clone());
        t
    }

    pub fn close_link(&mut self, port: PortId) {
        self.links.remove(&port);
    }

    /// The way out of a new tunnel end's reader, whose Data messages start
    /// with `key` when the router gets them; the end holds it.
    pub fn open_tunnel(&mut self, end: Key, key: Vec<u8>) -> Arc<Outbound> {
        self.tunnels.retain(|(k, t)| t.strong_count() > 0 && *k != end);
        let t = Outbound::new(key);
        self.tunnels.push((end, Arc::downgrade(&t)));
        t
    }

    /// The loop has handled a message from `port`'s reader: the reader may
    /// take shortcuts again.
    pub fn handled(&self, port: PortId) {
        if let Some(t) = self.links.get(&port) {
            t.pending.handled();
        }
    }

    /// Puts shortcut `s` in its reader's table. `output` finds the output
    /// of a port, `input` the program input of a tunnel end; a shortcut
    /// whose reader or exit is gone is dropped.
    pub fn learn(
        &mut self,
        s: Shortcut,
        output: impl Fn(PortId) -> Option<SharedOutput>,
        input: impl Fn(Key) -> Option<(SharedOutput, Option<Sealed>)>,
    ) {
        let end = match s.from {
            Lane::Link(from) => {
                let Some(table) = self.links.get(&from) else { return };
                // A relay onward (Err: by this link), or a delivery of a
                // tunnel end's Data: to the instance for a neighbour, or to
                // the caller's end on an endpoint's port.
                let exit = match s.to {
                    Exit::Port(to) if is_caller_delivery(&s.key) => Ok(Key::Caller(to)),
                    Exit::Port(to) => Err(to),
                    Exit::Tunnel(peer) => Ok(Key::Instance(peer)),
                };
                match exit {
                    Err(to) => {
                        let Some(out) = output(to) else { return };
                        let mut relays = lock(&table.relays);
                        if relays.len() < MAX_ROUTES {
                            relays.insert(s.key, Route::new(&out, s.head));
                        }
                    }
                    Ok(key) => {
                        let Some((out, sealed)) = input(key) else { return };
                        // Data in Sealed messages for an end sealed end to
                        // end, whole; in the clear for one that is not,
                        // spliced where its input is a pipe (a caller's
                        // program may write to a file or a terminal).
                        let fits = match &sealed {
                            Some(_) => s.key.last() == Some(&SEALED),
                            None => s.key.last() == Some(&DATA),
                        };
                        if !fits {
                            return;
                        }
                        let splices = lock(&out).splices();
                        let mut table = lock(&table.deliveries);
                        if table.len() < MAX_ROUTES && !table.contains_key(&s.key) {
                            table.insert(s.key, Inbound { out: Arc::downgrade(&out), key, sealed, splices });
                        }
                    }
                }
                self.forgotten = false;
                return;
            }
            Lane::Endpoint(port) => Key::Caller(port),
            Lane::Tunnel(peer) => Key::Instance(peer),
        };
        let Exit::Port(to) = s.to else { return };
        let Some(t) = self.tunnels.iter().find(|(k, _)| *k == end).and_then(|(_, t)| t.upgrade()) else { return };
        // The head ends in the tag the key ends in (Data, Datagram, or
        // Sealed).
        if t.key != s.key || s.head.last() != s.key.last() {
            return;
        }
        if let Some(out) = output(to) {
            t.learn(&out, s.head);
            self.forgotten = false;
        }
    }

    /// Voids every shortcut, now: once this returns, no reader is sending
    /// by one or will again until the loop makes new ones. So what the loop
    /// sends next (an ε, say) comes after all that readers sent by the
    /// state that just ended; a Data message from a tunnel reader after its
    /// endpoint's ε would bind the endpoint's id anew at the next hop.
    pub fn forget(&mut self) {
        if std::mem::replace(&mut self.forgotten, true) {
            return;
        }
        for t in self.links.values() {
            t.forget();
        }
        self.tunnels.retain(|(_, t)| match t.upgrade() {
            Some(t) => {
                t.forget();
                true
            }
            None => false,
        });
    }

    /// Voids, now, the shortcuts that name node `n` (in their key or
    /// head) and those of its tunnel end (`Action::ForgetShortcutsOf`):
    /// once this returns, no reader sends by one of them. A false match of
    /// 32 bytes only forgets one more.
    pub fn forget_of(&mut self, n: NodeId) {
        let names = |b: &[u8]| names(b, n);
        let end = Key::Instance(n);
        for t in self.links.values() {
            t.forget_naming(&names, end);
        }
        self.tunnels.retain(|(k, t)| match t.upgrade() {
            Some(t) => {
                if *k == end || t.naming(&names) {
                    t.forget();
                }
                true
            }
            None => false,
        });
    }

    /// The links whose readers relayed messages by shortcut since the last
    /// call: those links are alive.
    pub fn heard(&mut self) -> Vec<PortId> {
        let mut heard = Vec::new();
        for (&port, t) in &self.links {
            let n = t.relayed();
            if t.heard.swap(n, Ordering::Relaxed) != n {
                heard.push(port);
            }
        }
        heard
    }

    /// How many messages went by shortcut in this process.
    pub fn taken(&self) -> u64 {
        TAKEN.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::reader::FrameReader;
    use crate::link::stream::Stream;
    use crate::wire::message::Kind;
    use crate::wire::tunnel::{DATA, DATAGRAM};
    use crate::wire::NodeId;

    fn to(n: u8, body: &[u8]) -> Packet {
        Packet::new(Kind::To, NodeId([n; 32]), body)
    }

    /// `body` behind the headers `hs`, the outermost first.
    fn headed(hs: &[(Kind, NodeId)], body: &[u8]) -> Packet {
        let mut p = Packet::from_bytes(body);
        for &(k, n) in hs.iter().rev() {
            p.push_header(k, n);
        }
        p
    }

    /// A relay rewrites the key into the head; other messages, and all
    /// while one waits for the loop or after `forget`, come back.
    #[test]
    fn relays_by_the_table_only() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let (out, _writer) = crate::link::output::output(w, Arc::new(Stream));
        let out = Arc::new(Mutex::new(out));
        let mut reg = Registry::new();
        let s = reg.open_link(1);
        let key = to(5, b"").bytes().to_vec();
        let head = Packet::new(Kind::From, NodeId([9; 32]), b"").bytes().to_vec();
        let shortcut = Shortcut { from: Lane::Link(1), key, to: Exit::Port(2), head };
        reg.learn(shortcut, |p| (p == 2).then(|| out.clone()), |_| None);
        assert!(s.relay(to(6, b"other")).is_err());
        assert!(s.relay(to(5, b"")).is_err(), "ε takes the long way");
        s.relay(to(5, b"first")).unwrap();
        s.pending.handing_over();
        assert!(s.relay(to(5, b"behind one in the loop")).is_err());
        reg.handled(1);
        s.relay(to(5, b"second")).unwrap();
        assert_eq!(reg.heard(), vec![1]);
        assert_eq!(reg.heard(), Vec::<PortId>::new(), "nothing relayed since");
        reg.forget();
        assert!(s.relay(to(5, b"third")).is_err());
        assert_eq!(s.relayed(), 2);
        drop(out);
        drop(_writer);
        let mut fr = FrameReader::new(r, Arc::new(Stream), None);
        for body in [&b"first"[..], b"second"] {
            let p = fr.next_packet().unwrap().unwrap();
            let m = p.msg().unwrap();
            assert_eq!((m.kind, m.id, m.body), (Kind::From, NodeId([9; 32]), body));
        }
        assert!(fr.next_packet().unwrap().is_none());
    }

    /// A stream link's output on a pipe, and the pipe's read end.
    fn output_on_pipe() -> (std::os::fd::OwnedFd, SharedOutput, crate::link::output::Writer) {
        let (r, w) = nix::unistd::pipe().unwrap();
        let (out, writer) = crate::link::output::output(w, Arc::new(Stream));
        (r, Arc::new(Mutex::new(out)), writer)
    }

    /// A tunnel end learns only the way of its own Data: a shortcut with
    /// another key, or for an end that is gone, is dropped.
    #[test]
    fn a_tunnel_end_learns_its_own_way_only() {
        let (_r, out, _writer) = output_on_pipe();
        let mut reg = Registry::new();
        let end = reg.open_tunnel(Key::Caller(7), vec![1, 2, DATA]);
        let learn = |reg: &mut Registry, key: Vec<u8>| {
            let s = Shortcut { from: Lane::Endpoint(7), key, to: Exit::Port(2), head: vec![9, DATA] };
            reg.learn(s, |_| Some(out.clone()), |_| None);
        };
        learn(&mut reg, vec![1, 3, DATA]);
        assert!(!end.knows_the_way());
        learn(&mut reg, vec![1, 2, DATA]);
        assert!(end.knows_the_way());
        reg.forget();
        assert!(!end.knows_the_way());
        drop(end);
        let _other = reg.open_tunnel(Key::Caller(8), vec![DATA]);
        assert_eq!(reg.tunnels.len(), 1, "a gone end leaves the registry");
    }

    /// A reader waits for the loop to act on what it handed over, woken as
    /// the last of it is handled, and no longer than CATCH_UP.
    #[test]
    fn a_reader_waits_for_the_loop_to_catch_up() {
        let p = Arc::new(Pending::default());
        assert!(p.catch_up(), "nothing pending");
        p.handing_over();
        p.handing_over();
        let t = std::time::Instant::now();
        assert!(!p.catch_up(), "the loop is behind");
        assert!(t.elapsed() >= CATCH_UP);
        let lp = p.clone();
        let the_loop = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(5)); // let the reader wait: not a wait for a condition
            lp.handled();
            lp.handled();
        });
        // Each wait is at most CATCH_UP; a loaded machine may start the
        // loop's thread later than that.
        let t = std::time::Instant::now();
        while !p.catch_up() {
            assert!(t.elapsed() < std::time::Duration::from_secs(10), "never caught up");
        }
        assert!(p.none());
        the_loop.join().unwrap();
    }

    /// A reader splices only while a body would go on by the shortcut: not
    /// while one of its messages waits for the loop, which would need the
    /// data read back into memory.
    #[test]
    fn a_reader_splices_only_while_nothing_waits_for_the_loop() {
        let (_r, out, _writer) = output_on_pipe();
        let mut reg = Registry::new();
        let end = reg.open_tunnel(Key::Caller(7), vec![1, 2, DATA]);
        assert!(!end.splices(), "no way out yet");
        let s = Shortcut { from: Lane::Endpoint(7), key: vec![1, 2, DATA], to: Exit::Port(2), head: vec![9, DATA] };
        reg.learn(s, |_| Some(out.clone()), |_| None);
        assert!(end.splices(), "a pipe's output takes bodies");
        end.pending.handing_over();
        assert!(!end.splices(), "a message waits for the loop");
        end.pending.handled();
        assert!(end.splices());
    }

    /// A packet-mode end's way is taught by its Datagrams, not by Data of
    /// the same path, and its Datagrams go by it whole.
    #[test]
    fn a_packet_mode_end_learns_from_datagrams() {
        let (r, out, _writer) = output_on_pipe();
        let mut reg = Registry::new();
        let end = reg.open_tunnel(Key::Caller(7), vec![1, 2, DATAGRAM]);
        let learn = |reg: &mut Registry, key: Vec<u8>, head: Vec<u8>| {
            let s = Shortcut { from: Lane::Endpoint(7), key, to: Exit::Port(2), head };
            reg.learn(s, |_| Some(out.clone()), |_| None);
        };
        learn(&mut reg, vec![1, 2, DATA], vec![9, DATA]);
        assert!(!end.knows_the_way(), "taught by Data");
        learn(&mut reg, vec![1, 2, DATAGRAM], vec![9, DATA]);
        assert!(!end.knows_the_way(), "a head that would make it Data");
        learn(&mut reg, vec![1, 2, DATAGRAM], vec![9, DATAGRAM]);
        assert!(end.knows_the_way());
        let dg = [&[DATAGRAM][..], &5u64.to_be_bytes(), b"ip packet"].concat();
        assert!(end.send(Packet::from_bytes(&dg)).is_ok());
        assert_eq!(end.read().bytes, 9, "the data, not the tag and offset");
        let want = [&crate::link::stream::prefix(1 + dg.len())[..], &[9], &dg].concat();
        let mut got = vec![0; want.len()];
        std::io::Read::read_exact(&mut std::fs::File::from(r), &mut got).unwrap();
        assert_eq!(got, want);
    }

    /// The messages a stream output wrote to its pipe, whatever their
    /// size (4-byte length prefixes), read to the end.
    fn frames(r: std::os::fd::OwnedFd, n: usize) -> Vec<Packet> {
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut all).unwrap();
        let mut got = Vec::new();
        let mut at = 0;
        while at < all.len() {
            let len = u32::from_be_bytes(all[at..at + 4].try_into().unwrap()) as usize;
            got.push(Packet::from_bytes(&all[at + 4..at + 4 + len]));
            at += 4 + len;
        }
        assert_eq!(got.len(), n);
        got
    }

    /// A tunnel sealed end to end: its reader seals what it sends by the
    /// shortcut, and the loop's sealed messages keep it from sending until
    /// they are sent, so that the far end opens them all, in order.
    #[test]
    fn a_sealed_end_seals_what_it_sends_in_order_with_the_loop() {
        use crate::wire::tunnel::TunnelMsg;
        let (r, out, writer) = output_on_pipe();
        let (caller, far) = super::super::e2e::test_pair();
        let mut reg = Registry::new();
        let end = reg.open_tunnel(Key::Caller(7), vec![1, 2, SEALED]);
        let s = Shortcut { from: Lane::Endpoint(7), key: vec![1, 2, SEALED], to: Exit::Port(2), head: vec![9, SEALED] };
        reg.learn(s, |_| Some(out.clone()), |_| None);
        assert!(end.knows_the_way() && !end.splices(), "sealed data is read, to be sealed");
        let data = |d: &[u8]| Packet::from_bytes(&TunnelMsg::Data(d).encode());
        assert!(end.send(data(b"too early")).is_err(), "no keys yet: the loop's");
        end.seal_with(caller.clone());
        end.send(data(b"one")).unwrap();
        // The loop seals a Credit: until it is sent, the reader waits.
        let mut credit = Packet::from_bytes(&TunnelMsg::Credit(5).encode());
        end.hold_for_loop(&caller, &mut credit);
        let back = end.send(data(b"behind the loop's")).unwrap_err();
        assert_eq!(back.bytes(), &TunnelMsg::Data(b"behind the loop's").encode()[..], "given back unsealed");
        credit.advance(1);
        credit.prepend(&[9, SEALED]);
        lock(&out).send(credit);
        end.pending.handled();
        end.send(data(b"two")).unwrap();
        drop((out, writer));
        let want = [TunnelMsg::Data(b"one"), TunnelMsg::Credit(5), TunnelMsg::Data(b"two")];
        for (mut p, want) in frames(r, 3).into_iter().zip(want) {
            assert_eq!(p.bytes()[..2], [9, SEALED]);
            assert!(!p.bytes().windows(3).any(|w| w == b"one" || w == b"two"), "in the clear");
            p.advance(1);
            assert_eq!(far.open(&mut p), Ok(true));
            assert_eq!(TunnelMsg::decode(p.bytes()), Ok(want));
        }
    }

    /// A link's reader opens the Sealed messages of a far-side end sealed
    /// end to end and delivers their Data; another message goes to the
    /// loop opened; one that does not open, a datagram, or any while one
    /// waits for the loop, goes there as it came.
    #[test]
    fn a_link_reader_opens_and_delivers_a_sealed_tunnels_data() {
        use crate::wire::tunnel::TunnelMsg;
        let (r, out, writer) = output_on_pipe();
        let (caller, far) = super::super::e2e::test_pair();
        let peer = NodeId([5; 32]);
        let mut reg = Registry::new();
        let routes = reg.open_link(1);
        let sealed = |m: TunnelMsg| {
            let mut p = Packet::from_bytes(&m.encode());
            caller.seal(&mut p);
            headed(&[(Kind::From, peer), (Kind::To, NodeId::TUNNEL)], p.bytes())
        };
        let first = sealed(TunnelMsg::Data(b"first"));
        let key = first.bytes()[..DELIVERY_KEY].to_vec();
        let s = Shortcut { from: Lane::Link(1), key: key.clone(), to: Exit::Tunnel(peer), head: vec![DATA] };
        reg.learn(s, |_| None, |_| Some((out.clone(), Some(far.clone()))));
        assert!(!routes.delivers(&key), "no body: the message is read whole, to be opened");
        assert!(routes.would_deliver(first.bytes()), "ordered: worth waiting for");
        assert!(matches!(routes.deliver_whole(first), Ok(Delivery::Data(Delivered { n: 5, done: true, .. }))));
        // On a sealed link, a large one is the loop's to open.
        routes.set_link_sealed(true);
        let large = sealed(TunnelMsg::Data(&[7; OPEN_IN_READER]));
        assert!(!routes.would_deliver(large.bytes()));
        let large = routes.deliver_whole(large).unwrap_err();
        routes.set_link_sealed(false);
        let n = OPEN_IN_READER;
        assert!(matches!(routes.deliver_whole(large), Ok(Delivery::Data(Delivered { n: m, .. })) if m == n));
        match routes.deliver_whole(sealed(TunnelMsg::Eof)) {
            Ok(Delivery::Opened { peer: p, packet }) => {
                assert_eq!((p, packet.bytes()), (peer, &TunnelMsg::Eof.encode()[..]));
            }
            other => panic!("Eof: {other:?}"),
        }
        let dg = sealed(TunnelMsg::Datagram { offset: 0, data: b"pkt" });
        assert!(!routes.would_deliver(dg.bytes()), "a datagram is not worth waiting for");
        assert!(routes.deliver_whole(dg).is_err(), "a datagram is the loop's");
        let second = sealed(TunnelMsg::Data(b"second"));
        let copy = second.bytes().to_vec();
        routes.pending.handing_over();
        let second = routes.deliver_whole(second).unwrap_err();
        assert_eq!(second.bytes(), &copy[..], "behind one in the loop: as it came");
        routes.pending.handled();
        assert!(matches!(routes.deliver_whole(second), Ok(Delivery::Data(Delivered { n: 6, .. }))));
        let mut forged = sealed(TunnelMsg::Data(b"third"));
        let at = forged.len() - 3;
        forged.bytes_mut()[at] ^= 1;
        let copy = forged.bytes().to_vec();
        let back = routes.deliver_whole(forged).unwrap_err();
        assert_eq!(back.bytes(), &copy[..], "one that does not open comes back as it was, for the loop to fail");
        drop((out, writer));
        let got = frames(r, 3);
        assert_eq!((got[0].bytes(), got[2].bytes()), (&b"first"[..], &b"second"[..]));
        assert_eq!(got[1].bytes(), &[7; OPEN_IN_READER][..]);
    }

    /// A link reader delivers the Data for the caller's end of a one-hop
    /// tunnel (`To(x, From(0, Data …`) to that end's program, counted for
    /// the caller's end; its Eof, and a relay's shortcut to the same port,
    /// go to the loop.
    #[test]
    fn a_link_reader_delivers_a_callers_data() {
        let (r, out, _writer) = output_on_pipe();
        let x = NodeId([9; 32]);
        let mut reg = Registry::new();
        let routes = reg.open_link(1);
        let msg = |m: &[u8]| headed(&[(Kind::To, x), (Kind::From, NodeId::TUNNEL)], m);
        let key = msg(b"\x02d").bytes()[..DELIVERY_KEY].to_vec();
        let s = Shortcut { from: Lane::Link(1), key: key.clone(), to: Exit::Port(7), head: vec![1, DATA] };
        let caller = |k: Key| (k == Key::Caller(7)).then(|| (out.clone(), None));
        reg.learn(s, |_| None, caller);
        assert!(routes.delivers(&key), "a large one's data may be spliced");
        let got = routes.deliver_whole(msg(b"\x02hello"));
        assert!(matches!(got, Ok(Delivery::Data(Delivered { key: Key::Caller(7), n: 5, done: true }))), "{got:?}");
        let mut buf = [0u8; 16];
        let n = nix::unistd::read(&r, &mut buf).unwrap();
        assert!(buf[..n].ends_with(b"hello"), "{:?}", &buf[..n]);
        assert!(routes.deliver_whole(msg(b"\x03")).is_err(), "Eof");
        assert!(routes.relay(msg(b"\x02d")).is_err(), "no relay was learnt");
        reg.forget_of(x);
        assert!(!routes.delivers(&key), "forgotten with the node it names");
    }

    /// A virtual neighbour's end voids the shortcuts that name it and its
    /// tunnel end's, and no other.
    #[test]
    fn forgetting_one_node_keeps_the_others_shortcuts() {
        let (_r, out, _writer) = output_on_pipe();
        let (e1, e2) = (NodeId([1; 32]), NodeId([2; 32]));
        let mut reg = Registry::new();
        let routes = reg.open_link(1);
        let key = |e: NodeId| headed(&[(Kind::From, e), (Kind::To, NodeId::TUNNEL)], &[DATA]).bytes().to_vec();
        for e in [e1, e2] {
            let s = Shortcut { from: Lane::Link(1), key: key(e), to: Exit::Tunnel(e), head: vec![DATA] };
            reg.learn(s, |_| None, |_| Some((out.clone(), None)));
            let s = Shortcut {
                from: Lane::Link(1),
                key: to(e.0[0], b"").bytes().to_vec(),
                to: Exit::Port(2),
                head: vec![9],
            };
            reg.learn(s, |p| (p == 2).then(|| out.clone()), |_| None);
        }
        let ends = [e1, e2].map(|e| {
            let end = reg.open_tunnel(Key::Instance(e), vec![DATA]);
            let s = Shortcut { from: Lane::Tunnel(e), key: vec![DATA], to: Exit::Port(2), head: vec![7, DATA] };
            reg.learn(s, |_| Some(out.clone()), |_| None);
            end
        });
        assert!(ends.iter().all(|e| e.knows_the_way()) && routes.delivers(&key(e1)) && routes.delivers(&key(e2)));
        assert!(routes.would_deliver(&key(e1)) && !routes.would_deliver(to(1, b"x").bytes()), "worth waiting for");
        reg.forget_of(e1);
        assert!(!routes.delivers(&key(e1)) && routes.delivers(&key(e2)));
        assert!(!routes.would_deliver(&key(e1)), "goes to the loop anyway");
        assert!(routes.would_deliver(&key(e2)));
        assert!(!ends[0].knows_the_way() && ends[1].knows_the_way());
        assert!(routes.relay(to(1, b"x")).is_err(), "a relay to e1");
        assert!(routes.relay(to(2, b"x")).is_ok(), "a relay to e2");
        reg.forget();
        assert!(!routes.delivers(&key(e2)) && !ends[1].knows_the_way());
    }

    /// An endpoint's end (a local caller's) voids its tunnel end's way out
    /// and the deliveries to it, which both name it, and no other caller's.
    #[test]
    fn forgetting_an_endpoint_keeps_the_other_callers_shortcuts() {
        let (_r, out, _writer) = output_on_pipe();
        let (e1, e2, far) = (NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]));
        let mut reg = Registry::new();
        let routes = reg.open_link(1);
        let data = |hs: &[(Kind, NodeId)]| headed(hs, &[DATA]).bytes().to_vec();
        // The caller's Data, as read, and as it leaves by the link.
        let read = data(&[(Kind::To, far), (Kind::To, NodeId::TUNNEL)]);
        let delivery = |e| data(&[(Kind::To, e), (Kind::From, NodeId::TUNNEL)]);
        let ends = [(e1, 11), (e2, 12)].map(|(e, port)| {
            let end = reg.open_tunnel(Key::Caller(port), read.clone());
            let head = data(&[(Kind::From, e), (Kind::To, NodeId::TUNNEL)]);
            let s = Shortcut { from: Lane::Endpoint(port), key: read.clone(), to: Exit::Port(1), head };
            reg.learn(s, |_| Some(out.clone()), |_| None);
            let s = Shortcut { from: Lane::Link(1), key: delivery(e), to: Exit::Port(port), head: vec![DATA] };
            reg.learn(s, |_| None, |_| Some((out.clone(), None)));
            end
        });
        assert!(ends.iter().all(|e| e.knows_the_way()));
        assert!(routes.delivers(&delivery(e1)) && routes.delivers(&delivery(e2)));
        reg.forget_of(e1);
        assert!(!ends[0].knows_the_way() && !routes.delivers(&delivery(e1)), "e1's are void");
        assert!(ends[1].knows_the_way() && routes.delivers(&delivery(e2)), "e2's stay");
    }
}
