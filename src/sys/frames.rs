//! Blocking frame I/O on raw fds.
//!
//! A reader blocked in `read(2)` cannot be stopped by closing its fd from
//! another thread, so readers `poll` their fd together with a wake pipe: the
//! owner drops the [`Waker`] (the pipe's write end) and the reader returns.
//! Passed fds may be non-blocking; `EAGAIN` is met with `poll`, and the
//! flags of a shared fd are never changed. A reader may be told to splice
//! the data of large messages instead of reading it ([`Splicing`]).

use super::buffers;
use super::splice::{Body, Pipes};
use crate::wire::message::{decode_frame, Packet, WireError, HEADROOM, LEN_PREFIX, MAX_MESSAGE};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fmt;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Dropping a Waker wakes the reader that holds the matching [`WakeFd`].
pub struct Waker(#[allow(dead_code)] OwnedFd);

/// The read end of a wake pipe.
pub struct WakeFd(OwnedFd);

impl WakeFd {
    /// Another handle on the same pipe, for a second thread to poll.
    pub fn try_clone(&self) -> io::Result<WakeFd> {
        self.0.try_clone().map(WakeFd)
    }
}

/// A new wake pipe.
pub fn wake_pair() -> io::Result<(Waker, WakeFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((Waker(w), WakeFd(r)))
}

/// Why a reader stopped other than at a frame boundary's end-of-file.
#[derive(Debug)]
pub enum ReadError {
    /// The Waker was dropped.
    Woken,
    /// End-of-file in the middle of a frame.
    Truncated(usize),
    Wire(WireError),
    Io(io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Woken => write!(f, "stopped"),
            ReadError::Truncated(n) => write!(f, "end of file inside a frame ({n} bytes of it)"),
            ReadError::Wire(e) => write!(f, "malformed frame: {e}"),
            ReadError::Io(e) => write!(f, "read error: {e}"),
        }
    }
}

/// Waits until `fd` is ready for `events` or the wake pipe fires (Ok(false)).
pub fn wait_ready(fd: BorrowedFd<'_>, events: PollFlags, wake: Option<&WakeFd>) -> io::Result<bool> {
    loop {
        let mut fds = [PollFd::new(fd, events), PollFd::new(fd, PollFlags::empty())];
        if let Some(w) = wake {
            fds[1] = PollFd::new(w.0.as_fd(), PollFlags::POLLIN);
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if wake.is_some() && fds[1].any().unwrap_or(false) {
            return Ok(false);
        }
        if fds[0].any().unwrap_or(false) {
            return Ok(true);
        }
    }
}

/// One read into `buf`, waiting with poll on EAGAIN. Err(Woken) when woken.
pub fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8], wake: Option<&WakeFd>) -> Result<usize, ReadError> {
    loop {
        if wake.is_some() && !wait_ready(fd, PollFlags::POLLIN, wake).map_err(ReadError::Io)? {
            return Err(ReadError::Woken);
        }
        match nix::unistd::read(fd, buf) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                if wake.is_none() {
                    wait_ready(fd, PollFlags::POLLIN, None).map_err(ReadError::Io)?;
                }
            }
            Err(e) => return Err(ReadError::Io(e.into())),
        }
    }
}

