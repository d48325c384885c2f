//! The stream framing: each message after its length, for transports that
//! are reliable byte streams (pipes, UNIX and TCP sockets, ssh).
//!
//! ```text
//! frame = length:u32be message          (HEADER <= length <= MAX_MESSAGE)
//! ```
//!
//! The length is checked before anything is allocated; a length outside
//! the caps closes the link (r2.7, "Frames").

use super::framing::{Decoded, Framing, FramingError, Header};
use crate::wire::message::{HEADER, MAX_MESSAGE};

/// The size of a frame's length prefix.
pub const LEN_PREFIX: usize = 4;

/// Length-prefixed frames on a reliable byte stream.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stream;

/// The length prefix of a frame carrying `msg_len` bytes.
pub fn prefix(msg_len: usize) -> [u8; LEN_PREFIX] {
    (msg_len as u32).to_be_bytes()
}

/// Looks for one frame at the start of `buf`: its total size and its
/// message, None when more bytes are needed, or an error for a length
/// outside the caps.
pub fn decode(buf: &[u8]) -> Result<Option<(usize, &[u8])>, FramingError> {
    let Some(p) = buf.get(..LEN_PREFIX) else { return Ok(None) };
    let n = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
    if !(HEADER..=MAX_MESSAGE).contains(&n) {
        return Err(FramingError::BadLength { len: n as u64, min: HEADER, max: MAX_MESSAGE });
    }
    Ok(buf.get(LEN_PREFIX..LEN_PREFIX + n).map(|m| (LEN_PREFIX + n, m)))
}

impl Framing for Stream {
    fn name(&self) -> &'static str {
        "stream"
    }

    fn decode(&self, input: &mut [u8]) -> Result<Decoded, FramingError> {
        match decode(input)? {
            Some((used, _)) => Ok(Decoded::Message { used, msg: LEN_PREFIX..used }),
            None if input.len() >= LEN_PREFIX => {
                let n = u32::from_be_bytes([input[0], input[1], input[2], input[3]]) as usize;
                Ok(Decoded::Partial(Some(LEN_PREFIX + n)))
            }
            None => Ok(Decoded::Partial(None)),
        }
    }

    fn header(&self, len: usize) -> Option<Header> {
        Some(Header::new(&prefix(len)))
    }

    fn joins_writes(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        Stream.encode(msg, &mut f);
        f
    }

    #[test]
    fn round_trip_and_every_cut() {
        let msg: Vec<u8> = (0..100u8).collect();
        let mut f = frame(&msg);
        assert_eq!(&f[..4], &[0, 0, 0, 100]);
        let used = f.len();
        assert_eq!(Stream.decode(&mut f), Ok(Decoded::Message { used, msg: 4..used }));
        for cut in 0..f.len() {
            let want = if cut < 4 { Decoded::Partial(None) } else { Decoded::Partial(Some(used)) };
            assert_eq!(Stream.decode(&mut f[..cut].to_vec()), Ok(want), "cut at {cut}");
        }
        let mut two = [f.clone(), f.clone()].concat();
        assert_eq!(Stream.decode(&mut two), Ok(Decoded::Message { used, msg: 4..used }));
    }

    #[test]
    fn lengths_outside_the_caps_are_refused_before_allocating() {
        for bad in [0u32, HEADER as u32 - 1, MAX_MESSAGE as u32 + 1, u32::MAX] {
            let mut f = bad.to_be_bytes().to_vec();
            let e = Stream.decode(&mut f).unwrap_err();
            assert_eq!(e, FramingError::BadLength { len: bad as u64, min: HEADER, max: MAX_MESSAGE });
        }
        let mut max = (MAX_MESSAGE as u32).to_be_bytes().to_vec();
        assert_eq!(Stream.decode(&mut max), Ok(Decoded::Partial(Some(LEN_PREFIX + MAX_MESSAGE))));
    }
}
