//! The link layer: everything that turns a link's fds into a sequence of
//! messages and back.
//!
//! ```text
//!            ┌──────── Link ─────────────────────────────────────┐
//! read fd ──>│ reader: the layer's first bytes, then              │
//!            │   stream: FrameReader(framing) ────────────────────┼──> Sink (messages, end)
//!            │   robust: engine (frames, reliability) ────────────┼──>
//! write fd <─│ writer / engine sender <── Output <────────────────┼─── send(message)
//!            └───────────────────────────────────────────────────┘
//! ```
//!
//! A link speaks one of two layers ([`layer`]). The stream layer is a
//! [`Framing`] ([`framing`]), [`stream`]'s length prefix, on a reliable
//! byte stream; the reader thread drives it over the read fd ([`reader`])
//! and senders put messages on the link's [`Output`] ([`output`]), which
//! writes them itself while the fd takes them at once, and leaves the rest
//! to the writer thread. The robust layer, for everything else, is the
//! [`robust`] framing (in its [`ethernet`] form on raw interfaces)
//! carrying [`packet`]s, made reliable by [`reliable`]'s state machine (its
//! sets of ranges in [`ranges`])
//! and run by the [`engine`]'s threads. A link told to adapt reads the
//! peer's first bytes to choose. Batching, direct reads into packets and
//! splicing are the link's business; the loop and the router see
//! messages only. [`raw`] is a tunnel program's pipe.

pub mod engine;
pub mod ethernet;
pub mod framing;
pub mod fuzz;
pub mod handshake;
pub mod layer;
pub mod output;
pub mod packet;
pub mod ranges;
pub mod raw;
pub mod reader;
pub mod reliable;
pub mod robust;
pub mod secure;
pub mod stream;

pub use framing::Framing;
pub use layer::{Layer, Medium};
pub use output::{Output, Sent};
pub use reader::ReadError;

use crate::key::KeyPair;
use crate::sys::fd::{read_append, wait_ready_until, wake_pair, WakeFd, Waker};
use crate::sys::splice::{Body, Pipes};
use crate::wire::control::Traffic;
use crate::wire::{NodeId, Packet};
use nix::poll::PollFlags;
use reader::{FrameReader, Splicing};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

/// Why a link ended other than at end-of-file.
#[derive(Debug)]
pub enum LinkError {
    Read(ReadError),
    Write(std::io::Error),
    /// The peer's packets passed the checksum but do not decode.
    Broken(String),
    /// The link heard only packets meant for another link (a second child
    /// forked for one caller), and never its own peer.
    Stray,
    /// The two ends speak different layers.
    Mismatch(String),
    /// The handshake failed, or the peer refused the link.
    Refused(String),
    /// A message failed authentication.
    Forged(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Read(e) => write!(f, "{e}"),
            LinkError::Write(e) => write!(f, "write error: {e}"),
            LinkError::Broken(e) => write!(f, "{e}"),
            LinkError::Stray => write!(f, "heard only another link's frames"),
            LinkError::Mismatch(e) => f.write_str(e),
            LinkError::Refused(e) => f.write_str(e),
            LinkError::Forged(e) => write!(f, "{e}: the link is closed"),
        }
    }
}

/// Who a link's handshake proved the neighbour to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The key it proved it holds: its node id.
    pub id: NodeId,
    /// Messages are sealed (false: both ends asked for plaintext).
    pub sealed: bool,
}

