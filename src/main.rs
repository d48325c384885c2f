//! r2: a transport-agnostic, minimal peer-to-peer overlay network.
//!
//! One executable serves every role: run as `r2d` it is the daemon, run as
//! `r2` its first argument names the command. This file turns the outcome
//! of a command into a message and an exit status, in one place.

use r2::cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    r2::sys::cloexec_inherited();
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
