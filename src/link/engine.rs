//! A robust link's threads: the reader, which finds frames in what it
//! reads and feeds their packets to the link's reliability state, and the
//! sender, which takes the link's queued messages and sends the packets
//! that the state says, when it says (pacing, acknowledgements, timers).
//!
//! ```text
//! read fd ──> reader: Robust::decode ─> lock(State).on_packet ─> Sink (messages)
//!                │ an acknowledgement due         │ wake, if the sender
//!                v (when the fd takes it at once) v has something to do
//! queue ─────> sender: lock(State).push/transmit/on_timeout ─> frames ─> write fd
//! ```
//!
//! The reader sends an acknowledgement that is due itself, if the write
//! fd takes its frame at once, rather than wake the sender for it: on a
//! link that carries bulk one way, the far end's sender would otherwise
//! wake for every other packet. It wakes the sender only where the sender
//! has work, or a timer earlier than the sender's next look.
//!
//! Until a link knows its peer it does not answer frames that do not
//! start the peer's stream: every link's first packet carries its Hello
//! at stream offset 0, so a link that hears only later packets is a
//! second child forked for the same caller (`socat udp-l,fork`), which
//! stays silent and ends quietly. A link that has heard nothing speaks
//! after [`LISTEN`], so that such a child hears first. Once a frame
//! starting the stream arrives, its sender's tag is the peer's, and
//! frames with any other tag are dropped.

use super::ethernet;
use super::layer::{Layer, Mac, Medium};
use super::output::Pending;
use super::packet;
use super::reliable::{Micros, Reliable};
use super::robust::{Found, Robust, MAX_ENCODED};
use super::secure::Secure;
use super::{lock, LinkError, Received, SharedOutput};
use crate::sys::channel::{Poke, Receiver, TryRecvError, Waited};
use crate::sys::fd::{hung_up, read_append, wait_ready, write_all, write_now, WakeFd};
use log::{debug, info};
use nix::poll::PollFlags;
use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a link that has heard nothing waits before it speaks.
pub const LISTEN: Duration = Duration::from_millis(100);
/// A link that has heard only another link's packets ends after this.
pub const STRAY_END: Duration = Duration::from_secs(3);
/// How long a link being closed goes on sending what is not acknowledged.
const DRAIN: Duration = Duration::from_secs(2);
/// The most frames written between two looks at the state.
const BURST: usize = 16;

/// What both threads share.
struct State {
    rel: Reliable,
    peer: Option<u32>,
    heard_stray: bool,
    /// The link has sent a packet: it is no second child, which never does.
    spoke: bool,
    peer_mac: Option<Mac>,
    strangers: u64,
    /// When the sender looks at the state next, if nothing wakes it.
    sender_looks: Micros,
}

struct Shared {
    state: Mutex<State>,
    /// Held by whichever thread writes frames to the write fd.
    writing: Mutex<()>,
    start: Instant,
    name: String,
}

impl Shared {
    fn now(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }
}

/// Counters of a robust link, for `r2 stats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Status {
    pub cwnd: u64,
    pub srtt_us: u64,
    pub packet_size: usize,
    pub lost: u64,
    pub retransmitted: u64,
}

/// A robust link's state, as `r2 stats` sees it.
#[derive(Clone)]
pub struct Watch(Arc<Shared>);

impl Watch {
    pub fn status(&self) -> Status {
        let st = lock(&self.0.state);
        Status {
            cwnd: st.rel.cwnd(),
            srtt_us: st.rel.srtt(),
            packet_size: st.rel.packet_size(),
            lost: st.rel.counts.packets_lost,
            retransmitted: st.rel.counts.retransmitted_bytes,
        }
    }
}

/// What the engine needs to run one link.
pub struct Engine {
    pub name: String,
    pub medium: Medium,
    pub tag: u32,
    /// Bytes already read (while telling the layer).
    pub input: Vec<u8>,
    pub counts: Arc<Received>,
}

