//! The threads that own a port's fds: a reader that delivers tunnel data
//! or relays frames by shortcut or turns them into router events, a writer that drains the
//! port's queue, and for a link made by `r2 connect`, a watcher that
//! notices when that client goes away.

use super::output::Writer;
use super::shortcut::{Shortcuts, INBOUND_KEY};
use super::Input;
use crate::router::{Event, PortId};
use crate::sys::frames::{wait_ready, FrameReader, ReadError, Splicing, WakeFd};
use crate::sys::splice::Pipes;
use crossbeam_channel::Sender;
use nix::poll::PollFlags;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread;

/// Stack size of the per-port threads: their buffers live on the heap.
const STACK: usize = 128 * 1024;

/// The most frames written with one `writev`.
const BATCH: usize = 64;

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    thread::Builder::new().name(name).stack_size(STACK).spawn(f).map(|_| ())
}

/// The pipes a link's reader keeps for the data it delivers by splice.
const PIPES: usize = 32;

/// Reads frames from `fd` and delivers them to a tunnel end or relays them
/// by shortcut, or hands them to the router, until end-of-file, an error,
/// or the wake pipe.
pub fn start_reader(
    port: PortId,
    fd: OwnedFd,
    wake: WakeFd,
    shortcuts: Arc<Shortcuts>,
    events: Sender<Input>,
) -> std::io::Result<()> {
    spawn(format!("rd{port}"), move || {
        let table = shortcuts.clone();
        let mut r = FrameReader::new(fd, Some(wake)).splicing(Splicing {
            key_len: INBOUND_KEY,
            want: Box::new(move |key| table.delivers(key)),
            pipes: Pipes::new(PIPES),
        });
        loop {
            let next = match (r.next_packet(), r.take_body()) {
                (Ok(Some(packet)), Some(body)) => match shortcuts.deliver(packet, body) {
                    Ok(ev) => {
                        if events.send(ev).is_err() {
                            return;
                        }
                        continue;
                    }
                    // The table changed meanwhile: the loop gets it whole.
                    Err((packet, body)) => body.complete(packet).map(Some).map_err(ReadError::Io),
                },
                (next, _) => next,
            };
            let ev = match next {
                Ok(Some(packet)) => match shortcuts.relay(packet) {
                    Ok(()) => continue,
                    Err(packet) => {
                        shortcuts.pending.handing_over();
                        Event::Received { port, packet }
                    }
                },
                Ok(None) => Event::Closed { port, error: None },
                Err(ReadError::Woken) => return,
                Err(e) => Event::Closed { port, error: Some(e.to_string()) },
            };
            let last = matches!(ev, Event::Closed { .. });
            if events.send(Input::Router(ev)).is_err() || last {
                return;
            }
        }
    })
}

/// Writes what the loop queued for the port until the loop's side is
/// dropped (then closes, half-closing a socket) or a write fails.
pub fn start_writer(port: PortId, writer: Writer, events: Sender<Input>) -> std::io::Result<()> {
    spawn(format!("wr{port}"), move || {
        let mut batch = Vec::with_capacity(BATCH);
        while writer.next(&mut batch, BATCH) {
            if let Err(e) = writer.write(&mut batch) {
                let error = Some(format!("write error: {e}"));
                let _ = events.send(Input::Router(Event::Closed { port, error }));
                return;
            }
            Writer::recycle(&mut batch);
        }
        writer.finish();
    })
}

/// Waits for the `r2 connect` client on `client` to go away (it never sends
/// after its request) and tells the router; stops at the wake pipe.
pub fn start_watcher(port: PortId, client: OwnedFd, wake: WakeFd, events: Sender<Input>) -> std::io::Result<()> {
    spawn(format!("cl{port}"), move || {
        if let Ok(true) = wait_ready(client.as_fd(), PollFlags::POLLIN, Some(&wake)) {
            let error = Some("its r2 connect client went away".to_string());
            let _ = events.send(Input::Router(Event::Closed { port, error }));
        }
    })
}
