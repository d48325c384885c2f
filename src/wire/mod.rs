//! The r2 wire formats: node ids, the link message codec and the control
//! protocol spoken between `r2` and `r2d`. Pure data, no I/O; nothing here
//! imports from the rest of the crate.

pub mod control;
pub mod fuzz;
pub mod id;
pub mod list;
pub mod message;
pub mod path;
pub mod tunnel;

pub use id::NodeId;
pub use message::{FailCode, Packet};
