//! `r2 id`: print the local daemon's id.

use super::{Command, Error, Global, Result};
use crate::client::Control;
use crate::wire::control::{Reply, Request};
use lexopt::prelude::*;

pub const USAGE: &str = "usage: r2 id\n\nPrints the local daemon's node id in base58.\n";

pub fn parse(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    while let Some(arg) = p.next()? {
        match arg {
            Short('s') | Long("socket") => g.socket = Some(p.value()?.into()),
            Short('v') | Long("verbose") => g.verbose += 1,
            Short('h') | Long("help") => return Ok(Command::Help(USAGE)),
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(Command::Id)
}

pub fn run(g: &Global) -> Result<i32> {
    let mut c = Control::connect(&g.socket())?;
    c.request(&Request::Id, &[])?;
    match c.expect_reply()? {
        Reply::Id(id) => {
            outln!("{id}");
            Ok(0)
        }
        r => Err(Error::Failed(format!("unexpected reply: {r:?}"))),
    }
}
