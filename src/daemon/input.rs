//! The event loop's mailbox: what the threads around the loop tell it.

use super::session::Key;
use super::shortcuts::Delivered;
use crate::link::engine::Watch;
use crate::link::{Layer, Peer, SharedOutput};
use crate::router::{Event, PortId};
use crate::wire::{NodeId, Packet};
use nix::sys::signal::Signal;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

/// One thing for the loop to act on.
pub enum Input {
    /// For the router: from a port's link or watcher.
    Router(Event),
    /// Messages a port's link read together, in order, each counted as
    /// handed over to the loop.
    Received {
        port: PortId,
        packets: Vec<Packet>,
    },
    /// `r2 connect`: a link on these fds.
    Connect {
        stream: UnixStream,
        rfd: OwnedFd,
        wfd: OwnedFd,
        expect: Option<NodeId>,
        label: String,
        layer: Layer,
        why: String,
        /// For a kept link, how often it has come back.
        returns: Option<u64>,
        /// This end asks for a plaintext link.
        plaintext: bool,
    },
    /// A port's link has done its handshake: it may be sent on.
    LinkReady {
        port: PortId,
        output: SharedOutput,
        layer: Layer,
        watch: Option<Watch>,
        /// Who the neighbour proved to be (None: a local endpoint).
        peer: Option<Peer>,
    },
    /// A port's link heard only another link's frames: it ends quietly.
    Stray {
        port: PortId,
    },
    /// `r2 ping` or `r2 ls`: an endpoint on the control connection itself.
    Endpoint {
        stream: UnixStream,
    },
    Stats {
        stream: UnixStream,
    },
    /// `r2 tunnel`: a tunnel along `path` for the program on these fds.
    Tunnel {
        stream: UnixStream,
        rfd: OwnedFd,
        wfd: OwnedFd,
        path: Vec<NodeId>,
        packet: bool,
    },
    List {
        stream: UnixStream,
    },
    /// A read of a tunnel program's output; None at its end.
    TunnelRead {
        key: Key,
        packet: Option<Packet>,
    },
    /// `n` bytes were written to a tunnel program.
    TunnelWritten {
        key: Key,
        n: usize,
    },
    /// A link's reader gave data to a tunnel program itself.
    TunnelDelivered(Delivered),
    /// A link's reader opened a sealed tunnel message for the instance of
    /// `peer` to deliver it, and it was no Data: it is the loop's, in the
    /// clear. The reader takes no shortcut until the loop has handled it.
    TunnelOpened {
        port: PortId,
        peer: NodeId,
        packet: Packet,
    },
    /// A tunnel program's input is closed (or failed).
    TunnelWriterDone {
        key: Key,
        error: Option<String>,
    },
    Signal(Signal),
}
