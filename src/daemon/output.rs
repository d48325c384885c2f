//! Where a port's or a tunnel program's bytes go out.
//!
//! The daemon loop writes straight to the fd while nothing is queued and
//! the fd takes the bytes without blocking; the rest, in order, goes to a
//! writer thread that may block. So a flowing stream costs no thread
//! hand-over, and a stalled one never stops the loop. The loop is the only
//! sender; `queued` counts what the writer has not finished, and the loop
//! writes directly only when it is zero, so bytes never overtake each other.

use crate::sys::buffers;
use crate::sys::frames::{write_all, write_now};
use crate::wire::control::Traffic;
use crate::wire::message::{frame_prefix, LEN_PREFIX};
use crate::wire::Packet;
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A message waiting for the writer, of which `done` bytes (counting a
/// frame's length prefix) are already written.
pub struct Pending {
    pub packet: Packet,
    done: usize,
}

/// How [`Output::send`] dealt with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Written out whole, now.
    Written,
    /// Left to the writer thread.
    Queued,
}

/// The loop's side of an output.
pub struct Output {
    fd: Arc<OwnedFd>,
    queue: Sender<Pending>,
    queued: Arc<AtomicUsize>,
    /// The fd can be written without blocking (pwritev2 `RWF_NOWAIT`).
    direct: bool,
    framed: bool,
    /// What was sent, counting frames' length prefixes.
    pub sent: Traffic,
}

/// The writer thread's side.
pub struct Writer {
    fd: Arc<OwnedFd>,
    queue: Receiver<Pending>,
    queued: Arc<AtomicUsize>,
    framed: bool,
}

/// An output on `fd`; `framed`: each message gets a frame's length prefix.
pub fn output(fd: OwnedFd, framed: bool) -> (Output, Writer) {
    let fd = Arc::new(fd);
    let queued = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = unbounded();
    let out =
        Output { fd: fd.clone(), queue: tx, queued: queued.clone(), direct: true, framed, sent: Traffic::default() };
    (out, Writer { fd, queue: rx, queued, framed })
}

/// The iovecs of `p` from byte `done` on.
fn slices<'a>(prefix: &'a [u8; LEN_PREFIX], p: &'a Packet, done: usize, framed: bool) -> [IoSlice<'a>; 2] {
    let (head, body): (&[u8], &[u8]) = match (framed, done) {
        (true, d) if d < LEN_PREFIX => (&prefix[d..], p.bytes()),
        (true, d) => (&[], &p.bytes()[d - LEN_PREFIX..]),
        (false, d) => (&[], &p.bytes()[d..]),
    };
    [IoSlice::new(head), IoSlice::new(body)]
}

impl Output {
    /// Writes `packet` now if it can, else queues what is left of it.
    pub fn send(&mut self, packet: Packet) -> Sent {
        let total = packet.len() + if self.framed { LEN_PREFIX } else { 0 };
        self.sent.add(total);
        let mut done = 0;
        if self.direct && self.queued.load(Ordering::Acquire) == 0 {
            let prefix = frame_prefix(packet.len());
            match write_now(self.fd.as_fd(), &slices(&prefix, &packet, 0, self.framed)) {
                Ok(n) if n == total => {
                    buffers::recycle(packet);
                    return Sent::Written;
                }
                Ok(n) => done = n,
                Err(e) if e.kind() == io::ErrorKind::Unsupported => self.direct = false,
                // The writer meets the error again and reports it.
                Err(_) => {}
            }
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        let _ = self.queue.send(Pending { packet, done });
        Sent::Queued
    }
}

impl Writer {
    /// Waits for what is queued, at most `max` messages; false once the
    /// [`Output`] is dropped and all is taken.
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
    /// where the fd allows; then lets the loop write directly again. The
    /// caller recycles the batch (`recycle`).
    pub fn write(&self, batch: &[Pending]) -> io::Result<()> {
        let prefixes: Vec<[u8; LEN_PREFIX]> = batch.iter().map(|p| frame_prefix(p.packet.len())).collect();
        let mut iov = Vec::with_capacity(batch.len() * 2);
        for (p, pre) in batch.iter().zip(&prefixes) {
            iov.extend(slices(pre, &p.packet, p.done, self.framed));
        }
        let r = write_all(self.fd.as_fd(), &mut iov);
        if r.is_ok() {
            self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        }
        r
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
    use crate::sys::frames::FrameReader;
    use crate::wire::message::Kind;
    use crate::wire::NodeId;

    /// Frames written partly directly and partly by the writer arrive whole
    /// and in order, through a pipe too small to take them all at once (it
    /// is read only after the last is sent).
    #[test]
    fn direct_and_queued_frames_keep_their_order() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let (mut out, writer) = output(w, true);
        let ps: Vec<Packet> =
            (0..40u8).map(|i| Packet::new(Kind::To, NodeId([i; 32]), &vec![i; i as usize * 1500])).collect();
        let w = std::thread::spawn(move || {
            let mut batch = Vec::new();
            while writer.next(&mut batch, 8) {
                writer.write(&batch).unwrap();
                Writer::recycle(&mut batch);
            }
            writer.finish();
        });
        let mut sent = Vec::new();
        for p in &ps {
            sent.push(out.send(p.clone()));
        }
        assert_eq!(sent[0], Sent::Written);
        assert!(sent.contains(&Sent::Queued), "a 64 KiB pipe cannot take 1.2 MB at once");
        drop(out);
        let reader = std::thread::spawn(move || {
            let mut fr = FrameReader::new(r, None);
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
