//! Node keys: a node's id is its X25519 public key (RFC 7748), and the
//! secret half stays in its key file.

use crate::wire::NodeId;
use x25519_dalek::{x25519, PublicKey, StaticSecret};

/// A node's key pair (or an ephemeral one, in a handshake).
#[derive(Clone)]
pub struct KeyPair {
    secret: StaticSecret,
    /// The public key, which is the node's id.
    pub id: NodeId,
}

impl KeyPair {
    /// The key pair of a 32-byte secret (clamped as X25519 does).
    pub fn from_secret(bytes: [u8; 32]) -> KeyPair {
        let secret = StaticSecret::from(bytes);
        let id = NodeId(PublicKey::from(&secret).to_bytes());
        KeyPair { secret, id }
    }

    /// The X25519 function of this secret and `public`: the shared secret,
    /// or None where it is zero (`public` is a point of small order).
    pub fn dh(&self, public: &[u8; 32]) -> Option<[u8; 32]> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*public)).to_bytes();
        (shared != [0; 32]).then_some(shared)
    }

    /// The secret, to be stored.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }
}

/// Why `id` cannot be a node's, if it cannot: a reserved id, or a weak key.
pub fn unfit(id: &NodeId) -> Option<&'static str> {
    if id.is_reserved() {
        Some("is a reserved id, not a node")
    } else if is_weak(id) {
        Some("is not a node's key (a point of small order)")
    } else {
        None
    }
}

/// Whether `id` cannot be a node's key: a point of small order, with which
/// every Diffie-Hellman result is zero whatever the secret (RFC 7748 §6.1).
/// Any clamped scalar tells, as clamping clears the cofactor.
pub fn is_weak(id: &NodeId) -> bool {
    x25519([9; 32], id.0) == [0; 32]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        b
    }

    #[test]
    fn the_id_is_the_public_key_of_rfc_7748() {
        // RFC 7748 §6.1: Alice's private key and public key.
        let alice = KeyPair::from_secret(hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
        assert_eq!(alice.id.0, hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"));
        let bob = KeyPair::from_secret(hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"));
        assert_eq!(bob.id.0, hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"));
        // Their shared secret, both ways.
        let k = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(x25519(alice.secret_bytes(), bob.id.0), k);
        assert_eq!(x25519(bob.secret_bytes(), alice.id.0), k);
    }

    #[test]
    fn small_order_points_are_weak() {
        let mut zero = [0u8; 32];
        assert!(is_weak(&NodeId(zero)));
        zero[0] = 1;
        assert!(is_weak(&NodeId(zero)), "u = 1");
        let order8 = hex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
        assert!(is_weak(&NodeId(order8)));
        let mut p_minus_1 = [0xffu8; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        assert!(is_weak(&NodeId(p_minus_1)), "u = p - 1");
        assert!(!is_weak(&KeyPair::from_secret([7; 32]).id));
        assert!(!is_weak(&NodeId(hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"))));
    }
}
