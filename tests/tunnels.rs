//! Tunnels end to end: real daemons running real tunnel processes (cat,
//! wc, sha256sum, sshd), clients with stdio and with commands, over one hop
//! and several, many at once, and when things break.

mod common;
use common::*;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Daemons `d0…dn` in a line, each linked to the next by a pipeline
/// transport; the last runs `cmd` as its tunnel process.
struct Line {
    daemons: Vec<Daemon>,
    links: Vec<Proc>,
}

impl Line {
    fn new(s: &Scratch, hops: usize, cmd: &[&str]) -> Line {
        Line::with(s, hops, cmd, false)
    }

    /// A line whose links both ends asked to be plaintext.
    fn plaintext(s: &Scratch, hops: usize, cmd: &[&str]) -> Line {
        Line::with(s, hops, cmd, true)
    }

    fn with(s: &Scratch, hops: usize, cmd: &[&str], plaintext: bool) -> Line {
        let mut daemons = Vec::new();
        for i in 0..=hops {
            let extra: &[&str] = if i == hops { cmd } else { &[] };
            daemons.push(Daemon::start(s, &format!("d{i}"), extra));
        }
        let mut links = Vec::new();
        let flag = if plaintext { "--plaintext" } else { "" };
        for i in 0..hops {
            let t = format!("R2_SOCKET={} r2 connect {flag} -", daemons[i + 1].sock.display());
            let opts: &[&str] = if plaintext { &["--plaintext"] } else { &[] };
            links.push(connect(s, &daemons[i], opts, &t, &format!("link{i}")));
        }
        for i in 0..hops {
            let next = daemons[i + 1].id.clone();
            wait_for("links", SOON, || daemons[i].neighbours(s).contains(&next));
        }
        Line { daemons, links }
    }

    /// The path from the first daemon to the last.
    fn path(&self) -> String {
        self.daemons[1..].iter().map(|d| d.id.as_str()).collect::<Vec<_>>().join("/")
    }

    fn first(&self) -> &Daemon {
        &self.daemons[0]
    }

    fn last(&self) -> &Daemon {
        self.daemons.last().unwrap()
    }
}

/// `r2 -s SOCK tunnel ARGS…` with `stdin` from a file (or nothing) and
/// stdout to a file; bounded.
fn tunnel(
    s: &Scratch,
    sock: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
    stdout: &str,
) -> std::process::Output {
    let mut c = Command::new(bin());
    c.arg("-s").arg(sock).arg("tunnel").args(args).env("PATH", s.env_path()).current_dir(&s.dir);
    let out = std::fs::File::create(s.path(stdout)).unwrap();
    let input = match stdin {
        Some(f) => Stdio::from(std::fs::File::open(s.path(f)).unwrap()),
        None => Stdio::null(),
    };
    c.stdin(input).stdout(out).stderr(Stdio::piped()).process_group(0);
    let child = c.spawn().unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            kill_group(pid, libc_sig::KILL);
            panic!("r2 tunnel {args:?} did not finish");
        }
    }
}

fn sh_out(s: &Scratch, script: &str) -> String {
    let o = run_bounded(s.sh(script), Duration::from_secs(60));
    assert!(o.status.success(), "{script}: {}", stderr_of(&o));
    stdout_of(&o).trim().to_string()
}

/// The children of a process that run `name`.
fn children(pid: u32, name: &str) -> Vec<u32> {
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    kids.split_whitespace()
        .filter_map(|k| k.parse::<u32>().ok())
        .filter(|k| std::fs::read_to_string(format!("/proc/{k}/cmdline")).unwrap_or_default().contains(name))
        .collect()
}

#[test]
fn hello_through_cat() {
    let s = Scratch::new("hello");
    let l = Line::new(&s, 1, &["cat"]);
    std::fs::write(s.path("in"), "hello\n").unwrap();
    let o = tunnel(&s, &l.first().sock, &[&l.path(), "-"], Some("in"), "out");
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(std::fs::read_to_string(s.path("out")).unwrap(), "hello\n");
    wait_for("the instance to be reaped", SOON, || children(l.last().proc.pid(), "cat").is_empty());
    assert_eq!(zombies(l.last().proc.pid()), 0);
}

