//! `r2 ping [-c N] [-i S] [-W S] PATH`: route-to-self probes along PATH.

use super::units::{parse_ms, seconds, us_as_ms3};
use super::{Command, Error, Global, Result};
use crate::client::{Control, Received};
use crate::wire::message::nest_to;
use crate::wire::path::{describe_end, describe_fail, interpret, PathReply};
use crate::wire::NodeId;
use lexopt::prelude::*;
use std::time::{Duration, Instant};

pub const USAGE: &str = "\
usage: r2 ping [-c COUNT] [-i SECONDS] [-W SECONDS] PATH

Sends probes along PATH (NODE[/NODE...]) that route back to this endpoint,
and prints each round trip, then a summary. Exit 0 if a reply came back.

  -c, --count COUNT       probes to send (default 4)
  -i, --interval SECONDS  time between probes, fractional, 0 allowed (default 1)
  -W, --timeout SECONDS   how long to wait for each reply (default 2)
";

#[derive(Debug, PartialEq)]
pub struct Args {
    pub path: Vec<NodeId>,
    pub path_text: String,
    pub count: u32,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

pub fn parse(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let (mut count, mut interval_ms, mut timeout_ms, mut path) = (4u32, 1000u64, 2000u64, None);
    while let Some(arg) = p.next()? {
        match arg {
            Short('s') | Long("socket") => g.socket = Some(p.value()?.into()),
            Short('v') | Long("verbose") => g.verbose += 1,
            Short('c') | Long("count") => {
                let v = p.value()?.string()?;
                count = v
                    .parse()
                    .ok()
                    .filter(|&c| c > 0)
                    .ok_or_else(|| Error::Usage(format!("-c: {v:?} is not a positive count")))?;
            }
            Short('i') | Long("interval") => {
                let v = p.value()?.string()?;
                interval_ms = if parse_ms(&v) == Some(0) { 0 } else { seconds(&v, "-i")? };
            }
            Short('W') | Long("timeout") => timeout_ms = seconds(&p.value()?.string()?, "-W")?,
            Short('h') | Long("help") => return Ok(Command::Help(USAGE)),
            Value(v) if path.is_none() => path = Some(v.string()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let path_text = path.ok_or_else(|| Error::Usage("no PATH given".into()))?;
    let path = super::names::path_arg(&path_text)?;
    Ok(Command::Ping(Args { path, path_text, count, interval_ms, timeout_ms }))
}

pub fn run(g: &Global, a: Args) -> Result<i32> {
    let mut ep = Control::connect(&g.socket()).and_then(|c| c.endpoint())?;
    let hops = a.path.len();
    outln!("PING {} ({hops} hop{})", a.path_text, if hops == 1 { "" } else { "s" });
    let start = Instant::now();
    let (mut sent, mut rtts) = (0u32, Vec::new());
    let mut result = Ok(());
    'probes: for seq in 1..=a.count {
        let t0 = Instant::now();
        let mut payload = b"r2ping".to_vec();
        payload.extend_from_slice(&seq.to_be_bytes());
        let mut full = a.path.clone();
        full.push(ep.id);
        if let Err(e) = ep.send(&nest_to(&full, &payload)) {
            result = Err(e.into());
            break;
        }
        sent += 1;
        let deadline = t0 + Duration::from_millis(a.timeout_ms);
        loop {
            let msg = match ep.recv(deadline) {
                Ok(Received::Message(m)) => m,
                Ok(Received::Timeout) => break,
                Ok(Received::Closed) => {
                    result = Err(Error::Failed("the daemon went away".to_string()));
                    break 'probes;
                }
                Err(e) => {
                    result = Err(e.into());
                    break 'probes;
                }
            };
            match interpret(&msg, &a.path, ep.id) {
                PathReply::Answer(body) if body == payload => {
                    let rtt = t0.elapsed().as_micros() as u64;
                    let from = super::names::hosts().show(&a.path[hops - 1]);
                    outln!("reply from {from}: seq={seq} time={} ms", us_as_ms3(rtt));
                    rtts.push(rtt);
                    break;
                }
                PathReply::Fail { at, about, code, text } => {
                    result = Err(Error::Failed(describe_fail(at, about, code, &text, ep.daemon)));
                    break 'probes;
                }
                PathReply::Ended { at } => {
                    result = Err(Error::Failed(describe_end(at, ep.daemon)));
                    break 'probes;
                }
                _ => {} // a late reply to an earlier probe
            }
        }
        if seq < a.count {
            let next = t0 + Duration::from_millis(a.interval_ms);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
    let received = rtts.len() as u32;
    let loss = (100 * (sent - received)).checked_div(sent).unwrap_or(100);
    outln!("--- {} ping statistics ---", a.path_text);
    outln!("{sent} probes sent, {received} received, {loss}% loss, time {} ms", start.elapsed().as_millis());
    if received > 0 {
        let min = rtts.iter().copied().min().unwrap_or(0);
        let max = rtts.iter().copied().max().unwrap_or(0);
        let avg = rtts.iter().sum::<u64>() / u64::from(received);
        outln!("rtt min/avg/max = {}/{}/{} ms", us_as_ms3(min), us_as_ms3(avg), us_as_ms3(max));
    }
    result?;
    if received == 0 {
        return Err(Error::Failed(format!("no reply from {} within {} ms", a.path_text, a.timeout_ms)));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::super::{args, parse as parse_all};
    use super::*;

    #[test]
    fn parses() {
        let a = NodeId([4; 32]).to_string();
        let b = NodeId([5; 32]).to_string();
        let path = format!("{a}/{b}");
        let (_, c) = parse_all(args(&["r2", "ping", "-c", "3", "-i", "0", "-W", "0.5", &path])).unwrap();
        let Command::Ping(p) = c else { panic!() };
        assert_eq!((p.count, p.interval_ms, p.timeout_ms, p.path.len()), (3, 0, 500, 2));
        for bad in [
            vec!["r2", "ping"],
            vec!["r2", "ping", "-c", "0", &a],
            vec!["r2", "ping", "-i", "-1", &a],
            vec!["r2", "ping", "notanid"],
            vec!["r2", "ping", "11111111111111111111111111111112"],
            vec!["r2", "ping", ""],
        ] {
            assert!(matches!(parse_all(args(&bad)), Err(Error::Usage(_))), "{bad:?}");
        }
    }
}
