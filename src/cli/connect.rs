//! `r2 connect [-n NODE] TRANSPORT`: hand a byte stream to the daemon as a
//! link, and wait until the link ends.

use super::transport::{hand_over_and_wait, Transport};
use super::{Command, Error, Global, Result};
use crate::client::Control;
use crate::wire::control::Request;
use crate::wire::NodeId;
use lexopt::prelude::*;

pub const USAGE: &str = "\
usage: r2 connect [-n NODE] TRANSPORT

Links the local daemon to a neighbouring daemon over TRANSPORT: a command run
with sh -c whose stdin and stdout reach the other daemon (socat tcp:HOST:PORT -,
ssh HOST r2 connect -, ...), or - for this program's own stdin and stdout.
Waits until the link ends: exit 0 at end-of-file, 1 with a message on error.

  -n, --node NODE   the id the neighbour must have
";

#[derive(Debug, PartialEq)]
pub struct Args {
    pub expect: Option<NodeId>,
    pub transport: String,
}

/// Parses a node id option; a bad or reserved one is a usage error.
pub fn node_arg(v: &str) -> Result<NodeId> {
    let id = NodeId::parse(v).map_err(|e| Error::Usage(format!("bad node id {v:?}: {e}")))?;
    if id.is_reserved() {
        return Err(Error::Usage(format!("{v} is a reserved id, not a node")));
    }
    Ok(id)
}

pub fn parse(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let (mut expect, mut transport) = (None, None);
    while let Some(arg) = p.next()? {
        match arg {
            Short('s') | Long("socket") => g.socket = Some(p.value()?.into()),
            Short('v') | Long("verbose") => g.verbose += 1,
            Short('n') | Long("node") => expect = Some(node_arg(&p.value()?.string()?)?),
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
    Ok(Command::Connect(Args { expect, transport }))
}

pub fn run(g: &Global, a: Args) -> Result<i32> {
    let control = Control::connect(&g.socket())?;
    let (t, label) = if a.transport == "-" {
        (Transport::stdio(), "stdio".to_string())
    } else {
        (Transport::command(&a.transport, false)?, a.transport.clone())
    };
    hand_over_and_wait(control, &Request::Connect { expect: a.expect, label }, t)
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
        assert_eq!(c, Command::Connect(Args { expect: Some(id), transport: "socat - -".into() }));
        let (_, c) = parse_all(args(&["r2", "connect", "-"])).unwrap();
        assert_eq!(c, Command::Connect(Args { expect: None, transport: "-".into() }));
        for bad in [
            vec!["r2", "connect"],
            vec!["r2", "connect", "-n", "xyz0", "-"],
            vec!["r2", "connect", "-n", "11111111111111111111111111111111", "-"],
            vec!["r2", "connect", "a", "b"],
        ] {
            assert!(matches!(parse_all(args(&bad)), Err(Error::Usage(_))), "{bad:?}");
        }
    }
}
