//! The command line of the real binary: multicall names, help, usage errors
//! before any daemon is contacted, and a missing daemon.

mod common;
use common::*;
use std::os::unix::fs::symlink;
use std::process::Command;

#[test]
fn multicall_names() {
    let s = Scratch::new("mc");
    symlink(bin(), s.path("bin/bogus")).unwrap();
    let run = |name: &str, args: &[&str]| {
        let mut c = Command::new(s.path(&format!("bin/{name}")));
        c.args(args);
        run_bounded(c, SOON)
    };
    let o = run("bogus", &["id"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_of(&o).contains("connect"), "lists the commands: {}", stderr_of(&o));
    let o = run("r2", &["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_of(&o).contains("ping"));
    let o = run("r2", &[]);
    assert_eq!(o.status.code(), Some(2));
    for (name, args) in
        [("r2", vec!["--help"]), ("r2d", vec!["--help"]), ("r2", vec!["ping", "--help"]), ("r2", vec!["daemon", "-h"])]
    {
        let o = run(name, &args);
        assert_eq!(o.status.code(), Some(0), "{name} {args:?}");
        assert!(stdout_of(&o).starts_with("usage:"), "{name} {args:?}: {}", stdout_of(&o));
    }
    let o = run("r2", &["--version"]);
    assert!(o.status.success() && stdout_of(&o).starts_with("r2 "));
    let o = run("r2d", &["a", "b"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn usage_errors_come_before_the_daemon() {
    let s = Scratch::new("ue");
    // No daemon on this socket: any attempt to contact it would exit 1.
    let sock = s.path("none.sock");
    let good = "6Xb2RtEfug8nxD6A7Afvd3SPt4ePCibjFHLcyRqVqFgC";
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let cases: Vec<Vec<String>> = vec![
        vec!["ping".into(), "notbase58!".into()],
        vec!["ping".into(), "".into()],
        vec!["ping".into(), format!("{good}/")],
        vec!["ping".into(), "11111111111111111111111111111112".into()],
        vec!["ping".into(), "2NEpo7TZRRrLZSi2U".into()],
        vec!["ls".into(), format!("{good}/0OIl")],
        vec!["connect".into(), "-n".into(), "abc".into(), "-".into()],
        vec!["connect".into(), "-n".into(), "1".repeat(32), "-".into()],
        vec!["connect".into()],
        vec!["ping".into(), "-c".into(), "x".into(), good.into()],
        // u = 1, a point of small order: no node's key.
        vec!["ping".into(), r2::wire::NodeId(weak).to_string()],
    ];
    for args in cases {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let o = s.r2(&sock, &a);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {}", stderr_of(&o));
        assert!(!stderr_of(&o).contains("no daemon"), "{a:?} contacted the daemon");
    }
}

#[test]
fn no_daemon_names_the_socket() {
    let s = Scratch::new("nd");
    let sock = s.path("missing.sock");
    for args in [vec!["id"], vec!["ls"], vec!["ping", "6Xb2RtEfug8nxD6A7Afvd3SPt4ePCibjFHLcyRqVqFgC"]] {
        let o = s.r2(&sock, &args);
        assert_eq!(o.status.code(), Some(1));
        let e = stderr_of(&o);
        assert!(e.contains(&sock.display().to_string()) && e.lines().count() == 1, "{args:?}: {e}");
    }
}
