//! `r2 tunnel [-p] PATH TRANSPORT`: join a program (or this process's
//! stdio) to the tunnel process of the node at the end of PATH.

use super::transport::{hand_over_and_wait, Fds, Transport};
use super::{Command, Error, Global, Result};
use crate::client::Control;
use crate::wire::control::Request;
use crate::wire::NodeId;
use lexopt::prelude::*;

pub const USAGE: &str = "\
usage: r2 tunnel [-p] PATH TRANSPORT

Joins TRANSPORT to the tunnel process of the node at the end of PATH
(NODE[/NODE...]): a command run with sh -c, or - for this program's own stdin
and stdout. Exits with the remote tunnel process's exit status, or 1 with a
message when the tunnel fails.

  -p, --packet   give the command packet pipes (O_DIRECT): each read is one
                 message and each message one write (for socat tun and the like)
";

#[derive(Debug, PartialEq)]
pub struct Args {
    pub path: Vec<NodeId>,
    pub transport: String,
    pub packet: bool,
}

pub fn parse(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let (mut packet, mut operands) = (false, Vec::new());
    while let Some(arg) = p.next()? {
        match arg {
            Short('s') | Long("socket") => g.socket = Some(p.value()?.into()),
            Short('v') | Long("verbose") => g.verbose += 1,
            Short('p') | Long("packet") => packet = true,
            Short('h') | Long("help") => return Ok(Command::Help(USAGE)),
            Value(v) if operands.len() < 2 => operands.push(v.string()?),
            Value(v) => {
                return Err(Error::Usage(format!("unexpected argument {v:?}: TRANSPORT is one argument (quote it)")))
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let mut ops = operands.into_iter();
    let (Some(path), Some(transport)) = (ops.next(), ops.next()) else {
        return Err(Error::Usage("usage: r2 tunnel [-p] PATH TRANSPORT".into()));
    };
    let path = super::names::path_arg(&path)?;
    if transport.is_empty() {
        return Err(Error::Usage("empty TRANSPORT".into()));
    }
    if packet && transport == "-" {
        return Err(Error::Usage("-p needs a command: stdio cannot be made a packet pipe".into()));
    }
    Ok(Command::Tunnel(Args { path, transport, packet }))
}

pub fn run(g: &Global, a: Args) -> Result<i32> {
    let control = Control::connect(&g.socket())?;
    let t = if a.transport == "-" {
        Transport::stdio()
    } else {
        Transport::command(&a.transport, if a.packet { Fds::PacketPipes } else { Fds::Pipes })?
    };
    hand_over_and_wait(control, &Request::Tunnel { path: a.path, packet: a.packet }, t)
}

#[cfg(test)]
mod tests {
    use super::super::{args, parse as parse_all};
    use super::*;

    #[test]
    fn parses() {
        let a = NodeId([4; 32]).to_string();
        let (_, c) = parse_all(args(&["r2", "tunnel", "-p", &a, "socat tun -"])).unwrap();
        let Command::Tunnel(t) = c else { panic!() };
        assert!(t.packet && t.transport == "socat tun -" && t.path.len() == 1);
        for bad in [
            vec!["r2", "tunnel", &a],
            vec!["r2", "tunnel", "-p", &a, "-"],
            vec!["r2", "tunnel", "bad", "-"],
            vec!["r2", "tunnel", &a, "x", "y"],
        ] {
            assert!(matches!(parse_all(args(&bad)), Err(Error::Usage(_))), "{bad:?}");
        }
    }
}
