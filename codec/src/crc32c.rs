//! CRC-32C (Castagnoli): reflected, polynomial 0x82F63B78, initial and
//! final value all ones, as in iSCSI, SCTP and ext4. The robust framing
//! checks every frame with it (`src/link/robust.rs`).
//!
//! The processor's own instruction does it where there is one (SSE 4.2 on
//! x86_64, the CRC extension on aarch64), found at run time, eight bytes
//! at a time, on three runs of [`RUN`] bytes at once: the instruction takes
//! three cycles but can start one each cycle, so three independent runs go
//! up to three times as fast as one, and are joined by [`shift`], a table.
//! A frame of 8 KiB takes about 0.5 µs (1.1 as one run). Elsewhere a table
//! takes a byte at a time, several times slower, with the same result.

use crate::cobs::word;

/// The CRC-32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    Crc32c::new().take(bytes).value()
}

/// A CRC-32C taken over several pieces, as if they were one.
#[derive(Clone, Copy, Debug)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Crc32c {
        Crc32c::new()
    }
}

impl Crc32c {
    pub fn new() -> Crc32c {
        Crc32c(!0)
    }

    /// Takes `bytes` in, after what came before.
    #[must_use]
    pub fn take(self, bytes: &[u8]) -> Crc32c {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the processor has SSE 4.2, just checked.
            return Crc32c(unsafe { x86_64(self.0, bytes) });
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("crc") {
            // SAFETY: the processor has the CRC extension, just checked.
            return Crc32c(unsafe { aarch64(self.0, bytes) });
        }
        Crc32c(by_table(self.0, bytes))
    }

    pub fn value(self) -> u32 {
        !self.0
    }
}

/// The bytes of each of the three runs taken at once.
const RUN: usize = 256;

/// The polynomial, reflected.
const POLY: u32 = 0x82F6_3B78;

/// The CRC register after `n` zero bytes more, one bit at a time.
const fn zeros(mut c: u32, n: usize) -> u32 {
    let mut k = 0;
    while k < 8 * n {
        c = if c & 1 != 0 { POLY ^ (c >> 1) } else { c >> 1 };
        k += 1;
    }
    c
}

/// [`zeros`] of [`RUN`] bytes, a table for each byte of the register:
/// the register is linear in its bits, so a run taken from a register of
/// 0 joins what came before it as `shift(before) ^ run`.
const SHIFT: [[u32; 256]; 4] = {
    let mut bit = [0u32; 32];
    let mut i = 0;
    while i < 32 {
        bit[i] = zeros(1 << i, RUN);
        i += 1;
    }
    let mut t = [[0u32; 256]; 4];
    let mut byte = 0;
    while byte < 4 {
        let mut v = 0;
        while v < 256 {
            let mut x = 0;
            let mut b = 0;
            while b < 8 {
                if v & (1 << b) != 0 {
                    x ^= bit[8 * byte + b];
                }
                b += 1;
            }
            t[byte][v] = x;
            v += 1;
        }
        byte += 1;
    }
    t
};

/// The register `c` after [`RUN`] zero bytes.
fn shift(c: u32) -> u32 {
    let [a, b, d, e] = c.to_le_bytes();
    SHIFT[0][a as usize] ^ SHIFT[1][b as usize] ^ SHIFT[2][d as usize] ^ SHIFT[3][e as usize]
}

/// Takes `bytes` into the register `c` with `step`, the instruction for
/// eight bytes, and `byte`, the one for one: three runs at a time while
/// there are as many bytes, then one.
#[inline(always)]
fn interleaved(c: u32, bytes: &[u8], step: impl Fn(u32, u64) -> u32, byte: impl Fn(u32, u8) -> u32) -> u32 {
    let mut c = c;
    let mut triples = bytes.chunks_exact(3 * RUN);
    for t in &mut triples {
        let (x, rest) = t.split_at(RUN);
        let (y, z) = rest.split_at(RUN);
        let (mut a, mut b, mut d) = (c, 0, 0);
        for ((u, v), w) in x.chunks_exact(8).zip(y.chunks_exact(8)).zip(z.chunks_exact(8)) {
            a = step(a, word(u));
            b = step(b, word(v));
            d = step(d, word(w));
        }
        c = shift(shift(a) ^ b) ^ d;
    }
    let rest = triples.remainder();
    let mut words = rest.chunks_exact(8);
    for w in &mut words {
        c = step(c, word(w));
    }
    words.remainder().iter().fold(c, |c, &b| byte(c, b))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn x86_64(crc: u32, bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    // The caller has checked that the processor has SSE 4.2.
    let step = |c: u32, w: u64| _mm_crc32_u64(u64::from(c), w) as u32;
    let byte = |c: u32, b: u8| _mm_crc32_u8(c, b);
    interleaved(crc, bytes, step, byte)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "crc")]
unsafe fn aarch64(crc: u32, bytes: &[u8]) -> u32 {
    use std::arch::aarch64::{__crc32cb, __crc32cd};
    // The caller has checked that the processor has the CRC extension.
    let step = |c: u32, w: u64| __crc32cd(c, w);
    let byte = |c: u32, b: u8| __crc32cb(c, b);
    interleaved(crc, bytes, step, byte)
}

fn by_table(crc: u32, bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = zeros(i as u32, 1);
            i += 1;
        }
        t
    };
    bytes.iter().fold(crc, |c, &b| TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values() {
        // RFC 3720, B.4, and the usual check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(&[0; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xff; 32]), 0x62A8_AB43);
        let up: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&up), 0x46DD_794E);
    }

    /// The instruction, where this machine has one, and the table agree
    /// on every length and alignment, and pieces add up to the whole.
    #[test]
    fn every_way_gives_the_same() {
        let data: Vec<u8> = (0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        // Every length around each multiple of the three runs, and others.
        let ends = (0..=data.len() / (3 * RUN)).flat_map(|k| (k * 3 * RUN).saturating_sub(9)..k * 3 * RUN + 9);
        for start in 0..9 {
            for end in ends.clone().chain((start..data.len()).step_by(37)).filter(|&e| e >= start && e <= data.len()) {
                let d = &data[start..end];
                let whole = crc32c(d);
                assert_eq!(!by_table(!0, d), whole, "{start}..{end}");
                let cut = d.len() / 3;
                assert_eq!(Crc32c::new().take(&d[..cut]).take(&d[cut..]).value(), whole);
            }
        }
    }
}
