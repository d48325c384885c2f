//! A link's reader: the fd-driving side of a framing.
//!
//! [`FrameReader`] reads an fd and feeds what it reads to the link's
//! [`Framing`], one message at a time. Small frames are read many at a
//! time into the reader's buffer and copied out. Where the framing writes
//! messages unchanged after a header of fixed size, and frames are large
//! (bulk data), each is read straight into its packet's buffer instead, and
//! may have its data spliced into a [`Body`] rather than read
//! ([`Splicing`]), so that the daemon never copies it.

use super::framing::{Decoded, Framing, FramingError};
use crate::sys::buffers;
use crate::sys::fd::{read_some, read_split, wait_ready, WakeFd};
use crate::sys::splice::{Body, Pipes};
use crate::wire::message::{Packet, HEADROOM, MAX_MESSAGE};
use nix::poll::PollFlags;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

/// Why a reader stopped other than at a frame boundary's end-of-file.
#[derive(Debug)]
pub enum ReadError {
    /// The Waker was dropped.
    Woken,
    /// End-of-file in the middle of a frame.
    Truncated(usize),
    Framing(FramingError),
    Io(io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Woken => write!(f, "stopped"),
            ReadError::Truncated(n) => write!(f, "end of file inside a frame ({n} bytes of it)"),
            ReadError::Framing(e) => write!(f, "malformed frame: {e}"),
            ReadError::Io(e) => write!(f, "read error: {e}"),
        }
    }
}

/// A reader's buffer: room for two frames of any size at first; a reader
/// whose read fills it (a busy link) grows it to [`BUSY_BUFFER`], so that
/// one read and one wake-up of the loop take many frames.
const READ_BUFFER: usize = 2 * (super::framing::MAX_HEADER + MAX_MESSAGE);
const BUSY_BUFFER: usize = 1024 * 1024;

/// The most read after a frame that is read straight into its packet.
const DIRECT_TAIL: usize = 4096;

/// Says whether a message that starts with these bytes is to be spliced.
pub type Want = Box<dyn Fn(&[u8]) -> bool + Send>;

/// What a [`FrameReader`] splices: the rest of each large message whose
/// first `key_len` bytes `want` says yes to goes into a body, from `pipes`.
pub struct Splicing {
    pub key_len: usize,
    pub want: Want,
    pub pipes: Pipes,
}

/// Reads frames from an fd, one [`Packet`] at a time.
///
/// Small frames are read many at a time into the reader's buffer and
/// copied out. While frames are large (bulk data) and the framing's
/// header has a fixed size, each is read straight into its packet's buffer
/// instead: one `readv` fills the rest of the frame, guessing its size from
/// the last one, and puts what follows into the reader's buffer, so no byte
/// is copied twice.
pub struct FrameReader {
    framing: Arc<dyn Framing>,
    /// Where a frame read straight into a packet buffer starts: its header
    /// ends at `HEADROOM`, where its message starts. None where the
    /// framing's frames are not a fixed header and the message.
    at: Option<usize>,
    splicing: Option<Splicing>,
    body: Option<Body>,
    fd: OwnedFd,
    wake: Option<WakeFd>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The size (prefix included) of the last frame, if it was large.
    guess: usize,
}

impl FrameReader {
    /// A reader of `fd` in `framing`, stopped by dropping the Waker of
    /// `wake`.
    pub fn new(fd: OwnedFd, framing: Arc<dyn Framing>, wake: Option<WakeFd>) -> FrameReader {
        let size = |len| framing.header(len).map(|h| h.bytes().len());
        let at = match (size(0), size(MAX_MESSAGE)) {
            (Some(a), Some(b)) if a == b && a <= HEADROOM => Some(HEADROOM - a),
            _ => None,
        };
        let buf = vec![0; READ_BUFFER];
        FrameReader { framing, at, splicing: None, body: None, fd, wake, buf, start: 0, end: 0, guess: 0 }
    }

    /// Starts with `bytes` as if read first (what was read to tell the
    /// link's layer).
    pub fn with_input(mut self, bytes: &[u8]) -> FrameReader {
        let n = bytes.len().min(self.buf.len());
        self.buf[..n].copy_from_slice(&bytes[..n]);
        self.end = n;
        self
    }

    /// Splices the rest of large messages as `s` says.
    pub fn splicing(mut self, s: Splicing) -> FrameReader {
        self.splicing = Some(s);
        self
    }

    /// The body of the last packet, if the rest of its message was
    /// spliced into one: the packet holds the message's first bytes.
    pub fn take_body(&mut self) -> Option<Body> {
        self.body.take()
    }

