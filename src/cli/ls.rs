//! `r2 ls [PATH]`: the local daemon's links, or the neighbours of a remote
//! node asked over the network (the agreed node 1).

use super::{units::seconds, Command, Error, Global, Result};
use crate::client::{Control, Received};
use crate::wire::control::{Reply, Request};
use crate::wire::list;
use crate::wire::message::nest_to;
use crate::wire::path::{describe_end, describe_fail, interpret, PathReply};
use crate::wire::NodeId;
use lexopt::prelude::*;
use std::time::{Duration, Instant};

pub const USAGE: &str = "\
usage: r2 ls [-l] [-N] [-W SECONDS] [PATH]

Without PATH: the local daemon's neighbours, one per line, tab-separated: ID,
NAME (from the hosts files, - if it has none) and the link's transport command
(or stdio). With PATH (NODE[/NODE...]): ID and NAME of each neighbour of the
node at the end of PATH, asked over the network.

  -l, --long              with counters: ID NAME UPTIME_S RETURNS RX_BYTES
                          RX_FRAMES TX_BYTES TX_FRAMES LAYER TRANSPORT (local
                          only); RETURNS is how often a link kept by connect -r
                          came back (- if not kept); LAYER is the link layer
                          and why: stream (...) or robust (...)
  -N, --numeric           ids only: no NAME column
  -W, --timeout SECONDS   how long to wait for a remote answer (default 5)
";

#[derive(Debug, PartialEq)]
pub struct Args {
    pub long: bool,
    pub numeric: bool,
    pub path: Option<Vec<NodeId>>,
    pub timeout_ms: u64,
}

pub fn parse(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut a = Args { long: false, numeric: false, path: None, timeout_ms: 5000 };
    while let Some(arg) = p.next()? {
        match arg {
            Short('s') | Long("socket") => g.socket = Some(p.value()?.into()),
            Short('v') | Long("verbose") => g.verbose += 1,
            Short('l') | Long("long") => a.long = true,
            Short('N') | Long("numeric") => a.numeric = true,
            Short('W') | Long("timeout") => a.timeout_ms = seconds(&p.value()?.string()?, "-W")?,
            Short('h') | Long("help") => return Ok(Command::Help(USAGE)),
            Value(v) if a.path.is_none() => a.path = Some(super::names::path_arg(&v.string()?)?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    if a.long && a.path.is_some() {
        return Err(Error::Usage("-l shows the local daemon's links; it takes no PATH".into()));
    }
    Ok(Command::Ls(a))
}

pub fn run(g: &Global, a: Args) -> Result<i32> {
    let names = (!a.numeric).then(super::names::hosts);
    let name = |id: &NodeId| super::names::column(names, id);
    if a.long {
        for l in super::stats::link_lines(&super::stats::fetch(g)?, names) {
            outln!("{l}");
        }
        return Ok(0);
    }
    let mut control = Control::connect(&g.socket())?;
    let Some(path) = a.path else {
        control.request(&Request::List, &[])?;
        return match control.expect_reply()? {
            Reply::List(links) => {
                for (id, label) in links {
                    outln!("{id}{}\t{label}", name(&id));
                }
                Ok(0)
            }
            r => Err(Error::Failed(format!("unexpected reply: {r:?}"))),
        };
    };
    let mut ep = control.endpoint()?;
    ep.send(&nest_to(&path, &nest_to(&[NodeId::LIST], b"?")))?;
    let deadline = Instant::now() + Duration::from_millis(a.timeout_ms);
    loop {
        let msg = match ep.recv(deadline)? {
            Received::Message(m) => m,
            Received::Timeout => {
                return Err(Error::Failed(format!("no answer within {} ms", a.timeout_ms)));
            }
            Received::Closed => return Err(Error::Failed("the daemon went away".into())),
        };
        match interpret(&msg, &path, NodeId::LIST) {
            PathReply::Answer(body) => {
                let ids = list::decode(body).ok_or_else(|| Error::Failed("malformed neighbour list".into()))?;
                for id in ids {
                    outln!("{id}{}", name(&id));
                }
                return Ok(0);
            }
            PathReply::Fail { at, about, code, text } => {
                return Err(Error::Failed(describe_fail(at, about, code, &text, ep.daemon)))
            }
            PathReply::Ended { at } => return Err(Error::Failed(describe_end(at, ep.daemon))),
            PathReply::Other => {}
        }
    }
}