/// Runs a robust link: starts its sender, tells `sink` the link is ready
/// (its output, whose queue is `queue`), and only then starts its reader,
/// so that no message arrives before the link is known.
pub fn run(
    e: Engine,
    rfd: OwnedFd,
    wfd: OwnedFd,
    (out, queue): (SharedOutput, Receiver<Pending>),
    sink: Arc<Secure>,
    wake: WakeFd,
) -> std::io::Result<()> {
    let start = Instant::now();
    let rel = Reliable::new(e.medium.sizes(), 0);
    let state =
        State { rel, peer: None, heard_stray: false, spoke: false, peer_mac: None, strangers: 0, sender_looks: 0 };
    let shared = Arc::new(Shared { state: Mutex::new(state), writing: Mutex::new(()), start, name: e.name.clone() });
    let wfd = Arc::new(wfd);
    let poke = queue.poke();
    let robust = Robust::new(e.tag);
    {
        let (shared, sink, wfd) = (shared.clone(), sink.clone(), wfd.clone());
        let medium = e.medium;
        super::spawn(format!("tx{}", e.name), move || sender(&shared, robust, medium, &wfd, queue, &sink))?;
    }
    sink.ready(out, Layer::Robust(e.medium), Some(Watch(shared.clone())));
    let packet_reads = keeps_records(&rfd);
    super::spawn(format!("rx{}", e.name), move || {
        let ends = Ends { rfd, wfd, sink, poke, wake };
        reader(&shared, robust, e.medium, packet_reads, &ends, e.input, &e.counts)
    })
}

/// Whether each read of `fd` is one write of its other end: a packet pipe
/// (O_DIRECT) or a `SOCK_SEQPACKET` socket.
fn keeps_records(fd: &OwnedFd) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::SockType};
    nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL).is_ok_and(|f| f & nix::libc::O_DIRECT != 0)
        || getsockopt(fd, SockType).is_ok_and(|t| t == nix::sys::socket::SockType::SeqPacket)
}

/// Puts a queued message into the state, in its class.
fn push(st: &mut State, p: Pending) {
    let unordered = p.best_effort;
    let Ok(p) = p.into_message() else { return };
    if unordered {
        st.rel.push_best_effort(p);
    } else {
        st.rel.push(p);
    }
}

/// What the reader reads, writes (acknowledgements), tells and wakes.
struct Ends {
    rfd: OwnedFd,
    wfd: Arc<OwnedFd>,
    sink: Arc<Secure>,
    /// Wakes the sender.
    poke: Poke,
    /// Stops the reader.
    wake: WakeFd,
}

fn reader(
    shared: &Shared,
    robust: Robust,
    medium: Medium,
    packet_reads: bool,
    ends: &Ends,
    mut buf: Vec<u8>,
    counts: &Received,
) {
    let Ends { rfd, sink, poke, wake, .. } = ends;
    let mut answer = Answer { direct: true, packet: Vec::new(), frame: Vec::new() };
    let mut delivered = Vec::new();
    let max = 2 * MAX_ENCODED;
    buf.reserve(max);
    // The source of this read's frame, where reads keep frames apart: a
    // read into an empty buffer from a packet pipe or a socket that keeps
    // records is one whole frame.
    let mut source = None;
    let mut heard = false;
    loop {
        let mut at = 0;
        while at < buf.len() {
            match robust.decode(&mut buf[at..]) {
                Found::Frame { used, tag, packet } => {
                    let range = at + packet.start..at + packet.end;
                    at += used;
                    if let Err(e) = take(shared, tag, &buf[range], source, &mut delivered) {
                        return sink.ended(Some(e));
                    }
                    heard = true;
                }
                Found::Skip(n) => at += n.max(1),
                Found::Partial => break,
            }
        }
        // What one read brought goes on together, and the sender looks
        // once whether to answer.
        for p in &delivered {
            counts.bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
            counts.frames.fetch_add(1, Ordering::Relaxed);
        }
        if !delivered.is_empty() && !sink.messages(&mut delivered) {
            return;
        }
        if std::mem::take(&mut heard) && answer.send(shared, robust, medium, &ends.wfd) {
            poke.poke();
        }
        // What is left after the last whole frame is joined to the next
        // read, even where reads keep datagrams apart: the peer's socat
        // may cut its byte stream anywhere (see r2(7), Robust frames).
        buf.drain(..at.min(buf.len()));
        let fresh = buf.is_empty();
        match wait_ready(rfd.as_fd(), PollFlags::POLLIN, Some(wake)) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => return sink.ended(Some(LinkError::Read(super::ReadError::Io(e)))),
        }
        let room = max - buf.len().min(max - 1);
        match read_append(rfd.as_fd(), &mut buf, room) {
            // An empty datagram, kept apart as a record of its own: not the end.
            Ok(Some(0)) if packet_reads && !hung_up(rfd.as_fd()) => {}
            Ok(Some(0)) => return sink.ended(None),
            Ok(_) => {}
            Err(e) => return sink.ended(Some(LinkError::Read(super::ReadError::Io(e)))),
        }
        source = match (medium, packet_reads && fresh) {
            (Medium::Ethernet(_), true) => ethernet::source(&buf),
            _ => None,
        };
    }
}

