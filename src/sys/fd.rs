//! Blocking I/O on raw fds that a wake pipe can interrupt.
//!
//! A reader blocked in `read(2)` cannot be stopped by closing its fd from
//! another thread, so readers `poll` their fd together with a wake pipe: the
//! owner drops the [`Waker`] (the pipe's write end) and the reader returns.
//! Passed fds may be non-blocking; `EAGAIN` is met with `poll`, and the
//! flags of a shared fd are never changed.

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
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

/// Waits until `fd` is ready for `events` or the wake pipe fires (Ok(false)).
pub fn wait_ready(fd: BorrowedFd<'_>, events: PollFlags, wake: Option<&WakeFd>) -> io::Result<bool> {
    Ok(wait_ready_until(fd, events, wake, None)?.unwrap_or(false))
}

/// As [`wait_ready`], until `deadline` at most: Ok(None) once it passes.
pub fn wait_ready_until(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    wake: Option<&WakeFd>,
    deadline: Option<std::time::Instant>,
) -> io::Result<Option<bool>> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                PollTimeout::try_from(left.as_millis().clamp(1, 60_000) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(fd, events), PollFd::new(fd, PollFlags::empty())];
        if let Some(w) = wake {
            fds[1] = PollFd::new(w.0.as_fd(), PollFlags::POLLIN);
        }
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if wake.is_some() && fds[1].any().unwrap_or(false) {
            return Ok(Some(false));
        }
        if fds[0].any().unwrap_or(false) {
            return Ok(Some(true));
        }
    }
}

/// One read into `buf`, waiting with poll on EAGAIN; None when woken.
pub fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8], wake: Option<&WakeFd>) -> io::Result<Option<usize>> {
    loop {
        if wake.is_some() && !wait_ready(fd, PollFlags::POLLIN, wake)? {
            return Ok(None);
        }
        match nix::unistd::read(fd, buf) {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                if wake.is_none() {
                    wait_ready(fd, PollFlags::POLLIN, None)?;
                }
            }
            Err(e) => return Err(e.into()),
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

/// One `readv` of an fd: at most `want` bytes appended to `head` (into its
/// spare capacity, so nothing is zeroed first), then what follows into
/// `tail`. Returns how many went into each; None on EAGAIN.
pub fn read_split(
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

/// Whether the other end of `fd` has closed: where a read of no bytes can
/// also be an empty record (a `SOCK_SEQPACKET` socket), this tells them
/// apart.
pub fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLHUP)),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_record_is_no_hang_up() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        assert_eq!(nix::unistd::write(&b, &[]).unwrap(), 0);
        let mut buf = Vec::new();
        assert_eq!(read_append(a.as_fd(), &mut buf, 16).unwrap(), Some(0));
        assert!(!hung_up(a.as_fd()));
        drop(b);
        assert_eq!(read_append(a.as_fd(), &mut buf, 16).unwrap(), Some(0));
        assert!(hung_up(a.as_fd()));
        let (r, w) = nix::unistd::pipe().unwrap();
        assert!(!hung_up(r.as_fd()));
        drop(w);
        assert!(hung_up(r.as_fd()));
    }

    #[test]
    fn a_waker_stops_a_blocked_read() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let (waker, wake) = wake_pair().unwrap();
        let t = std::thread::spawn(move || read_some(r.as_fd(), &mut [0; 8], Some(&wake)).unwrap());
        drop(waker);
        assert_eq!(t.join().unwrap(), None);
    }
}
