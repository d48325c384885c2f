//! The daemon, `r2d`: the fds, threads and processes around the router.
//!
//! ```text
//! link reader ─┐                               ┌─> link writer (queue per port)
//! endpoint rd ─┼─> inputs (bounded) ─> router ─┼─> endpoint writer
//! control     ─┤        + tick                 └─> control reply
//! signals     ─┘
//! ```
//!
//! One event loop owns the router and the table of ports; every fd is owned
//! by one reader or one writer thread. Closing a port is dropping its queue's
//! sender (the writer flushes and closes) and its waker (the reader stops).

mod control;
pub mod identity;
mod listener;
mod ports;
mod signals;

use crate::router::{Action, Event, PortId, Router, Timers};
use crate::sys::frames::{wake_pair, Waker};
use crate::wire::control::Reply;
use crate::wire::{NodeId, Packet};
use crossbeam_channel::{bounded, select, tick, unbounded, Sender};
use log::{debug, info, warn};
use nix::sys::socket::{send, MsgFlags};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct Config {
    pub socket: PathBuf,
    pub id_file: PathBuf,
    /// The tunnel process, run with `sh -c` once per incoming tunnel.
    pub tunnel_cmd: Option<String>,
    pub timers: Timers,
}

/// What the event loop is told, by the threads around it.
pub enum Input {
    Router(Event),
    Connect { stream: UnixStream, rfd: OwnedFd, wfd: OwnedFd, expect: Option<NodeId>, label: String },
    Endpoint { stream: UnixStream },
    List { stream: UnixStream },
    Signal(nix::sys::signal::Signal),
}

/// A port's side of the loop: its queue, its reader's waker and, for links
/// made by `r2 connect`, the client to report to.
struct PortIo {
    queue: Sender<Packet>,
    _waker: Waker,
    client: Option<UnixStream>,
    label: String,
}

/// How many inputs may wait for the loop before readers block.
const INPUT_QUEUE: usize = 1024;
/// How often timers are checked.
const TICK: Duration = Duration::from_millis(250);

/// Runs the daemon until a signal ends it.
pub fn run(cfg: Config) -> Result<(), String> {
    signals::block()?;
    let own = identity::load_or_create(&cfg.id_file)?;
    if cfg.tunnel_cmd.is_some() {
        info!("tunnel process: {}", cfg.tunnel_cmd.as_deref().unwrap_or(""));
    }
    if let Some(dir) = cfg.socket.parent() {
        if dir == crate::sys::paths::private_tmp_dir(nix::unistd::geteuid()) {
            crate::sys::paths::ensure_private_dir(dir)?;
        }
    }
    let sock = listener::ControlSocket::bind(&cfg.socket)?;
    let listener = sock.listener.try_clone().map_err(|e| e.to_string())?;
    let (tx, rx) = bounded::<Input>(INPUT_QUEUE);
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                while let Some(sig) = signals::wait() {
                    if tx.send(Input::Signal(sig)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
    }
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("accept".into())
            .stack_size(64 * 1024)
            .spawn(move || control::accept_loop(listener, own, tx))
            .map_err(|e| e.to_string())?;
    }
    info!("node {own} listening on {}", cfg.socket.display());
    let mut d = Daemon {
        router: Router::new(own, cfg.timers),
        ports: HashMap::new(),
        next_port: 0,
        start: Instant::now(),
        urandom: File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?,
        inputs: tx,
        actions: Vec::new(),
    };
    let ticker = tick(TICK);
    loop {
        select! {
            recv(rx) -> input => match input {
                Ok(Input::Signal(sig)) => {
                    info!("{sig}: shutting down");
                    break;
                }
                Ok(input) => d.on_input(input),
                Err(_) => break,
            },
            recv(ticker) -> _ => d.router_event(Event::Tick),
        }
    }
    d.shutdown();
    drop(sock);
    Ok(())
}

struct Daemon {
    router: Router,
    ports: HashMap<PortId, PortIo>,
    next_port: PortId,
    start: Instant,
    urandom: File,
    inputs: Sender<Input>,
    actions: Vec<Action>,
}

