//! Bulk data held in a pipe instead of memory, moved with splice(2).
//!
//! A pipe's data lives in pages, and splice(2) between two pipes moves
//! those pages without copying a byte. A reader splices a large message's
//! data from its fd into a pipe of its own (a [`Body`]), and the output the
//! message goes to splices it on after the message's first bytes: the
//! daemon never copies the data. A reader has a few such pipes
//! ([`Pipes`]); a body written out whole gives its pipe back, one dropped
//! before that closes it. The process keeps at most [`MAX_PIPES`] pipes
//! for bodies, so that busy tunnels cannot run it out of fds; a reader
//! without one reads the data instead. A reader waiting for its pipe to
//! come back sleeps on a condition variable, which does not spin: a
//! channel's blocking receive spins and yields the CPU before it sleeps,
//! and with a hundred tunnel readers waiting so, those yields were a tenth
//! of the daemons' CPU time.

use crate::wire::Packet;
use nix::errno::Errno;
use nix::fcntl::{splice, OFlag, SpliceFFlags};
use nix::poll::PollFlags;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The most pipes for bodies in this process (two fds each).
pub const MAX_PIPES: usize = 256;

/// The pipes for bodies now open.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// A pipe of one's own, empty while it is not in a [`Body`].
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    /// A new pipe, non-blocking on both ends (its data is always there
    /// when asked for, so only the other fd of a splice ever waits), with
    /// room for a message's data in pages of any fill. None past
    /// [`MAX_PIPES`] or when the system has none.
    fn new() -> Option<Pipe> {
        if OPEN.fetch_add(1, Ordering::AcqRel) >= MAX_PIPES {
            OPEN.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        match nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK) {
            Ok((r, w)) => {
                let _ = nix::fcntl::fcntl(r.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_ROOM));
                Some(Pipe { r, w })
            }
            Err(_) => {
                OPEN.fetch_sub(1, Ordering::AcqRel);
                None
            }
        }
    }
}

/// A body pipe's buffer: a 64 KiB message's data spliced from pages that
/// are only partly filled takes more than 16 of the pipe's page slots.
const PIPE_ROOM: i32 = 256 * 1024;

impl Drop for Pipe {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A reader's free slots for pipes: `Some` a pipe to reuse, `None` room
/// for one to be made (or made again, after one was closed with data in it).
struct Slots {
    state: Mutex<Free>,
    back: Condvar,
}

#[derive(Default)]
struct Free {
    slots: Vec<Option<Pipe>>,
    /// Readers waiting for a slot: only then is a wake-up (a futex call)
    /// worth making.
    waiting: usize,
}

impl Slots {
    fn lock(&self) -> MutexGuard<'_, Free> {
        super::lock(&self.state)
    }

    /// A written-out body's pipe comes home, or its room if it was closed.
    fn put(&self, p: Option<Pipe>) {
        let mut free = self.lock();
        free.slots.push(p);
        if free.waiting > 0 {
            drop(free);
            self.back.notify_one();
        }
    }
}

/// A reader's pipes for bodies: at most as many as it was made with, each
/// made when first needed.
pub struct Pipes {
    slots: Arc<Slots>,
}

impl Pipes {
    pub fn new(n: usize) -> Pipes {
        let free = Free { slots: (0..n).map(|_| None).collect(), waiting: 0 };
        Pipes { slots: Arc::new(Slots { state: Mutex::new(free), back: Condvar::new() }) }
    }

    /// Waits at most `timeout` for a free slot: None if none came back.
    pub fn wait_free(&self, timeout: Duration) -> Option<Option<Pipe>> {
        let mut free = self.slots.lock();
        if free.slots.is_empty() {
            free.waiting += 1;
            free = match self.slots.back.wait_timeout_while(free, timeout, |f| f.slots.is_empty()) {
                Ok((f, _)) => f,
                Err(e) => e.into_inner().0,
            };
            free.waiting -= 1;
        }
        free.slots.pop()
    }

    /// A free slot, if there is one now.
    pub fn try_free(&self) -> Option<Option<Pipe>> {
        self.slots.lock().slots.pop()
    }

    /// An empty body in the pipe `got` from [`Pipes::wait_free`]; None if no
    /// pipe can be made (the slot stays free, to try again later).
    pub fn body(&self, got: Option<Pipe>) -> Option<Body> {
        let pipe = match got {
            Some(p) => p,
            None => match Pipe::new() {
                Some(p) => p,
                None => {
                    self.slots.put(None);
                    return None;
                }
            },
        };
        Some(Body { pipe: Some(pipe), len: 0, home: self.slots.clone() })
    }

    /// An empty body, if a pipe is free now.
    pub fn try_body(&self) -> Option<Body> {
        self.try_free().and_then(|p| self.body(p))
    }
}

/// `len` bytes of data in a pipe, on their way from one fd to another.
pub struct Body {
    pipe: Option<Pipe>,
    len: usize,
    home: Arc<Slots>,
}

