//! `r2 connect [-n NODE] TRANSPORT`: hand a byte stream to the daemon as a
//! link, and wait until the link ends.

use super::transport::{hand_over_and_wait, Fds, Transport};
use super::{Command, Error, Global, Result};
use crate::client::Control;
use crate::link::{Layer, Medium};
use crate::sys::held::{held, own_sockets, tree, Held};
use crate::wire::control::Request;
use crate::wire::NodeId;
use lexopt::prelude::*;
use std::time::{Duration, Instant};

pub const USAGE: &str = "\
usage: r2 connect [-r] [-n NODE] [--layer LAYER] [--plaintext] TRANSPORT

Links the local daemon to a neighbouring daemon over TRANSPORT: a command run
with sh -c whose stdin and stdout reach the other daemon (socat tcp:HOST:PORT -,
socat udp:HOST:PORT -, socat interface:eth0 -, socat /dev/ttyUSB0,raw,echo=0 -,
ssh HOST r2 connect -, ...), or - for this program's own stdin and stdout.
Waits until the link ends: exit 0 at end-of-file, 1 with a message on error.
With -r the link is kept: whenever it ends, TRANSPORT runs again after a wait
(1 s, doubling to 60 s, with jitter; 1 s again after a link that stayed up a
minute), each attempt logged, until a signal (exit 0) or the daemon's end
(exit 1).

The link layer follows from what the transport holds: the stream layer over
TCP, UNIX sockets and pipes; the robust layer (checked frames, retransmission,
congestion control) over UDP, raw Ethernet and serial lines, and over - run by
a process that holds a UDP socket (socat udp-l:PORT exec:\"r2 connect -\");
with - or a transport that holds none of these, whatever the neighbour speaks
first.

A link starts with a Noise handshake in which each daemon proves the key that
is its id; every message after it is encrypted and authenticated. With
--plaintext this end asks that messages not be sealed, for a transport that is
already private (ssh, a local pipe): the link is plaintext only if the
neighbour's r2 connect asks too, and the ids are proven either way.

  -n, --node NODE       the id (or name) the neighbour must prove, on every attempt
  -r, --reconnect       keep the link: run TRANSPORT again whenever it ends
      --layer LAYER     auto (the default), stream or robust
      --plaintext       ask for a link whose messages are not sealed
";

/// What `--layer` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerFlag {
    Auto,
    Stream,
    Robust,
}

#[derive(Debug, PartialEq)]
pub struct Args {
    pub expect: Option<NodeId>,
    pub reconnect: bool,
    pub layer: LayerFlag,
    /// Ask for a plaintext link.
    pub plaintext: bool,
    pub transport: String,
}

