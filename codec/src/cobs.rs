//! COBS (Cheshire and Baker, 1999): an encoding that leaves no zero byte
//! in what it writes, so that a zero can delimit frames. A block is a
//! code byte, then up to 254 bytes that are not zero; the code is their
//! number plus one, and a block of fewer than 254 stands for them and a
//! zero. Runs are found eight bytes at a time and copied whole.

/// The delimiter, which no encoded byte is.
pub const ZERO: u8 = 0;

/// Eight bytes as one word, the first in the lowest byte (as the CRC
/// instructions take them too).
pub(crate) fn word(chunk: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(chunk);
    u64::from_le_bytes(w)
}

/// Where the first zero byte of `b` is.
pub fn first_zero(b: &[u8]) -> Option<usize> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let w = word(chunk);
        if w.wrapping_sub(LOW) & !w & HIGH != 0 {
            break;
        }
        at += 8;
    }
    b[at..].iter().position(|&x| x == ZERO).map(|i| at + i)
}

/// Where the first byte of `b` that is not `v` is.
pub fn first_not(b: &[u8], v: u8) -> Option<usize> {
    let all = u64::from_le_bytes([v; 8]);
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let w = word(chunk) ^ all;
        if w != 0 {
            return Some(at + (w.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks.remainder().iter().position(|&x| x != v).map(|i| at + i)
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
        for n in [0usize, 7, 8, 9, 15, 16, 17, 253, 254, 255, 1000] {
            for at in 0..n.min(20) {
                let mut data = vec![5u8; n];
                data[at] = 0;
                assert_eq!(first_zero(&data), Some(at));
                assert_eq!(first_not(&data, 5), Some(at));
                data[at] = 6;
                assert_eq!(first_not(&data, 5), Some(at));
            }
            for v in [0u8, 1, 0x80, 0xff] {
                assert_eq!(first_not(&vec![v; n], v), None);
            }
            assert_eq!(first_zero(&vec![0x80u8; n]), None);
            assert_eq!(first_zero(&vec![0x01u8; n]), None);
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
