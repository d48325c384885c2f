//! The robust framing: self-delimiting, checked frames for transports that
//! lose, split, merge, duplicate or corrupt bytes (UDP through socat, a
//! serial line, raw Ethernet). Each frame carries one link packet
//! (`packet.rs`); the reliability layer above it (`reliable.rs`) makes up
//! for the frames that are lost.
//!
//! ```text
//! frame = 0x00  COBS(tag:u32be packet crc:u32be)  0x00
//! crc   = CRC-32C (Castagnoli) of tag and packet
//! ```
//!
//! COBS (Cheshire and Baker, 1999) leaves no zero byte inside a frame, so
//! a zero always delimits: after any loss or corruption the receiver is
//! back in step at the next zero. Every length is bounded before anything
//! is decoded, and a frame is taken only if its checksum holds, so no
//! length is trusted that no check covers. The tag names the sender: a
//! frame with this end's own tag is its own echo (a raw interface sees its
//! outgoing frames), and once the link knows its peer's tag, a frame with
//! any other (a stale peer, a second forked child) is not this link's.

use crate::wire::message::MAX_MESSAGE;
use r2_codec::cobs::{self, first_not, first_zero, ZERO};
use r2_codec::crc32c::{crc32c, Crc32c};
use std::ops::Range;

/// The tag and the checksum around a packet.
const OVERHEAD: usize = 4 + 4;
/// The largest packet a frame carries: any message in one piece.
pub const MAX_PACKET: usize = MAX_MESSAGE + 64;
/// The shortest packet: a packet number.
pub const MIN_PACKET: usize = super::packet::NUMBER;
/// The longest frame body (tag, packet, checksum) once COBS-encoded: one
/// code byte per 254 bytes, and one more.
pub const MAX_ENCODED: usize = (OVERHEAD + MAX_PACKET) + (OVERHEAD + MAX_PACKET) / 254 + 1;

/// The bytes a frame of a packet of `len` bytes takes, delimiters included.
pub fn frame_len(len: usize) -> usize {
    let body = OVERHEAD + len;
    body + body / 254 + 1 + 2
}

/// The largest packet whose frame takes at most `frame` bytes.
pub fn packet_fits(frame: usize) -> usize {
    let mut n = frame.saturating_sub(OVERHEAD + 3) * 254 / 255;
    while n > 0 && frame_len(n + 1) <= frame {
        n += 1;
    }
    while n > 0 && frame_len(n) > frame {
        n -= 1;
    }
    n
}

/// What [`Robust::decode`] found at the start of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// A frame of `used` bytes from the sender tagged `tag`, whose packet
    /// is `input[packet]`.
    Frame { used: usize, tag: u32, packet: Range<usize> },
    /// The first `n` bytes are no frame of this link's: drop them.
    Skip(usize),
    /// The start of a frame, not whole yet.
    Partial,
}

/// Checked, delimited frames, sent with tag `own`.
#[derive(Clone, Copy, Debug)]
pub struct Robust {
    own: u32,
}

impl Robust {
    /// Frames sent with the tag `own`.
    pub fn new(own: u32) -> Robust {
        Robust { own }
    }

    pub fn own(&self) -> u32 {
        self.own
    }
}

impl Robust {
    /// Decodes the first frame of `input` in place: a frame whose checksum
    /// holds and that is not this end's own echo, or bytes to skip.
    pub fn decode(&self, input: &mut [u8]) -> Found {
        let start = first_not(input, ZERO).unwrap_or(input.len());
        if start > 0 {
            return Found::Skip(start);
        }
        let Some(end) = first_zero(input) else {
            // No delimiter within the longest frame: noise.
            return match input.len() > MAX_ENCODED {
                true => Found::Skip(input.len()),
                false => Found::Partial,
            };
        };
        let used = end + 1;
        if end > MAX_ENCODED {
            return Found::Skip(used);
        }
        let Some(n) = cobs::decode(&mut input[..end]) else { return Found::Skip(used) };
        if !(OVERHEAD + MIN_PACKET..=OVERHEAD + MAX_PACKET).contains(&n) {
            return Found::Skip(used);
        }
        let body = &input[..n];
        let crc = u32::from_be_bytes([body[n - 4], body[n - 3], body[n - 2], body[n - 1]]);
        if crc32c(&body[..n - 4]) != crc {
            return Found::Skip(used);
        }
        let tag = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        if tag == self.own {
            return Found::Skip(used);
        }
        Found::Frame { used, tag, packet: 4..n - 4 }
    }

