//! The daemon, `r2d`: the event loop, its ports, and the threads and
//! processes around the router.
//!
//! ```text
//!  link reader ──┬─ shortcut ──────────────────────────> another link, a tunnel program
//!                └─> inputs ─┐                     ┌───> link output (loop writes, or its writer)
//!  tunnel reader ┬─ shortcut ┼───────────────────────> link output
//!                └─> inputs ─┤                     │
//!  control, signals ───────> inputs ─> loop: router ┼───> tunnel ends (tunnels) ─> program input
//!                                       + tick     └───> control replies
//! ```
//!
//! One event loop owns the router, the ports, the tunnel ends and the
//! registry of shortcuts. Each link's fds belong to the link layer
//! (`link`), which hands the loop each message a port's reader does not
//! send on by a shortcut of the router's (`shortcuts`). What the router
//! decides, the loop does: it sends on ports, gives tunnel messages to
//! the tunnel ends (`tunnels`, whose replies it feeds back to the
//! router), and puts shortcuts in the registry. Closing a port is
//! dropping its link (the writer flushes and closes, the reader stops).

mod control;
pub mod e2e;
pub mod fuzz;
pub mod identity;
mod input;
mod listener;
mod ports;
pub mod session;
mod shortcuts;
mod signals;
mod tunnel;
mod tunnels;

use crate::key::KeyPair;
use crate::link::engine::Watch;
use crate::link::{self, lock, Credentials, Layer, Link, Peer, SharedOutput};
use crate::router::{Action, Event, Policy, PortId, Router, Timers};
use crate::sys::channel::{bounded, RecvTimeoutError, Sender};
use crate::sys::fd::{wake_pair, Waker};
use crate::wire::control::{LinkStats, Reply, Stats};
use crate::wire::{NodeId, Packet};
use input::Input;
use log::{debug, info, warn};
use nix::sys::signal::Signal;
use nix::sys::socket::{send, MsgFlags};
use ports::PortSink;
use session::Key;
use shortcuts::Registry;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunnels::{Instances, Tunnels};

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct Config {
    pub socket: PathBuf,
    pub key_file: PathBuf,
    /// The tunnel process, run with `sh -c` once per incoming tunnel.
    pub tunnel_cmd: Option<String>,
    /// Give the tunnel process packet pipes (O_DIRECT).
    pub packet: bool,
    /// The most tunnel processes running at once.
    pub max_tunnels: usize,
    /// If not empty: open tunnels only for callers via these neighbours.
    pub allow: Vec<NodeId>,
    pub policy: Policy,
    pub timers: Timers,
}

/// Why the daemon could not start.
#[derive(Debug)]
pub enum Error {
    /// The control socket cannot be bound.
    Socket(String),
    /// The id file cannot be read or made.
    Identity(String),
    /// The directory of the socket is not private.
    Directory(String),
    /// The operating system refused a thread, the signal mask or
    /// randomness.
    System(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Socket(e) | Error::Identity(e) | Error::Directory(e) | Error::System(e) => f.write_str(e),
        }
    }
}

/// A port's side of the loop: its link (none for a tunnel's endpoint,
/// which the tunnel ends serve), the waker of its client's watcher and,
/// for ports made by `r2 connect` and `r2 tunnel`, the client to report to.
struct PortIo {
    link: Option<Link>,
    /// The link's output, once its layer is known.
    output: Option<SharedOutput>,
    /// What the router hears of the port once its link may be sent on.
    opens: Option<Opens>,
    /// The link's layer and why, for `r2 ls -l`.
    layer: String,
    why: String,
    watch: Option<Watch>,
    /// The link ends without an error (a second forked child's).
    quiet: bool,
    _watcher: Option<Waker>,
    client: Option<UnixStream>,
    label: String,
    /// For a link kept by `r2 connect -r`, how often it has come back.
    returns: Option<u64>,
    since: Instant,
}

/// What a port is, as the router will hear of it once its link is ready.
#[derive(Clone, Copy)]
enum Opens {
    /// A link to a neighbour, which must prove `expect` if given.
    Link { expect: Option<NodeId> },
    /// A local endpoint with this id.
    Endpoint { id: NodeId },
}

