//! The byte loops of r2's robust framing (`src/link/robust.rs`): the
//! checksum of every frame and the COBS encoding that delimits it. They
//! touch every byte of every frame on a UDP, Ethernet or serial link, so
//! they are a package of their own, built at opt-level 3 where the rest
//! of r2's library is built for size (../Cargo.toml says why).

pub mod cobs;
pub mod crc32c;
