//! Names for nodes from a hosts file ($R2_HOSTS), with the real binary:
//! names in paths, `-n` and `--allow`; `r2 ls` and `r2 ping` show them; a
//! malformed line is a warning with its file and line; an unknown word is a
//! usage error naming the file, before any daemon is contacted.

mod common;
use common::*;
use std::process::{Command, Output, Stdio};

/// `r2 -s SOCK ARGS` with the hosts file.
fn r2(s: &Scratch, sock: &std::path::Path, args: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.arg("-s").arg(sock).args(args).env("R2_HOSTS", s.path("hosts"));
    run_bounded(c, SOON)
}

#[test]
fn names_stand_for_ids() {
    let s = Scratch::new("nm");
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &[]);
    let c = Daemon::start(&s, "c", &["echo named"]);
    let hosts = format!(
        "# the test's nodes\n{} relay gw   # two names\n{} home\nnot-an-id stray\n{} relay\n",
        b.id, c.id, a.id
    );
    std::fs::write(s.path("hosts"), hosts).unwrap();
    let hosts_file = s.path("hosts").display().to_string();

    // -n NAME, on both links.
    let link = |d: &Daemon, opts: &[&str], to: &std::path::Path, name: &str| {
        let mut cmd = Command::new(s.path("bin/r2"));
        cmd.arg("-s").arg(&d.sock).arg("connect").args(opts);
        cmd.arg(format!("R2_SOCKET={} r2 connect -", to.display()));
        cmd.env("R2_HOSTS", s.path("hosts")).env("PATH", s.env_path()).stdin(Stdio::null()).stdout(Stdio::null());
        Proc::spawn(cmd, name, &s.path(&format!("{name}.err")))
    };
    let _ab = link(&a, &["-n", "relay"], &b.sock, "ab");
    let _bc = link(&b, &["-n", "home"], &c.sock, "bc");
    a.wait_neighbours(&s, &[&b.id], SOON);
    b.wait_neighbours(&s, &[&a.id, &c.id], SOON);

    // ls: ID NAME TRANSPORT; -N drops the name; remote ls names too.
    let o = r2(&s, &a.sock, &["ls"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let line = stdout_of(&o);
    assert!(line.starts_with(&format!("{}\trelay\tR2_SOCKET=", b.id)), "{line}");
    let w = stderr_of(&o);
    assert!(w.contains(&format!("{hosts_file}:4: \"not-an-id\" is not a node id")), "warning: {w}");
    assert!(w.contains(&format!("{hosts_file}:5: relay names {}", b.id)), "warning: {w}");
    let o = r2(&s, &a.sock, &["ls", "-N"]);
    assert!(stdout_of(&o).starts_with(&format!("{}\tR2_SOCKET=", b.id)), "{}", stdout_of(&o));
    let o = r2(&s, &a.sock, &["ls", "-l"]);
    assert!(stdout_of(&o).starts_with(&format!("{}\trelay\t", b.id)), "{}", stdout_of(&o));
    let o = r2(&s, &a.sock, &["ls", "gw"]);
    let mut got: Vec<String> = stdout_of(&o).lines().map(str::to_string).collect();
    got.sort();
    let mut want = vec![format!("{}\t-", a.id), format!("{}\thome", c.id)];
    want.sort();
    assert_eq!(got, want);

    // ping by names, replies named; a tunnel by names.
    let o = r2(&s, &a.sock, &["ping", "-c", "2", "-i", "0", "relay/home"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(stdout_of(&o).contains("reply from home: seq=2"), "{}", stdout_of(&o));
    let mut t = Command::new(bin());
    t.arg("-s").arg(&a.sock).args(["tunnel", "relay/home", "-"]).env("R2_HOSTS", s.path("hosts"));
    let o = run_bounded(t, SOON);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(stdout_of(&o), "named\n");

    // Errors name the nodes: a ghost hop beyond a named one.
    let ghost = "6Xb2RtEfug8nxD6A7Afvd3SPt4ePCibjFHLcyRqVqFgC";
    let o = r2(&s, &a.sock, &["ping", "-c", "1", &format!("relay/{ghost}")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_of(&o).contains(&format!("no route to {ghost} at relay")), "{}", stderr_of(&o));

    // An unknown word is a usage error naming the file, with no daemon
    // asked (the socket does not exist).
    let none = s.path("none.sock");
    for args in [vec!["ping", "relay/nowhere"], vec!["connect", "-n", "nowhere", "-"], vec!["ls", "nowhere"]] {
        let o = r2(&s, &none, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr_of(&o));
        let e = stderr_of(&o);
        assert!(e.contains(&format!("\"nowhere\" is neither a node id nor a name in {hosts_file}\n")), "{args:?}: {e}");
        assert!(!e.contains("no daemon"), "{args:?} contacted the daemon: {e}");
    }

    // --allow NAME: a bad name is a usage error of r2d; a daemon d that
    // allows the node relay (b) only, linked to b and to c (home).
    let mut d = Command::new(s.path("bin/r2d"));
    d.arg("-s").arg(s.path("d.sock")).args(["--allow", "nowhere", "cat"]).env("R2_HOSTS", s.path("hosts"));
    let o = run_bounded(d, SOON);
    assert_eq!(o.status.code(), Some(2), "r2d --allow nowhere: {}", stderr_of(&o));
    let mut d = Command::new(s.path("bin/r2d"));
    d.arg("-s").arg(s.path("d.sock")).arg("-k").arg(s.path("d.id")).args(["--allow", "relay", "echo allowed"]);
    d.env("R2_HOSTS", s.path("hosts")).env("PATH", s.env_path()).stdin(Stdio::null()).stdout(Stdio::null());
    let _d = Proc::spawn(d, "d", &s.path("d.log"));
    let sock = s.path("d.sock");
    wait_for("daemon d to answer", SOON, || r2(&s, &sock, &["id"]).status.success());
    let d_id = stdout_of(&r2(&s, &sock, &["id"])).trim().to_string();
    let _bd = link(&b, &[], &sock, "bd");
    let _cd = link(&c, &[], &sock, "cd");
    c.wait_neighbours(&s, &[&b.id, &d_id], SOON);
    b.wait_neighbours(&s, &[&a.id, &c.id, &d_id], SOON);
    let tunnel = |from: &Daemon, path: &str| {
        let mut t = Command::new(bin());
        t.arg("-s").arg(&from.sock).args(["tunnel", path, "-"]).env("R2_HOSTS", s.path("hosts"));
        run_bounded(t, SOON)
    };
    let o = tunnel(&b, &d_id);
    assert!(o.status.success() && stdout_of(&o) == "allowed\n", "from relay: {}", stderr_of(&o));
    // The caller is a, proven end to end, not the relay it came through.
    let o = tunnel(&a, &format!("relay/{d_id}"));
    assert_eq!(o.status.code(), Some(1), "from a through relay, not allowed: {}", stderr_of(&o));
    assert!(stderr_of(&o).contains("not allowed"), "{}", stderr_of(&o));
    let o = tunnel(&c, &d_id);
    assert_eq!(o.status.code(), Some(1), "from home, not allowed: {}", stderr_of(&o));
}