fn bulk(hops: usize) {
    let s = Scratch::new(&format!("bulk{hops}"));
    let l = Line::new(&s, hops, &["cat"]);
    sh_out(&s, "head -c 67108864 /dev/urandom > in");
    let t0 = Instant::now();
    let o = tunnel(&s, &l.first().sock, &[&l.path(), "-"], Some("in"), "out");
    let secs = t0.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", stderr_of(&o));
    let sums = sh_out(&s, "sha256sum < in; sha256sum < out");
    let v: Vec<&str> = sums.lines().collect();
    assert_eq!(v[0], v[1], "64 MiB there and back over {hops} hops");
    eprintln!("64 MiB there and back over {hops} hop(s): {secs:.2} s");
    // Shortcuts: the daemons in between relayed nearly all of it from
    // their link readers; the ends of a one-hop tunnel sent most of their
    // 1024 Data messages of 64 KiB from their tunnel readers, and the
    // caller's link reader delivered most of what came back (as many
    // messages, or more) to the caller's program; those of a tunnel sealed
    // end to end seal and open it in their loops.
    for (i, d) in l.daemons.iter().enumerate() {
        let c = counters(&s, d);
        let (short, routed) = (c["messages_shortcut"], c["messages_routed"]);
        eprintln!("d{i}: {short} messages by shortcut, {routed} routed");
        let relay = i > 0 && i < hops;
        let ok = match (relay, hops) {
            (true, _) => short > 2000 && short > 10 * routed,
            (false, 1) if i == 0 => short > 1536,
            (false, 1) => short > 512,
            // The caller's loop routes what it seals; the far side's
            // hands it to its tunnel ends, which counts as neither.
            (false, _) => i == hops || routed > 1024,
        };
        assert!(ok, "d{i}: {short} by shortcut, {routed} routed");
    }
}

#[test]
fn bulk_64_mib_one_hop() {
    bulk(1);
}

#[test]
fn bulk_64_mib_three_hops() {
    bulk(3);
}

/// Bulk data into a far-side program is spliced where the link is
/// plaintext: the far side's link reader delivers nearly every large Data
/// message of a one-hop tunnel to the program itself, and the data arrives
/// intact. (A tunnel of more hops is sealed end to end, and opened by the
/// far side's loop.)
#[test]
fn bulk_into_a_program_is_delivered_by_the_link_reader() {
    let s = Scratch::new("deliver");
    let l = Line::plaintext(&s, 1, &["sha256sum"]);
    sh_out(&s, "head -c 16777216 /dev/urandom > in");
    let o = tunnel(&s, &l.first().sock, &[&l.path(), "-"], Some("in"), "out");
    assert!(o.status.success(), "{}", stderr_of(&o));
    let want = sh_out(&s, "sha256sum < in");
    assert_eq!(std::fs::read_to_string(s.path("out")).unwrap().trim_end(), want, "16 MiB");
    // 256 Data messages of 64 KiB, from a file read in bulk; the first
    // go by the loop, and so may some while the loop is slow.
    let short = counters(&s, l.last())["messages_shortcut"];
    assert!(short > 128, "the far side delivered {short} messages itself");
}

