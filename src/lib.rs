//! r2: a transport-agnostic, minimal peer-to-peer overlay network.
//!
//! Imports run one way: `cli` → {`daemon`, `client`} → {`router`, `link`} →
//! {`sys`, `noise`} → `key` → `wire`, and no file imports one that imports
//! it back.
//! `wire` imports nothing from the crate; `router` and the framings do no I/O; the
//! link layer knows nothing of the daemon's loop.

pub mod cli;
pub mod client;
pub mod daemon;
pub mod key;
pub mod link;
pub mod noise;
pub mod router;
pub mod sys;
pub mod wire;
