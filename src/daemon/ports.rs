//! A port's side of the daemon: the [`Sink`] through which a link hands
//! the loop what it reads, by way of its reader's shortcuts, and for a
//! port made by `r2 connect` or `r2 tunnel`, a watcher that notices when
//! that client goes away.

use super::input::Input;
use super::shortcuts::{Delivery, LinkRoutes};
use crate::link::engine::Watch;
use crate::link::{Layer, LinkError, Peer, SharedOutput, Sink};
use crate::router::{Event, PortId, DELIVERY_KEY};
use crate::sys::channel::Sender;
use crate::sys::fd::{wait_ready, WakeFd};
use crate::sys::splice::Body;
use crate::wire::Packet;
use nix::poll::PollFlags;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

/// Where the reader of port `port` hands its messages: on by a shortcut
/// if its table has one, else to the loop.
pub struct PortSink {
    pub port: PortId,
    pub routes: Arc<LinkRoutes>,
    pub inputs: Sender<Input>,
}

impl PortSink {
    fn to_loop(&self, packet: Packet) -> bool {
        self.routes.pending.handing_over();
        self.inputs.send(Input::Router(Event::Received { port: self.port, packet })).is_ok()
    }

    /// Whether a message that starts with `bytes` waits behind the loop
    /// although a shortcut would deliver it: then the reader lets the loop
    /// catch up first (see `shortcuts::Pending`).
    fn behind_the_loop(&self, bytes: &[u8]) -> bool {
        !self.routes.pending.none() && self.routes.would_deliver(bytes)
    }

    /// Hands the loop messages already counted as handed over.
    fn hand_over(&self, ps: &mut Vec<Packet>) -> bool {
        let packets = std::mem::take(ps);
        self.inputs.send(Input::Received { port: self.port, packets }).is_ok()
    }

    /// Tells the loop what a delivery shortcut did.
    fn delivered(&self, d: Delivery) -> bool {
        let input = match d {
            Delivery::Data(d) => Input::TunnelDelivered(d),
            Delivery::Opened { peer, packet } => {
                self.routes.pending.handing_over();
                Input::TunnelOpened { port: self.port, peer, packet }
            }
        };
        self.inputs.send(input).is_ok()
    }
}

impl Sink for PortSink {
    fn ready(&self, output: SharedOutput, layer: Layer, watch: Option<Watch>, peer: Option<Peer>) {
        self.routes.set_link_sealed(peer.as_ref().is_some_and(|p| p.sealed));
        let _ = self.inputs.send(Input::LinkReady { port: self.port, output, layer, watch, peer });
    }

    fn message(&self, p: Packet) -> bool {
        if self.behind_the_loop(p.bytes()) {
            self.routes.pending.catch_up();
        }
        let p = match self.routes.relay(p) {
            Ok(()) => return true,
            Err(p) => p,
        };
        match self.routes.deliver_whole(p) {
            Ok(d) => self.delivered(d),
            Err(p) => self.to_loop(p),
        }
    }

    /// What does not go by shortcut goes to the loop in one hand-over. The
    /// first message that goes to the loop counts as handed over at once,
    /// so that none after it takes a shortcut past it.
    fn messages(&self, ps: &mut Vec<Packet>) -> bool {
        let mut to_loop = Vec::new();
        for p in ps.drain(..) {
            // Before waiting for the loop, give it what this batch has for it.
            if self.behind_the_loop(p.bytes()) {
                if !to_loop.is_empty() && !self.hand_over(&mut to_loop) {
                    return false;
                }
                self.routes.pending.catch_up();
            }
            let Err(p) = self.routes.relay(p) else { continue };
            let p = match self.routes.deliver_whole(p) {
                // None went to the loop before: a reader delivers only
                // while none of its messages waits there.
                Ok(d) => {
                    if !self.delivered(d) {
                        return false;
                    }
                    continue;
                }
                Err(p) => p,
            };
            self.routes.pending.handing_over();
            to_loop.push(p);
        }
        to_loop.is_empty() || self.hand_over(&mut to_loop)
    }

    fn body_key(&self) -> Option<usize> {
        Some(DELIVERY_KEY)
    }

    fn wants_body(&self, key: &[u8]) -> bool {
        if self.behind_the_loop(key) {
            self.routes.pending.catch_up();
        }
        self.routes.delivers(key)
    }

    fn message_with_body(&self, p: Packet, body: Body) -> bool {
        match self.routes.deliver(p, body) {
            Ok(d) => self.inputs.send(Input::TunnelDelivered(d)).is_ok(),
            // The table changed meanwhile: the message goes on whole.
            Err((p, None)) => self.message(p),
            Err((p, Some(body))) => match body.complete(p) {
                Ok(p) => self.message(p),
                Err(e) => {
                    self.ended(Some(LinkError::Read(crate::link::ReadError::Io(e))));
                    false
                }
            },
        }
    }

    fn ended(&self, error: Option<LinkError>) {
        if let Some(LinkError::Stray) = error {
            let _ = self.inputs.send(Input::Stray { port: self.port });
            return;
        }
        let error = error.map(|e| e.to_string());
        let _ = self.inputs.send(Input::Router(Event::Closed { port: self.port, error }));
    }
}

/// Waits for the client on `client` to go away (it never sends after its
/// request) and tells the router; stops at the wake pipe.
pub fn start_watcher(port: PortId, client: OwnedFd, wake: WakeFd, events: Sender<Input>) -> std::io::Result<()> {
    let watch = move || {
        if let Ok(true) = wait_ready(client.as_fd(), PollFlags::POLLIN, Some(&wake)) {
            let error = Some("its r2 connect client went away".to_string());
            let _ = events.send(Input::Router(Event::Closed { port, error }));
        }
    };
    std::thread::Builder::new().name(format!("cl{port}")).stack_size(64 * 1024).spawn(watch).map(|_| ())
}
