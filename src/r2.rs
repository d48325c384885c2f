//! r2: a transport-agnostic, minimal peer-to-peer overlay network.
//!
//! Imports run one way: `cli` → {`daemon`, `client`} → {`router`, `link`} →
//! {`sys`, `noise`} → `key` → `wire`, and no file imports one that imports
//! it back.
//! `wire` imports nothing from the crate; `router` and the framings do no I/O; the
//! link layer knows nothing of the daemon's loop.
//!
//! One executable serves every role: run as `r2d` it is the daemon, run as
//! `r2` its first argument names the command. [`main`] is that executable's
//! (src/main.rs only calls it): it turns the outcome of a command into a
//! message and an exit status, in one place.

pub mod cli;
pub mod client;
pub mod daemon;
pub mod key;
pub mod link;
pub mod noise;
pub mod router;
pub mod sys;
pub mod wire;

use std::process::ExitCode;

/// The executable's main. Never inlined: the executable's crate is built at
/// opt-level 2 and the library at "z" (Cargo.toml), and what is inlined into
/// the executable's `main` would be optimized for speed, not size.
#[inline(never)]
pub fn main() -> ExitCode {
    sys::cloexec_inherited();
    let args: Vec<_> = std::env::args_os().collect();
    let (global, cmd) = match cli::parse(args) {
        Ok(p) => p,
        Err(e) => return report("r2", e),
    };
    let name = cli::command_name(&cmd);
    match cli::run(global, cmd) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => report(name, e),
    }
}

fn report(name: &str, e: cli::Error) -> ExitCode {
    match e {
        cli::Error::Usage(m) => {
            eprintln!("{name}: {m}\nTry '{name} --help'.");
            ExitCode::from(2)
        }
        cli::Error::Failed(m) => {
            eprintln!("{name}: {m}");
            ExitCode::from(1)
        }
    }
}
