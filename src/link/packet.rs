//! The packets of a robust link: what one robust frame carries, above the
//! framing and below the reliability layer (`reliable.rs`).
//!
//! ```text
//! packet  = number:u64be frame*           numbers count up from 0, never reused
//! frame   = PADDING  0x00                 the rest of the packet is padding
//!         | PING     0x01                 asks for an acknowledgement
//!         | ACK      0x02 delay:u32be n:u8 (largest:u64be count:u32be){n}
//!                                         packet numbers received: ranges
//!                                         largest-count+1..=largest, the highest
//!                                         first, disjoint; delay in µs
//!         | STREAM   0x03 offset:u64be len:u16be byte{len}
//!                                         bytes of the reliable stream
//!         | PIECE    0x04 id:u32be index:u16be count:u16be len:u16be byte{len}
//!                                         piece index (of count) of the
//!                                         best-effort message id
//! ```
//!
//! The reliable stream is the stream framing's `length message` frames,
//! so a message is split into pieces and joined by its offsets. Every
//! length and count is checked against what is left before it is used.

use std::fmt;

pub const PADDING: u8 = 0;
pub const PING: u8 = 1;
pub const ACK: u8 = 2;
pub const STREAM: u8 = 3;
pub const PIECE: u8 = 4;

/// The size of a packet's number.
pub const NUMBER: usize = 8;
/// The size of an ACK frame with no ranges.
pub const ACK_HEAD: usize = 1 + 4 + 1;
/// The size of one acknowledged range.
pub const ACK_RANGE: usize = 8 + 4;
/// The size of a STREAM frame's header.
pub const STREAM_HEAD: usize = 1 + 8 + 2;
/// The size of a PIECE frame's header.
pub const PIECE_HEAD: usize = 1 + 4 + 2 + 2 + 2;
/// The most ranges one ACK carries.
pub const MAX_RANGES: usize = 32;

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Ping,
    /// Ranges of packet numbers, highest first: (largest, count).
    Ack {
        delay_us: u32,
        ranges: Vec<(u64, u32)>,
    },
    Stream {
        offset: u64,
        data: &'a [u8],
    },
    Piece {
        id: u32,
        index: u16,
        count: u16,
        data: &'a [u8],
    },
}

/// Bytes that are not a packet: the link they came from is closed, as
/// they passed the framing's checksum and so came from a broken peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadPacket(pub String);

impl fmt::Display for BadPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad link packet: {}", self.0)
    }
}

fn bad<T>(what: impl Into<String>) -> Result<T, BadPacket> {
    Err(BadPacket(what.into()))
}

/// Reads fixed fields from a packet, checking each length first.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadPacket> {
        if self.b.len() < n {
            return bad(format!("{n} bytes wanted, {} left", self.b.len()));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, BadPacket> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, BadPacket> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, BadPacket> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, BadPacket> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
    }
}

/// Decodes a packet: its number and its frames (padding dropped).
pub fn decode(b: &[u8]) -> Result<(u64, Vec<Frame<'_>>), BadPacket> {
    let mut c = Cursor { b };
    let number = c.u64()?;
    let mut frames = Vec::new();
    while !c.b.is_empty() {
        match c.u8()? {
            PADDING => break,
            PING => frames.push(Frame::Ping),
            ACK => {
                let delay_us = c.u32()?;
                let n = c.u8()? as usize;
                if n == 0 || n > MAX_RANGES || c.b.len() < n * ACK_RANGE {
                    return bad(format!("an ACK of {n} ranges in {} bytes", c.b.len()));
                }
                let mut ranges = Vec::with_capacity(n);
                let mut floor = u64::MAX;
                for _ in 0..n {
                    let (largest, count) = (c.u64()?, c.u32()?);
                    // Disjoint, highest first, and within the numbers.
                    if count == 0 || largest >= floor || (count as u64) > largest.saturating_add(1) {
                        return bad(format!("ACK range {largest}/{count} out of order"));
                    }
                    floor = largest + 1 - count as u64;
                    // A gap of at least one between ranges.
                    floor = floor.saturating_sub(1);
                    ranges.push((largest, count));
                }
                frames.push(Frame::Ack { delay_us, ranges });
            }
            STREAM => {
                let offset = c.u64()?;
                let len = c.u16()? as usize;
                if offset.checked_add(len as u64).is_none() {
                    return bad("a STREAM frame past the end of the stream");
                }
                frames.push(Frame::Stream { offset, data: c.take(len)? });
            }
            PIECE => {
                let (id, index, count) = (c.u32()?, c.u16()?, c.u16()?);
                let len = c.u16()? as usize;
                if count == 0 || index >= count || len == 0 {
                    return bad(format!("PIECE {index} of {count}, {len} bytes"));
                }
                frames.push(Frame::Piece { id, index, count, data: c.take(len)? });
            }
            t => return bad(format!("unknown frame type {t}")),
        }
    }
    Ok((number, frames))
}

