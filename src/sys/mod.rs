//! Operating-system plumbing shared by the link layer, the daemon and the
//! clients: where the socket and id file live, channels whose receiver
//! sleeps without spinning, passing fds over UNIX sockets, blocking I/O on
//! fds that a wake pipe can interrupt, reused message buffers, data moved
//! between fds by splice, and the kernel's randomness.

pub mod buffers;
pub mod channel;
pub mod fd;
pub mod fdpass;
pub mod held;
pub mod paths;
pub mod random;
pub mod splice;

/// Locks a mutex; a thread that panicked holding it left nothing half done
/// that matters here, so its poison is ignored.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks every inherited fd above 2 close-on-exec, so that the programs r2
/// starts get only their standard fds. Call before the first thread starts.
pub fn cloexec_inherited() {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::fd::BorrowedFd;
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: the fd is open in this process (listed just now) and is
        // only borrowed for the duration of the call.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Ok(flags) = fcntl(b, FcntlArg::F_GETFD) {
            let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
            let _ = fcntl(b, FcntlArg::F_SETFD(flags));
        }
    }
}

/// The pipe buffer r2 asks for on the pipes it makes (pipe(7), F_SETPIPE_SZ).
/// Larger pipes carry one tunnel no faster, and with 100 busy tunnels (each
/// pipe full) their data outgrows the caches: 1 MiB pipes made the aggregate
/// 13% slower than these (100 tunnels of 16 MiB through one link, 5 runs
/// each, interleaved: 712 against 816 MiB/s; one tunnel of 1.6 GiB alike).
pub const PIPE_SIZE: i32 = 256 * 1024;

/// Enlarges a pipe's buffer, so that 64 KiB frames flow without a context
/// switch each; failure (a lower pipe-max-size) leaves it as it was.
pub fn grow_pipe(fd: std::os::fd::BorrowedFd<'_>) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
}
