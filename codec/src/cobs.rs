//! COBS (Cheshire and Baker, 1999): an encoding that leaves no zero byte
//! in what it writes, so that a zero can delimit frames. A block is a
//! code byte, then up to 254 bytes that are not zero; the code is their
//! number plus one, and a block of fewer than 254 stands for them and a
//! zero. Runs are found 16 bytes at a time (8 where the processor has no
//! vector registers r2 uses) and copied whole.

/// The delimiter, which no encoded byte is.
pub const ZERO: u8 = 0;

/// Eight bytes as one word, the first in the lowest byte (as the CRC
/// instructions take them too).
pub(crate) fn word(chunk: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(chunk);
    u64::from_le_bytes(w)
}

/// Bytes looked at together by the scans, 16 at a time in the vector
/// registers that every x86_64 (SSE2) and aarch64 (NEON) processor has.
const BLOCK: usize = 64;

/// Where the first zero byte of `b` is.
pub fn first_zero(b: &[u8]) -> Option<usize> {
    first_where(b, ZERO, true)
}

/// Where the first byte of `b` that is not `v` is.
pub fn first_not(b: &[u8], v: u8) -> Option<usize> {
    first_where(b, v, false)
}

/// Where the first byte of `b` is that is `v` (`equal`) or is not.
#[inline(always)]
fn first_where(b: &[u8], v: u8, equal: bool) -> Option<usize> {
    let mut blocks = b.chunks_exact(BLOCK);
    let mut at = 0;
    for block in &mut blocks {
        if let Some(i) = in_block(block, v, equal) {
            return Some(at + i);
        }
        at += BLOCK;
    }
    in_words(blocks.remainder(), v, equal).map(|i| at + i)
}

/// [`first_where`] eight bytes at a time, then one: for what is left
/// after the blocks, for blocks on other processors, and for the tests to
/// hold the vector code to.
#[inline(always)]
fn in_words(b: &[u8], v: u8, equal: bool) -> Option<usize> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let all = u64::from_le_bytes([v; 8]);
    let mut words = b.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        // The high bit of each byte that is `v` (exact for the lowest one:
        // a borrow may mark one above it), or a bit of each that is not.
        let x = word(w) ^ all;
        let m = if equal { x.wrapping_sub(LOW) & !x & HIGH } else { x };
        if m != 0 {
            return Some(at + (m.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words.remainder().iter().position(|&x| (x == v) == equal).map(|i| at + i)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
use in_words as in_block;

/// [`first_where`] within a block of [`BLOCK`] bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn in_block(block: &[u8], v: u8, equal: bool) -> Option<usize> {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    assert!(block.len() == BLOCK);
    let p = block.as_ptr().cast::<__m128i>();
    // SAFETY: the four loads are of the block's 64 bytes (just checked),
    // unaligned loads, which SSE2, part of x86_64, has.
    let eq = unsafe {
        let t = _mm_set1_epi8(v as i8);
        let e = [0, 1, 2, 3].map(|i| _mm_cmpeq_epi8(_mm_loadu_si128(p.add(i)), t));
        // Most blocks have no hit: one look at all four first (no byte
        // equal, or all of them).
        let none = match equal {
            true => _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(e[0], e[1]), _mm_or_si128(e[2], e[3]))) == 0,
            false => _mm_movemask_epi8(_mm_and_si128(_mm_and_si128(e[0], e[1]), _mm_and_si128(e[2], e[3]))) == 0xffff,
        };
        if none {
            return None;
        }
        e.iter().enumerate().fold(0u64, |m, (i, &x)| m | u64::from(_mm_movemask_epi8(x) as u16) << (16 * i))
    };
    let hits = if equal { eq } else { !eq };
    Some(hits.trailing_zeros() as usize)
}

/// [`first_where`] within a block of [`BLOCK`] bytes.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn in_block(block: &[u8], v: u8, equal: bool) -> Option<usize> {
    use std::arch::aarch64::{
        vceqq_u8, vdupq_n_u8, vget_lane_u64, vld1q_u8, vmvnq_u8, vreinterpret_u64_u8, vreinterpretq_u16_u8, vshrn_n_u16,
    };
    assert!(block.len() == BLOCK);
    (0..BLOCK / 16).find_map(|i| {
        // SAFETY: the load is of 16 of the block's 64 bytes (just
        // checked); NEON is part of aarch64.
        let nibbles = unsafe {
            let eq = vceqq_u8(vld1q_u8(block.as_ptr().add(16 * i)), vdupq_n_u8(v));
            let hits = if equal { eq } else { vmvnq_u8(eq) };
            // Four bits a byte, the first byte lowest.
            vget_lane_u64::<0>(vreinterpret_u64_u8(vshrn_n_u16::<4>(vreinterpretq_u16_u8(hits))))
        };
        (nibbles != 0).then(|| 16 * i + (nibbles.trailing_zeros() / 4) as usize)
    })
}

/// Appends bytes COBS-encoded to a buffer, a piece at a time, as if the
/// pieces were one.
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
    /// Where the code byte of the open block is.
    code_at: usize,
}

