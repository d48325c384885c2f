//! `r2d [-s SOCKET] [-k KEYFILE] [-v] [--keepalive S] [--hello-timeout S] [CMD]`

use super::units::seconds;
use super::{Command, Error, Global, Result};
use crate::daemon::Config;
use crate::router::{Policy, Timers};
use crate::wire::NodeId;
use lexopt::prelude::*;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: r2d [-p] [-s SOCKET] [-k KEYFILE] [-v] [--allow NODE]... [--no-transit]
           [--max-tunnels N] [--max-virtual N] [--keepalive SECONDS]
           [--hello-timeout SECONDS] [CMD]
       r2 daemon [same options]

Runs a node. CMD, if given, is the tunnel process: run with sh -c once for
each incoming tunnel, its stdin and stdout joined to the tunnel, R2_PEER and
R2_VIA in its environment.

  -s, --socket SOCKET         control socket (default: $R2_SOCKET, /run/r2.sock for
                              root, else $XDG_RUNTIME_DIR/r2.sock or /tmp/r2-UID/r2.sock)
  -k, --key-file KEYFILE      where the node's key is kept, whose public half is its id
                              (default: named after the socket, in /var/lib/r2 or
                              $XDG_STATE_HOME/r2)
  -v, --verbose               log more (repeat for more)
  -p, --packet                give CMD packet pipes (O_DIRECT): one write, one message
      --allow NODE            open tunnels only for callers whose node, proven, is NODE
                              ($R2_PEER), an id or a name from the hosts file
                              (repeat for more; default: anyone)
      --no-transit            relay nothing between other nodes: serve only this node's
                              own endpoints, ping, ls and tunnel process
      --max-tunnels N         run at most N tunnel processes at once (default 1024)
      --max-virtual N         carry at most N virtual neighbours per link (default 4096)
      --keepalive SECONDS     ping a link silent this long; drop it after 3 (default 2)
      --hello-timeout SECONDS drop a link whose handshake, or then Hello, takes longer
                              (default 5)
";

#[derive(Debug, PartialEq)]
pub struct Args {
    pub key_file: Option<PathBuf>,
    pub packet: bool,
    pub max_tunnels: usize,
    pub allow: Vec<NodeId>,
    pub policy: Policy,
    pub tunnel_cmd: Option<String>,
    pub timers: Timers,
}

pub fn parse(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut a = Args {
        key_file: None,
        packet: false,
        max_tunnels: 1024,
        allow: Vec::new(),
        policy: Policy::default(),
        tunnel_cmd: None,
        timers: Timers::default(),
    };
    let count = |v: String, what: &str| -> Result<usize> {
        v.parse().map_err(|_| Error::Usage(format!("{what}: {v:?} is not a count")))
    };
    while let Some(arg) = p.next()? {
        match arg {
            Short('s') | Long("socket") => g.socket = Some(p.value()?.into()),
            Short('v') | Long("verbose") => g.verbose += 1,
            Short('k') | Long("key-file") => a.key_file = Some(p.value()?.into()),
            Short('p') | Long("packet") => a.packet = true,
            Long("max-tunnels") => a.max_tunnels = count(p.value()?.string()?, "--max-tunnels")?,
            Long("max-virtual") => a.policy.max_virtual = count(p.value()?.string()?, "--max-virtual")?,
            Long("no-transit") => a.policy.transit = false,
            Long("allow") => a.allow.push(super::names::node_arg(&p.value()?.string()?)?),
            Long("keepalive") => a.timers.keepalive = seconds(&p.value()?.string()?, "--keepalive")?,
            Long("hello-timeout") => a.timers.hello = seconds(&p.value()?.string()?, "--hello-timeout")?,
            Short('h') | Long("help") => return Ok(Command::Help(USAGE)),
            Value(v) if a.tunnel_cmd.is_none() => a.tunnel_cmd = Some(v.string()?),
            Value(v) => return Err(Error::Usage(format!("unexpected argument {v:?}: CMD is one argument (quote it)"))),
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(Command::Daemon(a))
}

pub fn run(g: &Global, a: Args) -> Result<i32> {
    let socket = g.socket();
    let key_file = a.key_file.unwrap_or_else(|| crate::sys::paths::default_key_file(&socket));
    if a.packet && a.tunnel_cmd.is_none() {
        return Err(Error::Usage("-p needs CMD, the tunnel process".into()));
    }
    let cfg = Config {
        socket,
        key_file,
        tunnel_cmd: a.tunnel_cmd,
        packet: a.packet,
        max_tunnels: a.max_tunnels,
        allow: a.allow,
        policy: a.policy,
        timers: a.timers,
    };
    crate::daemon::run(cfg).map_err(|e| Error::Failed(e.to_string()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::super::{args, parse as parse_all};
    use super::*;

    #[test]
    fn parses() {
        let (g, c) = parse_all(args(&["r2d", "-s", "/tmp/x.sock", "-k", "/tmp/x.id", "cat"])).unwrap();
        assert_eq!(g.socket, Some(PathBuf::from("/tmp/x.sock")));
        let Command::Daemon(a) = c else { panic!() };
        assert_eq!(a.key_file, Some(PathBuf::from("/tmp/x.id")));
        assert_eq!(a.tunnel_cmd.as_deref(), Some("cat"));
        let (_, c) = parse_all(args(&["r2d", "--keepalive", "0.5"])).unwrap();
        let Command::Daemon(a) = c else { panic!() };
        assert_eq!(a.timers.keepalive, 500);
        assert!(matches!(parse_all(args(&["r2d", "cat", "dog"])), Err(Error::Usage(_))));
        assert!(matches!(parse_all(args(&["r2d", "--keepalive", "x"])), Err(Error::Usage(_))));
        assert!(matches!(parse_all(args(&["r2d", "--bogus"])), Err(Error::Usage(_))));
    }
}
