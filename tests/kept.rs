//! `r2 connect -r`, a kept link, with the real binary: it comes back after
//! its transport is killed, after the far daemon restarts with its id file,
//! over TCP, UDP and ssh; it backs off while the far side is down and stays;
//! SIGTERM ends it with exit 0 and leaves nothing running; the end of its
//! own daemon ends it with exit 1.

mod common;
use common::*;
use std::fs;
use std::time::{Duration, Instant};

/// `r2 connect -r -n PEER TRANSPORT` for `d`, logging to `name.err`.
fn kept(s: &Scratch, d: &Daemon, peer: &str, transport: &str, name: &str) -> Proc {
    connect(s, d, &["-r", "-n", peer], transport, name)
}

fn log(s: &Scratch, name: &str) -> String {
    fs::read_to_string(s.path(&format!("{name}.err"))).unwrap_or_default()
}

/// The RETURNS column of `d`'s `ls -l` line for `id`.
fn returns(s: &Scratch, d: &Daemon, id: &str) -> Option<String> {
    let out = stdout_of(&s.r2(&d.sock, &["ls", "-l", "-N"]));
    let line = out.lines().find(|l| l.starts_with(id))?.to_string();
    line.split('\t').nth(2).map(str::to_string)
}

/// Waits until `d` lists exactly `peer`, and its kept link has come back
/// `n` times.
fn back(s: &Scratch, d: &Daemon, peer: &Daemon, n: u64, limit: Duration, what: &str) {
    let t0 = Instant::now();
    let want = n.to_string();
    let mut seen = None;
    while t0.elapsed() < limit {
        seen = returns(s, d, &peer.id);
        if seen.as_deref() == Some(want.as_str()) && d.neighbours(s) == [peer.id.clone()] {
            eprintln!("{what}: back after {:.1} s", t0.elapsed().as_secs_f64());
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not back {n} times within {limit:?} (RETURNS {seen:?})\n{}", log(s, "kept"));
}

/// The transport processes (`socat`) under the kept link's client.
fn transport_of(k: &Proc) -> Vec<u32> {
    children_named(k.pid(), "socat")
}

/// SIGTERM: exit 0, the link ended on both sides, no socat left under it.
fn terminate(s: &Scratch, mut k: Proc, a: &Daemon, b: &Daemon) {
    let socats = transport_of(&k);
    assert!(!socats.is_empty(), "no transport under the client");
    kill_pid(k.pid(), libc_sig::TERM);
    let st = k.wait_exit(SOON);
    assert_eq!(st.code(), Some(0), "SIGTERM: {st:?}\n{}", log(s, "kept"));
    assert!(log(s, "kept").contains("stopped by a signal"), "{}", log(s, "kept"));
    for p in socats {
        wait_for("the transport to end", SOON, || !exists(format!("/proc/{p}/stat")) || zombie(p));
    }
    a.wait_neighbours(s, &[], SOON);
    b.wait_neighbours(s, &[], SOON);
}

fn zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// A TCP listener that hands each connection to daemon `b`.
fn tcp_acceptor(s: &Scratch, b: &Daemon, port: u16, name: &str) -> Proc {
    let mut c = s.sh(&format!("exec socat tcp-l:{port},bind=127.0.0.1,fork,reuseaddr exec:'r2 connect -'"));
    c.env("R2_SOCKET", &b.sock);
    let p = Proc::spawn(c, name, &s.path(&format!("{name}.err")));
    wait_for("the TCP listener", SOON, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    p
}

/// Two daemons, a TCP listener for b, and a's kept link to it, up.
struct Tcp {
    s: Scratch,
    a: Daemon,
    b: Daemon,
    _srv: Proc,
    k: Proc,
    port: u16,
}

impl Tcp {
    fn new(tag: &str) -> Tcp {
        need("socat");
        let s = Scratch::new(tag);
        let a = Daemon::start(&s, "a", &[]);
        let b = Daemon::start(&s, "b", &[]);
        let port = free_port();
        let _srv = tcp_acceptor(&s, &b, port, "srv");
        let k = kept(&s, &a, &b.id, &format!("socat tcp:127.0.0.1:{port} -"), "kept");
        back(&s, &a, &b, 0, SOON, "first link");
        Tcp { s, a, b, _srv, k, port }
    }
}

#[test]
fn comes_back_when_its_transport_is_killed() {
    let Tcp { s, a, b, _srv, k, .. } = Tcp::new("kt");
    for n in 1..=2 {
        let socats = transport_of(&k);
        assert_eq!(socats.len(), 1, "one transport: {socats:?}");
        kill_pid(socats[0], libc_sig::KILL);
        back(&s, &a, &b, n, Duration::from_secs(5), "after kill -9 of the transport");
    }
    let l = log(&s, "kept");
    assert!(l.contains("attempt 3: socat tcp:") && l.contains("next attempt in"), "{l}");
    terminate(&s, k, &a, &b);
}

#[test]
fn comes_back_when_the_far_daemon_restarts() {
    let Tcp { s, a, b, _srv, k, .. } = Tcp::new("kr");
    let id = b.id.clone();
    drop(b);
    a.wait_neighbours(&s, &[], SOON);
    // The same id file, so the same id: -n still holds.
    let b = Daemon::start(&s, "b", &[]);
    assert_eq!(b.id, id);
    back(&s, &a, &b, 1, Duration::from_secs(15), "after the far daemon's restart");
    terminate(&s, k, &a, &b);
}

#[test]
fn a_udp_link_comes_back() {
    need("socat");
    let s = Scratch::new("ku");
    let a = Daemon::start(&s, "a", &[]);
    // A short keepalive, so that the far side finds the old link dead soon
    // and takes the new caller's Hello.
    let b = Daemon::start(&s, "b", &["--keepalive", "0.5"]);
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = s.sh(&format!("exec socat udp-l:{port},bind=127.0.0.1,fork exec:'r2 connect -'"));
    c.env("R2_SOCKET", &b.sock);
    let srv = Proc::spawn(c, "srv", &s.path("srv.err"));
    let k = kept(&s, &a, &b.id, &format!("socat udp:127.0.0.1:{port} -"), "kept");
    back(&s, &a, &b, 0, SOON, "first UDP link");
    let socats = transport_of(&k);
    assert_eq!(socats.len(), 1, "one transport: {socats:?}");
    kill_pid(socats[0], libc_sig::KILL);
    back(&s, &a, &b, 1, Duration::from_secs(15), "UDP, after kill -9 of the transport");
    // The listener gone: socat udp: exits on ICMP port unreachable, and
    // the client keeps trying.
    drop(srv);
    a.wait_neighbours(&s, &[], SOON);
    wait_for("attempts against the closed port", Duration::from_secs(20), || {
        log(&s, "kept").matches("next attempt in").count() >= 3
    });
    let mut c = s.sh(&format!("exec socat udp-l:{port},bind=127.0.0.1,fork exec:'r2 connect -'"));
    c.env("R2_SOCKET", &b.sock);
    let _srv = Proc::spawn(c, "srv2", &s.path("srv2.err"));
    back(&s, &a, &b, 2, Duration::from_secs(20), "UDP, after the listener came back");
    terminate(&s, k, &a, &b);
}

/// Over ssh, as the README links machines: `ssh HOST r2 connect -`, here
/// to an sshd in inetd mode as ssh's ProxyCommand (no network). Killing
/// ssh ends the link; the kept link runs ssh again.
#[test]
fn an_ssh_link_comes_back() {
    let s = Scratch::new("ks");
    sshd_config(&s, &format!("SetEnv PATH={}\n", s.env_path()));
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &[]);
    let ssh = format!(
        "ssh -F /dev/null -i {d}/userkey -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
         -o 'ProxyCommand=/usr/sbin/sshd -i -f {d}/sshd_config' root@b 'R2_SOCKET={} {d}/bin/r2 connect -'",
        b.sock.display(),
        d = s.dir.display()
    );
    let k = kept(&s, &a, &b.id, &ssh, "kept");
    back(&s, &a, &b, 0, Duration::from_secs(30), "first ssh link");
    let ssh_pids = children_named(k.pid(), "ssh");
    assert_eq!(ssh_pids.len(), 1, "one ssh: {ssh_pids:?}");
    kill_pid(ssh_pids[0], libc_sig::KILL);
    back(&s, &a, &b, 1, Duration::from_secs(15), "ssh, after kill -9 of ssh");
    let mut k = k;
    kill_pid(k.pid(), libc_sig::TERM);
    assert_eq!(k.wait_exit(SOON).code(), Some(0), "{}", log(&s, "kept"));
    a.wait_neighbours(&s, &[], SOON);
}

/// The waits the client logged, in seconds.
fn waits(s: &Scratch) -> Vec<f64> {
    log(s, "kept")
        .lines()
        .filter_map(|l| l.split("next attempt in ").nth(1)?.strip_suffix(" s")?.parse().ok())
        .collect()
}

/// The far side down for `down`: the waits grow, the client stays, and the
/// link comes back once the far side does.
fn far_side_down(down: Duration) {
    let Tcp { s, a, b, _srv: srv, mut k, port } = Tcp::new("kd");
    drop(srv);
    let t0 = Instant::now();
    while t0.elapsed() < down {
        assert!(k.is_running(), "the client exited while the far side was down\n{}", log(&s, "kept"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let w = waits(&s);
    eprintln!("waits while down for {down:?}: {w:?}");
    assert!(w.len() >= 3, "{w:?}");
    for pair in w.windows(2) {
        // Doubling with ±25 % jitter: each at least 1.2 times the one
        // before (1.5 / 1.25), up to the cap.
        assert!(pair[1] >= (pair[0] * 1.15).min(45.0), "the waits do not grow: {w:?}");
    }
    assert!(w.iter().all(|&x| (1.0..=60.0).contains(&x)), "{w:?}");
    let _srv = tcp_acceptor(&s, &b, port, "srv2");
    // The next attempt comes after the last wait (at most 60 s + 25 %).
    let limit = Duration::from_secs_f64(w.last().copied().unwrap_or(1.0) * 1.25 + 10.0);
    back(&s, &a, &b, 1, limit, "after the far side came back");
    terminate(&s, k, &a, &b);
}

#[test]
fn backs_off_while_the_far_side_is_down() {
    far_side_down(Duration::from_secs(12));
}

#[test]
#[ignore = "stress: the far side down for a minute"]
fn stress_backs_off_for_a_minute() {
    far_side_down(Duration::from_secs(65));
}

#[test]
fn ends_when_its_daemon_goes_away() {
    let Tcp { s, a, b: _b, _srv, mut k, .. } = Tcp::new("kg");
    let socats = transport_of(&k);
    drop(a);
    let st = k.wait_exit(SOON);
    assert_eq!(st.code(), Some(1), "{st:?}\n{}", log(&s, "kept"));
    assert!(log(&s, "kept").contains("the daemon is gone; the link is not kept"), "{}", log(&s, "kept"));
    for p in socats {
        wait_for("the transport to end", SOON, || !exists(format!("/proc/{p}/stat")) || zombie(p));
    }
}