    /// The next message; Ok(None) at end-of-file between frames.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, ReadError> {
        loop {
            let input = &mut self.buf[self.start..self.end];
            match self.framing.decode(input).map_err(ReadError::Framing)? {
                Decoded::Message { used, msg } => {
                    let large = msg.len() >= buffers::SMALL;
                    let p = buffers::packet_from(&input[msg]);
                    self.guess = if large && self.at.is_some() { used } else { 0 };
                    self.start += used;
                    return Ok(Some(p));
                }
                Decoded::Skip(n) if n > 0 => {
                    self.start += n.min(input.len());
                    continue;
                }
                Decoded::Skip(_) | Decoded::Partial(_) => {}
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.guess > self.end {
                return self.read_direct();
            }
            let read = read_some(self.fd.as_fd(), &mut self.buf[self.end..], self.wake.as_ref());
            let n = read.map_err(ReadError::Io)?.ok_or(ReadError::Woken)?;
            if n == 0 {
                return match self.end {
                    0 => Ok(None),
                    k => Err(ReadError::Truncated(k)),
                };
            }
            self.end += n;
            if self.end == self.buf.len() && self.buf.len() < BUSY_BUFFER {
                self.buf.resize(BUSY_BUFFER, 0);
            }
        }
    }

    /// Reads the frame whose first bytes (fewer than `guess`) are buffered
    /// straight into a packet buffer; what follows it goes to `buf`.
    fn read_direct(&mut self) -> Result<Option<Packet>, ReadError> {
        let Some(at) = self.at else { return Err(ReadError::Io(io::ErrorKind::InvalidInput.into())) };
        let mut pb = buffers::take();
        pb.resize(at, 0);
        pb.extend_from_slice(&self.buf[..self.end]);
        self.end = 0;
        loop {
            let have = pb.len() - at;
            let size = match self.framing.decode(&mut pb[at..]).map_err(ReadError::Framing)? {
                Decoded::Message { used, msg } => Ok((used, msg.len())),
                Decoded::Partial(size) => Err(size),
                // A framing of fixed headers skips nothing.
                Decoded::Skip(_) => Err(None),
            };
            if let Ok((used, len)) = size {
                let small = len < buffers::SMALL;
                // Bytes past the frame (its size was guessed too large)
                // go in front of what the buffer got after them.
                let excess = have - used;
                if excess > 0 {
                    self.buf.copy_within(..self.end, excess);
                    self.buf[..excess].copy_from_slice(&pb[at + used..]);
                    self.end += excess;
                    pb.truncate(at + used);
                }
                self.guess = if small { 0 } else { used };
                if small {
                    let p = buffers::packet_from(&pb[HEADROOM..]);
                    buffers::give(pb);
                    return Ok(Some(p));
                }
                return Ok(Some(Packet::from_parts(pb, HEADROOM)));
            }
            // The frame's size: known once its header is in (and checked
            // by the framing), else guessed from the last one.
            let header = HEADROOM - at;
            let size = size.err().flatten().unwrap_or(self.guess).max(header).max(have + 1);
            let want = size - have;
            // Its rest went into the buffer (the size was guessed too small).
            if self.end > 0 {
                let k = want.min(self.end);
                pb.extend_from_slice(&self.buf[..k]);
                self.buf.copy_within(k..self.end, 0);
                self.end -= k;
                continue;
            }
            // What follows goes to the buffer: a little, so that the next
            // large frame, too, is read straight into its packet (and not
            // copied out of the buffer), leaving room there for whatever a
            // wrong guess puts in `pb`.
            let (mut want, mut room) = (want, (self.buf.len() - self.guess.max(header)).min(DIRECT_TAIL));
            if let Some(sp) = &self.splicing {
                let key = header + sp.key_len;
                if have >= key && want >= DIRECT_TAIL && (sp.want)(&pb[HEADROOM..at + key]) {
                    if let Some(mut body) = sp.pipes.try_body() {
                        self.fill_body(&mut body, want, have)?;
                        self.body = Some(body);
                        self.guess = size;
                        return Ok(Some(Packet::from_parts(pb, HEADROOM)));
                    }
                }
                // Large: read just its key first, to see whether to splice.
                if have < key && size >= key + DIRECT_TAIL {
                    (want, room) = (key - have, 0);
                }
            }
            if let Some(w) = &self.wake {
                if !wait_ready(self.fd.as_fd(), PollFlags::POLLIN, Some(w)).map_err(ReadError::Io)? {
                    return Err(ReadError::Woken);
                }
            }
            match read_split(self.fd.as_fd(), &mut pb, want, &mut self.buf[..room]).map_err(ReadError::Io)? {
                None => {
                    if self.wake.is_none() {
                        wait_ready(self.fd.as_fd(), PollFlags::POLLIN, None).map_err(ReadError::Io)?;
                    }
                }
                Some((0, _)) => {
                    buffers::give(pb);
                    return match have {
                        0 => Ok(None),
                        k => Err(ReadError::Truncated(k)),
                    };
                }
                Some((_, tail)) => self.end = tail,
            }
        }
    }

