//! The command line: the multicall dispatch on the program's name, global
//! options, and one module per command, each with a pure `parse` and a `run`.

/// `println!` for a command's answer: where its reader has gone (`r2 ls |
/// grep -q ID`), the command ends quietly with 0, instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::cli::out_line(format_args!($($t)*))
    };
}

mod connect;
mod daemon;
mod id;
mod kept;
mod ls;
mod names;

pub use names::fuzz as fuzz_hosts;
mod ping;
mod stats;
mod transport;
mod tunnel;
mod units;

use lexopt::prelude::*;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// How a command failed; `main` turns it into a message and an exit status.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// Bad command line: exit 2.
    Usage(String),
    /// The command ran and failed: exit 1.
    Failed(String),
}

impl From<crate::client::Error> for Error {
    fn from(e: crate::client::Error) -> Error {
        Error::Failed(e.to_string())
    }
}

impl From<lexopt::Error> for Error {
    fn from(e: lexopt::Error) -> Error {
        Error::Usage(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Options every command takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Global {
    pub socket: Option<PathBuf>,
    pub verbose: u8,
}

impl Global {
    /// The control socket: `-s`, else the default of r2(1).
    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(crate::sys::paths::default_socket)
    }
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

const USAGE: &str = "\
usage: r2 [-s SOCKET] [-v] COMMAND [ARG...]
       r2d [-p] [-s SOCKET] [-k KEYFILE] [-v] [OPTIONS] [CMD]   (see r2d --help)

commands:
  daemon [CMD]             run a node (the same as r2d)
  connect [-r] [-n NODE] [--plaintext] TRANSPORT
                           use a program (or - for stdio) as a sealed link to a
                           neighbour; -r keeps it, running the program again when
                           it ends
  ls [-l] [-N] [PATH]      list the neighbours of this node, or of the node at PATH
  ping [-c N] [-i S] [-W S] PATH
                           measure the round trip along PATH and back
  tunnel [-p] PATH TRANSPORT
                           join a program (or - for stdio) to a remote tunnel process
  stats                    print the daemon's counters (links, tunnels, totals)
  id                       print this node's id (its public key)

options:
  -s, --socket SOCKET      the daemon's control socket
  -v, --verbose            log more (repeat for more)
  -h, --help               show help (r2 COMMAND --help for a command)
  -V, --version            show the version

A NODE, in a PATH (NODE[/NODE...]) or after -n, is an id or a name from the
hosts file ($R2_HOSTS, else ~/.config/r2/hosts, then /etc/r2/hosts).
See r2(1), r2d(8) and r2(7).
";

/// The command names, for messages.
const COMMANDS: &str = "daemon, connect, tunnel, ls, ping, stats, id";

/// The program name a path was run as.
fn program_name(argv0: &OsString) -> String {
    Path::new(argv0).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// What to run, once the command line is parsed.
#[derive(Debug, PartialEq)]
pub enum Command {
    Help(&'static str),
    Version,
    Daemon(daemon::Args),
    Connect(connect::Args),
    Tunnel(tunnel::Args),
    Ls(ls::Args),
    Ping(ping::Args),
    Id,
    Stats,
}

/// Parses a whole command line, `argv[0]` included.
pub fn parse(args: Vec<OsString>) -> Result<(Global, Command)> {
    let Some(argv0) = args.first() else {
        return Err(Error::Usage("no program name".into()));
    };
    let name = program_name(argv0);
    let mut p = lexopt::Parser::from_args(args.into_iter().skip(1));
    match name.as_str() {
        "r2d" => {
            let mut g = Global::default();
            let a = daemon::parse(&mut p, &mut g)?;
            Ok((g, a))
        }
        "r2" => parse_manager(&mut p),
        other => Err(Error::Usage(format!("run as {other:?}: this program runs as r2 (commands: {COMMANDS}) or r2d"))),
    }
}

fn parse_manager(p: &mut lexopt::Parser) -> Result<(Global, Command)> {
    let mut g = Global::default();
    loop {
        match p.next()? {
            Some(Short('s') | Long("socket")) => g.socket = Some(p.value()?.into()),
            Some(Short('v') | Long("verbose")) => g.verbose += 1,
            Some(Short('h') | Long("help")) => return Ok((g, Command::Help(USAGE))),
            Some(Short('V') | Long("version")) => return Ok((g, Command::Version)),
            Some(Value(cmd)) => {
                let cmd = cmd.string()?;
                let c = match cmd.as_str() {
                    "daemon" => daemon::parse(p, &mut g)?,
                    "connect" => connect::parse(p, &mut g)?,
                    "tunnel" => tunnel::parse(p, &mut g)?,
                    "ls" => ls::parse(p, &mut g)?,
                    "ping" => ping::parse(p, &mut g)?,
                    "id" => id::parse(p, &mut g)?,
                    "stats" => stats::parse(p, &mut g)?,
                    "help" => Command::Help(USAGE),
                    _ => return Err(Error::Usage(format!("unknown command {cmd:?} (commands: {COMMANDS})"))),
                };
                return Ok((g, c));
            }
            Some(arg) => return Err(arg.unexpected().into()),
            None => return Err(Error::Usage(format!("no command given (commands: {COMMANDS})"))),
        }
    }
}

/// Sets up logging to stderr: `-v` raises the level, `RUST_LOG` overrides.
fn init_logger(name: &'static str, base: log::LevelFilter, verbose: u8) {
    let levels = [log::LevelFilter::Warn, log::LevelFilter::Info, log::LevelFilter::Debug, log::LevelFilter::Trace];
    let start = levels.iter().position(|&l| l == base).unwrap_or(0);
    let level = levels[(start + verbose as usize).min(levels.len() - 1)];
    let mut b = env_logger::Builder::new();
    b.filter_level(level);
    if let Ok(s) = std::env::var("RUST_LOG") {
        b.parse_filters(&s);
    }
    b.format(move |buf, rec| {
        use std::io::Write;
        writeln!(buf, "{name}: {}: {}", rec.level().as_str().to_lowercase(), rec.args())
    });
    let _ = b.try_init();
}

/// Runs a parsed command; Ok is the exit status.
pub fn run(g: Global, cmd: Command) -> Result<i32> {
    match cmd {
        Command::Help(text) => {
            print!("{text}");
            Ok(0)
        }
        Command::Version => {
            println!("r2 {VERSION}");
            Ok(0)
        }
        Command::Daemon(a) => {
            init_logger("r2d", log::LevelFilter::Info, g.verbose);
            daemon::run(&g, a)
        }
        cmd => {
            // A kept link runs for months, as the daemon does: it says what it does.
            let kept = matches!(&cmd, Command::Connect(a) if a.reconnect);
            init_logger("r2", if kept { log::LevelFilter::Info } else { log::LevelFilter::Warn }, g.verbose);
            let outcome = match cmd {
                Command::Connect(a) if a.reconnect => kept::run(&g, a),
                Command::Connect(a) => connect::run(&g, a),
                Command::Tunnel(a) => tunnel::run(&g, a),
                Command::Ls(a) => ls::run(&g, a),
                Command::Ping(a) => ping::run(&g, a),
                Command::Id => id::run(&g),
                Command::Stats => stats::run(&g),
                _ => Ok(0),
            };
            // Messages, the daemon's included, name the nodes that have names.
            outcome.map_err(|e| match e {
                Error::Failed(m) => Error::Failed(names::hosts().rename(&m)),
                e => e,
            })
        }
    }
}

/// Writes one line of a command's answer to stdout (see `outln!`).
pub fn out_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}").and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// The name a command is reported under, for error messages.
pub fn command_name(cmd: &Command) -> &'static str {
    match cmd {
        Command::Daemon(_) => "r2d",
        Command::Connect(_) => "r2 connect",
        Command::Tunnel(_) => "r2 tunnel",
        Command::Ls(_) => "r2 ls",
        Command::Ping(_) => "r2 ping",
        Command::Id => "r2 id",
        Command::Stats => "r2 stats",
        Command::Help(_) | Command::Version => "r2",
    }
}

#[cfg(test)]
pub(crate) fn args(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multicall_names() {
        assert!(matches!(parse(args(&["/usr/bin/r2d"])), Ok((_, Command::Daemon(_)))));
        assert!(matches!(parse(args(&["r2", "daemon"])), Ok((_, Command::Daemon(_)))));
        assert!(matches!(parse(args(&["./r2", "id"])), Ok((_, Command::Id))));
        assert!(matches!(parse(args(&["r3", "id"])), Err(Error::Usage(_))));
        assert!(matches!(parse(args(&["r2", "frobnicate"])), Err(Error::Usage(m)) if m.contains("connect")));
        assert!(matches!(parse(args(&["r2"])), Err(Error::Usage(_))));
        assert!(matches!(parse(args(&["r2", "--help"])), Ok((_, Command::Help(_)))));
        assert!(matches!(parse(args(&["r2", "--version"])), Ok((_, Command::Version))));
    }

    #[test]
    fn global_socket_before_or_after_the_command() {
        let (g, _) = parse(args(&["r2", "-s", "/tmp/a.sock", "id"])).unwrap();
        assert_eq!(g.socket, Some(PathBuf::from("/tmp/a.sock")));
        let (g, _) = parse(args(&["r2", "id", "-s", "/tmp/b.sock", "-vv"])).unwrap();
        assert_eq!((g.socket, g.verbose), (Some(PathBuf::from("/tmp/b.sock")), 2));
    }
}
