//! Where a link's or a tunnel program's messages go out, in its framing.
//!
//! Whoever sends (the loop, or a reader by a shortcut, under the output's
//! lock) writes straight to the fd while nothing is queued and the fd
//! takes the bytes without blocking; the rest, in order, goes to a writer
//! thread that may block. So a flowing stream costs no thread hand-over,
//! and a stalled one never stops a sender. `queued` counts what the writer
//! has not finished, and a sender writes directly only when it is zero, so
//! bytes never overtake each other.
//!
//! Once a link's handshake gives it a key, every message is sealed
//! (`noise::seal`) here, under the output's lock, so the counters go out
//! in the order of the bytes.
//!
//! A message's data may be held in a pipe (a [`Body`]) instead of its
//! packet: it follows the packet's bytes, moved by splice(2). Only outputs
//! on pipes, which a splice can write without blocking, in a framing that
//! writes messages unchanged, and not sealed, take such messages
//! ([`Output::splices`]).

use super::framing::{Framing, Header};
use crate::noise::seal::Sealer;
use crate::sys::buffers;
use crate::sys::channel::{unbounded, Receiver, Sender};
use crate::sys::fd::{write_all, write_nonblocking, write_now};
use crate::sys::splice::Body;
use crate::wire::control::Traffic;
use crate::wire::{tunnel, Packet};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A message waiting for the writer, of which `done` bytes (counting its
/// frame's header) are already written; its data may follow in a body
/// (what is left of it).
pub struct Pending {
    pub packet: Packet,
    /// A packet-mode tunnel's datagram, which a robust link may drop.
    pub best_effort: bool,
    header: Header,
    body: Option<Body>,
    /// The message's length: its packet's and its body's.
    len: usize,
    done: usize,
}

impl Pending {
    /// The message's length, however much of it is written.
    pub fn message_len(&self) -> usize {
        self.len
    }

    /// The message whole, its body read back into it.
    pub fn into_message(self) -> io::Result<Packet> {
        match self.body {
            Some(b) => b.complete(self.packet),
            None => Ok(self.packet),
        }
    }
}

/// How [`Output::send`] dealt with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Written out whole, now.
    Written,
    /// Left to the writer thread.
    Queued,
    /// Dropped: the writer thread is gone (its fd failed).
    Discarded,
}

/// The loop's side of an output.
pub struct Output {
    /// None: the output only queues (a robust link's engine takes what
    /// is queued).
    fd: Option<Arc<OwnedFd>>,
    queue: Sender<Pending>,
    queued: Arc<AtomicUsize>,
    /// The fd can be written without blocking (pwritev2 `RWF_NOWAIT`).
    direct: bool,
    /// Where the fd is a pipe: a non-blocking open file description of
    /// its own for it, which the loop writes and splices bodies to.
    pipe: Option<OwnedFd>,
    framing: Arc<dyn Framing>,
    /// Bodies may be spliced here ([`Output::splices`]), decided once.
    splices: bool,
    /// What was sent, counting frames' headers.
    pub sent: Traffic,
    /// The link's sealing key, once its handshake has one: every message
    /// from then on is sealed, in the order sent.
    seal: Option<Sealer>,
}

/// The writer thread's side.
pub struct Writer {
    fd: Arc<OwnedFd>,
    queue: Receiver<Pending>,
    queued: Arc<AtomicUsize>,
}

/// An output on `fd`, each message framed by `framing`.
pub fn output(fd: OwnedFd, framing: Arc<dyn Framing>) -> (Output, Writer) {
    let fd = Arc::new(fd);
    let queued = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = unbounded();
    let pipe = reopen_pipe(fd.as_fd());
    let splices = pipe.is_some() && framing.joins_writes() && framing.header(0).is_some();
    let out = Output {
        fd: Some(fd.clone()),
        queue: tx,
        queued: queued.clone(),
        direct: true,
        pipe,
        splices,
        sent: Traffic::default(),
        framing: framing.clone(),
        seal: None,
    };
    (out, Writer { fd, queue: rx, queued })
}

/// An output that only queues, unframed: a robust link's engine takes
/// its messages, in order, from the receiver.
pub fn queue_only() -> (Output, Receiver<Pending>) {
    let (tx, rx) = unbounded();
    let out = Output {
        fd: None,
        queue: tx,
        queued: Arc::new(AtomicUsize::new(0)),
        direct: false,
        pipe: None,
        splices: false,
        sent: Traffic::default(),
        framing: Arc::new(super::raw::Raw { packets: false }),
        seal: None,
    };
    (out, rx)
}