/// A relay's link onward is cut while a tunnel streams through it by
/// shortcut: the caller is told and exits, the far instance is reaped, the
/// relay frees all it held; over a new link, a new tunnel takes shortcuts
/// again and carries all its data.
#[test]
fn a_relay_cut_mid_stream_and_shortcuts_learnt_again() {
    let s = Scratch::new("tcut");
    let mut l = Line::new(&s, 2, &["wc -c"]);
    let (relay, far) = (&l.daemons[1], &l.daemons[2]);
    let mut c = Command::new(bin());
    c.arg("-s").arg(&l.first().sock).args(["tunnel", &l.path(), "cat /dev/zero"]);
    let mut client = Proc::spawn(c, "stream", &s.path("stream.err"));
    wait_for("a stream by shortcut", SOON, || counters(&s, relay)["messages_shortcut"] > 100);
    let far_pid = far.proc.pid();
    assert_eq!(children(far_pid, "wc").len(), 1);
    // Cut relay -> far: the link's r2 connect client goes away.
    kill_pid(l.links[1].pid(), libc_sig::KILL);
    assert_ne!(client.wait_exit(Duration::from_secs(5)).code(), Some(0));
    let err = std::fs::read_to_string(s.path("stream.err")).unwrap();
    assert!(err.contains("broke"), "{err}");
    wait_for("the far instance to be reaped", Duration::from_secs(5), || {
        children(far_pid, "wc").is_empty() && zombies(far_pid) == 0
    });
    let end = Instant::now() + SOON;
    loop {
        let c = counters(&s, relay);
        let held = (c["virtual_bound"] - c["virtual_freed"], c["links_up"] - c["links_down"]);
        if held == (0, 1) {
            break;
        }
        assert!(Instant::now() < end, "the relay still holds (virtual neighbours, links) {held:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A new link and a new tunnel: all of it arrives, by shortcut again.
    let t = format!("R2_SOCKET={} r2 connect -", far.sock.display());
    l.links.push(connect(&s, relay, &[], &t, "relink"));
    let far_id = far.id.clone();
    wait_for("the new link", SOON, || l.daemons[1].neighbours(&s).contains(&far_id));
    let before = counters(&s, &l.daemons[1])["messages_shortcut"];
    sh_out(&s, "head -c 8388608 /dev/zero > in");
    let o = tunnel(&s, &l.first().sock, &[&l.path(), "-"], Some("in"), "out");
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(std::fs::read_to_string(s.path("out")).unwrap().trim(), "8388608");
    let after = counters(&s, &l.daemons[1])["messages_shortcut"];
    assert!(after - before > 64, "8 MiB took {} shortcuts at the relay", after - before);
}

#[test]
fn half_close_reaches_the_remote_process() {
    let s = Scratch::new("half");
    let l = Line::new(&s, 1, &["wc -c"]);
    sh_out(&s, "head -c 1000000 /dev/urandom > in");
    let o = tunnel(&s, &l.first().sock, &[&l.path(), "-"], Some("in"), "out");
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(std::fs::read_to_string(s.path("out")).unwrap().trim(), "1000000");
}

#[test]
fn exit_status_and_environment() {
    let s = Scratch::new("exit");
    let l = Line::new(&s, 1, &["echo \"peer=$R2_PEER via=$R2_VIA\"; exit 7"]);
    let o = tunnel(&s, &l.first().sock, &[&l.path(), "-"], None, "out");
    assert_eq!(o.status.code(), Some(7), "{}", stderr_of(&o));
    let out = std::fs::read_to_string(s.path("out")).unwrap();
    assert!(out.contains(&format!("via={}", l.first().id)), "{out}");
    assert!(out.starts_with("peer=") && out.len() > 60, "{out}");
    // a transport command on the caller's side
    let o = tunnel(&s, &l.first().sock, &[&l.path(), "cat > got"], None, "out2");
    assert_eq!(o.status.code(), Some(7));
    assert!(std::fs::read_to_string(s.path("got")).unwrap().contains("peer="));
}

#[test]
fn errors_a_user_sees() {
    let s = Scratch::new("terr");
    let l = Line::new(&s, 2, &[]);
    // no tunnel process at the far end
    let o = tunnel(&s, &l.first().sock, &[&l.path(), "-"], None, "out");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_of(&o).contains("runs no tunnel process"), "{}", stderr_of(&o));
    // no route, naming the hop
    let ghost = "6Xb2RtEfug8nxD6A7Afvd3SPt4ePCibjFHLcyRqVqFgC";
    let path = format!("{}/{ghost}", l.daemons[1].id);
    let o = tunnel(&s, &l.first().sock, &[&path, "-"], None, "out");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_of(&o).contains(&format!("no route to {ghost} at {}", l.daemons[1].id)), "{}", stderr_of(&o));
    assert_eq!(stderr_of(&o).lines().count(), 1);
}