impl PortIo {
    fn new(link: Option<Link>, watcher: Option<Waker>, client: Option<UnixStream>, label: String) -> PortIo {
        PortIo {
            link,
            output: None,
            opens: None,
            layer: String::new(),
            why: String::new(),
            watch: None,
            quiet: false,
            _watcher: watcher,
            client,
            label,
            returns: None,
            since: Instant::now(),
        }
    }
}

/// How many inputs may wait for the loop before readers block.
const INPUT_QUEUE: usize = 1024;
/// How often timers are checked.
const TICK: Duration = Duration::from_millis(250);

/// How often freed heap memory is given back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Gives freed heap memory back to the system, so that the RSS after a
/// burst (many tunnels, each with a window in flight) comes down again.
/// glibc keeps freed memory otherwise; musl's allocator returns it itself.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks the allocator's
    // own lists, under its locks.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Makes glibc's allocator keep one heap for all threads. By default each
/// thread that allocates may get an arena of its own (up to 8 per core),
/// and with threads coming and going per link and tunnel their free
/// memory is scattered: 4,000 link cycles left an idle daemon at 3.4 MiB
/// RSS with the default and at 1.9 MiB with one arena, whose throughput
/// was within noise of the default (100 tunnels 1.04x, one 0.96x).
fn one_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes no pointers; it sets a parameter of the
    // allocator, before the daemon starts its threads.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(64 * 1024)
        .spawn(f)
        .map(|_| ())
        .map_err(|e| Error::System(format!("cannot start the {name} thread: {e}")))
}

/// Runs the daemon until a signal ends it.
pub fn run(cfg: Config) -> Result<(), Error> {
    one_heap();
    signals::block().map_err(Error::System)?;
    raise_fd_limit();
    let key = identity::load_or_create(&cfg.key_file).map_err(Error::Identity)?;
    let own = key.id;
    if let Some(dir) = cfg.socket.parent() {
        if dir == crate::sys::paths::private_tmp_dir(nix::unistd::geteuid()) {
            crate::sys::paths::ensure_private_dir(dir).map_err(Error::Directory)?;
        }
    }
    let sock = listener::ControlSocket::bind(&cfg.socket).map_err(Error::Socket)?;
    let listener = sock.listener.try_clone().map_err(|e| Error::Socket(e.to_string()))?;
    let (tx, rx) = bounded::<Input>(INPUT_QUEUE);
    {
        let tx = tx.clone();
        spawn_named("signals", move || {
            while let Some(sig) = signals::wait() {
                if tx.send(Input::Signal(sig)).is_err() {
                    return;
                }
            }
        })?;
    }
    {
        let tx = tx.clone();
        spawn_named("accept", move || control::accept_loop(listener, own, tx))?;
    }
    info!("node {own} listening on {}", cfg.socket.display());
    if let Some(cmd) = &cfg.tunnel_cmd {
        info!("tunnel process: {cmd}{}", if cfg.packet { " (packet pipes)" } else { "" });
    }
    let mut router = Router::new(own, cfg.timers).with_policy(cfg.policy);
    if cfg.tunnel_cmd.is_some() {
        router = router.with_tunnels();
    }
    let instances =
        Instances { cmd: cfg.tunnel_cmd.clone(), packet: cfg.packet, max: cfg.max_tunnels, allow: cfg.allow.clone() };
    let mut d = Daemon {
        router,
        ports: HashMap::new(),
        tunnels: Tunnels::new(instances, key.clone(), tx.clone()),
        shortcuts: Registry::new(),
        next_port: 0,
        start: Instant::now(),
        urandom: File::open("/dev/urandom").map_err(|e| Error::System(format!("/dev/urandom: {e}")))?,
        inputs: tx,
        actions: Vec::new(),
        depth: 0,
        key,
        handshake_wait: Duration::from_millis(cfg.timers.hello),
    };
    let mut next_tick = Instant::now() + TICK;
    let mut next_trim = Instant::now() + TRIM_EVERY;
    loop {
        match rx.recv_deadline(next_tick) {
            Ok(Input::Signal(Signal::SIGCHLD)) => d.reap(),
            Ok(Input::Signal(sig)) => {
                info!("{sig}: shutting down");
                break;
            }
            Ok(input) => d.on_input(input),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + TICK;
            for port in d.shortcuts.heard() {
                d.router_event(Event::Heard { port });
            }
            d.router_event(Event::Tick);
            d.end_slow_handshakes();
            d.reap();
            if Instant::now() >= next_trim {
                next_trim = Instant::now() + TRIM_EVERY;
                trim_heap();
            }
        }
    }
    d.shutdown();
    drop(sock);
    Ok(())
}

