//! The Ethernet form of the robust layer, for `socat interface:`, which
//! sends and receives whole frames of every EtherType (its own outgoing
//! ones too).
//!
//! ```text
//! ethernet frame = dst:6 src:6 type:u16be=0x88B5 robust-frame padding
//! ```
//!
//! 0x88B5 is the first of IEEE 802's EtherTypes for local experiments.
//! A frame goes to the broadcast address until the peer's address is
//! learnt from the source of its frames (only where reads keep frames
//! apart, from a packet pipe); it comes from this machine's address where
//! `r2 connect` found it, else from a stand-in (02:72:32:…) that a peer
//! never sends to. Frames are zero-padded to Ethernet's 60-byte minimum:
//! zeros are only delimiters to the robust framing. Other traffic on the
//! interface (IP, ARP) is noise to the robust decoder, and is skipped.

/// An Ethernet address.
pub type Mac = [u8; 6];

/// The EtherType of r2's frames.
pub const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// The size of an Ethernet header.
pub const HEADER: usize = 14;
/// The shortest Ethernet frame (without its checksum).
pub const MIN_FRAME: usize = 60;
pub const BROADCAST: Mac = [0xff; 6];
/// The first bytes of a stand-in source address.
const STAND_IN: [u8; 3] = [0x02, 0x72, 0x32];

/// Whether `b` starts with the header of one of r2's frames.
pub fn is_ours(b: &[u8]) -> bool {
    b.len() > HEADER && b[12..14] == ETHERTYPE && b[HEADER] == 0
}

/// The stand-in source address of a link whose own address is unknown.
pub fn stand_in(tag: u32) -> Mac {
    let t = tag.to_be_bytes();
    [STAND_IN[0], STAND_IN[1], STAND_IN[2], t[1], t[2], t[3]]
}

/// The source address of the frame `b` (one whole read), if it is one of
/// r2's and its source may be sent to: not a group address, not a
/// stand-in.
pub fn source(b: &[u8]) -> Option<Mac> {
    if !is_ours(b) {
        return None;
    }
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[6..12]);
    let group = m[0] & 1 != 0;
    (!group && m[..3] != STAND_IN).then_some(m)
}

/// Starts a frame from `src` to `dst` in `out`.
pub fn header(dst: &Mac, src: &Mac, out: &mut Vec<u8>) {
    out.extend_from_slice(dst);
    out.extend_from_slice(src);
    out.extend_from_slice(&ETHERTYPE);
}

/// Pads a frame to the minimum size.
pub fn pad(out: &mut Vec<u8>) {
    if out.len() < MIN_FRAME {
        out.resize(MIN_FRAME, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_valid_and_sources_learnt_only_where_they_may_be_sent_to() {
        let me = [2, 0, 0, 0, 0, 1];
        let mut f = Vec::new();
        header(&BROADCAST, &me, &mut f);
        f.extend_from_slice(&[0, 5, 1, 2, 3, 4, 0]);
        pad(&mut f);
        assert_eq!(f.len(), MIN_FRAME);
        assert!(is_ours(&f));
        assert_eq!(source(&f), Some(me));
        let mut g = Vec::new();
        header(&BROADCAST, &stand_in(7), &mut g);
        g.extend_from_slice(&[0, 5, 0]);
        assert_eq!(source(&g), None, "a stand-in");
        let mut ip = f.clone();
        ip[12..14].copy_from_slice(&[0x08, 0x00]);
        assert!(!is_ours(&ip) && source(&ip).is_none(), "IP");
    }
}
