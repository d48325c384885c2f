//! The ls reply of node 1: the ids of a daemon's physical neighbours.
//!
//! ```text
//! list = count:u16be id:[u8;32]*count     (ordered by id)
//! ```

use super::id::{NodeId, ID_LEN};

/// The most ids one reply lists.
pub const MAX_LISTED: usize = u16::MAX as usize;

/// Encodes `ids` (at most [`MAX_LISTED`] of them are kept).
pub fn encode(ids: impl ExactSizeIterator<Item = NodeId>) -> Vec<u8> {
    let n = ids.len().min(MAX_LISTED);
    let mut b = Vec::with_capacity(2 + n * ID_LEN);
    b.extend_from_slice(&(n as u16).to_be_bytes());
    for id in ids.take(n) {
        b.extend_from_slice(&id.0);
    }
    b
}

/// Decodes a list; None unless it is exactly a count and that many ids.
pub fn decode(b: &[u8]) -> Option<Vec<NodeId>> {
    let (n, rest) = (b.get(..2)?, b.get(2..)?);
    let n = u16::from_be_bytes([n[0], n[1]]) as usize;
    if rest.len() != n * ID_LEN {
        return None;
    }
    Some(rest.chunks(ID_LEN).filter_map(NodeId::from_slice).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed() {
        let ids = vec![NodeId([1; 32]), NodeId([7; 32])];
        let b = encode(ids.iter().copied());
        assert_eq!(b.len(), 2 + 64);
        assert_eq!(decode(&b), Some(ids));
        assert_eq!(decode(&b[..b.len() - 1]), None);
        assert_eq!(decode(&[0]), None);
        assert_eq!(decode(&[0, 0]), Some(vec![]));
    }
}
