//! The raw framing of a tunnel program's pipes: each message is its bytes,
//! as they are, in one write of their own. Only ever written: a program's
//! output is read by the tunnel end's reader, one read a message.
//!
//! On a packet pipe (O_DIRECT) each write is one packet, so writes must
//! not join; on a plain pipe they may (the bytes are a stream).

use super::framing::{Decoded, Framing, FramingError, Header};

/// A program's pipe; `packets`: a packet pipe.
#[derive(Clone, Copy, Debug)]
pub struct Raw {
    pub packets: bool,
}

impl Framing for Raw {
    fn name(&self) -> &'static str {
        if self.packets {
            "packets"
        } else {
            "bytes"
        }
    }

    /// All that was read is one message.
    fn decode(&self, input: &mut [u8]) -> Result<Decoded, FramingError> {
        match input.len() {
            0 => Ok(Decoded::Partial(None)),
            n => Ok(Decoded::Message { used: n, msg: 0..n }),
        }
    }

    fn header(&self, _len: usize) -> Option<Header> {
        Some(Header::default())
    }

    fn joins_writes(&self) -> bool {
        !self.packets
    }
}
