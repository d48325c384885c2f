//! Daemons and links, end to end: real daemons joined by socat over TCP and
//! UNIX sockets and by plain pipelines; ls and ping across hops; refusals;
//! transports that die.

mod common;
use common::*;
use std::time::Duration;

/// Two daemons linked over TCP on loopback, the accepting side being
/// `socat tcp-l:PORT,fork exec:"r2 connect -"`.
#[test]
fn tcp_with_socat_fork_exec() {
    need("socat");
    let s = Scratch::new("tcp");
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &[]);
    let port = free_port();
    let mut srv = s.sh(&format!("exec socat tcp-l:{port},bind=127.0.0.1,fork,reuseaddr exec:'r2 connect -'"));
    srv.env("R2_SOCKET", &b.sock);
    let _srv = Proc::spawn(srv, "socat-server", &s.path("srv.err"));
    wait_for("the socat listener", SOON, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let mut c = connect(&s, &a, &["-n", &b.id], &format!("socat tcp:127.0.0.1:{port} -"), "conn");
    a.wait_neighbours(&s, &[&b.id], SOON);
    b.wait_neighbours(&s, &[&a.id], SOON);
    let ls = stdout_of(&s.r2(&a.sock, &["ls"]));
    assert_eq!(ls.trim(), format!("{}\t-\tsocat tcp:127.0.0.1:{port} -", b.id));
    assert_eq!(stdout_of(&s.r2(&b.sock, &["ls", "-N"])).trim(), format!("{}\tstdio", a.id));
    let o = s.r2(&a.sock, &["ping", "-c", "3", "-i", "0.05", &b.id]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(stdout_of(&o).matches("seq=").count(), 3);
    assert!(stdout_of(&o).contains("3 probes sent, 3 received, 0% loss"));
    // The client ending ends the link on both sides.
    kill_pid(c.pid(), libc_sig::TERM);
    c.wait_exit(SOON);
    a.wait_neighbours(&s, &[], SOON);
    b.wait_neighbours(&s, &[], SOON);
}

#[test]
fn unix_socket_transport() {
    need("socat");
    let s = Scratch::new("unix");
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &[]);
    let path = s.path("relay");
    let mut srv = s.sh(&format!("exec socat UNIX-LISTEN:{},fork exec:'r2 connect -'", path.display()));
    srv.env("R2_SOCKET", &b.sock);
    let _srv = Proc::spawn(srv, "socat-unix", &s.path("srv.err"));
    wait_for("the unix listener", SOON, || exists(&path));
    let _c = connect(&s, &a, &[], &format!("socat UNIX-CONNECT:{} -", path.display()), "conn");
    a.wait_neighbours(&s, &[&b.id], SOON);
    b.wait_neighbours(&s, &[&a.id], SOON);
    let o = s.r2(&b.sock, &["ping", "-c", "1", &a.id]);
    assert!(o.status.success(), "{}", stderr_of(&o));
}

/// A pipeline with no socat: one `r2 connect` runs the other as its transport.
#[test]
fn pipeline_between_two_local_daemons() {
    let s = Scratch::new("pipe");
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &[]);
    let t = format!("R2_SOCKET={} r2 connect -", b.sock.display());
    let mut c = connect(&s, &a, &["-n", &b.id], &t, "conn");
    a.wait_neighbours(&s, &[&b.id], SOON);
    b.wait_neighbours(&s, &[&a.id], SOON);
    // Ending the daemon that runs the far client ends the link cleanly.
    kill_pid(c.pid(), libc_sig::TERM);
    c.wait_exit(SOON);
    a.wait_neighbours(&s, &[], SOON);
    b.wait_neighbours(&s, &[], SOON);
}

