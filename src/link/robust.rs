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

use super::crc32c::{crc32c, Crc32c};
use crate::wire::message::MAX_MESSAGE;
use std::ops::Range;

/// The delimiter.
const ZERO: u8 = 0;
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

/// Where the first zero of `b` is: eight bytes at a time.
fn first_zero(b: &[u8]) -> Option<usize> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let w = u64::from_le_bytes(w);
        if w.wrapping_sub(LOW) & !w & HIGH != 0 {
            break;
        }
        at += 8;
    }
    b[at..].iter().position(|&x| x == ZERO).map(|i| at + i)
}

/// Appends bytes COBS-encoded to a buffer, a piece at a time: no zero
/// byte in what it appends. A block is a code byte, then up to 254 bytes
/// that are not zero; the code is their number plus one, and a block of
/// fewer than 254 stands for them and a zero.
struct CobsWriter<'a> {
    out: &'a mut Vec<u8>,
    code_at: usize,
}

impl<'a> CobsWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> CobsWriter<'a> {
        let code_at = out.len();
        out.push(1);
        CobsWriter { out, code_at }
    }

    fn write(&mut self, data: &[u8]) {
        // Room for the worst case: a code byte for every 254 bytes, and
        // one for the block this piece may fill; cut back at the end.
        let mut w = self.out.len();
        self.out.resize(w + data.len() + data.len() / 254 + 1, 0);
        let out = &mut self.out[..];
        let (mut code_at, mut i) = (self.code_at, 0);
        while i < data.len() {
            if data[i] == ZERO {
                // Each zero ends a block, and the next starts after it:
                // k zeros are k blocks of code 1, the last one open.
                let k = data[i..].iter().position(|&b| b != ZERO).unwrap_or(data.len() - i);
                out[w..w + k].fill(1);
                code_at = w + k - 1;
                (w, i) = (w + k, i + k);
                continue;
            }
            let room = 0xff - out[code_at] as usize;
            let end = data.len().min(i + room);
            let n = first_zero(&data[i..end]).unwrap_or(end - i);
            out[w..w + n].copy_from_slice(&data[i..i + n]);
            out[code_at] += n as u8;
            (w, i) = (w + n, i + n);
            if out[code_at] == 0xff {
                (code_at, out[w]) = (w, 1);
                w += 1;
            }
        }
        self.out.truncate(w);
        self.code_at = code_at;
    }
}

/// Decodes the COBS bytes `b` (no zero among them) in place; the decoded
/// length, or None if they are not COBS.
fn cobs_decode(b: &mut [u8]) -> Option<usize> {
    let (mut r, mut w) = (0, 0);
    while r < b.len() {
        if b[r] == 1 {
            // A run of empty blocks: each stands for a zero, but for a
            // last one at the very end.
            let k = b[r..].iter().position(|&c| c != 1).unwrap_or(b.len() - r);
            r += k;
            let zeros = if r < b.len() { k } else { k - 1 };
            b[w..w + zeros].fill(ZERO);
            w += zeros;
            continue;
        }
        let code = b[r] as usize;
        if code == 0 || r + code > b.len() {
            return None;
        }
        if code > 1 {
            b.copy_within(r + 1..r + code, w);
            w += code - 1;
        }
        r += code;
        if code < 0xff && r < b.len() {
            b[w] = ZERO;
            w += 1;
        }
    }
    Some(w)
}

impl Robust {
    /// Decodes the first frame of `input` in place: a frame whose checksum
    /// holds and that is not this end's own echo, or bytes to skip.
    pub fn decode(&self, input: &mut [u8]) -> Found {
        let start = input.iter().position(|&b| b != ZERO).unwrap_or(input.len());
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
        let Some(n) = cobs_decode(&mut input[..end]) else { return Found::Skip(used) };
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
        let mut cobs = CobsWriter::new(out);
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

    /// COBS a byte at a time, as the paper gives it: what the encoder,
    /// which copies runs, must write byte for byte.
    fn cobs_by_bytes(data: &[u8], out: &mut Vec<u8>) {
        let mut code_at = out.len();
        out.push(1);
        for &b in data {
            if b != ZERO {
                out.push(b);
                out[code_at] += 1;
            }
            if b == ZERO || out[code_at] == 0xff {
                code_at = out.len();
                out.push(1);
            }
        }
    }

    fn cobs_encode(data: &[u8], out: &mut Vec<u8>) {
        CobsWriter::new(out).write(data);
    }

    #[test]
    fn cobs_in_pieces_is_cobs_by_bytes() {
        let mut seed = 1u32;
        for n in (0..2000).step_by(7) {
            // Zeros often, or only now and then: full blocks across pieces.
            let often = n % 2 == 0;
            let data: Vec<u8> = (0..n)
                .map(|i| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    match often {
                        true => [0, 1, 0xff, (seed >> 16) as u8][(seed >> 28) as usize % 4],
                        false => [(i % 255 + 1) as u8, 0][usize::from(seed >> 22 == 0)],
                    }
                })
                .collect();
            let mut want = vec![9];
            cobs_by_bytes(&data, &mut want);
            let mut got = vec![9];
            let mut w = CobsWriter::new(&mut got);
            for piece in data.chunks(1 + n % 300) {
                w.write(piece);
            }
            assert_eq!(got, want, "n {n}");
            let k = cobs_decode(&mut got[1..]).unwrap();
            assert_eq!(&got[1..1 + k], &data[..], "n {n}");
        }
        for n in [0usize, 7, 8, 9, 253, 254, 255, 1000] {
            for at in 0..n.min(20) {
                let mut data = vec![5u8; n];
                data[at] = 0;
                assert_eq!(first_zero(&data), Some(at));
            }
            assert_eq!(first_zero(&vec![0x80u8; n]), None);
        }
    }

    #[test]
    fn cobs_round_trips_and_leaves_no_zero() {
        for n in [0usize, 1, 253, 254, 255, 256, 508, 509, 1000] {
            for fill in [0u8, 1, 0xff] {
                let data: Vec<u8> = (0..n).map(|i| if i % 5 == 0 { fill } else { (i % 251) as u8 + 1 }).collect();
                let mut enc = Vec::new();
                cobs_encode(&data, &mut enc);
                assert!(!enc.contains(&0), "n {n}");
                assert!(enc.len() <= data.len() + data.len() / 254 + 1, "n {n}: {}", enc.len());
                let k = cobs_decode(&mut enc).unwrap();
                assert_eq!(&enc[..k], &data[..], "n {n} fill {fill}");
            }
        }
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
