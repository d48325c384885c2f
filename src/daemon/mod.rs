//! The daemon, `r2d`: the fds, threads and processes around the router.
//!
//! ```text
//! link reader ─┐                               ┌─> link fd (or its writer)
//! tunnel rd/wr ┼─> inputs (bounded) ─> router ─┼─> tunnel program (or writer)
//! control     ─┤        + tick                 └─> control reply
//! signals     ─┘
//! ```
//!
//! One event loop owns the router, the table of ports and the tunnel ends.
//! Each fd is read by one reader thread; the loop writes to an fd itself
//! while that never blocks, and leaves the rest to the fd's writer thread
//! (`output`). Closing a port is dropping its output (the writer flushes
//! and closes) and its waker (the reader stops).

mod control;
pub mod identity;
mod listener;
mod output;
mod ports;
mod shortcut;
mod signals;
pub mod tunnel;

use crate::router::{Action, Event, Policy, PortId, Router, Timers};
use crate::sys::frames::{wake_pair, Waker};
use crate::wire::control::{LinkStats, Reply, Stats, TunnelStats};
use crate::wire::message::{Kind, HEADER};
use crate::wire::path::{describe_end, describe_fail, interpret, PathReply};
use crate::wire::tunnel::{TunnelMsg, DEFAULT_WINDOW};
use crate::wire::{FailCode, NodeId, Packet};
use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use log::{debug, info, warn};
use nix::sys::signal::{killpg, Signal};
use nix::sys::socket::{send, MsgFlags};
use nix::unistd::Pid;
use shortcut::{lock, SharedOutput, Shortcuts};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tunnel::{Delivery, Key, Side, TunnelEnd};

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct Config {
    pub socket: PathBuf,
    pub id_file: PathBuf,
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

/// What the event loop is told, by the threads around it.
pub enum Input {
    Router(Event),
    Connect {
        stream: UnixStream,
        rfd: OwnedFd,
        wfd: OwnedFd,
        expect: Option<NodeId>,
        label: String,
    },
    Endpoint {
        stream: UnixStream,
    },
    Stats {
        stream: UnixStream,
    },
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
    /// A link's reader gave `n` bytes of data to a tunnel program itself,
    /// `done` if they are written out (or discarded) already.
    TunnelDelivered {
        key: Key,
        n: usize,
        done: bool,
    },
    /// A tunnel program's input is closed (or failed).
    TunnelWriterDone {
        key: Key,
        error: Option<String>,
    },
    Signal(Signal),
}

/// A port's side of the loop: its output and its reader's shortcuts (none
/// for a tunnel's endpoint, which the loop serves itself), its threads'
/// waker and, for ports made by `r2 connect` and `r2 tunnel`, the client to
/// report to.
struct PortIo {
    output: Option<SharedOutput>,
    shortcuts: Option<Arc<Shortcuts>>,
    /// The reader's count of relayed messages at the last tick.
    heard: u64,
    _waker: Waker,
    client: Option<UnixStream>,
    label: String,
    since: Instant,
}

impl PortIo {
    fn new(waker: Waker, client: Option<UnixStream>, label: String) -> PortIo {
        PortIo { output: None, shortcuts: None, heard: 0, _waker: waker, client, label, since: Instant::now() }
    }
}

/// The daemon's own counters, beside the router's.
#[derive(Default)]
struct Totals {
    tunnels_opened: u64,
    tunnels_closed: u64,
    instances_started: u64,
    instances_ended: u64,
    instances_refused: u64,
    processes_reaped: u64,
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

/// How long a tunnel process has between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);

/// Runs the daemon until a signal ends it.
pub fn run(cfg: Config) -> Result<(), String> {
    one_heap();
    signals::block()?;
    raise_fd_limit();
    let own = identity::load_or_create(&cfg.id_file)?;
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
    if let Some(cmd) = &cfg.tunnel_cmd {
        info!("tunnel process: {cmd}{}", if cfg.packet { " (packet pipes)" } else { "" });
    }
    let mut router = Router::new(own, cfg.timers).with_policy(cfg.policy);
    if cfg.tunnel_cmd.is_some() {
        router = router.with_tunnels();
    }
    let mut d = Daemon {
        router,
        cfg,
        ports: HashMap::new(),
        tunnels: HashMap::new(),
        reaping: Vec::new(),
        next_port: 0,
        start: Instant::now(),
        urandom: File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?,
        inputs: tx,
        actions: Vec::new(),
        forgotten: true,
        totals: Totals::default(),
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
            d.hear_relays();
            d.router_event(Event::Tick);
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
    cfg: Config,
    ports: HashMap<PortId, PortIo>,
    tunnels: HashMap<Key, TunnelEnd>,
    /// Tunnel processes told to end, with when to stop asking nicely.
    reaping: Vec<(Child, Instant)>,
    next_port: PortId,
    start: Instant,
    urandom: File,
    inputs: Sender<Input>,
    actions: Vec<Action>,
    /// No reader holds a shortcut: none was made since they were last
    /// forgotten.
    forgotten: bool,
    totals: Totals,
}

/// Writes a large reply (List, Stats) on a thread of its own, so that the
/// loop never blocks on a slow reader.
fn reply_in_background(mut stream: UnixStream, r: &Reply) {
    use std::io::Write;
    let bytes = r.encode();
    let spawned = std::thread::Builder::new().name("reply".into()).stack_size(64 * 1024).spawn(move || {
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        let _ = stream.write_all(&bytes);
    });
    if let Err(e) = spawned {
        warn!("cannot start a reply thread: {e}");
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

/// An exit status as one byte, as a shell reports it.
fn status_byte(s: std::process::ExitStatus) -> u8 {
    match (s.code(), s.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 255,
    }
}

impl Daemon {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Router(ev) => {
                // A message from a reader: once handled, the reader may
                // take shortcuts again (if its port is gone, so is it).
                let reader = match &ev {
                    Event::Received { port, .. } => Some(*port),
                    _ => None,
                };
                self.router_event(ev);
                if let Some(s) = reader.and_then(|p| self.ports.get(&p)?.shortcuts.as_ref()) {
                    s.pending.handled();
                }
            }
            Input::Stats { stream } => {
                let stats = self.stats();
                reply_in_background(stream, &Reply::Stats(stats));
            }
            Input::List { stream } => {
                let list: Vec<(NodeId, String)> = self
                    .router
                    .links()
                    .into_iter()
                    .map(|(p, id)| (id, self.ports.get(&p).map(|x| x.label.clone()).unwrap_or_default()))
                    .collect();
                reply_in_background(stream, &Reply::List(list));
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
                let Some(id) = self.fresh_id() else { return };
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
            Input::Tunnel { stream, rfd, wfd, path, packet } => self.open_tunnel(stream, rfd, wfd, path, packet),
            Input::TunnelRead { key, packet } => {
                self.tunnel_read(key, packet);
                if let Some(t) = self.tunnels.get(&key) {
                    t.outbound.pending.handled();
                }
            }
            Input::TunnelWritten { key, n } => {
                if let Some(g) = self.tunnels.get_mut(&key).and_then(|t| t.flow.written(n)) {
                    self.tunnel_send(key, &TunnelMsg::Credit(g).encode());
                }
            }
            Input::TunnelDelivered { key, n, done } => self.tunnel_delivered(key, n, done),
            Input::TunnelWriterDone { key, error } => {
                if let Some(t) = self.tunnels.get_mut(&key) {
                    t.writer_done = true;
                    if let Some(e) = error {
                        debug!("tunnel {key:?}: its program's input: {e}");
                        t.output_failed = true;
                    }
                }
                self.tunnel_check_done(key);
            }
            Input::Signal(_) => {}
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
        let (out, writer) = output::output(wfd, true);
        let shortcuts = Shortcuts::new();
        if let Some(c) = &client {
            let fd = OwnedFd::from(c.try_clone()?);
            ports::start_watcher(port, fd, wake.try_clone()?, self.inputs.clone())?;
        }
        ports::start_writer(port, writer, self.inputs.clone())?;
        ports::start_reader(port, rfd, wake, shortcuts.clone(), self.inputs.clone())?;
        let mut io = PortIo::new(waker, client, label);
        io.output = Some(Arc::new(Mutex::new(out)));
        io.shortcuts = Some(shortcuts);
        self.ports.insert(port, io);
        Ok(())
    }

    fn router_event(&mut self, ev: Event) {
        let actions = self.router_actions(ev);
        self.act_all(actions);
    }

    /// What the router does on `ev`. Acting may feed the router again
    /// (tunnel ends do): each call works on a vector of its own, reused
    /// when it is the outermost.
    fn router_actions(&mut self, ev: Event) -> Vec<Action> {
        let mut actions = std::mem::take(&mut self.actions);
        self.router.handle(self.now(), ev, &mut actions);
        actions
    }

    fn act_all(&mut self, mut actions: Vec<Action>) {
        for a in actions.drain(..) {
            self.act(a);
        }
        self.actions = actions;
    }

    /// Voids every shortcut, now: once this returns, no reader is writing
    /// by one or will again until the loop makes new ones. So what the loop
    /// sends next (an ε, say) comes after all that readers sent by the
    /// state that just ended; a Data message from a tunnel reader after its
    /// endpoint's ε would bind the endpoint's id anew at the next hop.
    fn forget_shortcuts(&mut self) {
        if std::mem::replace(&mut self.forgotten, true) {
            return;
        }
        for s in self.ports.values().filter_map(|p| p.shortcuts.as_ref()) {
            s.forget();
        }
        for t in self.tunnels.values() {
            t.outbound.forget();
        }
    }

    /// Tells the router which links' readers relayed messages by shortcut
    /// since the last tick: those links are alive.
    fn hear_relays(&mut self) {
        let mut heard = Vec::new();
        for (&port, p) in self.ports.iter_mut() {
            let n = p.shortcuts.as_ref().map_or(0, |s| s.relayed());
            if n != p.heard {
                p.heard = n;
                heard.push(port);
            }
        }
        for port in heard {
            self.router_event(Event::Heard { port });
        }
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Send { port, packet } => match self.ports.get_mut(&port) {
                Some(PortIo { output: Some(out), .. }) => {
                    lock(out).send(packet);
                }
                Some(PortIo { output: None, .. }) => self.tunnel_client_receive(port, packet),
                None => {}
            },
            Action::LinkUp { port, peer } => {
                if let Some(c) = self.ports.get(&port).and_then(|p| p.client.as_ref()) {
                    reply(c, &Reply::Linked(peer));
                }
            }
            Action::Close { port, error } => {
                let end = self.tunnels.remove(&Key::Client(port));
                if end.is_some() {
                    self.totals.tunnels_closed += 1;
                }
                if let Some(p) = self.ports.remove(&port) {
                    if let Some(c) = &p.client {
                        match (end.as_ref().and_then(|t| t.exit), &error) {
                            (Some(status), None) => reply(c, &Reply::Exit(status)),
                            _ => reply(c, &Reply::Ended { error }),
                        }
                    }
                }
            }
            Action::Tunnel { peer, via, packet } => self.tunnel_server_receive(peer, via, packet),
            Action::Shortcut(s) => self.shortcut(s),
            Action::ForgetShortcuts => self.forget_shortcuts(),
            Action::TunnelGone { peer } => {
                if let Some(t) = self.tunnels.remove(&Key::Server(peer)) {
                    debug!("tunnel for {peer} ended");
                    self.totals.instances_ended += 1;
                    self.end_instance(t);
                }
            }
        }
    }

    /// Everything `r2 stats` shows.
    fn stats(&self) -> Stats {
        let links = self
            .router
            .links()
            .into_iter()
            .filter_map(|(p, id)| {
                let io = self.ports.get(&p)?;
                let up_ms = io.since.elapsed().as_millis() as u64;
                let rx = io.shortcuts.as_ref().map(|s| s.received()).unwrap_or_default();
                let tx = io.output.as_ref().map(|o| lock(o).sent).unwrap_or_default();
                Some(LinkStats { id, label: io.label.clone(), up_ms, rx, tx })
            })
            .collect();
        let tunnels = self
            .tunnels
            .iter()
            .map(|(key, t)| {
                let (server, id) = match key {
                    Key::Server(peer) => (true, *peer),
                    Key::Client(port) => (false, self.router.endpoint_id(*port).unwrap_or(NodeId([0; 32]))),
                };
                let up_ms = t.since.elapsed().as_millis() as u64;
                TunnelStats { server, id, up_ms, input: t.input, output: t.outbound.read() }
            })
            .collect();
        let t = &self.totals;
        let mut counters: Vec<(String, u64)> =
            self.router.counters().list().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for (k, v) in [
            ("tunnels_opened", t.tunnels_opened),
            ("tunnels_closed", t.tunnels_closed),
            ("instances_started", t.instances_started),
            ("instances_ended", t.instances_ended),
            ("instances_refused", t.instances_refused),
            ("processes_reaped", t.processes_reaped),
            ("messages_shortcut", shortcut::taken()),
            ("ports_open", self.ports.len() as u64),
            ("tunnels_open", self.tunnels.len() as u64),
            ("processes_reaping", self.reaping.len() as u64),
        ] {
            counters.push((k.to_string(), v));
        }
        Stats { links, tunnels, counters }
    }

    // --- the caller's side of tunnels ---------------------------------

    fn open_tunnel(&mut self, stream: UnixStream, rfd: OwnedFd, wfd: OwnedFd, path: Vec<NodeId>, packet: bool) {
        let Some(id) = self.fresh_id() else { return };
        let port = self.new_port();
        let key = Key::Client(port);
        let headroom = (path.len() + 1) * HEADER;
        let side = Side::Client { port, path: path.clone() };
        let started =
            TunnelEnd::start(key, side, rfd, wfd, headroom, packet, DEFAULT_WINDOW, &self.inputs).and_then(|end| {
                let (waker, wake) = wake_pair()?;
                ports::start_watcher(port, OwnedFd::from(stream.try_clone()?), wake, self.inputs.clone())?;
                Ok((end, waker))
            });
        let (end, waker) = match started {
            Ok(x) => x,
            Err(e) => {
                reply(&stream, &Reply::Ended { error: Some(format!("cannot start the tunnel: {e}")) });
                return;
            }
        };
        debug!("tunnel {id} on port {port} to {path:?}");
        self.tunnels.insert(key, end);
        self.ports.insert(port, PortIo::new(waker, Some(stream), String::new()));
        self.totals.tunnels_opened += 1;
        self.router_event(Event::EndpointOpened { port, id });
        self.tunnel_send(key, &TunnelMsg::Open { window: DEFAULT_WINDOW }.encode());
    }

    /// A message from the router to a tunnel's endpoint: what came back
    /// along its path.
    fn tunnel_client_receive(&mut self, port: PortId, mut packet: Packet) {
        let key = Key::Client(port);
        let own = self.router.own();
        let Some(t) = self.tunnels.get_mut(&key) else { return };
        let Side::Client { path, .. } = &t.side else { return };
        let (offset, msg) = match interpret(packet.bytes(), path, NodeId::TUNNEL) {
            PathReply::Answer(inner) => match TunnelMsg::decode(inner) {
                Ok(m) => (packet.len() - inner.len(), owned(m)),
                Err(e) => return debug!("tunnel {key:?}: {e}"),
            },
            PathReply::Fail { at, about, code, text } => {
                let why = describe_fail(at, about, code, &text, own);
                return self.router_event(Event::Closed { port, error: Some(why) });
            }
            PathReply::Ended { at } => {
                let why = describe_end(at, own);
                return self.router_event(Event::Closed { port, error: Some(why) });
            }
            PathReply::Other => return,
        };
        match msg {
            Owned::Data(n) => {
                if t.flow.received(n).is_err() {
                    return self.beyond_credit(key);
                }
                packet.advance(offset + 1);
                self.tunnel_data(key, packet, n);
            }
            Owned::Eof => t.close_output(),
            Owned::Credit(n) => t.add_credit(n),
            Owned::Exit(s) => t.exit = Some(s),
            Owned::Open => {}
        }
        self.tunnel_check_done(key);
    }

    /// Data for a tunnel end's program (`packet` holds just the bytes):
    /// written or queued for its writer, or, if its input has ended,
    /// discarded. What is written or discarded now is granted back now;
    /// what is queued, when its writer reports it.
    fn tunnel_data(&mut self, key: Key, packet: Packet, n: usize) {
        let Some(t) = self.tunnels.get_mut(&key) else { return };
        t.input.add(n);
        if t.write(packet) != Delivery::Queued {
            if let Some(g) = t.flow.written(n) {
                self.tunnel_send(key, &TunnelMsg::Credit(g).encode());
            }
        }
    }

    /// The caller's side is done when the far side has exited and all its
    /// output is written out.
    fn tunnel_check_done(&mut self, key: Key) {
        let Key::Client(port) = key else { return self.server_maybe_exit(key) };
        let done = self.tunnels.get(&key).is_some_and(|t| t.exit.is_some() && t.got_eof && t.writer_done);
        if done {
            self.router_event(Event::Closed { port, error: None });
        }
    }

    /// Sends a tunnel message from the end `key` to its peer.
    fn tunnel_send(&mut self, key: Key, msg: &[u8]) {
        self.tunnel_send_packet(key, Packet::from_parts(msg.to_vec(), 0));
    }

    /// Sends a tunnel message from the end `key` to its peer.
    fn tunnel_send_packet(&mut self, key: Key, mut p: Packet) {
        let Some(t) = self.tunnels.get(&key) else { return };
        let ev = match &t.side {
            Side::Client { port, path } => {
                p.push_header(Kind::To, NodeId::TUNNEL);
                for h in path.iter().rev() {
                    p.push_header(Kind::To, *h);
                }
                Event::Received { port: *port, packet: p }
            }
            Side::Server { peer, .. } => Event::FromTunnel { to: *peer, packet: p },
        };
        self.router_event(ev);
    }

    /// A read of a tunnel program's output (None: its end).
    fn tunnel_read(&mut self, key: Key, packet: Option<Packet>) {
        let Some(t) = self.tunnels.get_mut(&key) else { return };
        match packet {
            Some(p) => self.tunnel_send_packet(key, p),
            None => {
                t.sent_eof = true;
                self.tunnel_send(key, &TunnelMsg::Eof.encode());
                self.server_maybe_exit(key);
            }
        }
    }

    // --- the far side: instances of the tunnel process -----------------

    fn tunnel_server_receive(&mut self, peer: NodeId, via: Option<NodeId>, mut packet: Packet) {
        let key = Key::Server(peer);
        let msg = match TunnelMsg::decode(packet.bytes()) {
            Ok(m) => owned(m),
            Err(e) => {
                let text = e.to_string();
                return self.router_event(Event::TunnelFail { to: peer, code: FailCode::BadMessage, text });
            }
        };
        if let Owned::Open = msg {
            return self.start_instance(peer, via, &packet);
        }
        let Some(t) = self.tunnels.get_mut(&key) else { return };
        match msg {
            Owned::Data(n) => {
                if t.flow.received(n).is_err() {
                    return self.beyond_credit(key);
                }
                packet.advance(1);
                self.tunnel_data(key, packet, n);
            }
            Owned::Eof => t.close_output(),
            Owned::Credit(n) => t.add_credit(n),
            Owned::Exit(_) | Owned::Open => {}
        }
    }

    /// Gives a reader the shortcut the router decided.
    fn shortcut(&mut self, s: crate::router::Shortcut) {
        use crate::router::{Exit, Lane};
        let output = |ports: &HashMap<PortId, PortIo>, p: PortId| ports.get(&p).and_then(|p| p.output.clone());
        match (s.from, s.to) {
            (Lane::Link(from), Exit::Port(to)) => {
                let out = output(&self.ports, to);
                let table = self.ports.get(&from).and_then(|p| p.shortcuts.as_ref());
                if let (Some(out), Some(table)) = (out, table) {
                    table.add(s.key, &out, s.head);
                    self.forgotten = false;
                }
            }
            (Lane::Link(from), Exit::Tunnel(peer)) => self.learn_inbound(Key::Server(peer), peer, from),
            (lane @ (Lane::Endpoint(_) | Lane::Tunnel(_)), Exit::Port(to)) => {
                let key = match lane {
                    Lane::Endpoint(p) => Key::Client(p),
                    Lane::Tunnel(peer) => Key::Server(peer),
                    Lane::Link(_) => return,
                };
                let (Some(out), Some(t)) = (output(&self.ports, to), self.tunnels.get(&key)) else { return };
                if s.key.last() == Some(&crate::wire::tunnel::DATA) {
                    t.outbound.learn(&out, s.head);
                    self.forgotten = false;
                }
            }
            _ => {}
        }
    }

    /// Lets the link that brings the data of the far-side tunnel end `key`
    /// (for `peer`, whose messages come by way of neighbour `via`) deliver
    /// it to the program itself (`Shortcuts::deliver`).
    fn learn_inbound(&mut self, key: Key, peer: NodeId, port: PortId) {
        let Some(table) = self.ports.get(&port).and_then(|p| p.shortcuts.as_ref()) else { return };
        let Some(out) = self.tunnels.get(&key).and_then(|t| t.program_input()) else { return };
        if lock(out).splices() {
            table.add_inbound(shortcut::inbound_key(peer), out, key);
            self.forgotten = false;
        }
    }

    /// A link's reader gave `n` bytes of data to the program of tunnel end
    /// `key` itself: they count against the peer's credit as if the loop
    /// had, and are granted back once `done` (written out or discarded),
    /// else when its writer reports them.
    fn tunnel_delivered(&mut self, key: Key, n: usize, done: bool) {
        let Some(t) = self.tunnels.get_mut(&key) else { return };
        t.input.add(n);
        if t.flow.received(n).is_err() {
            return self.beyond_credit(key);
        }
        if let Some(g) = done.then(|| t.flow.written(n)).flatten() {
            self.tunnel_send(key, &TunnelMsg::Credit(g).encode());
        }
    }

    /// The peer of tunnel end `key` sent data beyond its credit: the end
    /// is over.
    fn beyond_credit(&mut self, key: Key) {
        match key {
            Key::Server(peer) => {
                warn!("tunnel for {peer}: data beyond credit; ending it");
                let text = "data beyond credit".to_string();
                if let Some(t) = self.tunnels.remove(&key) {
                    self.totals.instances_ended += 1;
                    self.end_instance(t);
                }
                self.router_event(Event::TunnelFail { to: peer, code: FailCode::Overload, text });
            }
            Key::Client(port) => {
                let why = "the tunnel process's side sent beyond its credit".to_string();
                self.router_event(Event::Closed { port, error: Some(why) });
            }
        }
    }

    fn start_instance(&mut self, peer: NodeId, via: Option<NodeId>, open: &Packet) {
        let key = Key::Server(peer);
        if self.tunnels.contains_key(&key) {
            return; // one instance per neighbour, ever
        }
        let Some(cmd) = self.cfg.tunnel_cmd.clone() else { return };
        let window = match TunnelMsg::decode(open.bytes()) {
            Ok(TunnelMsg::Open { window }) => window,
            _ => return,
        };
        if !self.cfg.allow.is_empty() && !via.is_some_and(|v| self.cfg.allow.contains(&v)) {
            let text = "not allowed to open tunnels here".to_string();
            warn!("tunnel for {peer} via {via:?} refused: not allowed");
            self.totals.instances_refused += 1;
            return self.router_event(Event::TunnelFail { to: peer, code: FailCode::Refused, text });
        }
        let running = self.tunnels.keys().filter(|k| matches!(k, Key::Server(_))).count();
        if running >= self.cfg.max_tunnels {
            let text = format!("{} tunnels already", self.cfg.max_tunnels);
            warn!("tunnel for {peer} refused: {text}");
            self.totals.instances_refused += 1;
            return self.router_event(Event::TunnelFail { to: peer, code: FailCode::TooManyTunnels, text });
        }
        match self.spawn_instance(key, peer, via, &cmd) {
            Ok(end) => {
                info!("tunnel for {peer}: started {cmd:?}");
                self.totals.instances_started += 1;
                end.add_credit(window);
                self.tunnels.insert(key, end);
                self.tunnel_send(key, &TunnelMsg::Credit(DEFAULT_WINDOW).encode());
            }
            Err(e) => {
                warn!("tunnel for {peer}: cannot start {cmd:?}: {e}");
                self.totals.instances_refused += 1;
                let text = format!("cannot start the tunnel process: {e}");
                self.router_event(Event::TunnelFail { to: peer, code: FailCode::Refused, text });
            }
        }
    }

    fn spawn_instance(&mut self, key: Key, peer: NodeId, via: Option<NodeId>, cmd: &str) -> std::io::Result<TunnelEnd> {
        let (in_r, in_w) = pipe(self.cfg.packet)?;
        let (out_r, out_w) = pipe(self.cfg.packet)?;
        let side = Side::Server { peer, child: None };
        let mut end =
            TunnelEnd::start(key, side, out_r, in_w, 2 * HEADER, self.cfg.packet, DEFAULT_WINDOW, &self.inputs)?;
        // If this fails, dropping `end` stops its threads.
        let child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .env("R2_PEER", peer.to_string())
            .env("R2_VIA", via.map(|v| v.to_string()).unwrap_or_default())
            .stdin(Stdio::from(in_r))
            .stdout(Stdio::from(out_w))
            .process_group(0)
            .spawn()?;
        end.side = Side::Server { peer, child: Some(child) };
        Ok(end)
    }

    /// Sends Exit once the instance has exited and its output has ended.
    fn server_maybe_exit(&mut self, key: Key) {
        let Some(t) = self.tunnels.get_mut(&key) else { return };
        if let (Side::Server { .. }, true, Some(s), false) = (&t.side, t.sent_eof, t.exit, t.exit_sent) {
            t.exit_sent = true;
            self.tunnel_send(key, &TunnelMsg::Exit(s).encode());
        }
    }

    /// Ends an instance: its pipes close, its process group gets SIGTERM,
    /// and it is reaped (SIGKILL if it lingers).
    fn end_instance(&mut self, t: TunnelEnd) {
        if let Side::Server { child: Some(c), .. } = t.side {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            self.reaping.push((c, Instant::now() + KILL_GRACE));
        }
    }

    /// Collects exited tunnel processes (on SIGCHLD and every tick).
    fn reap(&mut self) {
        let mut exited = Vec::new();
        for (key, t) in self.tunnels.iter_mut() {
            if let Side::Server { child: Some(c), peer } = &mut t.side {
                if let Ok(Some(status)) = c.try_wait() {
                    info!("tunnel for {peer}: process exited ({status})");
                    self.totals.processes_reaped += 1;
                    t.exit = Some(status_byte(status));
                    if let Side::Server { child, .. } = &mut t.side {
                        *child = None;
                    }
                    exited.push(*key);
                }
            }
        }
        for key in exited {
            self.server_maybe_exit(key);
        }
        let now = Instant::now();
        let reaped = &mut self.totals.processes_reaped;
        self.reaping.retain_mut(|(c, deadline)| match c.try_wait() {
            Ok(Some(_)) | Err(_) => {
                *reaped += 1;
                false
            }
            Ok(None) => {
                if now > *deadline {
                    let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
                }
                true
            }
        });
    }

    /// Ends every port and tunnel: clients are told, children reaped.
    fn shutdown(&mut self) {
        let error = Some("the daemon is shutting down".to_string());
        for (_, p) in self.ports.drain() {
            if let Some(c) = &p.client {
                reply(c, &Reply::Ended { error: error.clone() });
            }
        }
        let ends: Vec<TunnelEnd> = self.tunnels.drain().map(|(_, t)| t).collect();
        for t in ends {
            self.end_instance(t);
        }
        let deadline = Instant::now() + KILL_GRACE;
        while !self.reaping.is_empty() {
            if Instant::now() > deadline {
                for (c, _) in &mut self.reaping {
                    let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
                    let _ = c.wait();
                }
                break;
            }
            self.reaping.retain_mut(|(c, _)| matches!(c.try_wait(), Ok(None)));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A pipe, close-on-exec, packet mode if asked.
fn pipe(packet: bool) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    let mut flags = OFlag::O_CLOEXEC;
    if packet {
        flags |= OFlag::O_DIRECT;
    }
    let (r, w) = nix::unistd::pipe2(flags)?;
    crate::sys::grow_pipe(std::os::fd::AsFd::as_fd(&r));
    Ok((r, w))
}

/// A tunnel message without its borrowed data (only the data's size).
enum Owned {
    Open,
    Data(usize),
    Eof,
    Credit(u32),
    Exit(u8),
}

fn owned(m: TunnelMsg<'_>) -> Owned {
    match m {
        TunnelMsg::Open { .. } => Owned::Open,
        TunnelMsg::Data(d) => Owned::Data(d.len()),
        TunnelMsg::Eof => Owned::Eof,
        TunnelMsg::Credit(n) => Owned::Credit(n),
        TunnelMsg::Exit(s) => Owned::Exit(s),
    }
}