/// A transport killed mid-tunnel: both sides end within a second, and the
/// remote process gets EOF and is reaped. Then the same with the client.
#[test]
fn a_broken_path_or_a_killed_client_ends_the_tunnel() {
    need("socat");
    let s = Scratch::new("tbreak");
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &["cat > /dev/null"]);
    let port = free_port();
    let mut srv = s.sh(&format!("exec socat tcp-l:{port},bind=127.0.0.1,reuseaddr,fork exec:'r2 connect -'"));
    srv.env("R2_SOCKET", &b.sock);
    let _srv = Proc::spawn(srv, "srv", &s.path("srv.err"));
    let link = connect(&s, &a, &[], &format!("socat tcp:127.0.0.1:{port},retry=50,interval=0.1 -"), "link");
    a.wait_neighbours(&s, &[&b.id], SOON);
    let start_client = |name: &str| {
        let mut c = Command::new(bin());
        c.arg("-s").arg(&a.sock).args(["tunnel", &b.id, "sleep 1000"]);
        Proc::spawn(c, name, &s.path(&format!("{name}.err")))
    };
    let mut client = start_client("t1");
    wait_for("the remote instance", SOON, || children(b.proc.pid(), "cat").len() == 1);
    for p in children_named(link.pid(), "socat") {
        kill_pid(p, libc_sig::KILL);
    }
    let t0 = Instant::now();
    assert_eq!(client.wait_exit(Duration::from_secs(3)).code(), Some(1));
    wait_for("the remote instance to be reaped", Duration::from_secs(3), || {
        children(b.proc.pid(), "cat").is_empty() && zombies(b.proc.pid()) == 0
    });
    assert!(t0.elapsed() < Duration::from_secs(3));
    let err = std::fs::read_to_string(s.path("t1.err")).unwrap();
    assert!(err.contains("broke"), "{err}");
    drop(link);
    // The client killed: the remote instance is ended and reaped.
    let _link = connect(&s, &a, &[], &format!("socat tcp:127.0.0.1:{port} -"), "link2");
    a.wait_neighbours(&s, &[&b.id], SOON);
    let mut client = start_client("t2");
    wait_for("the remote instance", SOON, || children(b.proc.pid(), "cat").len() == 1);
    kill_pid(client.pid(), libc_sig::KILL);
    client.wait_exit(SOON);
    wait_for("the remote instance to be reaped", Duration::from_secs(3), || {
        children(b.proc.pid(), "cat").is_empty() && zombies(b.proc.pid()) == 0
    });
}

/// 100 tunnels through one link, all open before any sends, each echoing
/// its own data.
#[test]
fn a_hundred_concurrent_tunnels() {
    many_tunnels(100);
}

/// The same with 1,000 (make stress).
#[test]
#[ignore = "stress: run by make stress"]
fn stress_a_thousand_concurrent_tunnels() {
    many_tunnels(1000);
}

fn many_tunnels(n: usize) {
    let s = Scratch::new("many");
    let l = Line::new(&s, 1, &["cat"]);
    // The barrier: a FIFO held open here, so that readers block on read,
    // not open; one line per client releases them all.
    let fifo = s.path("go");
    let made = Command::new("mkfifo").arg(&fifo).status().map(|s| s.success());
    assert_eq!(made.ok(), Some(true), "mkfifo");
    let mut go = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
    let mut clients = Vec::new();
    for i in 0..n {
        let script = format!("read _ < go; head -c 65536 /dev/urandom > in.{i}; cat in.{i}; exec >&-; cat > out.{i}");
        let mut c = Command::new(bin());
        c.arg("-s").arg(&l.first().sock).args(["tunnel", &l.path(), &script]).current_dir(&s.dir);
        clients.push(Proc::spawn(c, &format!("c{i}"), &s.path(&format!("c{i}.err"))));
    }
    wait_for("all instances", Duration::from_secs(120), || children(l.last().proc.pid(), "cat").len() == n);
    use std::io::Write;
    go.write_all(&vec![b'\n'; n]).unwrap();
    for (i, c) in clients.iter_mut().enumerate() {
        let st = c.wait_exit(Duration::from_secs(300));
        assert!(st.success(), "client {i}: {}", std::fs::read_to_string(s.path(&format!("c{i}.err"))).unwrap());
    }
    for i in 0..n {
        let a = std::fs::read(s.path(&format!("in.{i}"))).unwrap();
        let b = std::fs::read(s.path(&format!("out.{i}"))).unwrap();
        assert!(a == b, "tunnel {i} echoed other data");
    }
    wait_for("all instances reaped", SOON, || children(l.last().proc.pid(), "cat").is_empty());
}

/// OpenSSH over r2: ssh with `r2 tunnel` as its ProxyCommand, to an sshd
/// in inetd mode as the tunnel process.
#[test]
fn ssh_over_r2() {
    let s = Scratch::new("ssh");
    let sshd = format!("/usr/sbin/sshd -i -f {}", sshd_config(&s, "").display());
    let l = Line::new(&s, 2, &[&sshd]);
    let proxy = format!("{} -s {} tunnel {} -", bin().display(), l.first().sock.display(), l.path());
    let mut c = Command::new("ssh");
    c.args(["-F", "/dev/null", "-i"]).arg(s.path("userkey"));
    c.args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"]);
    c.arg("-o").arg(format!("ProxyCommand={proxy}"));
    c.args(["root@r2-node", "echo over-r2 $((6*7))"]);
    let o = run_bounded(c, Duration::from_secs(30));
    assert!(o.status.success(), "ssh: {}", stderr_of(&o));
    assert_eq!(stdout_of(&o).trim(), "over-r2 42");
}

