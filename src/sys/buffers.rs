//! A small process-wide pool of frame-sized buffers.
//!
//! Bulk data is read into a buffer that becomes a [`Packet`], which is
//! dropped once written out. Allocating and freeing 64 KiB per frame costs
//! little with glibc but maps and unmaps pages with musl's allocator; the
//! pool hands written buffers back to the readers instead. It keeps at most
//! [`KEPT`] buffers, so an idle daemon holds at most that much.

use crate::wire::message::{HEADROOM, MAX_MESSAGE};
use crate::wire::Packet;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::sync::OnceLock;

/// The capacity of a pooled buffer: any message, with headroom.
pub const SIZE: usize = HEADROOM + MAX_MESSAGE;

/// How many buffers the pool keeps.
const KEPT: usize = 8;

/// Smaller data is copied into a buffer of its own size, so that queued
/// small messages do not each hold a pooled buffer.
pub const SMALL: usize = 4096;

type Pool = (Sender<Vec<u8>>, Receiver<Vec<u8>>);

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| bounded(KEPT))
}

/// An empty buffer of capacity [`SIZE`] at least.
pub fn take() -> Vec<u8> {
    match pool().1.try_recv() {
        Ok(mut b) => {
            b.clear();
            b
        }
        Err(_) => Vec::with_capacity(SIZE),
    }
}

/// Gives a packet's buffer back, if it is one of the pool's size.
pub fn recycle(p: Packet) {
    give(p.into_buffer());
}

/// Gives a buffer back, if it is one of the pool's size.
pub fn give(b: Vec<u8>) {
    if (SIZE..2 * SIZE).contains(&b.capacity()) {
        let _ = pool().0.try_send(b);
    }
}

/// A packet holding `msg` with headroom: in a pooled buffer if it is large.
pub fn packet_from(msg: &[u8]) -> Packet {
    if msg.len() < SMALL {
        return Packet::from_bytes(msg);
    }
    let mut b = take();
    b.resize(HEADROOM, 0);
    b.extend_from_slice(msg);
    Packet::from_parts(b, HEADROOM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_come_back_small_ones_do_not() {
        let big = packet_from(&vec![7; 60_000]);
        assert_eq!(big.bytes(), &vec![7; 60_000][..]);
        recycle(big);
        let b = take();
        assert!(b.capacity() >= SIZE);
        let small = packet_from(b"abc");
        assert_eq!(small.bytes(), b"abc");
        recycle(small);
    }
}