/// A non-blocking open file description of its own for the pipe `fd`, if
/// it is one and not a packet pipe (opened through /proc). A pipe once spliced to refuses
/// `RWF_NOWAIT` writes (since Linux 6.7), so the loop writes a pipe that
/// may get bodies through this, without changing the shared fd's flags.
fn reopen_pipe(fd: BorrowedFd<'_>) -> Option<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let st = nix::sys::stat::fstat(fd).ok()?;
    if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFIFO {
        return None;
    }
    // A packet pipe keeps each write a record: no bodies there, and
    // writes go through the fd itself, whose O_DIRECT makes it one.
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).ok()?;
    if flags & nix::libc::O_DIRECT != 0 {
        return None;
    }
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    Some(f.into())
}

/// The iovecs of a frame's header and packet bytes from byte `done` on.
fn slices<'a>(header: &'a Header, p: &'a Packet, done: usize) -> [IoSlice<'a>; 2] {
    let h = header.bytes();
    let done = done.min(h.len() + p.len());
    let (head, body): (&[u8], &[u8]) = match done.checked_sub(h.len()) {
        None => (&h[done..], p.bytes()),
        Some(d) => (&[], &p.bytes()[d..]),
    };
    [IoSlice::new(head), IoSlice::new(body)]
}

impl Output {
    /// Writes `packet` now if it can, else queues what is left of it.
    pub fn send(&mut self, packet: Packet) -> Sent {
        self.send_with(packet, None)
    }

    /// Whether messages with a [`Body`] may be sent here: the fd is a
    /// pipe, and the framing writes a message's bytes unchanged, in as
    /// many writes as it takes.
    pub fn splices(&self) -> bool {
        self.splices && self.seal.is_none()
    }

    /// Seals every message sent from now on with `sealer`.
    pub fn seal_with(&mut self, sealer: Sealer) {
        self.seal = Some(sealer);
    }

    /// Writes `packet`, followed by `body`, now if it can, else queues
    /// what is left of them.
    pub fn send_with(&mut self, packet: Packet, body: Option<Body>) -> Sent {
        // Only a robust link's engine (which queues all) and the sealer
        // need the class: a plain stream's messages are not looked at.
        let best_effort = (self.fd.is_none() || self.seal.is_some()) && tunnel::best_effort(packet.bytes());
        let (packet, body) = match &mut self.seal {
            None => (packet, body),
            Some(sealer) => {
                let whole = match body {
                    Some(b) => b.complete(packet),
                    None => Ok(packet),
                };
                let Ok(mut whole) = whole else { return Sent::Discarded };
                sealer.seal(&mut whole, best_effort);
                (whole, None)
            }
        };
        let len = packet.len() + body.as_ref().map_or(0, Body::len);
        let (header, packet, mut body) = match self.framing.header(len) {
            Some(h) => (h, packet, body),
            // A framing that transforms the bytes encodes the message whole.
            None => {
                let whole = match body {
                    Some(b) => b.complete(packet),
                    None => Ok(packet),
                };
                let Ok(whole) = whole else { return Sent::Discarded };
                let mut framed = Vec::with_capacity(whole.len() + super::framing::MAX_HEADER);
                self.framing.encode(whole.bytes(), &mut framed);
                (Header::default(), Packet::from_parts(framed, 0), None)
            }
        };
        let head = header.bytes().len() + packet.len();
        let total = head + body.as_ref().map_or(0, Body::len);
        self.sent.add(total);
        let mut done = 0;
        if self.direct && self.queued.load(Ordering::Acquire) == 0 && (body.is_none() || self.splices) {
            let iov = slices(&header, &packet, 0);
            let written = match (&self.pipe, &self.fd) {
                _ if head == 0 => Ok(0),
                (Some(nb), _) => write_nonblocking(nb.as_fd(), &iov),
                (None, Some(fd)) => write_now(fd.as_fd(), &iov),
                (None, None) => Ok(0),
            };
            match written {
                Ok(n) => done = n,
                Err(e) if e.kind() == io::ErrorKind::Unsupported => self.direct = false,
                // The writer meets the error again and reports it.
                Err(_) => {}
            }
            if let (true, Some(b), Some(nb)) = (done == head, &mut body, &self.pipe) {
                done += b.write_now(nb.as_fd()).unwrap_or(0);
            }
            if done == total {
                buffers::recycle(packet);
                return Sent::Written;
            }
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.queue.send(Pending { packet, best_effort, header, body, len, done }).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Sent::Discarded;
        }
        Sent::Queued
    }
}

