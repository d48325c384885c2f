//! What a framing is: the sans-IO codec between a link's bytes and its
//! messages.
//!
//! A framing is fed the bytes read so far and returns the next message,
//! or says that more bytes are needed; it is given a message and says what
//! to write. It owns no fd and no thread, so it is tested with values
//! alone; the link's reader and output (`reader.rs`, `output.rs`) drive it
//! over fds. The reader and the writer of one link share one framing value.
//!
//! A framing that writes each message unchanged after a header of its own
//! ([`Framing::header`]) lets the link move a message's bytes from where
//! they are (one `writev` of header and packet, data spliced after them)
//! and read large frames straight into their packets. A framing that
//! transforms the bytes (byte stuffing, a checksum trailer) encodes into a
//! buffer instead ([`Framing::encode`]), and is read through the reader's
//! buffer only.

use std::fmt;
use std::ops::Range;

/// The longest header any framing puts in front of a message.
pub const MAX_HEADER: usize = 16;

/// A frame's header, as a framing writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    bytes: [u8; MAX_HEADER],
    len: u8,
}

impl Header {
    /// A header of these bytes (at most [`MAX_HEADER`]; the rest is cut).
    pub fn new(b: &[u8]) -> Header {
        let n = b.len().min(MAX_HEADER);
        let mut bytes = [0; MAX_HEADER];
        bytes[..n].copy_from_slice(&b[..n]);
        Header { bytes, len: n as u8 }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// What [`Framing::decode`] found at the start of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame of `used` bytes, whose message is `input[msg]`.
    Message { used: usize, msg: Range<usize> },
    /// The start of a frame, not whole yet: `Some(n)` bytes long in all,
    /// where the framing can tell that from what it has.
    Partial(Option<usize>),
    /// The first `n` bytes are not r2's (noise, a foreign frame): drop
    /// them and decode again.
    Skip(usize),
}

/// Bytes that no frame of this framing can start with: the link they came
/// from is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FramingError {
    /// A length field outside what the framing allows.
    BadLength { len: u64, min: usize, max: usize },
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::BadLength { len, min, max } => write!(f, "frame length {len} outside {min}..={max}"),
        }
    }
}

/// A codec between a link's bytes and its messages.
pub trait Framing: Send + Sync + fmt::Debug {
    /// A short name, for logs and `r2 ls -l`.
    fn name(&self) -> &'static str;

    /// Decodes the first frame of `input`, checking every length before
    /// anything is allocated. A framing may rewrite `input` in place (to
    /// undo byte stuffing, say); a message it returns lies within it.
    fn decode(&self, input: &mut [u8]) -> Result<Decoded, FramingError>;

    /// The header of the frame of a message of `len` bytes, if the frame
    /// is that header followed by the message unchanged; None if the
    /// framing must [`Framing::encode`] the message.
    fn header(&self, len: usize) -> Option<Header>;

    /// Appends the frame of `msg` to `out`.
    fn encode(&self, msg: &[u8], out: &mut Vec<u8>) {
        if let Some(h) = self.header(msg.len()) {
            out.extend_from_slice(h.bytes());
        }
        out.extend_from_slice(msg);
    }

    /// Whether one write may carry several frames, or part of one: true
    /// on a byte stream; false where each write is one datagram or packet.
    fn joins_writes(&self) -> bool;
}
