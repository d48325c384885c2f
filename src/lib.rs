//! r2: a transport-agnostic, minimal peer-to-peer overlay network.
//!
//! Imports run one way: `cli` → {`daemon`, `client`} → {`router`, `sys`} →
//! `wire`. `wire` imports nothing from the crate; `router` does no I/O.

pub mod cli;
pub mod client;
pub mod daemon;
pub mod link;
pub mod router;
pub mod sys;
pub mod wire;
