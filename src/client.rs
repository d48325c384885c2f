//! The manager's side of the control socket: requests, replies, passing
//! fds, and endpoints that speak link frames.

use crate::link::stream;
use crate::sys::fdpass::send_with_fds;
use crate::wire::control::{frame_len, Reply, Request};
use crate::wire::NodeId;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What went wrong in talking to the daemon.
#[derive(Debug)]
pub enum Error {
    /// Nothing listens on the socket.
    NoDaemon { path: PathBuf, error: std::io::Error },
    /// The daemon said no.
    Refused(String),
    /// Reading or writing the socket failed; `doing` says what r2 did.
    Io { doing: String, error: std::io::Error },
    /// The daemon closed the connection unexpectedly.
    Gone { path: PathBuf },
    /// The daemon sent what this client does not understand.
    Protocol(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NoDaemon { path, error } => write!(f, "no daemon listening on {}: {error}", path.display()),
            Error::Refused(why) => write!(f, "the daemon refused: {why}"),
            Error::Io { doing, error } => write!(f, "{doing}: {error}"),
            Error::Gone { path } => write!(f, "the daemon on {} went away", path.display()),
            Error::Protocol(what) => f.write_str(what),
        }
    }
}

type Result<T> = std::result::Result<T, Error>;

fn reading(error: std::io::Error) -> Error {
    Error::Io { doing: "reading from the daemon".into(), error }
}

/// A connection to the local daemon.
pub struct Control {
    stream: UnixStream,
    path: PathBuf,
}

impl Control {
    /// Connects to the daemon's socket at `path`.
    pub fn connect(path: &Path) -> Result<Control> {
        match UnixStream::connect(path) {
            Ok(stream) => Ok(Control { stream, path: path.to_owned() }),
            Err(error) => Err(Error::NoDaemon { path: path.to_owned(), error }),
        }
    }

    /// Sends a request, with `fds` passed along.
    pub fn request(&mut self, req: &Request, fds: &[RawFd]) -> Result<()> {
        match send_with_fds(&self.stream, &req.encode(), fds) {
            Ok(()) => Ok(()),
            // The daemon may have refused us before reading: say why.
            Err(error) => match self.reply() {
                Ok(Some(Reply::Error(why))) => Err(Error::Refused(why)),
                _ => Err(Error::Io { doing: format!("cannot talk to the daemon on {}", self.path.display()), error }),
            },
        }
    }

    /// The next reply; `None` when the daemon closed the connection.
    pub fn reply(&mut self) -> Result<Option<Reply>> {
        let mut prefix = [0u8; 4];
        match self.stream.read_exact(&mut prefix) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(reading(e)),
        }
        let n = frame_len(prefix).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut body = vec![0u8; n];
        self.stream.read_exact(&mut body).map_err(reading)?;
        Reply::decode(&body).map(Some).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// A reply that must come; the daemon's refusal becomes an error.
    pub fn expect_reply(&mut self) -> Result<Reply> {
        match self.reply()? {
            Some(Reply::Error(e)) => Err(Error::Refused(e)),
            Some(r) => Ok(r),
            None => Err(self.gone()),
        }
    }

    /// A second handle on the connection, with which another thread can
    /// end it (`shutdown`), waking a [`Control::reply`] that waits.
    pub fn handle(&self) -> std::io::Result<UnixStream> {
        self.stream.try_clone()
    }

    /// The error of a daemon that closed the connection unexpectedly.
    pub fn gone(&self) -> Error {
        Error::Gone { path: self.path.clone() }
    }

    /// Asks for an endpoint and returns it.
    pub fn endpoint(mut self) -> Result<Endpoint> {
        self.request(&Request::Endpoint, &[])?;
        match self.expect_reply()? {
            Reply::Endpoint { daemon, endpoint } => {
                Ok(Endpoint { stream: self.stream, path: self.path, daemon, id: endpoint, buf: Vec::new() })
            }
            r => Err(Error::Protocol(format!("unexpected reply from the daemon: {r:?}"))),
        }
    }
}

/// An endpoint hosted by the local daemon: it sends and receives messages.
pub struct Endpoint {
    stream: UnixStream,
    path: PathBuf,
    /// The local daemon's id.
    pub daemon: NodeId,
    /// This endpoint's id.
    pub id: NodeId,
    buf: Vec<u8>,
}

/// What [`Endpoint::recv`] got.
pub enum Received {
    Message(Vec<u8>),
    Timeout,
    Closed,
}

impl Endpoint {
    /// Sends one message (the frame prefix is added here).
    pub fn send(&mut self, msg: &[u8]) -> Result<()> {
        let mut f = stream::prefix(msg.len()).to_vec();
        f.extend_from_slice(msg);
        let doing = || format!("sending to the daemon on {}", self.path.display());
        self.stream.write_all(&f).map_err(|error| Error::Io { doing: doing(), error })
    }

    /// The next message, waiting until `deadline`.
    pub fn recv(&mut self, deadline: Instant) -> Result<Received> {
        loop {
            match stream::decode(&self.buf) {
                Ok(Some((used, msg))) => {
                    let m = msg.to_vec();
                    self.buf.drain(..used);
                    return Ok(Received::Message(m));
                }
                Ok(None) => {}
                Err(e) => return Err(Error::Protocol(format!("bad frame from the daemon: {e}"))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Received::Timeout);
            }
            self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).map_err(reading)?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(Received::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(Received::Timeout)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(reading(e)),
            }
        }
    }
}