impl<'a> Writer<'a> {
    /// Starts the encoding at the end of `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Writer<'a> {
        let code_at = out.len();
        out.push(1);
        Writer { out, code_at }
    }

    pub fn write(&mut self, data: &[u8]) {
        self.out.reserve(data.len() + data.len() / 254 + 1);
        let mut i = 0;
        while i < data.len() {
            if data[i] == ZERO {
                // Each zero ends a block, and the next starts after it:
                // k zeros are k blocks of code 1, the last one open.
                let k = first_not(&data[i..], ZERO).unwrap_or(data.len() - i);
                self.out.resize(self.out.len() + k, 1);
                self.code_at = self.out.len() - 1;
                i += k;
                continue;
            }
            let room = 0xff - self.out[self.code_at] as usize;
            let end = data.len().min(i + room);
            let n = first_zero(&data[i..end]).unwrap_or(end - i);
            self.out.extend_from_slice(&data[i..i + n]);
            self.out[self.code_at] += n as u8;
            i += n;
            if self.out[self.code_at] == 0xff {
                self.code_at = self.out.len();
                self.out.push(1);
            }
        }
    }
}

/// Decodes the COBS bytes `b` (no zero among them) in place; the decoded
/// length, or None if they are not COBS.
pub fn decode(b: &mut [u8]) -> Option<usize> {
    let (mut r, mut w) = (0, 0);
    while r < b.len() {
        if b[r] == 1 {
            // A run of empty blocks: each stands for a zero, but for a
            // last one at the very end.
            let k = first_not(&b[r..], 1).unwrap_or(b.len() - r);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// COBS a byte at a time, as the paper gives it: what the encoder,
    /// which copies runs, must write byte for byte.
    fn by_bytes(data: &[u8], out: &mut Vec<u8>) {
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

    fn encode(data: &[u8], out: &mut Vec<u8>) {
        Writer::new(out).write(data);
    }

    #[test]
    fn in_pieces_is_cobs_by_bytes() {
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
            by_bytes(&data, &mut want);
            let mut got = vec![9];
            let mut w = Writer::new(&mut got);
            for piece in data.chunks(1 + n % 300) {
                w.write(piece);
            }
            assert_eq!(got, want, "n {n}");
            let k = decode(&mut got[1..]).unwrap();
            assert_eq!(&got[1..1 + k], &data[..], "n {n}");
        }
        // Long runs of zeros and of ones, whole and in pieces.
        for n in [1usize, 7, 8, 9, 254, 255, 4000] {
            for fill in [0u8, 1] {
                let data = vec![fill; n];
                let (mut want, mut got) = (Vec::new(), Vec::new());
                by_bytes(&data, &mut want);
                let mut w = Writer::new(&mut got);
                for piece in data.chunks(3) {
                    w.write(piece);
                }
                assert_eq!(got, want, "{n} of {fill}");
                let k = decode(&mut got).unwrap();
                assert_eq!(&got[..k], &data[..], "{n} of {fill}");
            }
        }
    }

    #[test]
    fn finds_the_first_zero_and_the_first_other_byte() {
        for n in [0usize, 7, 8, 9, 15, 16, 17, 63, 64, 65, 127, 128, 129, 200, 253, 254, 255, 1000] {
            let late = [n / 2, n.saturating_sub(1), 31, 63, 64, 65, 100, 127, 128, 150, 191, 192];
            for at in (0..n.min(20)).chain(late).filter(|&at| at < n) {
                for start in [0, 1, 5] {
                    let mut data = vec![5u8; n + start];
                    data[start + at] = 0;
                    // A second hit after the first, in the same block or a later one.
                    for later in [start + at + 1, start + at + 9, start + at + 70] {
                        if later < data.len() {
                            data[later] = 0;
                        }
                    }
                    let d = &data[start..];
                    assert_eq!(first_zero(d), Some(at), "{n} {at} {start}");
                    assert_eq!(first_not(d, 5), Some(at), "{n} {at} {start}");
                    data[start + at] = 6;
                    assert_eq!(first_not(&data[start..], 5), Some(at), "{n} {at} {start}");
                }
            }
            for v in [0u8, 1, 0x80, 0xff] {
                assert_eq!(first_not(&vec![v; n], v), None);
            }
            assert_eq!(first_zero(&vec![0x80u8; n]), None);
            assert_eq!(first_zero(&vec![0x01u8; n]), None);
        }
    }

    /// The vector code finds what eight bytes at a time find, in blocks
    /// of every mix.
    #[test]
    fn blocks_by_vectors_and_by_words_agree() {
        let mut seed = 7u32;
        for _ in 0..20_000 {
            let block: Vec<u8> = (0..BLOCK)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    // Mostly one value, with others now and then.
                    [(seed >> 24) as u8 % 3, 1, 1, 1, 1, 1, 1, 1][(seed >> 13) as usize % 8]
                })
                .collect();
            for (v, equal) in [(0, true), (1, false), (1, true), (2, false)] {
                assert_eq!(in_block(&block, v, equal), in_words(&block, v, equal), "{block:?} {v} {equal}");
            }
        }
    }

    #[test]
    fn round_trips_and_leaves_no_zero() {
        for n in [0usize, 1, 253, 254, 255, 256, 508, 509, 1000] {
            for fill in [0u8, 1, 0xff] {
                let data: Vec<u8> = (0..n).map(|i| if i % 5 == 0 { fill } else { (i % 251) as u8 + 1 }).collect();
                let mut enc = Vec::new();
                encode(&data, &mut enc);
                assert!(!enc.contains(&ZERO));
                assert!(enc.len() <= data.len() + data.len() / 254 + 1, "n {n}: {}", enc.len());
                let k = decode(&mut enc).unwrap();
                assert_eq!(&enc[..k], &data[..]);
            }
        }
    }

    #[test]
    fn rejects_what_is_not_cobs() {
        // A code that runs past the end, and a zero inside.
        assert_eq!(decode(&mut [5, 1, 2]), None);
        assert_eq!(decode(&mut [2, 1, 0, 1]), None);
    }
}