/// Many tunnels need many fds: raise the soft limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

struct Daemon {
    router: Router,
    ports: HashMap<PortId, PortIo>,
    tunnels: Tunnels,
    shortcuts: Registry,
    next_port: PortId,
    start: Instant,
    urandom: File,
    inputs: Sender<Input>,
    actions: Vec<Action>,
    /// How deep in [`Daemon::router_events`] the loop is.
    depth: usize,
    /// The node's key, which its links' handshakes prove.
    key: KeyPair,
    /// How long a link may take from its start to the end of its
    /// handshake (the Hello timeout: then the router's Hello wait begins).
    handshake_wait: Duration,
}

/// Writes a large reply (List, Stats) on a thread of its own, so that the
/// loop never blocks on a slow reader.
fn reply_in_background(mut stream: UnixStream, r: &Reply) {
    use std::io::Write;
    let bytes = r.encode();
    let spawned = spawn_named("reply", move || {
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        let _ = stream.write_all(&bytes);
    });
    if let Err(e) = spawned {
        warn!("{e}");
    }
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
        let mut out = Vec::new();
        match input {
            Input::Router(Event::Closed { port, error })
                if self.ports.get(&port).is_some_and(|p| p.opens.is_some()) =>
            {
                // Ended before the router knew of it: before its handshake
                // was done.
                if let Some(e) = &error {
                    info!("link {port}: {e}");
                }
                self.shortcuts.close_link(port);
                if let Some(c) = self.ports.remove(&port).and_then(|p| p.client) {
                    let error = error.unwrap_or_else(|| "the link ended before the neighbour said anything".into());
                    reply(&c, &Reply::Ended { error: Some(error) });
                }
            }
            Input::LinkReady { port, output, layer, watch, peer } => {
                let Some(p) = self.ports.get_mut(&port) else { return };
                p.output = Some(output);
                p.watch = watch;
                let privacy = match peer {
                    Some(Peer { sealed: true, .. }) => "sealed ",
                    Some(Peer { sealed: false, .. }) => "plaintext (both ends asked) ",
                    None => "",
                };
                p.layer = match p.why.is_empty() {
                    true => format!("{privacy}{layer}"),
                    false => format!("{privacy}{layer}: {}", p.why),
                };
                debug!("link {port}: {}", p.layer);
                let ev = match (p.opens.take(), peer) {
                    (Some(Opens::Link { expect }), Some(peer)) => Event::LinkOpened { port, expect, proven: peer.id },
                    (Some(Opens::Endpoint { id }), None) => Event::EndpointOpened { port, id },
                    _ => return,
                };
                self.router_event(ev);
            }
            Input::Stray { port } => {
                let Some(p) = self.ports.get_mut(&port) else { return };
                p.quiet = true;
                info!("link {port}: heard only another link's frames (a second child forked for one caller): ending");
                let error = Some("heard only another link's frames".to_string());
                if p.opens.is_some() {
                    self.shortcuts.close_link(port);
                    if let Some(c) = self.ports.remove(&port).and_then(|p| p.client) {
                        reply(&c, &Reply::Ended { error: None });
                    }
                } else {
                    self.router_event(Event::Closed { port, error });
                }
            }
            Input::Received { port, packets } => {
                for packet in packets {
                    self.router_event(Event::Received { port, packet });
                    self.shortcuts.handled(port);
                }
            }
            Input::Router(ev) => {
                // A message from a reader: once handled, the reader may
                // take shortcuts again (if its port is gone, so is it).
                let reader = match &ev {
                    Event::Received { port, .. } => Some(*port),
                    _ => None,
                };
                self.router_event(ev);
                if let Some(port) = reader {
                    self.shortcuts.handled(port);
                }
            }
            Input::Stats { stream } => reply_in_background(stream, &Reply::Stats(self.stats())),
            Input::List { stream } => {
                let list: Vec<(NodeId, String)> = self
                    .router
                    .links()
                    .into_iter()
                    .map(|(p, id)| (id, self.ports.get(&p).map(|x| x.label.clone()).unwrap_or_default()))
                    .collect();
                reply_in_background(stream, &Reply::List(list));
            }
            Input::Connect { stream, rfd, wfd, expect, label, layer, why, returns, plaintext } => {
                let port = self.new_port();
                let opens = Opens::Link { expect };
                let own = Credentials { key: self.key.clone(), plaintext };
                match self.open_port(port, (rfd, wfd), Some(stream), label, (layer, why), opens, Some(own)) {
                    Ok(io) => io.returns = returns,
                    Err(e) => warn!("cannot start link {port}: {e}"),
                }
            }
            Input::Endpoint { stream } => self.open_endpoint(stream),
            Input::Tunnel { stream, rfd, wfd, path, packet } => self.open_tunnel(stream, rfd, wfd, path, packet),
            Input::TunnelRead { key, packet } => {
                self.tunnels.read(key, packet, &mut out);
                self.router_events(out);
                self.tunnels.handled(key);
                return;
            }
            Input::TunnelWritten { key, n } => self.tunnels.written(key, n, &mut out),
            Input::TunnelDelivered(d) => self.tunnels.delivered(d.key, d.n, d.done, &mut out),
            Input::TunnelOpened { port, peer, packet } => {
                self.tunnels.instance_opened(peer, packet, &mut self.shortcuts, &mut out);
                self.router_events(out);
                self.shortcuts.handled(port);
                return;
            }
            Input::TunnelWriterDone { key, error } => self.tunnels.writer_done(key, error, &mut out),
            Input::Signal(_) => {}
        }
        self.router_events(out);
    }

    /// Ends the links whose handshake has taken longer than the Hello
    /// timeout: a neighbour that says nothing, or too little, is refused,
    /// and holds nothing for long.
    fn end_slow_handshakes(&mut self) {
        let wait = self.handshake_wait;
        let slow: Vec<PortId> = self
            .ports
            .iter()
            .filter(|(_, p)| p.opens.is_some() && p.link.is_some() && p.since.elapsed() >= wait)
            .map(|(&port, _)| port)
            .collect();
        for port in slow {
            // Tenths by integers: no float formatting in the binary (16 KB).
            let tenths = wait.as_millis() / 100;
            let error = format!(
                "no handshake within {}.{} s: the neighbour is not an r2 node of this version, or the transport carries nothing",
                tenths / 10,
                tenths % 10
            );
            info!("link {port}: {error}");
            self.on_input(Input::Router(Event::Closed { port, error: Some(error) }));
        }
    }

    fn fresh_id(&mut self) -> Option<NodeId> {
        match identity::random_id(&mut self.urandom) {
            Ok(id) => Some(id),
            Err(e) => {
                warn!("no randomness for an endpoint id: {e}");
                None
            }
        }
    }

    fn new_port(&mut self) -> PortId {
        self.next_port += 1;
        self.next_port
    }

    /// Starts a port whose link reads `rfd` and writes `wfd` in `layer`
    /// (chosen for `why`), proving `own` (a link to a neighbour) or not (a
    /// local endpoint), watching `client` (if any) to end it when the
    /// client goes away; the router hears `opens` once the link may be
    /// sent on.
    #[allow(clippy::too_many_arguments)]
    fn open_port(
        &mut self,
        port: PortId,
        fds: (OwnedFd, OwnedFd),
        client: Option<UnixStream>,
        label: String,
        (layer, why): (Layer, String),
        opens: Opens,
        own: Option<Credentials>,
    ) -> std::io::Result<&mut PortIo> {
        let watcher = client.as_ref().map(|c| self.watch(port, c)).transpose()?;
        let routes = self.shortcuts.open_link(port);
        let sink = Arc::new(PortSink { port, routes, inputs: self.inputs.clone() });
        let tag = self.fresh_tag();
        let link = link::start(&port.to_string(), fds, layer, tag, own, sink);
        let link = link.inspect_err(|_| self.shortcuts.close_link(port))?;
        let mut io = PortIo::new(Some(link), watcher, client, label);
        io.opens = Some(opens);
        io.why = why;
        // `port` is new (new_port), so this inserts.
        Ok(self.ports.entry(port).or_insert(io))
    }

    /// A robust link's tag: random, so that a restarted peer's frames are
    /// told from the old one's.
    fn fresh_tag(&mut self) -> u32 {
        let id = self.fresh_id().unwrap_or(NodeId([0; 32]));
        u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]) ^ self.next_port as u32
    }

    /// Starts the thread that ends `port` when its client goes away.
    fn watch(&self, port: PortId, client: &UnixStream) -> std::io::Result<Waker> {
        let (waker, wake) = wake_pair()?;
        ports::start_watcher(port, OwnedFd::from(client.try_clone()?), wake, self.inputs.clone())?;
        Ok(waker)
    }

    /// `r2 ping`, `r2 ls`: an endpoint whose link is the control
    /// connection itself.
    fn open_endpoint(&mut self, stream: UnixStream) {
        let Some(id) = self.fresh_id() else { return };
        let fds = stream.try_clone().and_then(|a| Ok((OwnedFd::from(a), OwnedFd::from(stream.try_clone()?))));
        let (rfd, wfd) = match fds {
            Ok(f) => f,
            Err(e) => return warn!("cannot open an endpoint: {e}"),
        };
        reply(&stream, &Reply::Endpoint { daemon: self.router.own(), endpoint: id });
        drop(stream);
        let port = self.new_port();
        let opens = Opens::Endpoint { id };
        let layer = (Layer::Stream, String::new());
        if let Err(e) = self.open_port(port, (rfd, wfd), None, String::new(), layer, opens, None) {
            return warn!("cannot start endpoint {port}: {e}");
        }
        debug!("endpoint {id} on port {port}");
    }

    /// `r2 tunnel`: an endpoint for the caller's end of a tunnel.
    fn open_tunnel(&mut self, stream: UnixStream, rfd: OwnedFd, wfd: OwnedFd, path: Vec<NodeId>, packet: bool) {
        let Some(id) = self.fresh_id() else { return };
        let port = self.new_port();
        let watcher = match self.watch(port, &stream) {
            Ok(w) => w,
            Err(e) => return reply(&stream, &Reply::Ended { error: Some(format!("cannot start the tunnel: {e}")) }),
        };
        debug!("tunnel {id} on port {port} to {path:?}");
        let mut out = Vec::new();
        if let Err(e) = self.tunnels.open_caller(port, id, path, rfd, wfd, packet, &mut self.shortcuts, &mut out) {
            return reply(&stream, &Reply::Ended { error: Some(format!("cannot start the tunnel: {e}")) });
        }
        self.ports.insert(port, PortIo::new(None, Some(watcher), Some(stream), String::new()));
        self.router_event(Event::EndpointOpened { port, id });
        self.router_events(out);
    }

    fn router_events(&mut self, events: Vec<Event>) {
        self.depth += 1;
        for ev in events {
            self.router_event(ev);
        }
        self.depth -= 1;
        // All that tunnel ends sealed is sent on: their readers may seal
        // and send by shortcut again.
        if self.depth == 0 {
            self.tunnels.release_held();
        }
    }

    fn router_event(&mut self, ev: Event) {
        let mut actions = std::mem::take(&mut self.actions);
        self.router.handle(self.now(), ev, &mut actions);
        let mut out = Vec::new();
        for a in actions.drain(..) {
            self.act(a, &mut out);
        }
        self.actions = actions;
        // What the tunnel ends answer goes to the router in turn.
        self.router_events(out);
    }

    /// Does what the router decided; tunnel ends add the events of their
    /// answers to `out`.
    fn act(&mut self, a: Action, out: &mut Vec<Event>) {
        match a {
            Action::Send { port, packet } => self.send(port, packet, out),
            Action::LinkUp { port, peer } => {
                if let Some(c) = self.ports.get(&port).and_then(|p| p.client.as_ref()) {
                    reply(c, &Reply::Linked(peer));
                }
            }
            Action::Close { port, error } => {
                let exit = self.tunnels.close_caller(port).flatten();
                self.shortcuts.close_link(port);
                let Some(p) = self.ports.remove(&port) else { return };
                if let Some(c) = &p.client {
                    match (exit, &error) {
                        (Some(status), None) => reply(c, &Reply::Exit(status)),
                        _ if p.quiet => reply(c, &Reply::Ended { error: None }),
                        _ => reply(c, &Reply::Ended { error }),
                    }
                }
            }
            Action::Tunnel { peer, via, packet } => {
                self.tunnels.instance_receive(peer, via, packet, &mut self.shortcuts, out)
            }
            Action::Shortcut(s) => {
                let (ports, tunnels) = (&self.ports, &self.tunnels);
                let output = |p: PortId| ports.get(&p).and_then(|io| io.output.clone());
                self.shortcuts.learn(s, output, |key: Key| tunnels.delivery(key));
            }
            Action::ForgetShortcuts => self.shortcuts.forget(),
            Action::ForgetShortcutsOf(n) => self.shortcuts.forget_of(n),
            Action::TunnelGone { peer } => self.tunnels.gone(peer),
        }
    }

    /// Sends `packet` on `port`: on its link, or to the caller's tunnel
    /// end that is the endpoint there.
    fn send(&mut self, port: PortId, packet: Packet, out: &mut Vec<Event>) {
        match self.ports.get(&port) {
            Some(PortIo { output: Some(o), .. }) => {
                lock(o).send(packet);
            }
            Some(PortIo { link: None, .. }) => self.tunnels.caller_receive(port, packet, self.router.own(), out),
            _ => {}
        }
    }

    fn reap(&mut self) {
        let mut out = Vec::new();
        self.tunnels.reap(&mut out);
        self.router_events(out);
    }

    /// Everything `r2 stats` shows.
    fn stats(&self) -> Stats {
        let links = self
            .router
            .links()
            .into_iter()
            .filter_map(|(p, id)| {
                let io = self.ports.get(&p)?;
                let link = io.link.as_ref()?;
                let up_ms = io.since.elapsed().as_millis() as u64;
                let tx = io.output.as_ref().map(|o| lock(o).sent).unwrap_or_default();
                let mut layer = io.layer.clone();
                if let Some(w) = &io.watch {
                    let s = w.status();
                    layer += &format!(
                        "; packets of {} bytes, rtt {} us, cwnd {}, {} lost, {} bytes resent",
                        s.packet_size, s.srtt_us, s.cwnd, s.lost, s.retransmitted
                    );
                }
                let (label, returns) = (io.label.clone(), io.returns);
                Some(LinkStats { id, label, layer, up_ms, rx: link.received(), tx, returns })
            })
            .collect();
        let tunnels = self.tunnels.stats(|port| self.router.endpoint_id(port));
        let t = self.tunnels.totals();
        let (tunnels_open, reaping) = self.tunnels.counts();
        let mut counters: Vec<(String, u64)> =
            self.router.counters().list().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for (k, v) in [
            ("tunnels_opened", t.tunnels_opened),
            ("tunnels_closed", t.tunnels_closed),
            ("instances_started", t.instances_started),
            ("instances_ended", t.instances_ended),
            ("instances_refused", t.instances_refused),
            ("processes_reaped", t.processes_reaped),
            ("datagram_bytes_lost", t.datagram_bytes_lost),
            ("tunnel_handshakes", t.tunnel_handshakes),
            ("tunnel_handshakes_rate_limited", t.tunnel_handshakes_rate_limited),
            ("messages_shortcut", self.shortcuts.taken()),
            ("ports_open", self.ports.len() as u64),
            ("tunnels_open", tunnels_open as u64),
            ("processes_reaping", reaping as u64),
        ] {
            counters.push((k.to_string(), v));
        }
        Stats { links, tunnels, counters }
    }

    /// Ends every port and tunnel: clients are told, children reaped.
    fn shutdown(&mut self) {
        let error = Some("the daemon is shutting down".to_string());
        for (_, p) in self.ports.drain() {
            if let Some(c) = &p.client {
                reply(c, &Reply::Ended { error: error.clone() });
            }
        }
        self.tunnels.shutdown();
    }
}