pub fn parse(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let (mut expect, mut transport, mut layer, mut reconnect) = (None, None, LayerFlag::Auto, false);
    let mut plaintext = false;
    while let Some(arg) = p.next()? {
        match arg {
            Short('s') | Long("socket") => g.socket = Some(p.value()?.into()),
            Short('v') | Long("verbose") => g.verbose += 1,
            Short('r') | Long("reconnect") => reconnect = true,
            Long("plaintext") => plaintext = true,
            Short('n') | Long("node") => expect = Some(super::names::node_arg(&p.value()?.string()?)?),
            Long("layer") => {
                layer = match p.value()?.string()?.as_str() {
                    "auto" => LayerFlag::Auto,
                    "stream" => LayerFlag::Stream,
                    "robust" => LayerFlag::Robust,
                    l => return Err(Error::Usage(format!("unknown --layer {l:?}: auto, stream or robust"))),
                }
            }
            Short('h') | Long("help") => return Ok(Command::Help(USAGE)),
            Value(v) if transport.is_none() => transport = Some(v.string()?),
            Value(v) => {
                return Err(Error::Usage(format!("unexpected argument {v:?}: TRANSPORT is one argument (quote it)")))
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let transport = transport.ok_or_else(|| Error::Usage("no TRANSPORT given (a command, or -)".into()))?;
    if transport.is_empty() {
        return Err(Error::Usage("empty TRANSPORT".into()));
    }
    if reconnect && transport == "-" {
        return Err(Error::Usage("-r needs a TRANSPORT command: this program's stdio cannot be run again".into()));
    }
    Ok(Command::Connect(Args { expect, reconnect, layer, plaintext, transport }))
}

/// How long `r2 connect` looks at a new transport for what it holds.
const DETECT_WAIT: Duration = Duration::from_millis(500);

/// What a finding of [`layer_for`] says: the layer, why, and whether the
/// transport's datagrams are better kept apart (a raw interface takes
/// only whole frames, and a UDP socket sends each read as one datagram).
type Found = (Layer, String, bool);

/// The layer that what a transport's processes hold calls for. None:
/// nothing that tells, yet. A UNIX datagram socket tells less than the
/// others (`weak`): libraries open one for a moment (logging, name
/// services) before the program opens what it is run for, and a UDP
/// transport taken for one would lose its datagrams kept apart.
fn layer_for(held: &[Held]) -> Option<(Found, bool)> {
    let robust = Layer::Robust;
    if let Some(Held::Packet(i)) = held.iter().find(|h| matches!(h, Held::Packet(_))) {
        let mac = crate::sys::held::interface_mac(*i).and_then(|m| crate::link::layer::parse_mac(&m));
        return Some(((robust(Medium::Ethernet(mac)), "the transport holds a raw packet socket".into(), true), false));
    }
    if held.contains(&Held::Udp) {
        return Some(((robust(Medium::Datagrams), "the transport holds a UDP socket".into(), true), false));
    }
    if held.contains(&Held::Tcp) {
        return Some(((Layer::Stream, "the transport holds a TCP socket".into(), false), false));
    }
    if let Some(Held::Tty(t)) = held.iter().find(|h| matches!(h, Held::Tty(_))) {
        return Some(((robust(Medium::Bytes), format!("the transport holds {t}"), false), false));
    }
    if held.contains(&Held::UnixDatagram) {
        return Some(((robust(Medium::Datagrams), "the transport holds a UNIX datagram socket".into(), false), true));
    }
    if held.contains(&Held::UnixStream) {
        return Some(((Layer::Stream, "the transport holds a UNIX stream socket".into(), false), false));
    }
    None
}

/// How long a UNIX datagram socket must stay held, with nothing that tells
/// more beside it, before it decides the layer.
const WEAK_WAIT: Duration = Duration::from_millis(100);

/// Watches the transport just started for what it holds: the program
/// itself often (sh execs a lone command), the processes it started
/// every few looks, until it exits or [`DETECT_WAIT`] passes. A weak
/// finding counts once it has been seen for [`WEAK_WAIT`].
fn detect(t: &mut Transport) -> Option<Found> {
    let pid = t.pid()?;
    let deadline = Instant::now() + DETECT_WAIT;
    // What the transport inherited from this process, read once.
    let inherited = own_sockets();
    let mut pause = Duration::from_millis(2);
    let mut weak_since: Option<Instant> = None;
    for look in 0.. {
        let whole_tree = look % 4 == 3;
        let pids = if whole_tree { tree(pid) } else { vec![pid] };
        match layer_for(&held(&pids, &inherited)) {
            Some((found, false)) => return Some(found),
            Some((found, true)) if weak_since.is_some_and(|t| t.elapsed() >= WEAK_WAIT) => return Some(found),
            Some((_, true)) => weak_since = weak_since.or(Some(Instant::now())),
            None if whole_tree => weak_since = None,
            None => {}
        }
        if Instant::now() >= deadline || t.exited() {
            return layer_for(&held(&tree(pid), &inherited)).map(|(found, _)| found);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    None
}

/// Whether the process that started this one holds a UDP socket, as a
/// `socat udp-l:PORT exec:"r2 connect -"` does: then this program's stdio
/// carries datagrams, each read of socat's one, and the robust layer's
/// frames may be as large as datagrams (not a byte stream's 1200 bytes).
/// Not init's, which holds the sockets of every socket unit.
fn parent_holds_udp() -> bool {
    let parent = std::os::unix::process::parent_id();
    parent > 1 && held(&[parent], &own_sockets()).contains(&Held::Udp)
}

/// Runs the transport and chooses the link's layer.
pub(super) fn start(a: &Args) -> Result<(Transport, Layer, String)> {
    if a.transport == "-" {
        return Ok(match a.layer {
            LayerFlag::Auto if parent_holds_udp() => (
                Transport::stdio(),
                Layer::Robust(Medium::Datagrams),
                "this program's stdio, from a process that holds a UDP socket".into(),
            ),
            LayerFlag::Auto => {
                (Transport::stdio(), Layer::Adapt, "this program's stdio: whatever the neighbour speaks".into())
            }
            LayerFlag::Stream => (Transport::stdio(), Layer::Stream, "--layer stream".into()),
            LayerFlag::Robust => (Transport::stdio(), Layer::Robust(Medium::Bytes), "--layer robust".into()),
        });
    }
    let mut t = Transport::command(&a.transport, Fds::Pipes)?;
    if a.layer == LayerFlag::Stream {
        return Ok((t, Layer::Stream, "--layer stream".into()));
    }
    let found = detect(&mut t);
    let (t, layer, why) = match found {
        // Run again on socket pairs that keep records apart, so that
        // each frame is one read of the transport's, and one datagram.
        Some((layer, why, true)) => {
            t.end();
            (Transport::command(&a.transport, Fds::Records)?, layer, why)
        }
        Some((layer, why, false)) => (t, layer, why),
        None => (t, Layer::Adapt, "nothing the transport holds tells: whatever the neighbour speaks".into()),
    };
    Ok(match (a.layer, layer) {
        (LayerFlag::Auto, l) => (t, l, why),
        (LayerFlag::Stream, _) => (t, Layer::Stream, "--layer stream".into()),
        (LayerFlag::Robust, Layer::Robust(m)) => (t, Layer::Robust(m), format!("--layer robust; {why}")),
        (LayerFlag::Robust, _) => (t, Layer::Robust(Medium::Bytes), "--layer robust".into()),
    })
}

/// One link, until it ends (a kept link, `-r`, is `kept::run`).
pub fn run(g: &Global, a: Args) -> Result<i32> {
    let control = Control::connect(&g.socket())?;
    let (t, layer, why) = start(&a)?;
    let label = if a.transport == "-" { "stdio".to_string() } else { a.transport.clone() };
    log::debug!("link layer {layer}: {why}");
    let req =
        Request::Connect { expect: a.expect, label, layer: layer.encode(), why, returns: None, plaintext: a.plaintext };
    hand_over_and_wait(control, &req, t)
}

#[cfg(test)]
mod tests {
    use super::super::{args, parse as parse_all};
    use super::*;

    #[test]
    fn parses() {
        let id = NodeId([3; 32]);
        let s = format!("{id}");
        let (_, c) = parse_all(args(&["r2", "connect", "-n", &s, "socat - -"])).unwrap();
        assert_eq!(
            c,
            Command::Connect(Args {
                expect: Some(id),
                reconnect: false,
                layer: LayerFlag::Auto,
                plaintext: false,
                transport: "socat - -".into()
            })
        );
        let (_, c) = parse_all(args(&["r2", "connect", "--layer", "robust", "-"])).unwrap();
        let want =
            Args { expect: None, reconnect: false, layer: LayerFlag::Robust, plaintext: false, transport: "-".into() };
        assert_eq!(c, Command::Connect(want));
        let (_, c) = parse_all(args(&["r2", "connect", "-r", "socat tcp:h:1 -"])).unwrap();
        assert!(matches!(c, Command::Connect(Args { reconnect: true, .. })));
        let (_, c) = parse_all(args(&["r2", "connect", "--plaintext", "ssh h r2 connect --plaintext -"])).unwrap();
        assert!(matches!(c, Command::Connect(Args { plaintext: true, .. })));
        for bad in [
            vec!["r2", "connect"],
            vec!["r2", "connect", "-n", "xyz0", "-"],
            vec!["r2", "connect", "-n", "11111111111111111111111111111111", "-"],
            vec!["r2", "connect", "a", "b"],
            vec!["r2", "connect", "--layer", "fast", "-"],
            vec!["r2", "connect", "-r", "-"],
        ] {
            assert!(matches!(parse_all(args(&bad)), Err(Error::Usage(_))), "{bad:?}");
        }
    }
}