/// R2_PEER is the caller's node id, as `r2 id` prints it: over one hop
/// (its link proves it) and over three (the end-to-end handshake does).
#[test]
fn r2_peer_is_the_callers_proven_id() {
    for hops in [1, 3] {
        let s = Scratch::new(&format!("peer{hops}"));
        let l = Line::new(&s, hops, &["echo \"peer=$R2_PEER via=$R2_VIA\""]);
        let id = stdout_of(&s.r2(&l.first().sock, &["id"])).trim().to_string();
        let o = tunnel(&s, &l.first().sock, &[&l.path(), "-"], None, "out");
        assert!(o.status.success(), "{}", stderr_of(&o));
        let out = std::fs::read_to_string(s.path("out")).unwrap();
        assert_eq!(out.trim(), format!("peer={id} via={}", l.daemons[hops - 1].id), "{hops} hops");
        if hops > 1 {
            let log = l.last().log();
            assert!(log.contains(&format!("of node {id}: started")), "{log}");
        }
    }
}

/// Passes a link's frames on, and flips one bit in the middle of the first
/// frame longer than 10000 bytes (the data of a tunnel), then creates the
/// file named by its argument.
const FLIP_ONE_BIT: &str = r#"
use strict; $| = 1;
my ($buf, $done) = ('', 0);
while (sysread(STDIN, $buf, 65536, length $buf)) {
    while (length($buf) >= 4) {
        my $n = unpack('N', $buf);
        last if length($buf) < 4 + $n;
        my $f = substr($buf, 0, 4 + $n, '');
        if (!$done && $n > 10000) {
            substr($f, 4 + int($n / 2), 1) ^= "\x01";
            $done = 1;
            open(my $h, '>', $ARGV[0]) or die; close $h;
        }
        syswrite(STDOUT, $f) or exit 0;
    }
}
"#;

/// A relay that alters a tunnel's data on the way (here: the plaintext
/// link from the relay to the far end, one bit of whose bytes a filter
/// flips) is caught by the end-to-end seal: the far program gets only
/// bytes that were sent, in order, and the caller exits 1 saying so.
#[test]
fn a_relay_that_alters_tunnel_data_is_caught() {
    need("perl");
    let s = Scratch::new("alter");
    let a = Daemon::start(&s, "a", &[]);
    let r = Daemon::start(&s, "r", &[]);
    let got = s.path("got");
    let b = Daemon::start(&s, "b", &[&format!("cat > {}", got.display())]);
    std::fs::write(s.path("flip.pl"), FLIP_ONE_BIT).unwrap();
    let _ar = connect(&s, &a, &[], &format!("R2_SOCKET={} r2 connect -", r.sock.display()), "ar");
    let flip = format!("perl flip.pl {}", s.path("flipped").display());
    let t = format!("{flip} | R2_SOCKET={} r2 connect --plaintext --layer stream -", b.sock.display());
    let _rb = connect(&s, &r, &["--plaintext", "--layer", "stream"], &t, "rb");
    a.wait_neighbours(&s, &[&r.id], SOON);
    wait_for("r's two links", SOON, || r.neighbours(&s).len() == 2);
    sh_out(&s, "head -c 4000000 /dev/urandom > in");
    let o = tunnel(&s, &a.sock, &[&format!("{}/{}", r.id, b.id), "-"], Some("in"), "out");
    assert!(s.path("flipped").exists(), "the filter flipped a bit");
    assert_eq!(o.status.code(), Some(1), "{}", stderr_of(&o));
    assert!(stderr_of(&o).contains("altered on the way"), "{}", stderr_of(&o));
    let sent = std::fs::read(s.path("in")).unwrap();
    wait_for("b's instance to end", SOON, || counters(&s, &b)["instances_ended"] == 1);
    let taken = std::fs::read(&got).unwrap_or_default();
    assert!(taken.len() < sent.len() && sent.starts_with(&taken), "{} of {} bytes, a prefix", taken.len(), sent.len());
}