/// A chain a–b–c: ls and ping over two hops; a missing hop is named.
#[test]
fn chain_of_three() {
    let s = Scratch::new("chain");
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &[]);
    let c = Daemon::start(&s, "c", &[]);
    let _ab = connect(&s, &a, &["-n", &b.id], &format!("R2_SOCKET={} r2 connect -", b.sock.display()), "ab");
    let _bc = connect(&s, &b, &["-n", &c.id], &format!("R2_SOCKET={} r2 connect -", c.sock.display()), "bc");
    b.wait_neighbours(&s, &[&a.id, &c.id], SOON);
    let path = format!("{}/{}", b.id, c.id);
    let o = s.r2(&a.sock, &["ls", &path]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(stdout_of(&o).trim(), format!("{}\t-", b.id));
    let o = s.r2(&a.sock, &["ls", "-N", &b.id]);
    let out = stdout_of(&o);
    let mut ids: Vec<&str> = out.lines().collect();
    ids.sort();
    let mut want = vec![a.id.as_str(), c.id.as_str()];
    want.sort();
    assert_eq!(ids, want);
    let o = s.r2(&a.sock, &["ping", "-c", "2", "-i", "0", &path]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(stdout_of(&o).contains("2 received"));
    // a hop that does not exist, named with the hop that failed
    let ghost = "6Xb2RtEfug8nxD6A7Afvd3SPt4ePCibjFHLcyRqVqFgC";
    let o = s.r2(&a.sock, &["ping", "-c", "1", &format!("{}/{ghost}", b.id)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_of(&o).contains(&format!("no route to {ghost} at {}", b.id)), "{}", stderr_of(&o));
    let o = s.r2(&a.sock, &["ls", &format!("{ghost}/{}", b.id)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_of(&o).contains(&format!("no route to {ghost} at {}", a.id)), "{}", stderr_of(&o));
    // a path that revisits a daemon is refused
    let o = s.r2(&a.sock, &["ping", "-c", "1", &format!("{}/{}/{}", b.id, a.id, b.id)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_of(&o).contains("revisits"), "{}", stderr_of(&o));
}

#[test]
fn node_id_mismatch_and_duplicate_links() {
    let s = Scratch::new("refuse");
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &[]);
    let wrong = "6Xb2RtEfug8nxD6A7Afvd3SPt4ePCibjFHLcyRqVqFgC";
    let far = format!("R2_SOCKET={} r2 connect - 2>{}", b.sock.display(), s.path("far.err").display());
    let mut c = connect(&s, &a, &["-n", wrong], &far, "mismatch");
    let st = c.wait_exit(SOON);
    assert_eq!(st.code(), Some(1));
    let err = std::fs::read_to_string(s.path("mismatch.err")).unwrap();
    assert!(err.contains(wrong) && err.contains(&b.id), "both ids: {err}");
    wait_for("the far client to say why", SOON, || {
        std::fs::read_to_string(s.path("far.err")).unwrap_or_default().contains("refused")
    });
    assert!(a.neighbours(&s).is_empty());

    // A second link to an already linked neighbour is refused on both sides.
    let _first = connect(&s, &a, &[], &format!("R2_SOCKET={} r2 connect -", b.sock.display()), "first");
    a.wait_neighbours(&s, &[&b.id], SOON);
    let far2 = format!("R2_SOCKET={} r2 connect - 2>{}", b.sock.display(), s.path("far2.err").display());
    let mut dup = connect(&s, &a, &[], &far2, "dup");
    assert_eq!(dup.wait_exit(SOON).code(), Some(1));
    let err = std::fs::read_to_string(s.path("dup.err")).unwrap();
    assert!(err.contains("already linked"), "{err}");
    wait_for("the far client to fail too", SOON, || {
        std::fs::read_to_string(s.path("far2.err")).unwrap_or_default().contains("already linked")
    });
    // the first link is untouched
    let o = s.r2(&a.sock, &["ping", "-c", "1", &b.id]);
    assert!(o.status.success());
}

/// kill -9 of a transport: both daemons drop the neighbour at once, and a
/// ping running across it learns the path broke.
#[test]
fn killed_transport_is_noticed_everywhere() {
    need("socat");
    let s = Scratch::new("kill");
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &[]);
    let c = Daemon::start(&s, "c", &[]);
    let _ab = connect(&s, &a, &[], &format!("R2_SOCKET={} r2 connect -", b.sock.display()), "ab");
    let port = free_port();
    let mut srv = s.sh(&format!("exec socat tcp-l:{port},bind=127.0.0.1,reuseaddr exec:'r2 connect -'"));
    srv.env("R2_SOCKET", &c.sock);
    let _srv = Proc::spawn(srv, "srv", &s.path("srv.err"));
    wait_for("listener", SOON, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    // That probe connection used up the non-fork listener: restart it.
    drop(_srv);
    let mut srv = s.sh(&format!("exec socat tcp-l:{port},bind=127.0.0.1,reuseaddr exec:'r2 connect -'"));
    srv.env("R2_SOCKET", &c.sock);
    let _srv = Proc::spawn(srv, "srv2", &s.path("srv2.err"));
    // The transport is a socat child of a shell: find it to kill it.
    let bc = connect(&s, &b, &[], &format!("socat tcp:127.0.0.1:{port},retry=50,interval=0.1 -"), "bc");
    b.wait_neighbours(&s, &[&a.id, &c.id], SOON);
    let path = format!("{}/{}", b.id, c.id);
    let mut ping = {
        let mut cmd = std::process::Command::new(bin());
        cmd.arg("-s").arg(&a.sock).args(["ping", "-c", "1000", "-i", "0.05", &path]);
        cmd.stdout(std::process::Stdio::null());
        Proc::spawn(cmd, "ping", &s.path("ping.err"))
    };
    wait_for("ping to start", SOON, || s.r2(&b.sock, &["ls"]).status.success() && ping.is_running());
    std::thread::sleep(Duration::from_millis(300)); // let some probes through: not a wait for a condition
    let socat = children_named(bc.pid(), "socat");
    assert!(!socat.is_empty(), "no socat under the connect client");
    for p in socat {
        kill_pid(p, libc_sig::KILL);
    }
    b.wait_neighbours(&s, &[&a.id], Duration::from_secs(3));
    c.wait_neighbours(&s, &[], Duration::from_secs(3));
    let st = ping.wait_exit(Duration::from_secs(3));
    assert_eq!(st.code(), Some(1));
    let err = std::fs::read_to_string(s.path("ping.err")).unwrap();
    assert!(err.contains("broke"), "{err}");
}

/// A link that sends garbage is closed; the daemon goes on serving.
#[test]
fn garbage_closes_only_its_link() {
    let s = Scratch::new("garb");
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &[]);
    let _ab = connect(&s, &a, &[], &format!("R2_SOCKET={} r2 connect -", b.sock.display()), "ab");
    a.wait_neighbours(&s, &[&b.id], SOON);
    for (i, t) in [
        "head -c 5000 /dev/urandom; sleep 30",
        "printf '\\377\\377\\377\\377'; sleep 30",
        "printf '\\0\\0\\0\\041\\011'; head -c 32 /dev/zero; sleep 30",
    ]
    .iter()
    .enumerate()
    {
        let mut g = connect(&s, &a, &[], t, &format!("garbage{i}"));
        assert_eq!(g.wait_exit(SOON).code(), Some(1), "{t}");
        let err = std::fs::read_to_string(s.path(&format!("garbage{i}.err"))).unwrap();
        assert!(err.contains("malformed") || err.contains("Hello") || err.contains("handshake"), "{t}: {err}");
    }
    let o = s.r2(&a.sock, &["ping", "-c", "1", &b.id]);
    assert!(o.status.success(), "{}", stderr_of(&o));
}

/// A transport that never says Hello (nor so starts a handshake), and one
/// that stops forwarding.
#[test]
fn hello_timeout_and_keepalive() {
    need("socat");
    let s = Scratch::new("ka");
    let a = Daemon::start(&s, "a", &["--hello-timeout", "0.5", "--keepalive", "0.3"]);
    let b = Daemon::start(&s, "b", &["--keepalive", "0.3"]);
    let mut silent = connect(&s, &a, &[], "sleep 30", "silent");
    assert_eq!(silent.wait_exit(SOON).code(), Some(1));
    let err = std::fs::read_to_string(s.path("silent.err")).unwrap();
    assert!(err.contains("no handshake"), "{err}");
    // socat between the daemons, then stopped: the link goes quiet.
    let port = free_port();
    let mut srv = s.sh(&format!("exec socat tcp-l:{port},bind=127.0.0.1,reuseaddr exec:'r2 connect -'"));
    srv.env("R2_SOCKET", &b.sock);
    let _srv = Proc::spawn(srv, "srv", &s.path("srv.err"));
    let c = connect(&s, &a, &[], &format!("socat tcp:127.0.0.1:{port},retry=50,interval=0.1 -"), "conn");
    a.wait_neighbours(&s, &[&b.id], SOON);
    // idle for several keepalive periods: still up
    let o = s.r2(&a.sock, &["ping", "-c", "4", "-i", "0.5", &b.id]);
    assert!(o.status.success());
    a.wait_neighbours(&s, &[&b.id], SOON);
    for p in children_named(c.pid(), "socat") {
        kill_pid(p, libc_sig::STOP);
    }
    a.wait_neighbours(&s, &[], Duration::from_secs(3));
    b.wait_neighbours(&s, &[], Duration::from_secs(3));
    for p in children_named(c.pid(), "socat") {
        kill_pid(p, libc_sig::CONT);
    }
}