/// Where a link hands what it reads. Called from the link's threads.
pub trait Sink: Send + Sync + 'static {
    /// The link's handshake is done and it may be sent on: its output, its
    /// layer, and the neighbour it proved (None: a local endpoint's link,
    /// which has no handshake). Called once, before any message.
    fn ready(&self, output: SharedOutput, layer: Layer, watch: Option<engine::Watch>, peer: Option<Peer>);

    /// A message arrived. False: stop reading.
    fn message(&self, p: Packet) -> bool;

    /// Messages arrived together (one read's), in this order; `ps` is left
    /// empty. False: stop reading.
    fn messages(&self, ps: &mut Vec<Packet>) -> bool {
        ps.drain(..).all(|p| self.message(p))
    }

    /// How many first bytes of a large message the reader shows
    /// [`Sink::wants_body`]; None: it never splices.
    fn body_key(&self) -> Option<usize> {
        None
    }

    /// Whether the rest of a large message that starts with `key` should
    /// come as a [`Body`], unread.
    fn wants_body(&self, _key: &[u8]) -> bool {
        false
    }

    /// A large message: its first bytes, and a body with the rest. False:
    /// stop reading.
    fn message_with_body(&self, p: Packet, body: Body) -> bool {
        match body.complete(p) {
            Ok(p) => self.message(p),
            Err(e) => {
                self.ended(Some(LinkError::Read(ReadError::Io(e))));
                false
            }
        }
    }

    /// The link has ended: at end-of-file (None) or with an error. Called
    /// once by the reader, and by the writer if a write fails.
    fn ended(&self, error: Option<LinkError>);
}

/// An output that senders share: the loop, and readers by shortcut.
pub type SharedOutput = Arc<Mutex<Output>>;

pub use crate::sys::lock;

/// A running link: its counters, and its threads' waker. Its output
/// goes to the sink once the layer is known. Dropping it stops the
/// reader; the writer flushes what is queued and closes once the output
/// is dropped too.
pub struct Link {
    received: Arc<Received>,
    _waker: Waker,
}

/// What a link's reader has read.
#[derive(Default)]
pub struct Received {
    bytes: AtomicU64,
    frames: AtomicU64,
}

impl Link {
    /// What the reader has read: frames, and their bytes in the framing.
    pub fn received(&self) -> Traffic {
        let r = &self.received;
        Traffic { bytes: r.bytes.load(Ordering::Relaxed), frames: r.frames.load(Ordering::Relaxed) }
    }
}

/// Stack size of a link's threads: their buffers live on the heap.
const STACK: usize = 128 * 1024;

/// The most frames one `writev` carries, where writes may join.
const BATCH: usize = 64;

/// The pipes a link's reader keeps for the bodies it splices.
const PIPES: usize = 32;

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    thread::Builder::new().name(name).stack_size(STACK).spawn(f).map(|_| ())
}

/// How a link proves its end: the node's key, and whether this end asks
/// for a plaintext link.
pub struct Credentials {
    pub key: KeyPair,
    pub plaintext: bool,
}

/// Starts a link named `name` that reads `rfd` and writes `wfd` in
/// `layer` (robust frames tagged `tag`), proving `own` in its handshake
/// (None: a local endpoint's link, with none) and handing what it reads
/// to `sink`.
pub fn start(
    name: &str,
    (rfd, wfd): (OwnedFd, OwnedFd),
    layer: Layer,
    tag: u32,
    own: Option<Credentials>,
    sink: Arc<dyn Sink>,
) -> std::io::Result<Link> {
    let sink = Arc::new(match own {
        Some(c) => secure::Secure::new(sink, c.key, c.plaintext)?,
        None => secure::Secure::local(sink),
    });
    let (waker, wake) = wake_pair()?;
    let received = Arc::new(Received::default());
    let counts = received.clone();
    let name = name.to_string();
    spawn(format!("rd{name}"), move || {
        let (layer, input) = match layer {
            Layer::Adapt => match first_bytes(&rfd, &wake) {
                Ok(Some(heard)) => heard,
                Ok(None) => return,
                Err(e) => return sink.ended(e),
            },
            l => (l, Vec::new()),
        };
        match layer {
            Layer::Robust(medium) => {
                let (out, queue) = output::queue_only();
                let e = engine::Engine { name: name.clone(), medium, tag, input, counts };
                if let Err(e) = engine::run(e, rfd, wfd, (Arc::new(Mutex::new(out)), queue), sink.clone(), wake) {
                    sink.ended(Some(LinkError::Write(e)));
                }
            }
            _ => stream_link(&name, rfd, wfd, input, sink, &counts, wake),
        }
    })?;
    Ok(Link { received, _waker: waker })
}

