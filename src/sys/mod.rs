//! Operating-system plumbing shared by the daemon and the clients: where the
//! socket and id file live, passing fds over UNIX sockets, and blocking frame
//! I/O on fds that a wake pipe can interrupt.

pub mod fdpass;
pub mod frames;
pub mod paths;
