//! The fuzz target for the framings' decoders, kept in the crate so that
//! the saved corpus is replayed by an ordinary test on stable
//! (tests/fuzz_corpus.rs). It panics when a property fails.

use super::framing::{Decoded, Framing};
use super::stream::Stream;
use crate::wire::message::MAX_MESSAGE;

/// Splits `data` into frames as a link's reader does, in every framing,
/// and checks what a decoder promises: a message lies within the frame,
/// within the caps, and encodes back to the same frame.
pub fn framings(data: &[u8]) {
    let framings: [&dyn Framing; 1] = [&Stream];
    for f in framings {
        let mut input = data.to_vec();
        let mut at = 0;
        while at < input.len() {
            match f.decode(&mut input[at..]) {
                Ok(Decoded::Message { used, msg }) => {
                    assert!(msg.start <= msg.end && msg.end <= used && at + used <= input.len());
                    assert!(msg.len() <= MAX_MESSAGE, "{} bytes: over the cap", msg.len());
                    let m = input[at + msg.start..at + msg.end].to_vec();
                    let mut again = Vec::new();
                    f.encode(&m, &mut again);
                    let mut copy = again.clone();
                    assert_eq!(f.decode(&mut copy), Ok(Decoded::Message { used: again.len(), msg: msg.clone() }));
                    at += used;
                }
                Ok(Decoded::Skip(n)) => {
                    assert!(n > 0 && at + n <= input.len(), "skip {n} of {}", input.len() - at);
                    at += n;
                }
                Ok(Decoded::Partial(size)) => {
                    assert!(!matches!(size, Some(n) if n <= input.len() - at), "partial of a whole frame");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}