/// Reads until the peer's first bytes tell its layer; robust if it says
/// nothing for [`layer::ADAPT_WAIT`]. Ok(None): woken; Err: the link
/// ended before.
fn first_bytes(rfd: &OwnedFd, wake: &WakeFd) -> Result<Option<(Layer, Vec<u8>)>, Option<LinkError>> {
    let deadline = Instant::now() + layer::ADAPT_WAIT;
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        match wait_ready_until(rfd.as_fd(), PollFlags::POLLIN, Some(wake), Some(deadline)) {
            Ok(Some(true)) => {}
            Ok(Some(false)) => return Ok(None),
            Ok(None) => return Ok(Some((Layer::Robust(Medium::Bytes), buf))),
            Err(e) => return Err(Some(LinkError::Read(ReadError::Io(e)))),
        }
        let room = 64 * 1024 - buf.len();
        match read_append(rfd.as_fd(), &mut buf, room) {
            Ok(Some(0)) => return Err(None),
            Ok(_) => {}
            Err(e) => return Err(Some(LinkError::Read(ReadError::Io(e)))),
        }
        if let Some(l) = Layer::heard(&buf).or_else(|| (buf.len() >= 64 * 1024).then_some(Layer::Robust(Medium::Bytes)))
        {
            return Ok(Some((l, buf)));
        }
    }
}