    /// Splices the `want` bytes that end a frame, of which `have` are
    /// read, into `body`.
    fn fill_body(&self, body: &mut Body, want: usize, have: usize) -> Result<(), ReadError> {
        while body.len() < want {
            match body.fill(self.fd.as_fd(), want - body.len()) {
                Ok(0) => return Err(ReadError::Truncated(have + body.len())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait_ready(self.fd.as_fd(), PollFlags::POLLIN, self.wake.as_ref()).map_err(ReadError::Io)? {
                        return Err(ReadError::Woken);
                    }
                }
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::stream::Stream;
    use crate::sys::fd::{wake_pair, write_all};
    use crate::wire::message::Kind;
    use crate::wire::NodeId;
    use std::io::IoSlice;

    /// The packets as a link carries them.
    fn framed(ps: &[Packet]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for p in ps {
            Stream.encode(p.bytes(), &mut bytes);
        }
        bytes
    }

    fn reader(fd: OwnedFd) -> FrameReader {
        FrameReader::new(fd, Arc::new(Stream), None)
    }

    #[test]
    fn frames_through_a_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let ps: Vec<Packet> =
            (0..50u8).map(|i| Packet::new(Kind::To, NodeId([i; 32]), &vec![i; i as usize * 1000])).collect();
        let bytes = framed(&ps);
        let writer = std::thread::spawn(move || {
            write_all(w.as_fd(), &mut [IoSlice::new(&bytes)]).unwrap();
            ps
        });
        let mut fr = reader(r);
        let mut got = Vec::new();
        while let Some(p) = fr.next_packet().unwrap() {
            got.push(p);
        }
        assert_eq!(got, writer.join().unwrap());
    }

    /// Large and small frames mixed at random, so that the size guess of
    /// the direct path is right, too large and too small, written in
    /// random pieces so that reads stop anywhere.
    #[test]
    fn frames_of_any_size_in_pieces() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let ps: Vec<Packet> = (0..400)
            .map(|i| {
                let len = match rand(4) {
                    0 => rand(100) as usize,
                    1 => 65536 - rand(3) as usize,
                    _ => rand(65536) as usize,
                };
                Packet::new(Kind::To, NodeId([i as u8; 32]), &vec![i as u8; len])
            })
            .collect();
        let bytes = framed(&ps);
        let pieces: Vec<usize> = (0..10_000).map(|_| 1 + rand(90_000) as usize).collect();
        let (r, w) = nix::unistd::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut rest = &bytes[..];
            for n in pieces.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let k = (*n).min(rest.len());
                write_all(w.as_fd(), &mut [IoSlice::new(&rest[..k])]).unwrap();
                rest = &rest[k..];
            }
        });
        let mut fr = reader(r);
        let mut got = Vec::new();
        while let Some(p) = fr.next_packet().unwrap() {
            got.push(p);
        }
        writer.join().unwrap();
        assert_eq!(got.len(), ps.len());
        for (i, (a, b)) in got.iter().zip(&ps).enumerate() {
            assert!(a == b, "frame {i}: {} bytes, expected {}", a.len(), b.len());
        }
    }

    /// With splicing, each large message whose key is wanted comes as its
    /// first bytes and a body with the rest; the others come whole; all
    /// are the messages sent, in order, whatever the pieces they came in.
    #[test]
    fn large_wanted_messages_come_with_a_body() {
        let ps: Vec<Packet> = (0..300u32)
            .map(|i| {
                let len = [10, 70_000 - 100, 5_000, 40_000, 65_000][i as usize % 5] + i as usize;
                let kind = if i % 3 == 0 { Kind::From } else { Kind::To };
                Packet::new(kind, NodeId([i as u8; 32]), &vec![i as u8; len.min(65_000)])
            })
            .collect();
        let bytes = framed(&ps);
        let (r, w) = nix::unistd::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            for piece in bytes.chunks(33_333) {
                write_all(w.as_fd(), &mut [IoSlice::new(piece)]).unwrap();
            }
        });
        let want: Want = Box::new(|key: &[u8]| key[0] == Kind::From as u8);
        let mut fr = reader(r).splicing(Splicing { key_len: 33, want, pipes: Pipes::new(2) });
        let (mut got, mut bodies) = (Vec::new(), 0);
        while let Some(p) = fr.next_packet().unwrap() {
            let mut b = p.into_buffer();
            if let Some(mut body) = fr.take_body() {
                bodies += 1;
                body.read_into(&mut b).unwrap();
            }
            got.push(Packet::from_parts(b, HEADROOM));
        }
        writer.join().unwrap();
        assert_eq!(got, ps);
        assert!(bodies >= 10, "large From messages read straight are spliced ({bodies})");
    }

    #[test]
    fn truncated_and_oversized() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, &[0, 0, 0, 40, 1, 2, 3]).unwrap();
        drop(w);
        let e = reader(r).next_packet().unwrap_err();
        assert!(matches!(e, ReadError::Truncated(7)));
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, &[0xff, 0xff, 0xff, 0xff]).unwrap();
        let e = reader(r).next_packet().unwrap_err();
        assert!(matches!(e, ReadError::Framing(FramingError::BadLength { len: 0xffff_ffff, .. })));
    }

    #[test]
    fn a_waker_stops_a_blocked_reader() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let (waker, wake) = wake_pair().unwrap();
        let t = std::thread::spawn(move || FrameReader::new(r, Arc::new(Stream), Some(wake)).next_packet());
        drop(waker);
        assert!(matches!(t.join().unwrap(), Err(ReadError::Woken)));
    }
}
