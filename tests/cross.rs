//! A mixed network: daemons of another architecture's static binary (run
//! under qemu-user) beside this machine's, linked both ways, over the
//! stream and the robust layer. `make cross-test` builds the binary and
//! runs these with R2_CROSS_BIN (the binary) and R2_CROSS_RUNNER (such as
//! qemu-aarch64-static); they are ignored by `make test`.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Slower than SOON: the foreign binary runs emulated.
const EMULATED: Duration = Duration::from_secs(60);

/// Writes `xbin/r2` and `xbin/r2d` in the scratch: scripts that run the
/// foreign binary under its runner (as r2, or as r2d by its argv[0]).
fn foreign_bin(s: &Scratch) -> PathBuf {
    let foreign = std::env::var("R2_CROSS_BIN").unwrap_or_default();
    let runner = std::env::var("R2_CROSS_RUNNER").unwrap_or_default();
    assert!(
        !foreign.is_empty() && Path::new(&foreign).exists() && !runner.is_empty(),
        "R2_CROSS_BIN ({foreign:?}) must name the foreign static binary and R2_CROSS_RUNNER ({runner:?}) its runner: \
         run `make cross-test` (it needs `rustup target add aarch64-unknown-linux-musl` and qemu-user-static)"
    );
    need(&runner);
    let dir = s.path("xbin");
    fs::create_dir_all(&dir).unwrap();
    for (name, argv0) in [("r2", "r2"), ("r2d", "r2d")] {
        let p = dir.join(name);
        fs::write(&p, format!("#!/bin/sh\nexec {runner} -0 {argv0} {foreign} \"$@\"\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    // It is the other architecture's binary indeed.
    let elf = fs::read(&foreign).unwrap();
    assert!(elf.len() > 20 && elf[..4] == *b"\x7fELF", "{foreign} is not an ELF binary");
    let machine = u16::from_le_bytes([elf[18], elf[19]]);
    let own = u16::from_le_bytes(fs::read(bin()).unwrap()[18..20].try_into().unwrap());
    assert_ne!(machine, own, "{foreign} is this machine's architecture (e_machine {machine})");
    dir
}

/// A daemon of the foreign binary.
fn foreign_daemon(s: &Scratch, xbin: &Path, name: &str, extra: &[&str]) -> Daemon {
    let mut c = Command::new(xbin.join("r2d"));
    c.env("PATH", format!("{}:{}", xbin.display(), s.env_path()));
    Daemon::spawn(s, c, name, extra, EMULATED)
}

/// A scratch, the foreign `r2`, a native daemon a and a foreign daemon f
/// whose tunnel process is `f_cmd`.
fn mixed(tag: &str, f_cmd: &str) -> (Scratch, PathBuf, Daemon, Daemon) {
    need("socat");
    let s = Scratch::new(tag);
    let xbin = foreign_bin(&s);
    let a = Daemon::start(&s, "a", &[]);
    let f = foreign_daemon(&s, &xbin, "f", &[f_cmd]);
    (s, xbin.join("r2"), a, f)
}

/// `r2 connect` of the given binary (`r2` path) for daemon `d`.
fn connect_with(s: &Scratch, r2: &Path, d: &Daemon, opts: &[&str], transport: &str, name: &str) -> Proc {
    let mut c = Command::new(r2);
    c.arg("-s").arg(&d.sock).arg("connect").args(opts).arg(transport);
    c.env("PATH", s.env_path()).current_dir(&s.dir).stdin(Stdio::null()).stdout(Stdio::null());
    Proc::spawn(c, name, &s.path(&format!("{name}.err")))
}

/// A file of `len` pseudo-random bytes.
fn random_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    fs::write(path, v).unwrap();
}

/// `r2 tunnel PATH -` of the given binary from `from`, `input` in, the
/// output to `output`; its exit status.
fn tunnel(s: &Scratch, r2: &Path, from: &Daemon, path: &str, input: &str, output: &str) -> Option<i32> {
    let script = format!(
        "exec {} -s {} tunnel {path} - <{} >{}",
        r2.display(),
        from.sock.display(),
        s.path(input).display(),
        s.path(output).display()
    );
    let o = run_bounded(s.sh(&script), EMULATED);
    if !o.status.success() {
        eprintln!("tunnel to {path}: {}", stderr_of(&o));
    }
    o.status.code()
}

fn same(s: &Scratch, a: &str, b: &str) -> bool {
    let (x, y) = (fs::read(s.path(a)).unwrap(), fs::read(s.path(b)).unwrap_or_default());
    x.len() == y.len() && x == y
}

/// Native a ⇄ foreign f (TCP, f accepting) ⇄ native c (pipeline, f's
/// own connect): ls, ping, remote ls, tunnels byte-exact through f and to
/// f's tunnel process, exit statuses.
#[test]
#[ignore = "cross: run by make cross-test"]
fn cross_mixed_line() {
    let (s, xr2, a, f) = mixed("xl", "sha256sum");
    let c = Daemon::start(&s, "c", &["sh -c 'cat; exit 3'"]);
    let port = free_port();
    let mut srv =
        s.sh(&format!("exec socat tcp-l:{port},bind=127.0.0.1,fork,reuseaddr exec:'{} connect -'", xr2.display()));
    srv.env("R2_SOCKET", &f.sock).stdin(Stdio::null()).stdout(Stdio::null());
    let _srv = Proc::spawn(srv, "srv", &s.path("srv.err"));
    wait_for("the TCP listener", SOON, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let _af = connect_with(&s, &bin(), &a, &["-n", &f.id], &format!("socat tcp:127.0.0.1:{port} -"), "af");
    let _fc = connect_with(&s, &xr2, &f, &["-n", &c.id], &format!("R2_SOCKET={} r2 connect -", c.sock.display()), "fc");
    a.wait_neighbours(&s, &[&f.id], EMULATED);
    f.wait_neighbours(&s, &[&a.id, &c.id], EMULATED);
    c.wait_neighbours(&s, &[&f.id], EMULATED);

    // The foreign manager asks the foreign daemon; ping and ls across it.
    let o = run_bounded(
        {
            let mut cmd = Command::new(&xr2);
            cmd.arg("-s").arg(&f.sock).args(["ls", "-N"]);
            cmd
        },
        EMULATED,
    );
    let mut got: Vec<String> = stdout_of(&o).lines().filter_map(|l| l.split('\t').next().map(str::to_string)).collect();
    got.sort();
    let mut want = vec![a.id.clone(), c.id.clone()];
    want.sort();
    assert_eq!(got, want, "the foreign daemon's ls: {}", stderr_of(&o));
    let path = format!("{}/{}", f.id, c.id);
    let o = s.r2(&a.sock, &["ping", "-c", "3", "-i", "0", "-W", "10", &path]);
    assert!(o.status.success() && stdout_of(&o).contains("3 received"), "ping: {}{}", stdout_of(&o), stderr_of(&o));
    let o = s.r2(&a.sock, &["ls", "-N", &f.id]);
    assert!(stdout_of(&o).contains(&c.id), "remote ls of the foreign daemon: {}", stderr_of(&o));

    // 8 MiB through the foreign daemon to c's cat, and the status back.
    random_file(&s.path("in"), 8 << 20, 7);
    assert_eq!(tunnel(&s, &bin(), &a, &path, "in", "out"), Some(3), "the remote status");
    assert!(same(&s, "in", "out"), "8 MiB through the foreign daemon changed");
    // To the foreign daemon's own tunnel process.
    let want = run_bounded(s.sh(&format!("sha256sum <{}", s.path("in").display())), SOON);
    assert_eq!(tunnel(&s, &bin(), &a, &f.id, "in", "sum"), Some(0));
    assert_eq!(fs::read_to_string(s.path("sum")).unwrap(), stdout_of(&want), "sha256sum at the foreign daemon");
    // The foreign client, from the foreign daemon, to c.
    assert_eq!(tunnel(&s, &xr2, &f, &c.id, "in", "out2"), Some(3));
    assert!(same(&s, "in", "out2"), "8 MiB from the foreign client changed");
}

/// The robust layer between the architectures (the foreign CRC-32C, its
/// own instruction or table), over socat udp, and a fault: a malformed
/// link into the foreign daemon closes that link only.
#[test]
#[ignore = "cross: run by make cross-test"]
fn cross_udp_and_a_fault() {
    let (s, xr2, a, f) = mixed("xu", "cat");
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut srv = s.sh(&format!("exec socat udp-l:{port},bind=127.0.0.1,fork exec:'{} connect -'", xr2.display()));
    srv.env("R2_SOCKET", &f.sock).stdin(Stdio::null()).stdout(Stdio::null());
    let _srv = Proc::spawn(srv, "srv", &s.path("srv.err"));
    wait_for("the UDP listener", SOON, || udp_bound(port));
    let _af = connect_with(&s, &bin(), &a, &["-n", &f.id], &format!("socat udp:127.0.0.1:{port} -"), "af");
    a.wait_neighbours(&s, &[&f.id], EMULATED);
    let o = s.r2(&a.sock, &["ls", "-l", "-N"]);
    assert!(stdout_of(&o).contains("robust (datagrams)"), "the layer: {}", stdout_of(&o));
    random_file(&s.path("in"), 4 << 20, 11);
    assert_eq!(tunnel(&s, &bin(), &a, &f.id, "in", "out"), Some(0));
    assert!(same(&s, "in", "out"), "4 MiB over UDP to the foreign daemon changed");

    // Garbage as a link: refused, and the foreign daemon keeps its link.
    let mut g = Command::new(&xr2);
    g.arg("-s").arg(&f.sock).args(["connect", "--layer", "stream", "head -c 100000 /dev/urandom; sleep 5"]);
    let o = run_bounded(g, EMULATED);
    assert_eq!(o.status.code(), Some(1), "a malformed link: {}", stderr_of(&o));
    assert!(f.proc_alive(), "the foreign daemon died of a malformed link");
    f.wait_neighbours(&s, &[&a.id], SOON);
    assert_eq!(tunnel(&s, &bin(), &a, &f.id, "in", "out3"), Some(0));
    assert!(same(&s, "in", "out3"));
}

/// Whether a UDP socket on this machine is bound to `port`.
fn udp_bound(port: u16) -> bool {
    let hex = format!(":{port:04X}");
    fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1).is_some_and(|a| a.ends_with(&hex)))
}

trait Alive {
    fn proc_alive(&self) -> bool;
}

impl Alive for Daemon {
    fn proc_alive(&self) -> bool {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.proc.pid())).unwrap_or_default();
        !stat.is_empty() && !stat.contains(") Z ")
    }
}