/// Writes a reply without ever blocking the loop; a client that does not
/// read its control socket loses the reply.
fn reply(stream: &UnixStream, r: &Reply) {
    let bytes = r.encode();
    match send(stream.as_raw_fd(), &bytes, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
        Ok(n) if n == bytes.len() => {}
        Ok(_) | Err(_) => debug!("a control client missed a reply"),
    }
}

impl Daemon {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Router(ev) => self.router_event(ev),
            Input::List { stream } => {
                let list: Vec<(NodeId, String)> = self
                    .router
                    .links()
                    .into_iter()
                    .map(|(p, id)| (id, self.ports.get(&p).map(|x| x.label.clone()).unwrap_or_default()))
                    .collect();
                reply(&stream, &Reply::List(list));
            }
            Input::Connect { stream, rfd, wfd, expect, label } => {
                let port = self.new_port();
                if let Err(e) = self.open_port(port, rfd, wfd, Some(stream), label) {
                    warn!("cannot start link {port}: {e}");
                    return;
                }
                self.router_event(Event::LinkOpened { port, expect });
            }
            Input::Endpoint { stream } => {
                let id = match identity::random_id(&mut self.urandom) {
                    Ok(id) => id,
                    Err(e) => return warn!("no randomness for an endpoint id: {e}"),
                };
                let fds = stream.try_clone().and_then(|a| Ok((OwnedFd::from(a), OwnedFd::from(stream.try_clone()?))));
                let (rfd, wfd) = match fds {
                    Ok(f) => f,
                    Err(e) => return warn!("cannot open an endpoint: {e}"),
                };
                reply(&stream, &Reply::Endpoint { daemon: self.router.own(), endpoint: id });
                drop(stream);
                let port = self.new_port();
                if let Err(e) = self.open_port(port, rfd, wfd, None, String::new()) {
                    return warn!("cannot start endpoint {port}: {e}");
                }
                debug!("endpoint {id} on port {port}");
                self.router_event(Event::EndpointOpened { port, id });
            }
            Input::Signal(_) => {}
        }
    }

    fn new_port(&mut self) -> PortId {
        self.next_port += 1;
        self.next_port
    }

    /// Starts the threads of a port that reads `rfd` and writes `wfd`.
    fn open_port(
        &mut self,
        port: PortId,
        rfd: OwnedFd,
        wfd: OwnedFd,
        client: Option<UnixStream>,
        label: String,
    ) -> std::io::Result<()> {
        let (waker, wake) = wake_pair()?;
        let (qtx, qrx) = unbounded();
        if let Some(c) = &client {
            let fd = OwnedFd::from(c.try_clone()?);
            ports::start_watcher(port, fd, wake.try_clone()?, self.inputs.clone())?;
        }
        ports::start_writer(port, wfd, qrx, self.inputs.clone())?;
        ports::start_reader(port, rfd, wake, self.inputs.clone())?;
        self.ports.insert(port, PortIo { queue: qtx, _waker: waker, client, label });
        Ok(())
    }

    fn router_event(&mut self, ev: Event) {
        let now = self.now();
        let mut actions = std::mem::take(&mut self.actions);
        self.router.handle(now, ev, &mut actions);
        for a in actions.drain(..) {
            self.act(a);
        }
        self.actions = actions;
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Send { port, packet } => {
                if let Some(p) = self.ports.get(&port) {
                    let _ = p.queue.send(packet);
                }
            }
            Action::LinkUp { port, peer } => {
                if let Some(c) = self.ports.get(&port).and_then(|p| p.client.as_ref()) {
                    reply(c, &Reply::Linked(peer));
                }
            }
            Action::Close { port, error } => {
                if let Some(p) = self.ports.remove(&port) {
                    if let Some(c) = &p.client {
                        reply(c, &Reply::Ended { error });
                    }
                }
            }
        }
    }

    /// Ends every port: clients are told, links and endpoints are closed.
    fn shutdown(&mut self) {
        let error = Some("the daemon is shutting down".to_string());
        for (_, p) in self.ports.drain() {
            if let Some(c) = &p.client {
                reply(c, &Reply::Ended { error: error.clone() });
            }
        }
    }
}