/// Starts a packet numbered `number` in `out`.
pub fn start(number: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&number.to_be_bytes());
}

/// Appends an ACK of `ranges` (highest first, at most [`MAX_RANGES`]).
pub fn ack(delay_us: u32, ranges: &[(u64, u32)], out: &mut Vec<u8>) {
    let n = ranges.len().min(MAX_RANGES);
    out.push(ACK);
    out.extend_from_slice(&delay_us.to_be_bytes());
    out.push(n as u8);
    for &(largest, count) in &ranges[..n] {
        out.extend_from_slice(&largest.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
    }
}

/// Appends a STREAM frame (at most 65535 bytes of `data`).
pub fn stream(offset: u64, data: &[u8], out: &mut Vec<u8>) {
    let n = data.len().min(u16::MAX as usize);
    out.push(STREAM);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&data[..n]);
}

/// Appends a PIECE frame.
pub fn piece(id: u32, index: u16, count: u16, data: &[u8], out: &mut Vec<u8>) {
    let n = data.len().min(u16::MAX as usize);
    out.push(PIECE);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&data[..n]);
}

/// Whether `b` is a packet that carries the first byte of its sender's
/// stream, which is where every link starts (its Hello).
pub fn starts_stream(b: &[u8]) -> bool {
    decode(b).is_ok_and(|(_, fs)| fs.iter().any(|f| matches!(f, Frame::Stream { offset: 0, data } if !data.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut b = Vec::new();
        start(7, &mut b);
        b.push(PING);
        ack(250, &[(100, 3), (90, 1), (5, 6)], &mut b);
        stream(1 << 40, b"hello", &mut b);
        piece(9, 2, 3, b"xy", &mut b);
        b.extend_from_slice(&[PADDING, 9, 9, 9]);
        let (n, fs) = decode(&b).unwrap();
        assert_eq!(n, 7);
        assert_eq!(
            fs,
            vec![
                Frame::Ping,
                Frame::Ack { delay_us: 250, ranges: vec![(100, 3), (90, 1), (5, 6)] },
                Frame::Stream { offset: 1 << 40, data: b"hello" },
                Frame::Piece { id: 9, index: 2, count: 3, data: b"xy" },
            ]
        );
        assert!(!starts_stream(&b));
        let mut h = Vec::new();
        start(0, &mut h);
        stream(0, b"x", &mut h);
        assert!(starts_stream(&h));
    }

    #[test]
    fn refuses_what_does_not_add_up() {
        let cases: Vec<Vec<u8>> = vec![
            vec![0; 7],
            [&[0u8; 8][..], &[9]].concat(),
            [&[0u8; 8][..], &[ACK, 0, 0, 0, 0, 0]].concat(),
            [&[0u8; 8][..], &[ACK, 0, 0, 0, 0, 200]].concat(),
            [&[0u8; 8][..], &[STREAM, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 1]].concat(),
            [&[0u8; 8][..], &[PIECE, 0, 0, 0, 0, 0, 3, 0, 3, 0, 1, 7]].concat(),
        ];
        for c in cases {
            assert!(decode(&c).is_err(), "{c:?}");
        }
        // Ranges that overlap or go up.
        for r in [[(5u64, 1u32), (5, 1)], [(5, 1), (6, 1)], [(5, 2), (4, 1)], [(3, 5), (0, 1)]] {
            let mut b = vec![0; 8];
            ack(0, &r, &mut b);
            assert!(decode(&b).is_err(), "{r:?}");
        }
    }
}
