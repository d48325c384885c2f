//! PATH arguments.

use super::{Error, Result};
use crate::wire::id::parse_path;
use crate::wire::NodeId;

/// Parses PATH; a bad one is a usage error, before any daemon is contacted.
pub fn parse(s: &str) -> Result<Vec<NodeId>> {
    parse_path(s).map_err(|e| Error::Usage(format!("bad PATH {s:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_paths_are_usage_errors() {
        assert!(matches!(parse("").unwrap_err(), Error::Usage(_)));
        assert!(matches!(parse("x/y").unwrap_err(), Error::Usage(_)));
    }
}