/// One splice(2) of at most `len` bytes from `src` to `dst`, again if a
/// signal interrupted it. `WouldBlock` where either side would block,
/// `Unsupported` where an fd cannot be spliced.
fn splice_some(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: usize, flags: SpliceFFlags) -> io::Result<usize> {
    loop {
        match splice(src, None, dst, None, len, flags) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
            Err(Errno::EINVAL) => return Err(io::ErrorKind::Unsupported.into()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Splice without waiting on our own pipe's side.
const NOW: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

impl Body {
    /// The bytes it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn pipe(&self) -> io::Result<&Pipe> {
        self.pipe.as_ref().ok_or_else(|| io::ErrorKind::BrokenPipe.into())
    }

    /// Moves at most `max` bytes of what `src` has now into the body: the
    /// bytes moved, 0 at end-of-file. `WouldBlock` if `src` has nothing,
    /// `Unsupported` if it cannot be spliced from (nothing is lost then).
    pub fn fill(&mut self, src: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        let n = splice_some(src, self.pipe()?.w.as_fd(), max, NOW)?;
        self.len += n;
        Ok(n)
    }

    /// Moves what the pipe `dst` takes at once of the body into it: the
    /// bytes moved (0 where it is full).
    pub fn write_now(&mut self, dst: BorrowedFd<'_>) -> io::Result<usize> {
        let n = match splice_some(self.pipe()?.r.as_fd(), dst, self.len, NOW) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            r => r?,
        };
        self.len -= n;
        Ok(n)
    }

    /// Moves all of the body into `dst`, waiting while it is full; where
    /// `dst` cannot be spliced to, the bytes are read and written instead.
    pub fn write_all(&mut self, dst: BorrowedFd<'_>) -> io::Result<()> {
        while self.len > 0 {
            match splice_some(self.pipe()?.r.as_fd(), dst, self.len, SpliceFFlags::SPLICE_F_MOVE) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.len -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    super::fd::wait_ready(dst, PollFlags::POLLOUT, None)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    let mut buf = Vec::with_capacity(self.len);
                    self.read_into(&mut buf)?;
                    return super::fd::write_all(dst, &mut [io::IoSlice::new(&buf)]);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The whole message whose first bytes are `head` and whose rest this
    /// body holds, in memory: for where the body cannot go on as it is.
    pub fn complete(mut self, head: Packet) -> io::Result<Packet> {
        let len = head.len();
        let mut b = head.into_buffer();
        let start = b.len() - len;
        self.read_into(&mut b)?;
        Ok(Packet::from_parts(b, start))
    }

    /// Appends all of the body to `buf` (into its spare capacity: nothing
    /// is zeroed first).
    pub fn read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        while self.len > 0 {
            match super::fd::read_append(self.pipe()?.r.as_fd(), buf, self.len)? {
                Some(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Some(n) => self.len -= n,
                // The body's bytes are in its pipe already: never the case.
                None => return Err(io::ErrorKind::WouldBlock.into()),
            }
        }
        Ok(())
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Some(p) = self.pipe.take() {
            self.home.put((self.len == 0).then_some(p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader waiting for its pipe waits until a body gives it back, and
    /// no longer than it asked to.
    #[test]
    fn a_reader_waits_for_its_pipe_to_come_back() {
        let pipes = Pipes::new(1);
        let b = pipes.try_body().unwrap();
        let t = std::time::Instant::now();
        assert!(pipes.wait_free(Duration::from_millis(50)).is_none(), "none is free");
        assert!(t.elapsed() >= Duration::from_millis(50));
        let giver = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20)); // let the reader wait: not a wait for a condition
            drop(b);
        });
        assert!(matches!(pipes.wait_free(Duration::from_secs(10)), Some(Some(_))), "an empty body's pipe is back");
        giver.join().unwrap();
    }

    /// Bytes go from one pipe through a body into another unchanged; the
    /// emptied pipe is reused, one dropped full is closed and made anew.
    #[test]
    fn a_body_moves_bytes_and_its_pipe_is_reused() {
        let pipes = Pipes::new(1);
        let (src_r, src_w) = nix::unistd::pipe().unwrap();
        let (dst_r, dst_w) = nix::unistd::pipe().unwrap();
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
        nix::unistd::write(&src_w, &data).unwrap();
        let mut b = pipes.try_body().unwrap();
        assert!(pipes.try_body().is_none(), "one pipe, and it is out");
        assert_eq!(b.fill(src_r.as_fd(), 30_000).unwrap(), 30_000);
        assert_eq!(b.write_now(dst_w.as_fd()).unwrap(), 30_000);
        assert_eq!(b.fill(src_r.as_fd(), 65_536).unwrap(), 20_000);
        b.write_all(dst_w.as_fd()).unwrap();
        drop(b);
        let mut got = vec![0; 50_000];
        let mut at = 0;
        while at < got.len() {
            at += nix::unistd::read(&dst_r, &mut got[at..]).unwrap();
        }
        assert_eq!(got, data);
        assert!(matches!(pipes.try_free(), Some(Some(_))), "an emptied body's pipe comes back");
        pipes.slots.put(None);
        let mut b = pipes.try_body().unwrap();
        assert!(b.fill(src_r.as_fd(), 100).unwrap_err().kind() == io::ErrorKind::WouldBlock);
        nix::unistd::write(&src_w, b"abc").unwrap();
        assert_eq!(b.fill(src_r.as_fd(), 100).unwrap(), 3);
        let mut v = b"x".to_vec();
        b.read_into(&mut v).unwrap();
        assert_eq!(v, b"xabc");
        nix::unistd::write(&src_w, b"def").unwrap();
        b.fill(src_r.as_fd(), 100).unwrap();
        drop(b);
        assert!(matches!(pipes.try_free(), Some(None)), "a body dropped full is closed");
    }
}
