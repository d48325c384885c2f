//! The programs `r2 connect` and `r2 tunnel` hand to the daemon: a command
//! run with `sh -c` as the invoking user, or this process's own stdio.

use super::{Error, Result};
use crate::client::Control;
use crate::wire::control::{Reply, Request};
use nix::fcntl::OFlag;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// What a command's stdin and stdout are: each a channel whose one end is
/// the program's and the other the daemon's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fds {
    /// Pipes: byte streams.
    Pipes,
    /// Packet pipes (O_DIRECT): each write of up to 4096 bytes is one read
    /// (a larger write is several).
    PacketPipes,
    /// `SOCK_SEQPACKET` socket pairs: each write, of any size the socket
    /// buffer holds, is one read; a read shorter than it drops the rest.
    Records,
}

/// The fds the daemon will read from and write to, and the child behind
/// them (None for stdio).
pub struct Transport {
    pub child: Option<Child>,
    /// Kept open until the daemon has its own copies.
    fds: Option<(OwnedFd, OwnedFd)>,
}

impl Transport {
    /// Starts `sh -c CMD` with its stdin and stdout on a channel of kind
    /// `fds` each; stderr is shared with this process.
    pub fn command(cmd: &str, fds: Fds) -> Result<Transport> {
        let channel = || match fds {
            Fds::Pipes | Fds::PacketPipes => {
                let mut flags = OFlag::O_CLOEXEC;
                if fds == Fds::PacketPipes {
                    flags |= OFlag::O_DIRECT;
                }
                let (r, w) = nix::unistd::pipe2(flags).map_err(|e| Error::Failed(format!("pipe: {e}")))?;
                crate::sys::grow_pipe(r.as_fd());
                Ok::<_, Error>((r, w))
            }
            Fds::Records => {
                use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
                socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
                    .map_err(|e| Error::Failed(format!("socketpair: {e}")))
            }
        };
        let (to_child_r, to_child_w) = channel()?;
        let (from_child_r, from_child_w) = channel()?;
        let child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::from(to_child_r))
            .stdout(Stdio::from(from_child_w))
            .spawn()
            .map_err(|e| Error::Failed(format!("cannot run sh -c {cmd:?}: {e}")))?;
        Ok(Transport { child: Some(child), fds: Some((from_child_r, to_child_w)) })
    }

    /// Whether the program run has exited already.
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// The pid of the program run, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Ends the program run and every process it started: SIGTERM to all,
    /// SIGKILL to the program if it is still there after a second.
    pub fn end(&mut self) {
        self.fds = None;
        let Some(c) = &mut self.child else { return };
        terminate_tree(c.id());
        end_within(c, Duration::from_secs(1));
    }

    /// This process's stdin and stdout.
    pub fn stdio() -> Transport {
        Transport { child: None, fds: None }
    }

    /// The (read, write) fds to pass.
    pub fn raw_fds(&self) -> [RawFd; 2] {
        match &self.fds {
            Some((r, w)) => [r.as_raw_fd(), w.as_raw_fd()],
            None => [0, 1],
        }
    }

    /// Once the daemon holds the fds: close ours, so that end-of-file
    /// reaches the program when the daemon closes its copies. For stdio,
    /// 0 and 1 become /dev/null.
    pub fn handed_over(&mut self) {
        if self.fds.take().is_some() {
            return;
        }
        if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
            for fd in [0, 1] {
                // SAFETY: dup2 onto the standard fds, which no Rust object
                // in this process owns.
                unsafe { nix::libc::dup2(null.as_raw_fd(), fd) };
            }
        }
    }

    /// Waits a little for the program to exit on its own (its input has
    /// reached end-of-file), then ends it and what it started.
    pub fn reap(&mut self) {
        self.fds = None;
        let Some(c) = &mut self.child else { return };
        if !exits_within(c, Duration::from_secs(2)) {
            self.end();
        }
    }
}

/// SIGTERM to `pid` and every process it started.
fn terminate_tree(pid: u32) {
    for p in crate::sys::held::tree(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), nix::sys::signal::Signal::SIGTERM);
    }
}

/// Whether `c` exits (and is reaped) within `limit`.
fn exits_within(c: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = c.try_wait() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits up to `limit` for `c` to exit, then kills it.
fn end_within(c: &mut Child, limit: Duration) {
    if !exits_within(c, limit) {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// How a hand-over went.
pub struct Handed {
    /// The exit status (a tunnel's remote status, or 0 for a link that
    /// ended by end-of-file), or why it failed.
    pub outcome: Result<i32>,
    /// When the daemon said the link was up, if it did.
    pub linked: Option<Instant>,
    /// The daemon closed the connection without saying why.
    pub daemon_gone: bool,
}

/// Hands `t`'s fds to the daemon with `req`, then waits until the link or
/// tunnel ends. The program is left running: see [`Transport::reap`].
pub fn hand_over(control: &mut Control, req: &Request, t: &mut Transport) -> Handed {
    let sent = control.request(req, &t.raw_fds());
    t.handed_over();
    let (mut linked, mut daemon_gone) = (None, false);
    let outcome = match sent {
        Err(e) => Err(e.into()),
        Ok(()) => loop {
            match control.reply() {
                Ok(Some(Reply::Linked(id))) => {
                    log::info!("linked to {}", super::names::hosts().show(&id));
                    linked = Some(Instant::now());
                }
                Ok(Some(Reply::Exit(status))) => break Ok(status as i32),
                Ok(Some(Reply::Ended { error: None })) => break Ok(0),
                Ok(Some(Reply::Ended { error: Some(e) })) => break Err(Error::Failed(e)),
                Ok(Some(Reply::Error(e))) => break Err(Error::Failed(format!("the daemon refused: {e}"))),
                Ok(Some(r)) => log::warn!("unexpected reply {r:?}"),
                Ok(None) => {
                    daemon_gone = true;
                    break Err(control.gone().into());
                }
                Err(e) => break Err(e.into()),
            }
        },
    };
    Handed { outcome, linked, daemon_gone }
}

/// [`hand_over`], then the program is reaped: Ok is the exit status.
pub fn hand_over_and_wait(mut control: Control, req: &Request, mut t: Transport) -> Result<i32> {
    let handed = hand_over(&mut control, req, &mut t);
    t.reap();
    handed.outcome
}