/// Runs a stream link: its writer thread, and its reader on this thread.
fn stream_link(
    name: &str,
    rfd: OwnedFd,
    wfd: OwnedFd,
    input: Vec<u8>,
    sink: Arc<secure::Secure>,
    counts: &Received,
    wake: WakeFd,
) {
    let framing: Arc<dyn Framing> = Arc::new(stream::Stream);
    let (out, writer) = output::output(wfd, framing.clone());
    let header = framing.header(0).map_or(0, |h| h.bytes().len()) as u64;
    {
        let done = sink.clone();
        let sink = sink.clone();
        let max = if framing.joins_writes() { BATCH } else { 1 };
        let spawned = spawn(format!("wr{name}"), move || {
            let mut batch = Vec::with_capacity(max);
            while writer.next(&mut batch, max) {
                if let Err(e) = writer.write(&mut batch) {
                    return sink.ended(Some(LinkError::Write(e)));
                }
                output::Writer::recycle(&mut batch);
            }
            writer.finish();
        });
        if let Err(e) = spawned {
            return done.ended(Some(LinkError::Write(e)));
        }
    }
    sink.ready(Arc::new(Mutex::new(out)), Layer::Stream, None);
    let mut first = true;
    let mut r = FrameReader::new(rfd, framing, Some(wake)).with_input(&input);
    if let Some(key_len) = sink.body_key() {
        let s = sink.clone();
        let want = Box::new(move |key: &[u8]| s.wants_body(key));
        r = r.splicing(Splicing { key_len, want, pipes: Pipes::new(PIPES) });
    }
    loop {
        let go_on = match (r.next_packet(), r.take_body()) {
            (Ok(Some(p)), body) => {
                first = false;
                let len = p.len() + body.as_ref().map_or(0, Body::len);
                counts.bytes.fetch_add(len as u64 + header, Ordering::Relaxed);
                counts.frames.fetch_add(1, Ordering::Relaxed);
                match body {
                    Some(b) => sink.message_with_body(p, b),
                    None => sink.message(p),
                }
            }
            (Ok(None), _) => {
                sink.ended(None);
                false
            }
            (Err(ReadError::Woken), _) => false,
            // Not even a first frame: say what the peer may be speaking.
            (Err(ReadError::Framing(e)), _) if first => {
                let why = format!(
                    "malformed first frame ({e}): the neighbour does not speak the stream layer \
                     (the robust one, perhaps: give both ends the same --layer)"
                );
                sink.ended(Some(LinkError::Mismatch(why)));
                false
            }
            (Err(e), _) => {
                sink.ended(Some(LinkError::Read(e)));
                false
            }
        };
        if !go_on {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::framing::{Decoded, Framing, FramingError, Header};
    use super::reader::FrameReader;
    use crate::sys::fd::write_all;
    use crate::wire::message::Kind;
    use crate::wire::{NodeId, Packet};
    use std::io::IoSlice;
    use std::os::fd::AsFd;
    use std::sync::Arc;

    /// A framing that transforms the bytes (SLIP-like byte stuffing: a
    /// frame ends in 0, and 0 and 1 inside are escaped) slots in as one
    /// value: messages sent on an output in it arrive through a reader in
    /// it, whole and in order, with noise between frames skipped, though
    /// it has no header and rewrites its input in place.
    #[test]
    fn a_framing_that_transforms_the_bytes_slots_in() {
        #[derive(Debug)]
        struct Stuffed;
        impl Framing for Stuffed {
            fn name(&self) -> &'static str {
                "stuffed"
            }
            fn decode(&self, input: &mut [u8]) -> Result<Decoded, FramingError> {
                let Some(end) = input.iter().position(|&b| b == 0) else { return Ok(Decoded::Partial(None)) };
                let (mut w, mut r) = (0, 0);
                while r < end {
                    let b = match input[r] {
                        1 if r + 1 < end => {
                            r += 1;
                            input[r] - 1
                        }
                        1 => return Ok(Decoded::Skip(end + 1)),
                        b => b,
                    };
                    input[w] = b;
                    (w, r) = (w + 1, r + 1);
                }
                // A frame too short for a message is noise.
                if w < crate::wire::message::HEADER {
                    return Ok(Decoded::Skip(end + 1));
                }
                Ok(Decoded::Message { used: end + 1, msg: 0..w })
            }
            fn header(&self, _len: usize) -> Option<Header> {
                None
            }
            fn encode(&self, msg: &[u8], out: &mut Vec<u8>) {
                for &b in msg {
                    match b {
                        0 | 1 => out.extend_from_slice(&[1, b + 1]),
                        b => out.push(b),
                    }
                }
                out.push(0);
            }
            fn joins_writes(&self) -> bool {
                true
            }
        }
        let framing: Arc<dyn Framing> = Arc::new(Stuffed);
        let ps: Vec<Packet> = (0..200u32)
            .map(|i| {
                Packet::new(Kind::To, NodeId([(i % 3) as u8; 32]), &vec![(i % 4) as u8; (i * 331 % 70_000) as usize])
            })
            .collect();
        let (r, w) = nix::unistd::pipe().unwrap();
        let (noise_w, w) = (w.try_clone().unwrap(), w);
        let (mut out, writer) = crate::link::output::output(w, framing.clone());
        assert!(!out.splices(), "a framing that transforms bytes takes no bodies");
        let sent = ps.clone();
        let t = std::thread::spawn(move || {
            let mut batch = Vec::new();
            let w = std::thread::spawn(move || {
                while writer.next(&mut batch, 8) {
                    writer.write(&mut batch).unwrap();
                    crate::link::output::Writer::recycle(&mut batch);
                }
            });
            for (i, p) in sent.into_iter().enumerate() {
                out.send(p);
                if i == 0 {
                    // Noise before anything is queued: a stray 0, a short frame.
                    write_all(noise_w.as_fd(), &mut [IoSlice::new(&[0, 7, 7, 0])]).unwrap();
                }
            }
            drop((out, noise_w));
            w.join().unwrap();
        });
        let mut fr = FrameReader::new(r, framing, None);
        let mut got = Vec::new();
        while let Some(p) = fr.next_packet().unwrap() {
            got.push(p);
        }
        t.join().unwrap();
        assert_eq!(got, ps);
    }
}