/// One read of an fd that poll found readable, appending at most `max`
/// bytes to `buf` (into its spare capacity, so nothing is zeroed first).
/// Ok(None) if the data went elsewhere meanwhile (EAGAIN on a shared
/// non-blocking fd).
pub fn read_append(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<usize>> {
    Ok(read_split(fd, buf, max, &mut [])?.map(|(n, _)| n))
}

/// Writes all of `bufs`, waiting with poll on EAGAIN.
pub fn write_all(fd: BorrowedFd<'_>, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match nix::sys::uio::writev(fd, bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                wait_ready(fd, PollFlags::POLLOUT, None)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes what the non-blocking fd takes of `bufs`: the bytes written, 0
/// where it would block.
pub fn write_nonblocking(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        match nix::sys::uio::writev(fd, bufs) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes what the fd takes of `bufs` without blocking, whatever the fd's
/// own flags (pwritev2(2) with `RWF_NOWAIT`, so the flags of a shared fd
/// are never changed): the bytes written, 0 where it would block.
/// `ErrorKind::Unsupported` where the fd cannot do this (not a pipe or a
/// socket, or an older kernel).
pub fn write_now(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let count = bufs.len().min(nix::libc::UIO_MAXIOV as usize) as nix::libc::c_int;
    // SAFETY: IoSlice is ABI-compatible with iovec, the slices outlive the
    // call, and the kernel only reads them.
    let n = unsafe { nix::libc::pwritev2(fd.as_raw_fd(), bufs.as_ptr().cast(), count, -1, nix::libc::RWF_NOWAIT) };
    if n >= 0 {
        return Ok(n as usize);
    }
    match Errno::last() {
        Errno::EAGAIN | Errno::EINTR => Ok(0),
        Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOSYS | Errno::ESPIPE => Err(io::ErrorKind::Unsupported.into()),
        e => Err(e.into()),
    }
}

/// A reader's buffer: room for two frames of any size at first; a reader
/// whose read fills it (a busy link) grows it to [`BUSY_BUFFER`], so that
/// one read and one wake-up of the loop take many frames.
const READ_BUFFER: usize = 2 * (LEN_PREFIX + MAX_MESSAGE);
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
/// copied out. While frames are large (bulk data), each is read straight
/// into its packet's buffer instead: one `readv` fills the rest of the
/// frame, guessing its size from the last one, and puts what follows into
/// the reader's buffer, so no byte is copied twice.
pub struct FrameReader {
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

/// Where a frame read straight into a packet buffer starts: its length
/// prefix sits at the end of the headroom, so its message starts at
/// `HEADROOM`.
const AT: usize = HEADROOM - LEN_PREFIX;

impl FrameReader {
    pub fn new(fd: OwnedFd, wake: Option<WakeFd>) -> FrameReader {
        FrameReader { splicing: None, body: None, fd, wake, buf: vec![0; READ_BUFFER], start: 0, end: 0, guess: 0 }
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
            if let Some((used, msg)) = decode_frame(&self.buf[self.start..self.end]).map_err(ReadError::Wire)? {
                let p = buffers::packet_from(msg);
                self.guess = if msg.len() >= buffers::SMALL { used } else { 0 };
                self.start += used;
                return Ok(Some(p));
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.guess > self.end {
                return self.read_direct();
            }
            let n = read_some(self.fd.as_fd(), &mut self.buf[self.end..], self.wake.as_ref())?;
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
        let mut pb = buffers::take();
        pb.resize(AT, 0);
        pb.extend_from_slice(&self.buf[..self.end]);
        self.end = 0;
        loop {
            let have = pb.len() - AT;
            if let Some((used, msg)) = decode_frame(&pb[AT..]).map_err(ReadError::Wire)? {
                let small = msg.len() < buffers::SMALL;
                // Bytes past the frame (its size was guessed too large)
                // go in front of what the buffer got after them.
                let excess = have - used;
                if excess > 0 {
                    self.buf.copy_within(..self.end, excess);
                    self.buf[..excess].copy_from_slice(&pb[AT + used..]);
                    self.end += excess;
                    pb.truncate(AT + used);
                }
                self.guess = if small { 0 } else { used };
                if small {
                    let p = buffers::packet_from(&pb[HEADROOM..]);
                    buffers::give(pb);
                    return Ok(Some(p));
                }
                return Ok(Some(Packet::from_parts(pb, HEADROOM)));
            }
            // The frame's size: known once its prefix is in (and checked
            // by decode_frame), else guessed from the last one.
            let size = match pb.get(AT..HEADROOM) {
                Some(pre) => LEN_PREFIX + u32::from_be_bytes([pre[0], pre[1], pre[2], pre[3]]) as usize,
                None => self.guess.max(LEN_PREFIX),
            };
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
            let (mut want, mut room) = (want, (self.buf.len() - self.guess.max(LEN_PREFIX)).min(DIRECT_TAIL));
            if let Some(sp) = &self.splicing {
                let key = LEN_PREFIX + sp.key_len;
                if have >= key && want >= DIRECT_TAIL && (sp.want)(&pb[HEADROOM..AT + key]) {
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

/// One `readv` of an fd: at most `want` bytes appended to `head` (into its
/// spare capacity, so nothing is zeroed first), then what follows into
/// `tail`. Returns how many went into each; None on EAGAIN.
fn read_split(
    fd: BorrowedFd<'_>,
    head: &mut Vec<u8>,
    want: usize,
    tail: &mut [u8],
) -> io::Result<Option<(usize, usize)>> {
    use nix::libc::{c_void, iovec};
    use std::os::fd::AsRawFd;
    head.reserve(want);
    let iov = [
        iovec { iov_base: head.spare_capacity_mut().as_mut_ptr() as *mut c_void, iov_len: want },
        iovec { iov_base: tail.as_mut_ptr() as *mut c_void, iov_len: tail.len() },
    ];
    loop {
        // SAFETY: both iovecs point into memory owned by `head` (reserved
        // above) and `tail`, of the lengths given, for the call's duration.
        let n = unsafe { nix::libc::readv(fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n >= 0 {
            let n = n as usize;
            let h = n.min(want);
            // SAFETY: the kernel initialised the first `h` spare bytes.
            unsafe { head.set_len(head.len() + h) };
            return Ok(Some((h, n - h)));
        }
        match Errno::last() {
            Errno::EINTR => {}
            Errno::EAGAIN => return Ok(None),
            e => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::{frame_prefix, Kind};
    use crate::wire::NodeId;

    /// The packets as a link carries them.
    fn framed(ps: &[Packet]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for p in ps {
            bytes.extend_from_slice(&frame_prefix(p.len()));
            bytes.extend_from_slice(p.bytes());
        }
        bytes
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
        let mut fr = FrameReader::new(r, None);
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
        let mut fr = FrameReader::new(r, None);
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
        let mut fr = FrameReader::new(r, None).splicing(Splicing { key_len: 33, want, pipes: Pipes::new(2) });
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
        let e = FrameReader::new(r, None).next_packet().unwrap_err();
        assert!(matches!(e, ReadError::Truncated(7)));
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, &[0xff, 0xff, 0xff, 0xff]).unwrap();
        let e = FrameReader::new(r, None).next_packet().unwrap_err();
        assert!(matches!(e, ReadError::Wire(WireError::BadLength(_))));
    }

    #[test]
    fn a_waker_stops_a_blocked_reader() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let (waker, wake) = wake_pair().unwrap();
        let t = std::thread::spawn(move || FrameReader::new(r, Some(wake)).next_packet());
        drop(waker);
        assert!(matches!(t.join().unwrap(), Err(ReadError::Woken)));
    }
}