/// The reader's own acknowledgements.
struct Answer {
    /// Whether the write fd can be written without blocking
    /// (`write_now`); if not, the sender sends every acknowledgement.
    direct: bool,
    packet: Vec<u8>,
    frame: Vec<u8>,
}

impl Answer {
    /// Sends the acknowledgement that is due, if there is one and the
    /// write fd takes it at once; whether the sender must look at the
    /// state (it has work, or a timer earlier than its next look).
    fn send(&mut self, shared: &Shared, robust: Robust, medium: Medium, wfd: &OwnedFd) -> bool {
        // The sender writes, or will: it sends the acknowledgement too.
        let writing = if self.direct { shared.writing.try_lock().ok() } else { None };
        let mut st = lock(&shared.state);
        let now = shared.now();
        if let (Some(_writing), Some(_)) = (&writing, st.peer) {
            if st.rel.acknowledge(now, &mut self.packet) {
                frame(&robust, medium, st.peer_mac, &self.packet, &mut self.frame);
                // A frame of at most PIPE_BUF bytes goes into a pipe whole or
                // not at all. (One cut short by a socket is a frame lost: the
                // peer's framing finds the next.)
                let whole = self.frame.len() <= nix::libc::PIPE_BUF
                    && match write_now(wfd.as_fd(), &[IoSlice::new(&self.frame)]) {
                        Ok(n) => n == self.frame.len(),
                        Err(e) => {
                            debug!("link {}: the sender sends the acknowledgements ({e})", shared.name);
                            self.direct = false;
                            false
                        }
                    };
                if !whole {
                    st.rel.acknowledge_again(now);
                }
            }
        }
        st.peer.is_none() || st.rel.has_work() || st.rel.next_timeout().is_some_and(|t| t < st.sender_looks)
    }
}

/// Takes one packet from `tag`: locks onto the peer, or drops a
/// stranger's; messages that arrive go to `delivered`.
fn take(
    shared: &Shared,
    tag: u32,
    bytes: &[u8],
    source: Option<Mac>,
    delivered: &mut Vec<crate::wire::Packet>,
) -> Result<(), LinkError> {
    let mut st = lock(&shared.state);
    match st.peer {
        Some(p) if p != tag => {
            st.strangers += 1;
            return Ok(());
        }
        Some(_) => {}
        None if packet::starts_stream(bytes) => {
            debug!("link {}: the peer's tag is {tag:08x}", shared.name);
            st.peer = Some(tag);
        }
        // A frame that does not start a stream, before any that does, but
        // acknowledges this end's start: the peer's, whose own start was
        // lost (it comes again, and the rest waits for it).
        None if st.rel.acknowledges_start(bytes) => {
            debug!("link {}: the peer's tag is {tag:08x} (it has this end's Hello)", shared.name);
            st.peer = Some(tag);
        }
        // Otherwise: the peer's first was lost (this link has spoken: it
        // waits for the peer to send its start again), or it went to
        // another child.
        None if st.spoke => return Ok(()),
        None => {
            if !st.heard_stray {
                debug!("link {}: a frame from {tag:08x} that does not start a stream: not this link's", shared.name);
            }
            st.heard_stray = true;
            return Ok(());
        }
    }
    if source.is_some() && st.peer_mac != source {
        st.peer_mac = source;
    }
    let now = shared.now();
    st.rel.on_packet(now, bytes).map_err(|e| LinkError::Broken(e.0))?;
    while let Some(p) = st.rel.deliver() {
        delivered.push(p);
    }
    Ok(())
}