impl Writer {
    /// Waits for what is queued, at most `max` messages (1 where the
    /// framing's writes may not join); false once the [`Output`] is
    /// dropped and all is taken.
    pub fn next(&self, batch: &mut Vec<Pending>, max: usize) -> bool {
        let Ok(first) = self.queue.recv() else { return false };
        batch.push(first);
        while batch.len() < max {
            match self.queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        true
    }

    /// Writes `batch` out, blocking as long as it takes, with one `writev`
    /// for the bytes of the packets up to each body (spliced after them);
    /// then lets the loop write directly again. The caller recycles the
    /// batch (`recycle`).
    pub fn write(&self, batch: &mut [Pending]) -> io::Result<()> {
        let mut start = 0;
        while start < batch.len() {
            // The packets up to and including the next one with a body.
            let end = batch[start..].iter().position(|p| p.body.is_some()).map_or(batch.len(), |i| start + i + 1);
            let mut iov = Vec::with_capacity((end - start) * 2);
            for p in &batch[start..end] {
                iov.extend(slices(&p.header, &p.packet, p.done).into_iter().filter(|s| !s.is_empty()));
            }
            write_all(self.fd.as_fd(), &mut iov)?;
            drop(iov);
            if let Some(b) = &mut batch[end - 1].body {
                b.write_all(self.fd.as_fd())?;
            }
            start = end;
        }
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        Ok(())
    }

    /// Gives the written batch's buffers back to the pool.
    pub fn recycle(batch: &mut Vec<Pending>) {
        for p in batch.drain(..) {
            buffers::recycle(p.packet);
        }
    }

    /// Ends the output: a socket that is also the read side is half-closed,
    /// anything else closes when the loop's side is gone too.
    pub fn finish(self) {
        let _ = nix::sys::socket::shutdown(self.fd.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::reader::FrameReader;
    use crate::link::stream::Stream;
    use crate::sys::splice::Pipes;
    use crate::wire::message::Kind;
    use crate::wire::NodeId;

    /// Frames written partly directly and partly by the writer, some with
    /// bodies, arrive whole and in order, through a pipe too small to take
    /// them all at once (it is read only after the last is sent).
    #[test]
    fn direct_and_queued_frames_keep_their_order() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let (mut out, writer) = output(w, Arc::new(Stream));
        let ps: Vec<Packet> =
            (0..40u8).map(|i| Packet::new(Kind::To, NodeId([i; 32]), &vec![i; i as usize * 1500])).collect();
        let w = std::thread::spawn(move || {
            let mut batch = Vec::new();
            while writer.next(&mut batch, 8) {
                writer.write(&mut batch).unwrap();
                Writer::recycle(&mut batch);
            }
            writer.finish();
        });
        // Every third message's data follows in a body.
        let pipes = Pipes::new(40);
        let (src_r, src_w) = nix::unistd::pipe().unwrap();
        let mut sent = Vec::new();
        for (i, p) in ps.iter().enumerate() {
            if i % 3 != 2 || p.len() < 100 {
                sent.push(out.send(p.clone()));
                continue;
            }
            let mut body = pipes.try_body().unwrap();
            let (head, data) = p.bytes().split_at(40);
            write_all(src_w.as_fd(), &mut [IoSlice::new(data)]).unwrap();
            assert_eq!(body.fill(src_r.as_fd(), data.len()).unwrap(), data.len());
            sent.push(out.send_with(Packet::from_bytes(head), Some(body)));
        }
        assert_eq!(sent[0], Sent::Written);
        assert!(sent.contains(&Sent::Queued), "a 64 KiB pipe cannot take 1.2 MB at once");
        drop(out);
        let reader = std::thread::spawn(move || {
            let mut fr = FrameReader::new(r, Arc::new(Stream), None);
            let mut got = Vec::new();
            while let Some(p) = fr.next_packet().unwrap() {
                got.push(p);
            }
            got
        });
        w.join().unwrap();
        assert_eq!(reader.join().unwrap(), ps);
    }
}
