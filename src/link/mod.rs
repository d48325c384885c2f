//! The link layer: everything that turns a link's fds into a sequence of
//! messages and back.
//!
//! ```text
//!            ┌──────── Link ─────────────────────────────┐
//! read fd ──>│ reader thread: FrameReader(framing) ──────┼──> Sink (messages, end)
//! write fd <─│ writer thread <── Output(framing) <───────┼─── send(message)
//!            └───────────────────────────────────────────┘
//! ```
//!
//! A [`Framing`] is the sans-IO codec ([`framing`]): [`stream`] is the
//! length-prefixed framing of reliable byte streams, [`raw`] a tunnel
//! program's pipe, [`robust`] the checked, self-delimiting frames that
//! lossy transports will need (no [`Layer`] chooses it until a reliability
//! layer sits above it). The reader thread drives the framing over the read fd
//! ([`reader`]) and hands each message to the link's [`Sink`]; senders put
//! messages on the link's [`Output`] ([`output`]), which writes them itself
//! while the fd takes them at once, and leaves the rest to the writer
//! thread. Batching, direct reads into packets and splicing are the link's
//! business; the loop and the router see messages only.
//!
//! A new framing is one new file that implements [`Framing`], and the line
//! in [`Layer::framing`] that chooses it.

pub mod framing;
pub mod fuzz;
pub mod output;
pub mod raw;
pub mod packet;
pub mod reader;
pub mod reliable;
pub mod robust;
pub mod stream;

pub use framing::Framing;
pub use output::{Output, Sent};
pub use reader::ReadError;

use crate::sys::fd::{wake_pair, Waker};
use crate::sys::splice::{Body, Pipes};
use crate::wire::control::Traffic;
use crate::wire::Packet;
use reader::{FrameReader, Splicing};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// The framings a link may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Length-prefixed frames on a reliable byte stream.
    Stream,
}

impl Layer {
    /// The framing of this layer.
    pub fn framing(self) -> Arc<dyn Framing> {
        match self {
            Layer::Stream => Arc::new(stream::Stream),
        }
    }
}

/// Why a link ended other than at end-of-file.
#[derive(Debug)]
pub enum LinkError {
    Read(ReadError),
    Write(std::io::Error),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Read(e) => write!(f, "{e}"),
            LinkError::Write(e) => write!(f, "write error: {e}"),
        }
    }
}

/// Where a link hands what it reads. Called from the link's threads.
pub trait Sink: Send + Sync + 'static {
    /// A message arrived. False: stop reading.
    fn message(&self, p: Packet) -> bool;

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

/// Locks a mutex; a thread that panicked holding it left nothing half done
/// that matters here, so its poison is ignored.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running link: its output, its counters, and its threads' waker.
/// Dropping it stops the reader; the writer flushes what is queued and
/// closes once the output is dropped too.
pub struct Link {
    pub output: SharedOutput,
    received: Arc<Received>,
    _waker: Waker,
}

#[derive(Default)]
struct Received {
    bytes: AtomicU64,
    frames: AtomicU64,
}

impl Link {
    /// What the reader has read: frames, and their bytes in the framing.
    pub fn received(&self) -> Traffic {
        let r = &self.received;
        Traffic { bytes: r.bytes.load(Ordering::Relaxed), frames: r.frames.load(Ordering::Relaxed) }
    }

    /// What was sent.
    pub fn sent(&self) -> Traffic {
        lock(&self.output).sent
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

/// Starts a link named `name` that reads `rfd` and writes `wfd` in
/// `layer`'s framing, handing what it reads to `sink`.
pub fn start(name: &str, rfd: OwnedFd, wfd: OwnedFd, layer: Layer, sink: Arc<dyn Sink>) -> std::io::Result<Link> {
    let framing = layer.framing();
    let (waker, wake) = wake_pair()?;
    let (out, writer) = output::output(wfd, framing.clone());
    let received = Arc::new(Received::default());
    let header = framing.header(0).map_or(0, |h| h.bytes().len()) as u64;
    {
        let sink = sink.clone();
        let max = if framing.joins_writes() { BATCH } else { 1 };
        spawn(format!("wr{name}"), move || {
            let mut batch = Vec::with_capacity(max);
            while writer.next(&mut batch, max) {
                if let Err(e) = writer.write(&mut batch) {
                    return sink.ended(Some(LinkError::Write(e)));
                }
                output::Writer::recycle(&mut batch);
            }
            writer.finish();
        })?;
    }
    let counts = received.clone();
    spawn(format!("rd{name}"), move || {
        let mut r = FrameReader::new(rfd, framing, Some(wake));
        if let Some(key_len) = sink.body_key() {
            let s = sink.clone();
            let want = Box::new(move |key: &[u8]| s.wants_body(key));
            r = r.splicing(Splicing { key_len, want, pipes: Pipes::new(PIPES) });
        }
        loop {
            let go_on = match (r.next_packet(), r.take_body()) {
                (Ok(Some(p)), body) => {
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
                (Err(e), _) => {
                    sink.ended(Some(LinkError::Read(e)));
                    false
                }
            };
            if !go_on {
                return;
            }
        }
    })?;
    Ok(Link { output: Arc::new(Mutex::new(out)), received, _waker: waker })
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
