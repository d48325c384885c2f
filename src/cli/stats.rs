//! `r2 stats`: the daemon's counters, per link, per tunnel and in total.

use super::names::Hosts;
use super::units::ms3;
use super::{Command, Error, Global, Result};
use crate::client::Control;
use crate::wire::control::{Reply, Request, Stats};
use lexopt::prelude::*;

pub const USAGE: &str = "\
usage: r2 stats

Prints the local daemon's counters, one per line, tab-separated:
  link    ID  NAME  UPTIME_S  RETURNS  RX_BYTES  RX_FRAMES  TX_BYTES  TX_FRAMES  LAYER  TRANSPORT
  tunnel  client|server  ENDPOINT  UPTIME_S  IN_BYTES  IN_MSGS  OUT_BYTES  OUT_MSGS
  counter NAME  VALUE
";

pub fn parse(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    while let Some(arg) = p.next()? {
        match arg {
            Short('s') | Long("socket") => g.socket = Some(p.value()?.into()),
            Short('v') | Long("verbose") => g.verbose += 1,
            Short('h') | Long("help") => return Ok(Command::Help(USAGE)),
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(Command::Stats)
}

/// Asks the daemon for its counters.
pub fn fetch(g: &Global) -> Result<Stats> {
    let mut c = Control::connect(&g.socket())?;
    c.request(&Request::Stats, &[])?;
    match c.expect_reply()? {
        Reply::Stats(s) => Ok(s),
        r => Err(Error::Failed(format!("unexpected reply: {r:?}"))),
    }
}

/// The link lines (also `r2 ls -l`), with a NAME column after the id
/// (`-` where none) if `names` are given. RETURNS is how often a link kept
/// by `r2 connect -r` came back, `-` for one not kept.
pub fn link_lines(s: &Stats, names: Option<&Hosts>) -> Vec<String> {
    s.links
        .iter()
        .map(|l| {
            let name = super::names::column(names, &l.id);
            let returns = l.returns.map_or_else(|| "-".to_string(), |n| n.to_string());
            format!(
                "{}{name}\t{}\t{returns}\t{}\t{}\t{}\t{}\t{}\t{}",
                l.id,
                ms3(l.up_ms),
                l.rx.bytes,
                l.rx.frames,
                l.tx.bytes,
                l.tx.frames,
                l.layer,
                l.label
            )
        })
        .collect()
}

pub fn run(g: &Global) -> Result<i32> {
    let s = fetch(g)?;
    for l in link_lines(&s, Some(super::names::hosts())) {
        outln!("link\t{l}");
    }
    for t in &s.tunnels {
        outln!(
            "tunnel\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            if t.server { "server" } else { "client" },
            t.id,
            ms3(t.up_ms),
            t.input.bytes,
            t.input.frames,
            t.output.bytes,
            t.output.frames
        );
    }
    for (name, v) in &s.counters {
        outln!("counter\t{name}\t{v}");
    }
    Ok(0)
}