    /// Appends the frame of `packet` to `out`.
    pub fn encode(&self, packet: &[u8], out: &mut Vec<u8>) {
        let tag = self.own.to_be_bytes();
        let crc = Crc32c::new().take(&tag).take(packet).value().to_be_bytes();
        out.reserve(frame_len(packet.len()));
        out.push(ZERO);
        let mut cobs = cobs::Writer::new(out);
        cobs.write(&tag);
        cobs.write(packet);
        cobs.write(&crc);
        out.push(ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::{Kind, Packet};
    use crate::wire::NodeId;

    /// Every message `decode` takes from `bytes`, in order, skipping what
    /// is not a frame.
    fn decode_all(f: &Robust, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut input = bytes.to_vec();
        let (mut at, mut got) = (0, Vec::new());
        while at < input.len() {
            match f.decode(&mut input[at..]) {
                Found::Frame { used, packet, .. } => {
                    got.push(input[at + packet.start..at + packet.end].to_vec());
                    at += used;
                }
                Found::Skip(n) => at += n,
                Found::Partial => break,
            }
        }
        got
    }

    fn msgs() -> Vec<Vec<u8>> {
        [0usize, 1, 253, 254, 255, 508, 4000, 65_536]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let body: Vec<u8> = (0..n).map(|j| [0u8, 1, 0xff, (j * 7 + i) as u8][j % 4]).collect();
                Packet::new(Kind::To, NodeId([i as u8; 32]), &body).bytes().to_vec()
            })
            .collect()
    }

    fn frames(f: &Robust, ms: &[Vec<u8>]) -> Vec<Vec<u8>> {
        ms.iter()
            .map(|m| {
                let mut out = Vec::new();
                f.encode(m, &mut out);
                out
            })
            .collect()
    }

    /// Frames cut at any point, merged, duplicated, or with any bit
    /// flipped: the receiver takes exactly the frames that arrived whole,
    /// and never a message that was not sent.
    #[test]
    fn resynchronises_after_every_cut_merge_duplicate_and_flip() {
        let (a, b) = (Robust::new(7), Robust::new(9));
        let ms = msgs();
        let fs = frames(&a, &ms);
        let all: Vec<u8> = fs.concat();
        assert!(decode_all(&b, &all) == ms, "merged into one stream");
        let twice: Vec<u8> = fs.iter().flat_map(|f| [f.clone(), f.clone()].concat()).collect();
        assert_eq!(decode_all(&b, &twice).len(), 2 * ms.len(), "duplicates arrive as duplicates");
        // A piece of each frame lost (not just its last delimiter, which
        // the next frame's first one stands in for): the frames around it
        // survive.
        for (i, f) in fs.iter().enumerate() {
            for cut in [1, f.len() / 2, f.len() - 2] {
                let mut bytes = fs[..i].concat();
                bytes.extend_from_slice(&f[..cut]);
                bytes.extend(fs[i + 1..].concat());
                let mut want = ms.clone();
                want.remove(i);
                assert!(decode_all(&b, &bytes) == want, "frame {i} cut at {cut}");
            }
        }
        // Any one bit flipped in a small frame: that frame is lost, no other.
        let small = &fs[1];
        for bit in 0..small.len() * 8 {
            let mut f = small.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            let bytes = [fs[0].clone(), f, fs[2].clone()].concat();
            let got = decode_all(&b, &bytes);
            assert!(got.iter().all(|m| ms.contains(m)), "bit {bit}: a message that was not sent");
            assert!(got.contains(&ms[0]) && got.contains(&ms[2]), "bit {bit}: a neighbour frame lost");
        }
    }

    /// Its own echo, noise, and a run longer than any frame are not
    /// taken; a frame from anyone else says whose it is.
    #[test]
    fn ignores_echoes_and_noise_and_names_the_sender() {
        let (a, b) = (Robust::new(7), Robust::new(9));
        let m = msgs()[2].clone();
        let one = std::slice::from_ref(&m);
        let fa = frames(&a, one).concat();
        assert!(decode_all(&a, &fa).is_empty(), "its own echo");
        let mut copy = fa.clone();
        assert!(matches!(b.decode(&mut copy[1..]), Found::Frame { tag: 7, .. }));
        let noise: Vec<u8> = (0..5000u32).map(|i| (i * 131 % 255) as u8 + 1).collect();
        assert_eq!(decode_all(&b, &[&noise[..], &[0], &fa[..], &noise[..100]].concat()), vec![m.clone()]);
        let mut long = vec![1u8; MAX_ENCODED + 1];
        assert_eq!(b.decode(&mut long), Found::Skip(MAX_ENCODED + 1));
        let mut short = vec![5u8; 10];
        assert_eq!(b.decode(&mut short), Found::Partial);
    }

    #[test]
    fn sizes_add_up() {
        for frame in [100usize, 1200, 1500, 8192, 65_000] {
            let n = packet_fits(frame);
            assert!(frame_len(n) <= frame && frame_len(n + 1) > frame, "{frame}: {n}");
            let mut out = Vec::new();
            Robust::new(1).encode(&vec![0xff; n], &mut out);
            assert!(out.len() <= frame, "{frame}: {}", out.len());
        }
    }
}