/// Writes the frame of `packet` to `out`, in the medium's form.
fn frame(robust: &Robust, medium: Medium, peer_mac: Option<Mac>, packet: &[u8], out: &mut Vec<u8>) {
    out.clear();
    if let Medium::Ethernet(own) = medium {
        let src = own.unwrap_or_else(|| ethernet::stand_in(robust.own()));
        ethernet::header(&peer_mac.unwrap_or(ethernet::BROADCAST), &src, out);
    }
    robust.encode(packet, out);
    if let Medium::Ethernet(_) = medium {
        ethernet::pad(out);
    }
}

fn sender(shared: &Shared, robust: Robust, medium: Medium, wfd: &OwnedFd, queue: Receiver<Pending>, sink: &Secure) {
    let listen_until = shared.start + LISTEN;
    let mut queue_open = true;
    let mut drain_until = None;
    let mut packet = Vec::new();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut st = lock(&shared.state);
        while queue_open {
            match queue.try_recv() {
                Ok(p) => push(&mut st, p),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    queue_open = false;
                    drain_until = Some(Instant::now() + DRAIN);
                }
            }
        }
        let now = shared.now();
        if st.rel.next_timeout().is_some_and(|t| t <= now) {
            st.rel.on_timeout(now);
        }
        let speak = st.peer.is_some() || (!st.heard_stray && Instant::now() >= listen_until);
        if speak {
            while frames.len() < BURST && st.rel.transmit(now, &mut packet) {
                st.spoke = true;
                let mut f = spare.pop().unwrap_or_default();
                frame(&robust, medium, st.peer_mac, &packet, &mut f);
                frames.push(f);
            }
        }
        if st.peer.is_none() && st.heard_stray && shared.start.elapsed() >= STRAY_END {
            drop(st);
            return sink.ended(Some(LinkError::Stray));
        }
        if !queue_open {
            let done = !st.rel.has_work() && st.rel.in_flight() == 0;
            if done || drain_until.is_some_and(|d| Instant::now() >= d) {
                return;
            }
        }
        // How long to wait before looking again, if nothing wakes this.
        let wait = if !frames.is_empty() {
            Duration::ZERO
        } else {
            let mut at: Option<Micros> = st.rel.next_timeout();
            if speak && st.rel.has_work() {
                if let Some(d) = st.rel.pacing_delay(now) {
                    at = Some(at.map_or(now + d, |a| a.min(now + d)));
                }
            }
            let mut wait = at.map_or(Duration::from_millis(500), |a| Duration::from_micros(a.saturating_sub(now)));
            if !speak {
                wait = wait.min(listen_until.saturating_duration_since(Instant::now()).max(Duration::from_millis(10)));
            }
            if st.heard_stray && st.peer.is_none() {
                wait = wait.min(Duration::from_millis(100));
            }
            wait.min(Duration::from_millis(500))
        };
        st.sender_looks = now + wait.as_micros() as Micros;
        drop(st);
        if !frames.is_empty() {
            let _writing = lock(&shared.writing);
            for f in frames.drain(..) {
                if let Err(e) = write_all(wfd.as_fd(), &mut [IoSlice::new(&f)]) {
                    info!("link {}: write error: {e}", shared.name);
                    return sink.ended(Some(LinkError::Write(e)));
                }
                spare.push(f);
            }
        }
        if wait.is_zero() {
            continue;
        }
        if !queue_open {
            queue.sleep(wait);
            continue;
        }
        match queue.wait_timeout(wait) {
            Waited::Message(p) => push(&mut lock(&shared.state), p),
            Waited::Disconnected => {
                queue_open = false;
                drain_until = Some(Instant::now() + DRAIN);
            }
            Waited::Poked | Waited::TimedOut => {}
        }
    }
}
