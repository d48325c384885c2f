//! Which layer a link speaks: the stream framing on a reliable byte
//! stream, or the robust layer (framing, reliability) on anything else,
//! in the form that suits the medium; and how a link that was not told
//! adapts to what its peer speaks first.
//!
//! `r2 connect` chooses for a transport it runs from the sockets and
//! devices the transport's processes hold (`cli/detect.rs`); a link whose
//! transport it cannot see (its own stdio, say) adapts: it waits for the
//! peer's first bytes, and if none come within [`ADAPT_WAIT`] it speaks
//! the robust layer, which is correct on any transport.

use super::robust;
use std::fmt;
use std::time::Duration;

pub use super::ethernet::Mac;

/// The layer of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Length-prefixed frames on a reliable byte stream.
    Stream,
    /// Checked frames, reliability and congestion control, on a medium.
    Robust(Medium),
    /// Whatever the peer speaks first (robust if it says nothing).
    Adapt,
}

/// What carries a robust link's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Medium {
    /// Datagrams, perhaps merged or split on the way (UDP through socat).
    Datagrams,
    /// Raw Ethernet frames (`socat interface:`), sent from this address if
    /// it is known.
    Ethernet(Option<Mac>),
    /// A byte stream that may lose or corrupt bytes (a serial line).
    Bytes,
}

/// How long a link that adapts waits for its peer to speak first.
pub const ADAPT_WAIT: Duration = Duration::from_millis(1000);

/// The start of a stream link's first frame: the length of a Hello (36)
/// and its kind.
const STREAM_HELLO: [u8; 5] = [0, 0, 0, 36, 0];

impl Layer {
    /// The layer that a peer's first bytes show, or None if more are
    /// needed to tell.
    pub fn heard(b: &[u8]) -> Option<Layer> {
        if b.len() >= 2 && b[0] == 0 && b[1] != 0 {
            return Some(Layer::Robust(Medium::Bytes));
        }
        if b.len() < STREAM_HELLO.len() {
            return None;
        }
        if b[..STREAM_HELLO.len()] == STREAM_HELLO {
            return Some(Layer::Stream);
        }
        if b.len() < super::ethernet::HEADER + 2 {
            return None;
        }
        if super::ethernet::is_ours(b) {
            return Some(Layer::Robust(Medium::Ethernet(None)));
        }
        // Not r2's stream: the robust layer finds frames in it, or nothing.
        Some(Layer::Robust(Medium::Bytes))
    }

    /// The name `r2 connect --layer` takes and `r2 ls -l` shows.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Stream => "stream",
            Layer::Robust(_) => "robust",
            Layer::Adapt => "auto",
        }
    }

    /// Text for the control protocol.
    pub fn encode(self) -> String {
        match self {
            Layer::Stream => "stream".into(),
            Layer::Adapt => "adapt".into(),
            Layer::Robust(Medium::Datagrams) => "datagrams".into(),
            Layer::Robust(Medium::Bytes) => "bytes".into(),
            Layer::Robust(Medium::Ethernet(None)) => "ethernet".into(),
            Layer::Robust(Medium::Ethernet(Some(m))) => format!("ethernet {}", mac_text(&m)),
        }
    }

    /// The inverse of [`Layer::encode`].
    pub fn decode(s: &str) -> Option<Layer> {
        Some(match s {
            "stream" => Layer::Stream,
            "adapt" => Layer::Adapt,
            "datagrams" => Layer::Robust(Medium::Datagrams),
            "bytes" => Layer::Robust(Medium::Bytes),
            "ethernet" => Layer::Robust(Medium::Ethernet(None)),
            _ => Layer::Robust(Medium::Ethernet(Some(parse_mac(s.strip_prefix("ethernet ")?)?))),
        })
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::Robust(Medium::Datagrams) => write!(f, "robust (datagrams)"),
            Layer::Robust(Medium::Bytes) => write!(f, "robust (bytes)"),
            Layer::Robust(Medium::Ethernet(_)) => write!(f, "robust (ethernet)"),
            l => f.write_str(l.name()),
        }
    }
}

/// The largest frame a link probes for on datagrams: the 8192 bytes socat
/// moves at once. (7680, which Linux charges to a receiving socket's buffer
/// as 8 KiB where 8192 is charged as 16, halved the losses of bulk over
/// loopback, but between two namespaces over a 1500-byte veth losing 1 %
/// it cut bulk from 18.9 to 4.1 MB/s: `make bench`, section 6A.)
pub const DATAGRAM_FRAME: usize = 8192;

impl Medium {
    /// The packet sizes of a robust link on this medium: where to start,
    /// and the most to probe for. Datagrams are probed up to
    /// [`DATAGRAM_FRAME`]. A raw interface is not probed: socat
    /// ends at the first frame larger than its MTU, which r2 does not know
    /// (1500 on any Ethernet). Nor is a byte stream (a serial line, or a
    /// transport r2 cannot see): a probe that gets through a noisy line
    /// says nothing of how often larger frames would be damaged, and on
    /// one that loses a byte in 10,000, frames of 8 KiB are mostly lost.
    pub fn sizes(self) -> super::reliable::Sizes {
        let (base, max) = match self {
            Medium::Datagrams => (1200, DATAGRAM_FRAME),
            Medium::Bytes => (1200, 1200),
            Medium::Ethernet(_) => (1500, 1500),
        };
        super::reliable::Sizes { base: robust::packet_fits(base), max: robust::packet_fits(max) }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(m: &Mac) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut m = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut m {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_probed_up_to_what_socat_moves_at_once() {
        let s = Medium::Datagrams.sizes();
        assert_eq!((s.base, s.max), (1185, 8149));
        assert!(robust::frame_len(s.max) <= DATAGRAM_FRAME);
        assert!(robust::frame_len(s.max + 1) > DATAGRAM_FRAME);
        assert_eq!((Medium::Bytes.sizes().max, Medium::Ethernet(None).sizes().max), (1185, 1484));
    }

    #[test]
    fn the_first_bytes_tell_the_layer() {
        assert_eq!(Layer::heard(&[0, 0, 0]), None);
        assert_eq!(Layer::heard(&[0, 0, 0, 36, 0, 5, 5]), Some(Layer::Stream));
        assert_eq!(Layer::heard(&[0, 7, 1]), Some(Layer::Robust(Medium::Bytes)));
        let mut eth = vec![0xff; 6];
        eth.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x88, 0xb5, 0, 9]);
        assert_eq!(Layer::heard(&eth), Some(Layer::Robust(Medium::Ethernet(None))));
        assert_eq!(Layer::heard(&[9; 16]), Some(Layer::Robust(Medium::Bytes)));
        assert_eq!(Layer::heard(&[9; 15]), None);
    }

    #[test]
    fn layers_round_trip_as_text() {
        for l in [
            Layer::Stream,
            Layer::Adapt,
            Layer::Robust(Medium::Datagrams),
            Layer::Robust(Medium::Bytes),
            Layer::Robust(Medium::Ethernet(None)),
            Layer::Robust(Medium::Ethernet(Some([2, 0xab, 0, 0, 0, 9]))),
        ] {
            assert_eq!(Layer::decode(&l.encode()), Some(l));
        }
        assert_eq!(Layer::decode("ethernet 1:2"), None);
        assert_eq!(parse_mac("02:ab:00:00:00:09"), Some([2, 0xab, 0, 0, 0, 9]));
    }
}
