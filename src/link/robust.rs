//! The robust framing: self-delimiting, checked frames for transports that
//! lose, split, merge, duplicate or corrupt bytes (UDP through socat, a
//! serial line). Groundwork for such links: no link chooses it yet, as it
//! needs the reliability layer above it (a lost frame is a lost message).
//!
//! ```text
//! frame = 0x00  COBS(tag:u32be message crc:u32be)  0x00
//! crc   = CRC-32C (Castagnoli) of tag and message
//! ```
//!
//! COBS (Cheshire and Baker, 1999) leaves no zero byte inside a frame, so
//! a zero always delimits: after any loss or corruption the receiver is
//! back in step at the next zero. Every length is bounded before anything
//! is decoded, and a frame is taken only if its checksum holds, so no
//! length is trusted that no check covers. The tag names the sender: a
//! frame with this end's own tag is its own echo (a raw interface sees its
//! outgoing frames), and once the peer's tag is known, a frame with any
//! other (a stale peer, a second forked child) is not this link's.

use super::framing::{Decoded, Framing, FramingError, Header};
use crate::wire::message::{HEADER, MAX_MESSAGE};
use std::sync::atomic::{AtomicU64, Ordering};

/// The delimiter.
const ZERO: u8 = 0;
/// The tag and the checksum around a message.
const OVERHEAD: usize = 4 + 4;
/// The longest frame body (tag, message, checksum) once COBS-encoded: one
/// code byte per 254 bytes, and one more.
pub const MAX_ENCODED: usize = (OVERHEAD + MAX_MESSAGE) + (OVERHEAD + MAX_MESSAGE) / 254 + 1;

/// No peer tag known yet.
const UNKNOWN: u64 = u64::MAX;

/// Checked, delimited frames, sent with tag `own`.
#[derive(Debug)]
pub struct Robust {
    own: u32,
    peer: AtomicU64,
    datagrams: bool,
}

impl Robust {
    /// Frames sent with the tag `own`; `datagrams`: each write is one
    /// datagram, so writes may not join.
    pub fn new(own: u32, datagrams: bool) -> Robust {
        Robust { own, peer: AtomicU64::new(UNKNOWN), datagrams }
    }

    /// Takes only frames with the peer's tag from now on.
    pub fn expect_peer(&self, tag: u32) {
        self.peer.store(tag as u64, Ordering::Relaxed);
    }

    /// The peer's tag, once known.
    pub fn peer(&self) -> Option<u32> {
        u32::try_from(self.peer.load(Ordering::Relaxed)).ok()
    }
}

/// CRC-32C, reflected, polynomial 0x82F63B78, as in iSCSI and SCTP.
pub fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !bytes.iter().fold(!0u32, |c, &b| TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

/// Appends `data` COBS-encoded to `out`: no zero byte in what it appends.
fn cobs_encode(data: &[u8], out: &mut Vec<u8>) {
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

/// Decodes the COBS bytes `b` (no zero among them) in place; the decoded
/// length, or None if they are not COBS.
fn cobs_decode(b: &mut [u8]) -> Option<usize> {
    let (mut r, mut w) = (0, 0);
    while r < b.len() {
        let code = b[r] as usize;
        if code == 0 || r + code > b.len() {
            return None;
        }
        b.copy_within(r + 1..r + code, w);
        w += code - 1;
        r += code;
        if code < 0xff && r < b.len() {
            b[w] = ZERO;
            w += 1;
        }
    }
    Some(w)
}

impl Framing for Robust {
    fn name(&self) -> &'static str {
        "robust"
    }

    fn decode(&self, input: &mut [u8]) -> Result<Decoded, FramingError> {
        let start = input.iter().position(|&b| b != ZERO).unwrap_or(input.len());
        if start > 0 {
            return Ok(Decoded::Skip(start));
        }
        let Some(end) = input.iter().position(|&b| b == ZERO) else {
            // No delimiter within the longest frame: noise.
            return Ok(match input.len() > MAX_ENCODED {
                true => Decoded::Skip(input.len()),
                false => Decoded::Partial(None),
            });
        };
        let used = end + 1;
        let skip = Ok(Decoded::Skip(used));
        if end > MAX_ENCODED {
            return skip;
        }
        let Some(n) = cobs_decode(&mut input[..end]) else { return skip };
        if !(OVERHEAD + HEADER..=OVERHEAD + MAX_MESSAGE).contains(&n) {
            return skip;
        }
        let body = &input[..n];
        let crc = u32::from_be_bytes([body[n - 4], body[n - 3], body[n - 2], body[n - 1]]);
        if crc32c(&body[..n - 4]) != crc {
            return skip;
        }
        let tag = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let peer = self.peer.load(Ordering::Relaxed);
        if tag == self.own || (peer != UNKNOWN && tag as u64 != peer) {
            return skip;
        }
        Ok(Decoded::Message { used, msg: 4..n - 4 })
    }

    fn header(&self, _len: usize) -> Option<Header> {
        None
    }

    fn encode(&self, msg: &[u8], out: &mut Vec<u8>) {
        let mut body = Vec::with_capacity(OVERHEAD + msg.len());
        body.extend_from_slice(&self.own.to_be_bytes());
        body.extend_from_slice(msg);
        let crc = crc32c(&body);
        body.extend_from_slice(&crc.to_be_bytes());
        out.reserve(body.len() + body.len() / 254 + 3);
        out.push(ZERO);
        cobs_encode(&body, out);
        out.push(ZERO);
    }

    fn joins_writes(&self) -> bool {
        !self.datagrams
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
            match f.decode(&mut input[at..]).unwrap() {
                Decoded::Message { used, msg } => {
                    got.push(input[at + msg.start..at + msg.end].to_vec());
                    at += used;
                }
                Decoded::Skip(n) => at += n,
                Decoded::Partial(_) => break,
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

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
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
        let (a, b) = (Robust::new(7, false), Robust::new(9, false));
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

    /// Its own echo, a stranger once the peer is known, noise, and a run
    /// longer than any frame are not taken.
    #[test]
    fn ignores_echoes_strangers_and_noise() {
        let (a, b, c) = (Robust::new(7, false), Robust::new(9, false), Robust::new(11, false));
        let m = msgs()[2].clone();
        let one = std::slice::from_ref(&m);
        let (fa, fc) = (frames(&a, one).concat(), frames(&c, one).concat());
        assert!(decode_all(&a, &fa).is_empty(), "its own echo");
        assert_eq!(decode_all(&b, &fc).len(), 1, "any peer until one is expected");
        b.expect_peer(7);
        assert_eq!(b.peer(), Some(7));
        assert!(decode_all(&b, &fc).is_empty(), "a stranger");
        let noise: Vec<u8> = (0..5000u32).map(|i| (i * 131 % 255) as u8 + 1).collect();
        assert_eq!(decode_all(&b, &[&noise[..], &[0], &fa[..], &noise[..100]].concat()), vec![m.clone()]);
        let mut long = vec![1u8; MAX_ENCODED + 1];
        assert_eq!(b.decode(&mut long), Ok(Decoded::Skip(MAX_ENCODED + 1)));
        let mut short = vec![5u8; 10];
        assert_eq!(b.decode(&mut short), Ok(Decoded::Partial(None)));
    }
}
