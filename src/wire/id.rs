//! Node ids: 256-bit, big-endian, printed in base58 (Bitcoin alphabet).
//! Ids whose first 31 bytes are zero are reserved for agreed virtual nodes.

use std::fmt;
use std::str::FromStr;

/// Size of a node id in bytes.
pub const ID_LEN: usize = 32;

/// A 256-bit node id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; ID_LEN]);

/// Why a string is not a node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    Empty,
    NotBase58(String),
    WrongLength(usize),
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty => write!(f, "empty node id"),
            IdError::NotBase58(s) => write!(f, "not base58: {s}"),
            IdError::WrongLength(n) => write!(f, "decodes to {n} bytes, a node id has {ID_LEN}"),
        }
    }
}

impl NodeId {
    /// The agreed id of a daemon's tunnel process.
    pub const TUNNEL: NodeId = NodeId::reserved(0);
    /// The agreed id of a daemon's neighbour list.
    pub const LIST: NodeId = NodeId::reserved(1);

    /// The reserved id whose last byte is `n`.
    pub const fn reserved(n: u8) -> NodeId {
        let mut b = [0u8; ID_LEN];
        b[ID_LEN - 1] = n;
        NodeId(b)
    }

    /// True for the agreed ids (first 31 bytes zero).
    pub fn is_reserved(&self) -> bool {
        self.0[..ID_LEN - 1].iter().all(|&b| b == 0)
    }

    /// The id in the first 32 bytes of `b`, if there are that many.
    pub fn from_slice(b: &[u8]) -> Option<NodeId> {
        let a: [u8; ID_LEN] = b.get(..ID_LEN)?.try_into().ok()?;
        Some(NodeId(a))
    }

    /// Parses a base58 id; the reserved ids parse too (check `is_reserved`).
    pub fn parse(s: &str) -> Result<NodeId, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        let mut out = [0u8; ID_LEN];
        // Decode into a larger buffer so that an over-long id reports its length.
        let mut buf = [0u8; 64];
        let n = bs58::decode(s).onto(&mut buf[..]).map_err(|e| IdError::NotBase58(e.to_string()))?;
        if n != ID_LEN {
            return Err(IdError::WrongLength(n));
        }
        out.copy_from_slice(&buf[..ID_LEN]);
        Ok(NodeId(out))
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::parse(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(&self.0).into_string())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The longest path a manager may ask for.
pub const MAX_HOPS: usize = 32;

/// Why a PATH argument is not a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    Empty,
    BadHop(usize, String, IdError),
    ReservedHop(usize, String),
    TooLong(usize),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Empty => write!(f, "empty path"),
            PathError::BadHop(i, s, e) => write!(f, "hop {} {s:?} is not a node id: {e}", i + 1),
            PathError::ReservedHop(i, s) => {
                write!(f, "hop {} {s} is a reserved id, not a node", i + 1)
            }
            PathError::TooLong(n) => write!(f, "path has {n} hops, at most {MAX_HOPS} allowed"),
        }
    }
}

/// Parses `NODE[/NODE…]`: node ids separated by `/`, none reserved.
pub fn parse_path(s: &str) -> Result<Vec<NodeId>, PathError> {
    if s.is_empty() {
        return Err(PathError::Empty);
    }
    let hops: Vec<&str> = s.split('/').collect();
    if hops.len() > MAX_HOPS {
        return Err(PathError::TooLong(hops.len()));
    }
    hops.iter()
        .enumerate()
        .map(|(i, h)| {
            let id = NodeId::parse(h).map_err(|e| PathError::BadHop(i, h.to_string(), e))?;
            if id.is_reserved() {
                return Err(PathError::ReservedHop(i, h.to_string()));
            }
            Ok(id)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seed: u8) -> NodeId {
        let mut b = [0u8; ID_LEN];
        for (i, x) in b.iter_mut().enumerate() {
            *x = seed.wrapping_mul(31).wrapping_add(i as u8 * 7);
        }
        NodeId(b)
    }

    #[test]
    fn base58_round_trip() {
        for seed in 0..=255u8 {
            let id = sample(seed);
            assert_eq!(NodeId::parse(&id.to_string()), Ok(id));
        }
        for id in [NodeId([0; 32]), NodeId([0xff; 32]), NodeId::LIST] {
            assert_eq!(NodeId::parse(&id.to_string()), Ok(id));
        }
    }

    #[test]
    fn known_encoding() {
        assert_eq!(NodeId::TUNNEL.to_string(), "1".repeat(32));
        assert_eq!(NodeId::LIST.to_string(), format!("{}2", "1".repeat(31)));
    }

    #[test]
    fn rejects() {
        assert_eq!(NodeId::parse(""), Err(IdError::Empty));
        assert!(matches!(NodeId::parse("0OIl"), Err(IdError::NotBase58(_))));
        assert!(matches!(NodeId::parse("abc!"), Err(IdError::NotBase58(_))));
        assert_eq!(NodeId::parse("2"), Err(IdError::WrongLength(1)));
        let long = bs58::encode([7u8; 33]).into_string();
        assert_eq!(NodeId::parse(&long), Err(IdError::WrongLength(33)));
        let way_long = "z".repeat(200);
        assert!(NodeId::parse(&way_long).is_err());
    }

    #[test]
    fn reserved() {
        assert!(NodeId::TUNNEL.is_reserved());
        assert!(NodeId::reserved(200).is_reserved());
        assert!(!sample(1).is_reserved());
    }

    #[test]
    fn paths() {
        let (a, b) = (sample(1), sample(2));
        assert_eq!(parse_path(&format!("{a}/{b}")), Ok(vec![a, b]));
        assert_eq!(parse_path(""), Err(PathError::Empty));
        assert!(matches!(parse_path(&format!("{a}/")), Err(PathError::BadHop(1, _, IdError::Empty))));
        assert!(matches!(parse_path(&format!("{a}/{}", NodeId::LIST)), Err(PathError::ReservedHop(1, _))));
        let max = vec![a.to_string(); MAX_HOPS].join("/");
        assert_eq!(parse_path(&max).map(|p| p.len()), Ok(MAX_HOPS));
        let over = vec![a.to_string(); MAX_HOPS + 1].join("/");
        assert_eq!(parse_path(&over), Err(PathError::TooLong(MAX_HOPS + 1)));
    }
}
