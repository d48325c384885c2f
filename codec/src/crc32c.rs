//! CRC-32C (Castagnoli): reflected, polynomial 0x82F63B78, initial and
//! final value all ones, as in iSCSI, SCTP and ext4. The robust framing
//! checks every frame with it (`src/link/robust.rs`).
//!
//! The processor's own instruction does it where there is one (SSE 4.2 on
//! x86_64, the CRC extension on aarch64), found at run time, eight bytes
//! at a time: a frame of 8 KiB takes about a microsecond. Elsewhere a
//! table takes a byte at a time, several times slower, with the same
//! result.

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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn x86_64(crc: u32, bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut chunks = bytes.chunks_exact(8);
    let mut c = u64::from(crc);
    for chunk in &mut chunks {
        c = _mm_crc32_u64(c, word(chunk));
    }
    chunks.remainder().iter().fold(c as u32, |c, &b| _mm_crc32_u8(c, b))
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "crc")]
unsafe fn aarch64(crc: u32, bytes: &[u8]) -> u32 {
    use std::arch::aarch64::{__crc32cb, __crc32cd};
    let mut chunks = bytes.chunks_exact(8);
    let mut c = crc;
    for chunk in &mut chunks {
        c = __crc32cd(c, word(chunk));
    }
    chunks.remainder().iter().fold(c, |c, &b| __crc32cb(c, b))
}

fn by_table(crc: u32, bytes: &[u8]) -> u32 {
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
        let data: Vec<u8> = (0..1000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for start in 0..9 {
            for end in (start..data.len()).step_by(37) {
                let d = &data[start..end];
                let whole = crc32c(d);
                assert_eq!(!by_table(!0, d), whole, "{start}..{end}");
                let cut = d.len() / 3;
                assert_eq!(Crc32c::new().take(&d[..cut]).take(&d[cut..]).value(), whole);
            }
        }
    }
}
