//! ChaCha20-Poly1305 (RFC 8439), in place with a detached tag, behind
//! functions that are neither generic nor inlined.
//!
//! A crate of its own for the profile: it is built at opt-level 3 and the
//! rest of r2 at "z" (../Cargo.toml). Generic code is compiled in the crate
//! that instantiates it, and LTO inlines across crates, so RustCrypto's
//! generic AEAD called from r2 would be compiled as r2's, for size, at a
//! quarter of the speed. Here it is instantiated once, and the `#[inline(never)]`
//! functions keep it out of r2's code.

#![no_std]

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};

/// A 256-bit ChaCha20-Poly1305 key, expanded for use.
#[derive(Clone)]
pub struct Key(ChaCha20Poly1305);

/// The tag did not match: the ciphertext, the nonce or the associated data
/// is not what was sealed. The tag is checked before anything is
/// decrypted, so the buffer is left as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forged;

impl Key {
    #[inline(never)]
    pub fn new(key: &[u8; 32]) -> Key {
        Key(ChaCha20Poly1305::new(key.into()))
    }

    /// Encrypts `buf` in place; returns the tag. `None` only past the
    /// AEAD's limit of 256 GiB per message.
    #[inline(never)]
    pub fn seal(&self, nonce: &[u8; 12], ad: &[u8], buf: &mut [u8]) -> Option<[u8; 16]> {
        let tag = self.0.encrypt_in_place_detached(Nonce::from_slice(nonce), ad, buf).ok()?;
        Some(tag.into())
    }

    /// Checks `tag` and decrypts `buf` in place.
    #[inline(never)]
    pub fn open(&self, nonce: &[u8; 12], ad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> Result<(), Forged> {
        self.0.decrypt_in_place_detached(Nonce::from_slice(nonce), ad, buf, Tag::from_slice(tag)).map_err(|_| Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8439 2.8.2.
    #[test]
    fn rfc8439_vector() {
        let key: [u8; 32] = core::array::from_fn(|i| 0x80 + i as u8);
        let nonce = [7, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47];
        let ad = [0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7];
        let text = *b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let k = Key::new(&key);
        let mut buf = text;
        let tag = k.seal(&nonce, &ad, &mut buf).unwrap();
        assert_eq!(buf[..4], [0xd3, 0x1a, 0x8d, 0x34]);
        assert_eq!(
            tag,
            [0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60, 0x06, 0x91]
        );
        k.open(&nonce, &ad, &mut buf, &tag).unwrap();
        assert_eq!(buf, text);
        buf[0] ^= 1;
        let altered = buf;
        assert_eq!(k.open(&nonce, &ad, &mut buf, &tag), Err(Forged));
        assert_eq!(buf, altered, "a forged message is left as it came");
    }
}
