//! `make bench`: each r2 path beside the path a user would build instead,
//! with as many processes in the data path and the same transport settings.
//!
//! Every configuration runs in the same process run, interleaved
//! round-robin over the repetitions so that machine noise hits all alike;
//! the table gives medians, min–max and ratios, and is also written to
//! `target/bench.txt`. Needs socat, perl and dd (and, for sections 6 and 7,
//! root, ip, tc, nft, iperf3 and sshd). Environment: R2_BENCH_REPS (default
//! 5), R2_BENCH_MIB (bulk size, default 1024), R2_BENCH_RTTS (round trips
//! in all, spread over the repetitions, default 10000), R2_BENCH_ONLY (the
//! sections to run, as digits: `R2_BENCH_ONLY=14`; default all).
//!
//! Why the baselines are fair. An r2 path's data goes through its daemons
//! and its transports' processes; the baseline has one socat for each of
//! them, in the same order, joined the same way: over a UNIX socket where
//! r2 has a pipe or socket pair between processes, over TCP on loopback
//! where r2's transport is `socat tcp`, with socat's buffer (`-b`) as the
//! r2 link's socats have it (default 8 KiB, or 64 KiB), and 64 KiB for the
//! socats that stand for daemons (a daemon reads and writes up to a 64 KiB
//! message). Both end in `cat` (r2's tunnel process). Bulk is `dd` of 64 KiB
//! blocks, timed to the end of the sending command; round trips are one
//! byte, written and read back by a perl client (r2's transport of `r2
//! tunnel`, socat's `EXEC:`), timed in the client.
//!
//! 1. One link over each transport. The pipeline link (`r2 connect 'R2_SOCKET=…
//!    r2 connect -'`, no process between the daemons): dd → daemon → daemon →
//!    cat, beside `dd | cat | cat | cat` (bulk: three processes after dd, as
//!    r2's two daemons and cat) and `socat EXEC:client UNIX` → `socat UNIX-LISTEN
//!    EXEC:cat` (round trips: two processes and cat). A `socat tcp` link
//!    (`socat tcp-l: exec:'r2 connect -'`, `r2 connect 'socat tcp: -'`, as
//!    README shows): daemon, socat, socat, daemon, beside socat → socat —TCP→
//!    socat → socat, with the same `-b`. A `socat udp` link beside the `socat
//!    tcp` link (the same processes; UDP has no socat baseline that carries a
//!    stream), with socat's default socket buffers and with `rcvbuf=4194304`
//!    on both (a user's setting for a fast link: with the default 208 KiB the
//!    receiving socket drops frames as the congestion window probes). Each
//!    is measured plaintext (both ends `--plaintext`), which is what the
//!    socat paths are and what the targets are for, and sealed (the
//!    default), whose cost is set beside OpenSSH in section 7.
//! 2. Hops: 2 and 4 pipeline links (3 and 5 daemons) beside 3 and 5 socats
//!    over UNIX sockets; a round trip's cost per extra hop, from 1 to 4 links,
//!    beside a socat relay's. Tunnels of more than one hop are sealed end to
//!    end, also over plaintext links.
//! 4. Many tunnels (1, 10, 100) through one plaintext pipeline link, and 100
//!    through a sealed one, beside as many pipe chains `producer | cat | cat |
//!    cat` (producer, two daemons, cat against producer and three cats), all
//!    set up first and released together. They also give the CPU time all
//!    processes took per GiB (from /proc/stat), which moves less than
//!    throughput on a shared machine and says whether the run was CPU-bound,
//!    and the daemons' share of it (from /proc/PID/stat).
//! 5. Footprint: idle RSS, RSS per idle tunnel, peak RSS during bulk, the
//!    static binary's size.
//!
//! Section 6 runs between two network namespaces that the bench makes
//! (`r2bench-PID-1`, `-2`, joined by a veth pair) and deletes at the end,
//! with what still runs in them, also when it panics; it needs root, ip
//! netns, tc's tbf, nft (for A) and iperf3 and /dev/net/tun (for B), and
//! prints a line saying why it skipped what it cannot run. Its runs are
//! interleaved with the others, repetition by repetition.
//!
//! A, the impaired path: a tbf qdisc on the sender's end of the veth limits
//! it to 200 Mbit/s, and an nftables rule drops 1 % of the packets at random
//! on their way from namespace 1 to 2 (the data; acknowledgements are not
//! dropped). The rule is in the receiver's prerouting hook: in the sender's
//! output hook a drop is a local send error, which TCP takes as no loss and
//! retries, and on which socat's UDP write fails and socat exits. The same
//! bytes (R2_BENCH_MIB / 4, 32 to 128 MiB) cross it twice: by one TCP
//! connection, `dd | socat - tcp:` in 1 to `socat tcp-l: /dev/null` in 2,
//! timed to the receiver's end, with the system's congestion control (the
//! table names it); and by `dd | r2 tunnel B -` from daemon A in 1 to daemon
//! B in 2, whose tunnel process is `cat >/dev/null`, over a link made as a
//! user makes one over UDP (`r2 connect -n B 'socat udp:…'` in 1, `socat
//! udp-l: exec:'r2 connect -'` in 2). TCP is the baseline because it is what
//! one would run instead on such a path, and it has no process in the data
//! path between the two socats; r2 has two daemons and two socats there.
//! The links are made before the loss is turned on. The tbf being on the
//! sender's own device, it holds back TCP and socat's UDP socket alike
//! rather than dropping; the rule drops IP packets, so an r2 datagram that
//! the 1500-byte veth carries in several fragments is lost more often than
//! a TCP segment: that is r2 on such a path. MB are 10^6 bytes.
//!
//! B, the VPN: a tun device in each namespace carrying iperf3 (`-t 5`,
//! server in 2), on the clean veth and then with only the tbf. r2's: daemon
//! V in 2 is `r2d -p 'socat TUN:…'` and `r2 tunnel -p V 'socat TUN:…'` runs
//! in 1, the tun options as in tests/vpn.rs, over a UDP link from A made as
//! in A. The baseline is socat TUN over UDP directly (`socat TUN:… udp-l:`
//! in 2, `socat TUN:… udp:` in 1): the same tun devices, MTU 1500, and the
//! same path, the simplest VPN one would build with the same tool; it has
//! the two socats of r2's two tun ends, and r2 has, besides, two daemons and
//! the two socats of its link. The fair baseline has as many processes in
//! its data path as r2, three a side: socat TUN, a socat relay and socat
//! udp, joined by `EXEC:…,socktype=5` (SOCK_SEQPACKET socket pairs, which
//! keep the packets apart, as r2's tunnel end does). On the clean veth
//! also: r2 over a TCP link (`socat tcp`), and r2 across three hops, a UDP
//! or a TCP link over the veth to a relay in namespace 2, then two pipeline
//! links to the VPN's daemon there. socat TUN over TCP is no baseline: a
//! TCP stream does not keep the packets apart, and socat has no framing of
//! its own (tried: iperf3 gets nothing through). The links are sealed (the
//! default, which a VPN would keep). All VPNs' datagrams are larger than the
//! veth's MTU, so each run starts once namespace 2 holds no fragments of
//! earlier runs' lost datagrams (see `runs`), and the table says how long
//! that took.
//!
//! Section 7 first puts r2 linked by ssh (`r2 connect --plaintext 'ssh HOST
//! r2 connect --plaintext -'`, plaintext as ssh already seals) beside `ssh
//! -W` with a socat on each side (daemon, ssh, sshd, daemon, cat against
//! socat, ssh, sshd, socat, cat; both aes128-gcm); each ssh -W run includes
//! its connection's setup, which the table also takes out. Then it puts
//! sealed r2 links beside OpenSSH, which is what one would run instead for
//! an encrypted path: `dd | ssh -W 127.0.0.1:SINK` through
//! an sshd on loopback into `socat tcp-l: /dev/null` (ssh, sshd and socat
//! in the data path; r2 has its two daemons and `cat`), with aes128-gcm and
//! chacha20-poly1305; and `ssh -J`, here as the same ssh with `ssh -W` as
//! its ProxyCommand through the same sshd (two ssh and two sshd, the data
//! encrypted end to end and again on the first hop; r2 over two links has
//! three daemons and `cat`, each link sealed on its own). r2's links are
//! pipelines as in section 1, sealed (the default), and one pair plaintext
//! (both ends `--plaintext`). Each run's time includes setting up its path:
//! the table gives that time alone (carrying nothing). Round trips go into
//! `cat` on the far side (r2) and into `socat tcp-l: exec:cat` (ssh). Needs
//! root and openssh-server; it says why it skipped otherwise.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_r2"));
    assert!(p.exists(), "build first: cargo build --release");
    p
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A scratch directory with r2 and r2d on PATH.
struct Env {
    dir: PathBuf,
    path: String,
    procs: Vec<Child>,
}

impl Env {
    fn new() -> Env {
        let dir = PathBuf::from(format!("/tmp/r2b-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(bin(), dir.join("bin/r2")).unwrap();
        std::os::unix::fs::symlink(bin(), dir.join("bin/r2d")).unwrap();
        let path = format!("{}:{}", dir.join("bin").display(), std::env::var("PATH").unwrap_or_default());
        Env { dir, path, procs: Vec::new() }
    }

    fn sh(&self, script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script).env("PATH", &self.path).current_dir(&self.dir);
        c
    }

    /// Runs a script to completion; returns its stdout and the time taken.
    fn run(&self, script: &str) -> (String, Duration) {
        let t0 = Instant::now();
        let o = self.sh(script).stderr(Stdio::inherit()).output().unwrap();
        let t = t0.elapsed();
        assert!(o.status.success(), "{script} failed");
        (String::from_utf8_lossy(&o.stdout).into_owned(), t)
    }

    /// A command run in the scratch directory with r2 on PATH, killed if
    /// the bench dies.
    fn command(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(program);
        c.env("PATH", &self.path).current_dir(&self.dir).stdin(Stdio::null()).stdout(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            c.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        c
    }

    /// Starts a script in a process group of its own, so that what it
    /// starts (a transport of `r2 tunnel`) ends with it; and killed if the
    /// bench dies (a Ctrl-C reaches only the bench's own group).
    fn spawn(&mut self, script: &str) -> u32 {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.command("/bin/sh");
        cmd.arg("-c").arg(script).stderr(Stdio::null()).process_group(0);
        let c = cmd.spawn().unwrap();
        let pid = c.id();
        self.procs.push(c);
        pid
    }

    fn wait_for(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Starts a daemon with the command `r2d` (`r2d`, or `BINARY daemon`);
    /// returns (pid, socket, id) once `r2 id` gets an answer.
    fn daemon_of(&mut self, r2d: &str, name: &str, cmd: &str) -> (u32, PathBuf, String) {
        let sock = self.dir.join(format!("{name}.sock"));
        let pid = self.spawn(&format!("exec {r2d} -s {name}.sock -k {name}.id {cmd}"));
        let mut id = String::new();
        self.wait_for("a daemon", || {
            let o = Command::new(bin()).arg("-s").arg(&sock).arg("id").output().unwrap();
            id = String::from_utf8_lossy(&o.stdout).trim().to_string();
            o.status.success()
        });
        (pid, sock, id)
    }

    fn daemon(&mut self, name: &str, cmd: &str) -> (u32, PathBuf, String) {
        self.daemon_of("r2d", name, cmd)
    }

    /// Links daemon `a` to `b` by a pipeline; waits until it is up.
    fn link(&mut self, a: &Path, b: &Path, b_id: &str) {
        self.spawn(&format!("exec r2 -s {} connect 'R2_SOCKET={} r2 connect -'", a.display(), b.display()));
        self.wait_for("a link", || {
            let o = Command::new(bin()).arg("-s").arg(a).arg("ls").output().unwrap();
            String::from_utf8_lossy(&o.stdout).contains(b_id)
        });
    }

    fn socket_exists(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let group = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
        for c in &mut self.procs {
            let _ = c.wait();
        }
        let _ = Command::new("pkill").arg("-f").arg(self.dir.display().to_string()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

/// The CPU time of process `pid` and its threads so far (utime + stime
/// of proc(5)'s stat), in clock ticks.
fn proc_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let at = |i: usize| rest.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    at(11) + at(12)
}

/// Samples of one configuration.
#[derive(Default)]
struct Series(Vec<f64>);

impl Series {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }
    fn median(&self) -> f64 {
        let v = self.sorted();
        v[v.len() / 2]
    }
    fn range(&self) -> (f64, f64) {
        let v = self.sorted();
        (v[0], v[v.len() - 1])
    }
}

/// Writes the perl ping-pong client to `file`: it sends `preamble`, then
/// `n` round trips of one byte after `warm` unmeasured ones, and prints the
/// sorted round trips in microseconds on stderr.
fn pingpong(env: &Env, file: &str, n: u64, warm: u64, preamble: &str) -> String {
    let script = format!(
        r#"use Time::HiRes qw(time);
$| = 1;
syswrite(STDOUT, "{preamble}");
my @r;
for my $i (1 .. {total}) {{
    my $t = time;
    syswrite(STDOUT, "x") == 1 or die;
    sysread(STDIN, my $b, 1) == 1 or die;
    push @r, (time - $t) * 1e6 if $i > {warm};
}}
print STDERR join(" ", sort {{ $a <=> $b }} @r), "\n";
"#,
        total = n + warm
    );
    std::fs::write(env.dir.join(file), script).unwrap();
    format!("perl {file}")
}

/// How many children of process `pid` run `name`.
fn children_named(pid: u32, name: &str) -> usize {
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    kids.split_whitespace()
        .filter(|k| std::fs::read_to_string(format!("/proc/{k}/comm")).is_ok_and(|c| c.trim() == name))
        .count()
}

/// Writes the producer of the many-tunnels runs to `file`: it says `sink`,
/// marks itself ready (file `ready.ID`), waits for its byte (a newline) on
/// the FIFO `go`, read alone so that each takes one, then writes `chunks`
/// blocks of 64 KiB. Being started before the release, no process start-up
/// is timed (100 `exec`s took ~0.1 s of the 2 cores, which is not r2's).
fn producer(env: &Env, file: &str) -> String {
    let script = r#"my ($id, $chunks) = @ARGV;
syswrite(STDOUT, "sink\n");
open(my $go, "<", "go") or die "go: $!";
open(my $ready, ">", "ready.$id") or die; close($ready);
sysread($go, my $line, 1) == 1 or die "go: end";
my $b = "\0" x 65536;
for (1 .. $chunks) {
    my $off = 0;
    while ($off < 65536) {
        my $n = syswrite(STDOUT, $b, 65536 - $off, $off);
        defined($n) or die "write: $!";
        $off += $n;
    }
}
"#;
    std::fs::write(env.dir.join(file), script).unwrap();
    format!("perl {file}")
}

/// The machine's CPU time so far, from /proc/stat, in clock ticks:
/// (busy, all). Busy is user, nice, system, irq and softirq time; idle,
/// iowait and the time stolen by the hypervisor are not.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    (busy, busy + at(3) + at(4) + at(7))
}

/// What the many-streams runs go through.
#[derive(Clone, Copy, Default, PartialEq)]
enum Chain {
    /// Tunnels through one plaintext pipeline link.
    #[default]
    Plain,
    /// Tunnels through one sealed pipeline link.
    Sealed,
    /// Pipe chains of the same processes.
    Pipes,
}

/// One configuration of the many-streams runs: `n` tunnels through one
/// link, or `n` pipe chains.
#[derive(Default)]
struct Many {
    n: usize,
    chain: Chain,
    agg: Series,
    fair: Series,
    /// CPU seconds of all processes per GiB.
    cpu: Series,
    /// The share of the machine's CPU time that was busy.
    busy: Series,
    /// CPU seconds of the daemons per GiB.
    daemons: Series,
}

/// Starts `commands`, each running the producer with its index; once every
/// producer is ready and `set()` holds, releases them together by one line
/// each on the FIFO `go`. Returns each one's time from the release to its
/// end (a thread per command waits for it, so that no process is started
/// to tell the time), and meanwhile the machine's busy CPU seconds and busy
/// share, and the CPU seconds of the processes `pids` (the daemons).
fn release_together(
    env: &Env,
    commands: Vec<Command>,
    mut set: impl FnMut() -> bool,
    pids: &[u32],
) -> (Vec<f64>, (f64, f64, f64)) {
    let n = commands.len();
    let _ = std::fs::remove_file(env.dir.join("go"));
    assert!(Command::new("mkfifo").arg(env.dir.join("go")).status().unwrap().success(), "mkfifo");
    let mut go = std::fs::OpenOptions::new().read(true).write(true).open(env.dir.join("go")).unwrap();
    for i in 0..n {
        let _ = std::fs::remove_file(env.dir.join(format!("ready.{i}")));
    }
    let ends: Vec<std::thread::JoinHandle<Instant>> = commands
        .into_iter()
        .map(|mut c| {
            let mut child = c.spawn().unwrap();
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    assert!(child.wait().unwrap().success(), "a many-streams run failed");
                    Instant::now()
                })
                .unwrap()
        })
        .collect();
    env.wait_for("the producers", || (0..n).all(|i| env.dir.join(format!("ready.{i}")).exists()));
    env.wait_for("the far side's cats", &mut set);
    let release = Instant::now();
    let cpu0 = cpu_ticks();
    let own0: u64 = pids.iter().map(|&p| proc_ticks(p)).sum();
    go.write_all(&vec![b'\n'; n]).unwrap();
    let times: Vec<f64> = ends.into_iter().map(|e| (e.join().unwrap() - release).as_secs_f64()).collect();
    let cpu1 = cpu_ticks();
    let own1: u64 = pids.iter().map(|&p| proc_ticks(p)).sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let busy = (cpu1.0 - cpu0.0) as f64;
    (times, (busy / hz, busy / (cpu1.1 - cpu0.1).max(1) as f64, (own1 - own0) as f64 / hz))
}

fn percentile(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Section 6: two network namespaces of the bench's own, joined by a veth
/// pair. Dropped (at the end, or when the bench panics), it kills what still
/// runs inside them and deletes them, and with them the veth pair, the tun
/// devices, the qdisc and the nftables table.
struct Netns {
    ns: [String; 2],
    veth: [String; 2],
}

/// The veth pair's addresses; the r2 VPN's tun devices; socat's tun devices.
const NET_IP: [&str; 2] = ["10.88.0.1", "10.88.0.2"];
const VPN_IP: [&str; 2] = ["10.88.1.1", "10.88.1.2"];
const SOVPN_IP: [&str; 2] = ["10.88.2.1", "10.88.2.2"];
/// The tun devices of socat's VPN with three processes a side.
const SO3VPN_IP: [&str; 2] = ["10.88.3.1", "10.88.3.2"];
/// The tun devices of the VPNs run on the clean veth only: r2 over a TCP
/// link, r2 across three hops whose first is a UDP link, and the same whose
/// first is a TCP link.
const EXTRA_VPN: [(&str, [&str; 2], &str); 3] = [
    ("r2 -p over tcp", ["10.88.5.1", "10.88.5.2"], "r2vpnt"),
    ("r2 -p, 3 hops, udp first", ["10.88.6.1", "10.88.6.2"], "r2vpn3u"),
    ("r2 -p, 3 hops, tcp first", ["10.88.7.1", "10.88.7.2"], "r2vpn3t"),
];
/// The shaping of the impaired path, on the sender's end of the veth pair.
const TBF: &str = "tbf rate 200mbit burst 32kbit latency 50ms";

impl Netns {
    /// Makes the pair, or says why it cannot.
    fn new() -> Result<Netns, String> {
        let uid = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
        if uid.as_deref() != Some("0") {
            return Err("not root".into());
        }
        let pid = std::process::id();
        let n = Netns {
            ns: [format!("r2bench-{pid}-1"), format!("r2bench-{pid}-2")],
            veth: [format!("r2b{pid}a"), format!("r2b{pid}b")],
        };
        // From here on a failure deletes, by the drop, what was made.
        n.ip(&["netns", "add", &n.ns[0]])?;
        n.ip(&["netns", "add", &n.ns[1]])?;
        let (v0, v1) = (n.veth[0].as_str(), n.veth[1].as_str());
        n.ip(&["link", "add", v0, "netns", &n.ns[0], "type", "veth", "peer", "name", v1, "netns", &n.ns[1]])?;
        for ((ns, veth), ip) in n.ns.iter().zip(&n.veth).zip(NET_IP) {
            n.ip(&["-n", ns, "link", "set", "lo", "up"])?;
            n.ip(&["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", veth])?;
            n.ip(&["-n", ns, "link", "set", veth, "up"])?;
        }
        Ok(n)
    }

    fn ip(&self, args: &[&str]) -> Result<(), String> {
        let o = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()))
        }
    }

    /// The prefix that runs a command in namespace `i`.
    fn exec(&self, i: usize) -> String {
        format!("ip netns exec {}", self.ns[i])
    }

    /// Runs a script in namespace `i`; its stdout, or why it failed.
    fn sh(&self, i: usize, script: &str) -> Result<String, String> {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ns[i], "sh", "-c", script])
            .output()
            .map_err(|e| format!("ip netns exec: {e}"))?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(format!("{script}: {}", String::from_utf8_lossy(&o.stderr).trim()))
        }
    }

    /// A counter of the veth end in namespace `i` (`rx_packets`, …).
    /// The memory namespace `i` holds in datagrams it is reassembling.
    fn reassembling(&self, i: usize) -> u64 {
        let s = self.sh(i, "cat /proc/net/sockstat").unwrap_or_default();
        let frag = s.lines().find(|l| l.starts_with("FRAG:")).unwrap_or("");
        frag.split_whitespace().skip_while(|w| *w != "memory").nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    fn stat(&self, i: usize, what: &str) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/{what}", self.veth[i]);
        self.sh(i, &format!("cat {path}")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.ns {
            // What the bench started there and still runs.
            let pids = Command::new("ip").args(["netns", "pids", ns]).stderr(Stdio::null()).output();
            for pid in
                pids.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default().split_whitespace()
            {
                if let Ok(p) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

/// Section 7: sealed r2 links beside OpenSSH's `ssh -W` (one hop) and
/// `ssh -J` (two), with both of its AEADs, on loopback.
struct SshBench {
    mib: u64,
    /// e0–e1–e2 over sealed pipeline links; p0–p1 over a plaintext one.
    e: Vec<(u32, PathBuf, String)>,
    p: Vec<(u32, PathBuf, String)>,
    /// r2 over ssh, plaintext (o0–o1), beside ssh -W with a socat on each
    /// side: bulk and round trips.
    over_ssh: [Row; 2],
    /// ssh's options (key, port, no host key checks), the sink's and the
    /// echo server's ports.
    opts: String,
    sink: u16,
    echo: u16,
    bulk: Vec<(String, Series)>,
    /// The time to set up a path and carry nothing: r2 tunnel over one
    /// link, over two, ssh -W, ssh -J (ms); it is part of each bulk run's
    /// time.
    setup: [Series; 4],
    rtt: Vec<(String, String)>,
}

const SSH_CIPHERS: [(&str, &str); 2] =
    [("aes128-gcm", "aes128-gcm@openssh.com"), ("chacha20", "chacha20-poly1305@openssh.com")];

impl SshBench {
    fn new(env: &mut Env, mib: u64, dispatch: &str) -> Result<SshBench, String> {
        if !Path::new("/usr/sbin/sshd").exists() {
            return Err("no /usr/sbin/sshd (openssh-server)".into());
        }
        let root = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
        if !root {
            return Err("not root (sshd)".into());
        }
        let base = 47600 + (std::process::id() % 300) as u16 * 5;
        let (port, sink, echo) = (base, base + 1, base + 2);
        let d = env.dir.display().to_string();
        let keys = "ssh-keygen -q -t ed25519 -N '' -f hostkey && ssh-keygen -q -t ed25519 -N '' -f userkey";
        if !env.sh(keys).status().map(|s| s.success()).unwrap_or(false) {
            return Err("ssh-keygen failed".into());
        }
        let _ = std::fs::create_dir_all("/run/sshd");
        let cfg = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nAuthorizedKeysFile {d}/userkey.pub\n\
             PermitRootLogin yes\nStrictModes no\nUsePAM no\nPidFile none\nLogLevel ERROR\n\
             Ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com\n"
        );
        std::fs::write(env.dir.join("sshd_config"), cfg).map_err(|e| e.to_string())?;
        env.spawn(&format!("exec /usr/sbin/sshd -D -e -f {d}/sshd_config"));
        env.spawn(&format!("exec socat -b 65536 -u tcp-l:{sink},bind=127.0.0.1,reuseaddr,fork /dev/null"));
        env.spawn(&format!("exec socat -b 65536 tcp-l:{echo},bind=127.0.0.1,reuseaddr,fork exec:cat"));
        let opts = format!(
            "-F none -i {d}/userkey -p {port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o BatchMode=yes -o LogLevel=ERROR"
        );
        let listening = |p: u16| {
            std::fs::read_to_string("/proc/net/tcp")
                .unwrap_or_default()
                .contains(&format!("0100007F:{p:04X} 00000000:0000 0A"))
        };
        if !until(Duration::from_secs(10), || listening(port) && listening(sink) && listening(echo)) {
            return Err("sshd or socat did not listen".into());
        }
        let e: Vec<_> = (0..3).map(|i| env.daemon(&format!("e{i}"), dispatch)).collect();
        for i in 0..2 {
            env.link(&e[i].1, &e[i + 1].1, &e[i + 1].2.clone());
        }
        let p: Vec<_> = (0..2).map(|i| env.daemon(&format!("p{i}"), dispatch)).collect();
        env.link_via(&p[0], &p[1], Via::Pipeline, true);
        // r2 linked by ssh, plaintext (ssh already seals), as a user links
        // to a host; and ssh -W with as many processes: a socat for each
        // daemon, the far one's in front of `cat` as r2's tunnel process.
        let o: Vec<_> = (0..2).map(|i| env.daemon(&format!("o{i}"), dispatch)).collect();
        let aes = SSH_CIPHERS[0].1;
        let remote = format!("R2_SOCKET={} {d}/bin/r2 connect --plaintext -", o[1].1.display());
        env.connect(&o[0], &o[1], &format!("--plaintext 'ssh {opts} -c {aes} root@127.0.0.1 {remote}'"));
        let (sink2, echo2) = (base + 3, base + 4);
        env.spawn(&format!("socat -u -b 65536 tcp-l:{sink2},bind=127.0.0.1,reuseaddr,fork - | cat >/dev/null"));
        env.spawn(&format!("exec socat -b 65536 tcp-l:{echo2},bind=127.0.0.1,reuseaddr,fork exec:cat"));
        for (name, port) in [("sshw-sink.sh", sink2), ("sshw-echo.sh", echo2)] {
            let script = format!("#!/bin/sh\nexec ssh {opts} -c {aes} -W 127.0.0.1:{port} root@127.0.0.1\n");
            let path = env.dir.join(name);
            std::fs::write(&path, script).map_err(|e| e.to_string())?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| e.to_string())?;
        }
        if !until(Duration::from_secs(10), || listening(sink2) && listening(echo2)) {
            return Err("socat did not listen".into());
        }
        let over_ssh = [
            Row::new("ssh -W, a socat each side", Run::Ssh, mib, 0),
            Row::new("r2 plaintext link over ssh", Run::R2(o[0].1.display().to_string(), o[1].2.clone()), mib, 0),
        ];
        let mut names = vec!["r2 sealed, 1 link".to_string(), "r2 plaintext, 1 link".to_string()];
        names.extend(SSH_CIPHERS.iter().map(|c| format!("ssh -W {}", c.0)));
        names.push("r2 sealed, 2 links".into());
        names.extend(SSH_CIPHERS.iter().map(|c| format!("ssh -J {}", c.0)));
        let bulk = names.into_iter().map(|n| (n, Series::default())).collect();
        let setup = [Series::default(), Series::default(), Series::default(), Series::default()];
        Ok(SshBench { mib, e, p, over_ssh, opts, sink, echo, bulk, setup, rtt: Vec::new() })
    }

    fn ssh(&self, cipher: &str, jump: bool, to: u16) -> String {
        let proxy = match jump {
            true => format!(" -o ProxyCommand='ssh {} -c {cipher} -W %h:%p root@127.0.0.1'", self.opts),
            false => String::new(),
        };
        format!("ssh {} -c {cipher}{proxy} -W 127.0.0.1:{to} root@127.0.0.1", self.opts)
    }

    fn rep(&mut self, env: &mut Env, rtts: u64) {
        for row in &mut self.over_ssh {
            row.rep(env, rtts);
        }
        let dd = format!("dd if=/dev/zero bs=64k count={} 2>/dev/null", self.mib * 16);
        let (e0, p0) = (self.e[0].1.display().to_string(), self.p[0].1.display().to_string());
        let two = format!("{}/{}", self.e[1].2, self.e[2].2);
        let mut runs = vec![
            format!("{{ echo sink; {dd}; }} | r2 -s {e0} tunnel {} -", self.e[1].2),
            format!("{{ echo sink; {dd}; }} | r2 -s {p0} tunnel {} -", self.p[1].2),
        ];
        runs.extend(SSH_CIPHERS.iter().map(|c| format!("{dd} | {}", self.ssh(c.1, false, self.sink))));
        runs.push(format!("{{ echo sink; {dd}; }} | r2 -s {e0} tunnel {two} -"));
        runs.extend(SSH_CIPHERS.iter().map(|c| format!("{dd} | {}", self.ssh(c.1, true, self.sink))));
        for (i, script) in runs.iter().enumerate() {
            let (_, t) = env.run(script);
            self.bulk[i].1 .0.push(self.mib as f64 / t.as_secs_f64());
        }
        let empty = [
            format!("echo sink | r2 -s {e0} tunnel {} -", self.e[1].2),
            format!("echo sink | r2 -s {e0} tunnel {two} -"),
            format!("{} < /dev/null", self.ssh(SSH_CIPHERS[0].1, false, self.sink)),
            format!("{} < /dev/null", self.ssh(SSH_CIPHERS[0].1, true, self.sink)),
        ];
        for (i, script) in empty.iter().enumerate() {
            let (_, t) = env.run(script);
            self.setup[i].0.push(t.as_secs_f64() * 1000.0);
        }
    }

    /// One-byte round trips, once: r2 into `cat` over sealed links, ssh -W
    /// and -J into `socat … exec:cat`.
    fn round_trips(&mut self, env: &Env, n: u64) {
        let e0 = self.e[0].1.display().to_string();
        let pp_r2 = pingpong(env, "pp-ssh-r2.pl", n, 200, "echo\\n");
        let pp = pingpong(env, "pp-ssh.pl", n, 200, "");
        for (name, path) in [
            ("r2 sealed, 1 link", self.e[1].2.clone()),
            ("r2 sealed, 2 links", format!("{}/{}", self.e[1].2, self.e[2].2)),
        ] {
            let (o, _) = env.run(&format!("r2 -s {e0} tunnel {path} '{pp_r2}' 2>&1"));
            self.rtt.push((name.into(), o));
        }
        for jump in [false, true] {
            for c in SSH_CIPHERS {
                let ssh = self.ssh(c.1, jump, self.echo);
                let (o, _) = env.run(&format!(
                    "rm -f rt.fifo; mkfifo rt.fifo; {pp} < rt.fifo 2> rt.out | {ssh} > rt.fifo; cat rt.out"
                ));
                self.rtt.push((format!("ssh -{} {}", if jump { "J" } else { "W" }, c.0), o));
            }
        }
    }

    fn print(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n7. r2 linked by ssh ({} MiB): a plaintext r2 link over ssh (aes128-gcm) beside ssh -W\n   \
             with a socat on each side (the same processes: two daemons or socats, ssh, sshd, cat)",
            self.mib
        );
        print_rows(out, &self.over_ssh, &[(1, "≥ 1.0 bulk; ≤ 1.0, 1.5 rtt")]);
        // Each ssh -W run sets up its connection (r2's link is up already).
        let t = self.mib as f64 / self.over_ssh[0].bulk.median() - self.setup[2].median() / 1000.0;
        let steady = self.mib as f64 / t.max(1e-3);
        let _ = writeln!(
            out,
            "   ssh -W without its {:.0} ms of setup: {steady:.1} MiB/s; r2 over ssh to it: {:.2}",
            self.setup[2].median(),
            self.over_ssh[1].bulk.median() / steady
        );
        let _ = writeln!(
            out,
            "\n   sealed links beside OpenSSH ({} MiB), MiB/s   median (min–max)   ratio to ssh (aes128-gcm, chacha20);\n   \
             then without each path's setup time: MiB/s, ratio to ssh",
            self.mib
        );
        // Each run's path, for its setup time: r2 1 link, 2 links, ssh -W, -J.
        let setup_of = |i: usize| match i {
            0 | 1 => self.setup[0].median(),
            2 | 3 => self.setup[2].median(),
            4 => self.setup[1].median(),
            _ => self.setup[3].median(),
        } / 1000.0;
        let steady = |i: usize| {
            let t = self.mib as f64 / self.bulk[i].1.median();
            self.mib as f64 / (t - setup_of(i)).max(1e-3)
        };
        for (i, (name, s)) in self.bulk.iter().enumerate() {
            // r2 over one link and ssh -W (0..4) beside ssh -W; r2 over
            // two links and ssh -J (4..) beside ssh -J.
            let base = if i < 4 { [2, 3] } else { [5, 6] };
            let _ = writeln!(
                out,
                "   {name:<24} {:>9.1} ({:.1}–{:.1})   {:.2}, {:.2}   {:>7.1}   {:.2}, {:.2}",
                s.median(),
                s.range().0,
                s.range().1,
                s.median() / self.bulk[base[0]].1.median(),
                s.median() / self.bulk[base[1]].1.median(),
                steady(i),
                steady(i) / steady(base[0]),
                steady(i) / steady(base[1])
            );
        }
        let _ = writeln!(
            out,
            "   setup, carrying nothing (ms, in each run above): r2 tunnel {:.1} (2 links {:.1}), ssh -W {:.1}, ssh -J {:.1}",
            self.setup[0].median(),
            self.setup[1].median(),
            self.setup[2].median(),
            self.setup[3].median()
        );
        let _ = writeln!(out, "   one-byte round trips (µs)   median     p99");
        for (name, o) in &self.rtt {
            let v: Vec<f64> = o.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if v.is_empty() {
                let _ = writeln!(out, "   {name:<24} failed: {}", o.trim());
                continue;
            }
            let _ = writeln!(out, "   {name:<24} {:>9.1} {:>7.1}", percentile(&v, 0.5), percentile(&v, 0.99));
        }
    }
}

/// Waits up to `limit` for `cond`; whether it came.
fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while !cond() {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Runs a script in a process group of its own, killed if it takes more
/// than `limit`; returns its time and stdout, or why it failed with its
/// stderr.
fn run_within(env: &Env, script: &str, limit: Duration) -> Result<(Duration, String), String> {
    use std::os::unix::process::CommandExt;
    let (out, err) = (env.dir.join("run.out"), env.dir.join("run.err"));
    let mut c = env.command("/bin/sh");
    c.arg("-c").arg(script).process_group(0);
    c.stdout(std::fs::File::create(&out).unwrap()).stderr(std::fs::File::create(&err).unwrap());
    let t0 = Instant::now();
    let mut child = c.spawn().map_err(|e| format!("{script}: {e}"))?;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t0.elapsed() > limit {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let t = t0.elapsed();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok((t, std::fs::read_to_string(&out).unwrap_or_default())),
        Some(s) => Err(format!("`{script}` failed ({s}): {}", stderr.trim())),
        None => Err(format!("`{script}` still running after {} s, killed: {}", limit.as_secs(), stderr.trim())),
    }
}

/// The number after `field` in the first object after `key` of iperf3's
/// JSON: enough for `"sum_received"` … `"bits_per_second"`.
fn json_after(s: &str, key: &str, field: &str) -> Option<f64> {
    let rest = &s[s.find(key)?..];
    let rest = &rest[rest.find(field)? + field.len()..];
    let rest = rest.trim_start_matches(|c: char| c == ':' || c.is_whitespace());
    rest.split(|c: char| c == ',' || c == '}' || c.is_whitespace()).next()?.parse().ok()
}

/// Section 6: the impaired path (A) and the VPN (B), between the namespaces.
struct NetBench {
    net: Netns,
    mib: u64,
    /// Daemon A's socket (namespace 1), B's id (namespace 2, bulk), V's id
    /// (namespace 2, packet mode with a tun).
    a: String,
    b: String,
    v: String,
    /// The TCP congestion control of the namespaces.
    cc: String,
    /// Why A, or B, cannot run (no nft, no iperf3, no /dev/net/tun).
    a_skip: Option<String>,
    b_skip: Option<String>,
    tcp: Series,
    r2: Series,
    /// iperf3 Mbit/s: [clean veth, 200 Mbit/s tbf] × [socat, socat with
    /// three processes a side, r2].
    vpn: [[Series; 3]; 2],
    /// iperf3 Mbit/s of [`EXTRA_VPN`] on the clean veth.
    extra: [Series; 3],
    /// Packets dropped by the loss rule, and arrived at its veth end,
    /// while it was on; what had arrived when it was turned on.
    dropped: u64,
    arrived: u64,
    arrived_before: u64,
    shaped: bool,
    /// The longest wait for namespace 2's reassembly memory to empty
    /// before a VPN run, and how much it held then.
    drain: (Duration, u64),
    failed: Option<String>,
}

impl NetBench {
    /// Makes the namespaces, the daemons and their UDP links, and both VPNs;
    /// the namespaces are deleted on any failure after they were made.
    fn new(env: &mut Env, mib: u64) -> Result<NetBench, String> {
        let net = Netns::new().map_err(|e| format!("skipped: {e}"))?;
        net.sh(0, &format!("tc qdisc add dev {} root {TBF} && tc qdisc del dev {} root", net.veth[0], net.veth[0]))
            .map_err(|e| format!("skipped: no tbf qdisc: {e}"))?;
        let have = |cmd: &str| {
            Command::new("sh").arg("-c").arg(format!("command -v {cmd} >/dev/null")).status().is_ok_and(|s| s.success())
        };
        let a_skip = if !have("nft") {
            Some("no nft (the nftables package)".to_string())
        } else {
            net.sh(1, "nft add table inet r2probe && nft delete table inet r2probe")
                .err()
                .map(|e| format!("nft unusable: {e}"))
        };
        let b_skip = if !have("iperf3") {
            Some("no iperf3".to_string())
        } else if !Path::new("/dev/net/tun").exists() {
            Some("no /dev/net/tun".to_string())
        } else {
            None
        };
        let cc = net.sh(0, "cat /proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default().trim().to_string();
        let mut nb = NetBench {
            net,
            mib,
            a: String::new(),
            b: String::new(),
            v: String::new(),
            cc,
            a_skip,
            b_skip,
            tcp: Series::default(),
            r2: Series::default(),
            vpn: Default::default(),
            extra: Default::default(),
            dropped: 0,
            arrived: 0,
            arrived_before: 0,
            shaped: false,
            drain: (Duration::ZERO, 0),
            failed: None,
        };
        if let Err(e) = nb.setup(env) {
            dump_logs(env);
            return Err(format!("failed to set up (the logs are on stderr): {e}"));
        }
        Ok(nb)
    }

    fn setup(&mut self, env: &mut Env) -> Result<(), String> {
        let nb = self;
        let tun =
            |ip: &str, name: &str| format!("socat -b 65536 TUN:{ip}/24,tun-type=tun,iff-no-pi,iff-up,tun-name={name}");
        let (a_sock, a_id) = nb.daemon(env, 0, "nsa", "'cat >/dev/null'")?;
        nb.a = a_sock.display().to_string();
        if nb.a_skip.is_none() {
            let (b_sock, b_id) = nb.daemon(env, 1, "nsb", "'cat >/dev/null'")?;
            nb.link(env, (&a_sock, &a_id), (&b_sock, &b_id), 47001, false)?;
            nb.b = b_id;
        }
        if nb.b_skip.is_none() {
            let (v_sock, v_id) = nb.daemon(env, 1, "nsv", &format!("-p '{} -'", tun(VPN_IP[1], "r2vpn")))?;
            nb.link(env, (&a_sock, &a_id), (&v_sock, &v_id), 47002, false)?;
            nb.v = v_id;
            let (n1, n2) = (nb.net.exec(0), nb.net.exec(1));
            env.spawn(&format!(
                "exec {n1} r2 -s {} tunnel -p {} '{} -' 2>nsvpn.log",
                nb.a,
                nb.v,
                tun(VPN_IP[0], "r2vpn")
            ));
            // socat's own VPN: the listener first, so that the first
            // datagram, which it answers, finds it bound.
            env.spawn(&format!("exec {n2} {} udp-l:47003 2>sovpn2.log", tun(SOVPN_IP[1], "sovpn")));
            if !until(Duration::from_secs(20), || nb.net.sh(1, "ss -Hlun | grep -q ':47003 '").is_ok()) {
                return Err(format!("socat's VPN listener never bound: {}", tail(env, "sovpn2.log", 5)));
            }
            env.spawn(&format!("exec {n1} {} udp:{}:47003 2>sovpn1.log", tun(SOVPN_IP[0], "sovpn"), NET_IP[1]));
            // The same with a relay between socat TUN and socat udp on each
            // side, the listener first again. Scripts, because socat 1.7
            // cannot quote an EXEC inside an EXEC.
            for (i, udp) in [(1, "udp-l:47004".to_string()), (0, format!("udp:{}:47004", NET_IP[1]))] {
                let script = |name: &str, body: &str| -> Result<String, String> {
                    let path = env.dir.join(name);
                    let made = std::fs::write(&path, format!("#!/bin/sh\nexec {body}\n")).and_then(|()| {
                        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    });
                    made.map(|()| path.display().to_string()).map_err(|e| format!("{}: {e}", path.display()))
                };
                let end = script(&format!("so3udp{i}.sh"), &format!("socat -b 65536 - {udp}"))?;
                let relay = script(&format!("so3relay{i}.sh"), &format!("socat -b 65536 - EXEC:{end},socktype=5"))?;
                let tun = tun(SO3VPN_IP[i], "so3vpn");
                env.spawn(&format!("exec {} {tun} EXEC:{relay},socktype=5 2>so3vpn{i}.log", nb.net.exec(i)));
                if i == 1 && !until(Duration::from_secs(20), || nb.net.sh(1, "ss -Hlun | grep -q ':47004 '").is_ok()) {
                    return Err(format!("the 3-socat VPN's listener never bound: {}", tail(env, "so3vpn1.log", 5)));
                }
            }
            // r2 over a TCP link; r2 across three hops (a link over the
            // veth, then two pipeline links in namespace 2).
            let [r2t, r23u, r23t] = EXTRA_VPN.map(|v| v.1);
            let (t_sock, t_id) = nb.daemon(env, 1, "nsvt", &format!("-p '{} -'", tun(r2t[1], "r2vpnt")))?;
            nb.link(env, (&a_sock, &a_id), (&t_sock, &t_id), 47006, true)?;
            env.spawn(&format!("exec {n1} r2 -s {} tunnel -p {t_id} '{} -' 2>nsvpnt.log", nb.a, tun(r2t[0], "r2vpnt")));
            for (tag, port, tcp, ip, dev) in [("u", 47007, false, r23u, "r2vpn3u"), ("t", 47008, true, r23t, "r2vpn3t")]
            {
                let (r1, r1id) = nb.daemon(env, 1, &format!("nsr1{tag}"), "")?;
                let (r2s, r2id) = nb.daemon(env, 1, &format!("nsr2{tag}"), "")?;
                let (v, vid) = nb.daemon(env, 1, &format!("nsv3{tag}"), &format!("-p '{} -'", tun(ip[1], dev)))?;
                nb.link(env, (&a_sock, &a_id), (&r1, &r1id), port, tcp)?;
                env.link(&r1, &r2s, &r2id);
                env.link(&r2s, &v, &vid);
                env.spawn(&format!(
                    "exec {n1} r2 -s {} tunnel -p {r1id}/{r2id}/{vid} '{} -' 2>nsvpn3{tag}.log",
                    nb.a,
                    tun(ip[0], dev)
                ));
            }
            for dev in ["r2vpn", "sovpn", "so3vpn", "r2vpnt", "r2vpn3u", "r2vpn3t"] {
                let up = |i: usize| nb.net.sh(i, &format!("ip link show {dev} >/dev/null")).is_ok();
                if !until(Duration::from_secs(20), || up(0) && up(1)) {
                    let logs = ["nsvpn.log", "nsv.log", "sovpn1.log", "sovpn2.log", "so3vpn0.log", "so3vpn1.log"]
                        .map(|f| tail(env, f, 5))
                        .join("; ");
                    return Err(format!("{dev} never came up in both namespaces: {logs}"));
                }
            }
        }
        Ok(())
    }

    /// Starts a daemon in namespace `i` with stderr to `name.log`; returns
    /// its socket and id once it answers.
    fn daemon(&self, env: &mut Env, i: usize, name: &str, cmd: &str) -> Result<(PathBuf, String), String> {
        let sock = env.dir.join(format!("{name}.sock"));
        env.spawn(&format!("exec {} r2d -s {name}.sock -k {name}.id {cmd} 2>{name}.log", self.net.exec(i)));
        let mut id = String::new();
        let up = until(Duration::from_secs(20), || {
            let o = Command::new(bin()).arg("-s").arg(&sock).arg("id").stderr(Stdio::null()).output().unwrap();
            id = String::from_utf8_lossy(&o.stdout).trim().to_string();
            o.status.success()
        });
        if up {
            Ok((sock, id))
        } else {
            Err(format!("daemon {name} in {} never answered: {}", self.net.ns[i], tail(env, &format!("{name}.log"), 5)))
        }
    }

    /// Links daemon `x` (namespace 1) to `y` (namespace 2) over UDP, or
    /// TCP, as a user would: a listener in 2, `r2 connect` in 1; waits
    /// until each lists the other.
    fn link(&self, env: &mut Env, x: (&Path, &str), y: (&Path, &str), port: u16, tcp: bool) -> Result<(), String> {
        let (n1, n2) = (self.net.exec(0), self.net.exec(1));
        let (proto, listen, ss) = match tcp {
            true => ("tcp", format!("tcp-l:{port},reuseaddr"), "ss -Hltn"),
            false => ("udp", format!("udp-l:{port}"), "ss -Hlun"),
        };
        env.spawn(&format!(
            "exec {n2} env R2_SOCKET={} socat {listen} exec:'r2 connect -' 2>link{port}b.log",
            y.0.display()
        ));
        if !until(Duration::from_secs(20), || self.net.sh(1, &format!("{ss} | grep -q ':{port} '")).is_ok()) {
            return Err(format!(
                "the listener on udp port {port} never bound: {}",
                tail(env, &format!("link{port}b.log"), 5)
            ));
        }
        env.spawn(&format!(
            "exec {n1} r2 -s {} connect -n {} 'socat {proto}:{}:{port} -' 2>link{port}a.log",
            x.0.display(),
            y.1,
            NET_IP[1]
        ));
        let lists = |s: &Path, id: &str| {
            let o = Command::new(bin()).arg("-s").arg(s).arg("ls").output().unwrap();
            String::from_utf8_lossy(&o.stdout).contains(id)
        };
        if until(Duration::from_secs(20), || lists(x.0, y.1) && lists(y.0, x.1)) {
            Ok(())
        } else {
            let logs = [format!("link{port}a.log"), format!("link{port}b.log")].map(|f| tail(env, &f, 5)).join("; ");
            Err(format!("the {proto} link on port {port} never came up on both sides: {logs}"))
        }
    }

    fn shape(&mut self, on: bool) -> Result<(), String> {
        if on != self.shaped {
            let dev = &self.net.veth[0];
            let cmd =
                if on { format!("tc qdisc add dev {dev} root {TBF}") } else { format!("tc qdisc del dev {dev} root") };
            self.net.sh(0, &cmd)?;
            self.shaped = on;
        }
        Ok(())
    }

    /// Turns the loss rule on, or off keeping the count of what it dropped.
    fn loss(&mut self, env: &Env, on: bool) -> Result<(), String> {
        if on {
            let rules = format!(
                "table inet r2bench {{\n  chain pre {{\n    type filter hook prerouting priority -300; policy accept;\n    \
                 iifname \"{}\" numgen random mod 100 == 0 counter drop\n  }}\n}}\n",
                self.net.veth[1]
            );
            std::fs::write(env.dir.join("loss.nft"), rules).unwrap();
            self.arrived_before = self.net.stat(1, "rx_packets");
            self.net.sh(1, &format!("nft -f {}", env.dir.join("loss.nft").display()))?;
        } else {
            let l = self.net.sh(1, "nft list table inet r2bench")?;
            let n = l.split("packets ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse().ok());
            self.dropped += n.unwrap_or(0);
            self.arrived += self.net.stat(1, "rx_packets").saturating_sub(self.arrived_before);
            self.net.sh(1, "nft delete table inet r2bench")?;
        }
        Ok(())
    }

    /// One repetition of each run, or the first failure.
    fn rep(&mut self, env: &mut Env) {
        if self.failed.is_none() {
            if let Err(e) = self.runs(env) {
                eprintln!("section 6 failed: {e}");
                dump_logs(env);
                self.failed = Some(e);
            }
        }
    }

    fn runs(&mut self, env: &mut Env) -> Result<(), String> {
        let n1 = self.net.exec(0);
        let limit = Duration::from_secs(60 + self.mib);
        let dd = format!("dd if=/dev/zero bs=64k count={} 2>/dev/null", self.mib * 16);
        if self.a_skip.is_none() {
            self.shape(true)?;
            self.loss(env, true)?;
            // TCP: the receiver's end is the end of the transfer.
            let mut rx = env.command("ip");
            rx.args(["netns", "exec", &self.net.ns[1], "socat", "-u", "tcp-l:5001,reuseaddr", "/dev/null"]);
            let mut rx = rx.spawn().map_err(|e| format!("socat: {e}"))?;
            if !until(Duration::from_secs(20), || self.net.sh(1, "ss -Hltn | grep -q ':5001 '").is_ok()) {
                return Err("the TCP receiver never listened".into());
            }
            let t0 = Instant::now();
            run_within(env, &format!("{dd} | {n1} socat -u - tcp:{}:5001", NET_IP[1]), limit)?;
            if !until(limit, || rx.try_wait().unwrap().is_some()) {
                return Err("the TCP receiver never ended".into());
            }
            self.tcp.0.push(self.mib as f64 * 1.048576 / t0.elapsed().as_secs_f64());
            let (t, _) = run_within(env, &format!("{dd} | {n1} r2 -s {} tunnel {} -", self.a, self.b), limit)?;
            self.r2.0.push(self.mib as f64 * 1.048576 / t.as_secs_f64());
            self.loss(env, false)?;
        }
        if self.b_skip.is_none() {
            for (k, shaped) in [false, true].into_iter().enumerate() {
                self.shape(shaped)?;
                let extra = if shaped { &EXTRA_VPN[..0] } else { &EXTRA_VPN[..] };
                let ips = [SOVPN_IP, SO3VPN_IP, VPN_IP].into_iter().chain(extra.iter().map(|v| v.1));
                for (j, ip) in ips.enumerate() {
                    // Datagrams that lost a fragment on the way (r2's of up
                    // to 8 KiB, in A; socat's of 1528 bytes, over the tbf)
                    // leave the rest in the receiver's reassembly memory
                    // until they time out (ipfrag_time, 30 s); while it is
                    // full (ipfrag_high_thresh, 4 MiB), every fragment is
                    // dropped, and both VPNs fragment. So each run starts
                    // once it is empty.
                    let (t0, held) = (Instant::now(), self.net.reassembling(1));
                    until(Duration::from_secs(40), || self.net.reassembling(1) == 0);
                    if t0.elapsed() > self.drain.0 {
                        self.drain = (t0.elapsed(), held);
                    }
                    let mut srv = env.command("ip");
                    srv.args(["netns", "exec", &self.net.ns[1], "iperf3", "-s", "-1", "-B", ip[1]]);
                    let mut srv = srv.spawn().map_err(|e| format!("iperf3: {e}"))?;
                    if !until(Duration::from_secs(20), || self.net.sh(1, "ss -Hltn | grep -q ':5201 '").is_ok()) {
                        return Err("the iperf3 server never listened".into());
                    }
                    let (_, json) =
                        run_within(env, &format!("{n1} iperf3 -c {} -t 5 -J", ip[1]), Duration::from_secs(40))?;
                    let bps = json_after(&json, "\"sum_received\"", "\"bits_per_second\"")
                        .ok_or_else(|| format!("no sum_received in iperf3's report: {}", json.trim()))?;
                    if bps <= 0.0 {
                        return Err(format!("iperf3 moved nothing through {}: {}", ip[1], json.trim()));
                    }
                    match j {
                        0..3 => self.vpn[k][j].0.push(bps / 1e6),
                        _ => self.extra[j - 3].0.push(bps / 1e6),
                    }
                    if !until(Duration::from_secs(20), || srv.try_wait().unwrap().is_some()) {
                        return Err("the iperf3 server never ended".into());
                    }
                }
            }
        }
        Ok(())
    }

    fn print(&self, out: &mut String) {
        let r = |s: &Series| {
            if s.0.is_empty() {
                format!("{:>9} {:<11}", "-", "")
            } else {
                format!("{:>9.1} ({:.1}–{:.1})", s.median(), s.range().0, s.range().1)
            }
        };
        let ratio = |a: &Series, b: &Series| {
            if a.0.is_empty() || b.0.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2}", a.median() / b.median())
            }
        };
        let _ = writeln!(out, "\n6. between two network namespaces joined by a veth pair, target ratio ≥ 0.8");
        let row = |out: &mut String, name: &str, s: &Series, base: &Series| {
            let _ = writeln!(out, "   {name:<30} {}   {}", r(s), ratio(s, base));
        };
        match &self.a_skip {
            Some(why) => {
                let _ = writeln!(out, "   A. skipped: {why}");
            }
            None => {
                let loss = if self.arrived > 0 {
                    format!("{:.2} % of {}", 100.0 * self.dropped as f64 / self.arrived as f64, self.arrived)
                } else {
                    "-".into()
                };
                let _ = writeln!(
                    out,
                    "   A. bulk ({} MiB) over 200 Mbit/s (tbf) losing 1 % one way ({loss} packets dropped)\n   \
                     MB/s                               median (min–max)   ratio to tcp",
                    self.mib
                );
                row(out, &format!("tcp ({}), socat to socat", self.cc), &self.tcp, &self.tcp);
                row(out, "r2 over socat udp", &self.r2, &self.tcp);
            }
        }
        match &self.b_skip {
            Some(why) => {
                let _ = writeln!(out, "   B. skipped: {why}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "   B. VPN: iperf3 -t 5 through a tun in each namespace; ratios to socat tun/udp with one\n   \
                     process a side, and with three (as many as r2: tun, relay, udp), the fair one\n   \
                     Mbit/s                             median (min–max)   ratio   fair ratio"
                );
                for (k, path) in ["clean veth", "200 Mbit/s tbf"].iter().enumerate() {
                    let [so, so3, r2] = &self.vpn[k];
                    for (name, s) in [("socat tun/udp", so), ("3 socats a side", so3), ("r2 -p over udp", r2)] {
                        let _ = writeln!(
                            out,
                            "   {:<30} {}   {:<5}   {}",
                            format!("{path}: {name}"),
                            r(s),
                            ratio(s, so),
                            ratio(s, so3)
                        );
                    }
                }
                for (i, s) in self.extra.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "   {:<30} {}   {:<5}   {:<5}{}",
                        format!("clean veth: {}", EXTRA_VPN[i].0),
                        r(s),
                        ratio(s, &self.vpn[0][0]),
                        ratio(s, &self.vpn[0][1]),
                        if i > 0 { "   target ≥ 0.8 (ratio)" } else { "" }
                    );
                }
                let _ = writeln!(
                    out,
                    "   (each run waited for the receiver's reassembly memory to empty: at most {:.1} s, from {} KiB)",
                    self.drain.0.as_secs_f64(),
                    self.drain.1 / 1024
                );
            }
        }
        if let Some(e) = &self.failed {
            let _ = writeln!(out, "   stopped after a failure (its logs are on stderr): {e}");
        }
    }
}

/// The section's logs, on stderr.
fn dump_logs(env: &Env) {
    let mut logs: Vec<String> = std::fs::read_dir(&env.dir)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    logs.retain(|f| f.ends_with(".log"));
    logs.sort();
    for f in logs {
        eprintln!("--- {}", tail(env, &f, 30));
    }
}

/// The last `n` lines of a log in the scratch directory, on one line.
fn tail(env: &Env, file: &str, n: usize) -> String {
    let s = std::fs::read_to_string(env.dir.join(file)).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    format!("{file}: {}", lines[lines.len().saturating_sub(n)..].join(" | "))
}

/// A leg of a socat baseline between two of its processes.
#[derive(Clone, Copy)]
enum Leg {
    Unix,
    /// TCP on loopback, with the buffer size (`-b`) of the two socats
    /// at its ends (None: socat's default, 8192).
    Tcp(Option<u32>),
}

/// Ports for the bench's TCP and UDP listeners, each used once.
static PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// Names for the baselines' UNIX sockets, each used once.
static SOCKET_NAME: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A port for a listener: below the kernel's ephemeral range (32768 and
/// up here), where a connection's own end may sit and make `bind` fail,
/// never one handed out before, and one nothing holds now.
fn port() -> u16 {
    let base = 12000 + (std::process::id() % 10) as u16 * 2000;
    loop {
        let n = PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < 2000, "the bench ran out of listening ports (R2_BENCH_REPS too high?)");
        let p = base + n;
        let free = std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok();
        if free {
            return p;
        }
    }
}

/// Whether a TCP listener is on `port` of 127.0.0.1 (or any address).
fn tcp_listening(port: u16) -> bool {
    let t = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    t.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[3] == "0A" && f[1].ends_with(&format!(":{port:04X}"))
    })
}

/// A socat baseline: processes joined by `legs`, each process standing
/// for one of r2's (a daemon, or a transport's socat). Its listeners take
/// one connection each, so it is made again for every run.
fn socat_path(env: &mut Env, legs: &[Leg], rtt: bool, first: &str) -> String {
    let n = legs.len() + 1;
    // Each leg's listening address, connecting address, and the socket
    // name or port that shows its listener is up.
    let addr: Vec<(String, String, Result<String, u16>)> = legs
        .iter()
        .map(|leg| match leg {
            Leg::Unix => {
                let name = format!("sp{}", SOCKET_NAME.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                (format!("UNIX-LISTEN:{name}"), format!("UNIX-CONNECT:{name}"), Ok(name))
            }
            Leg::Tcp(_) => {
                let p = port();
                (format!("TCP-L:{p},bind=127.0.0.1,reuseaddr"), format!("TCP:127.0.0.1:{p}"), Err(p))
            }
        })
        .collect();
    // A process next to a TCP leg is a transport's socat, with its buffer
    // size; the others stand for daemons, which read and write up to 64 KiB.
    let b = |i: usize| {
        let near = [i.checked_sub(1).map(|j| legs[j]), legs.get(i).copied()];
        let tcp = near.iter().flatten().find_map(|l| match l {
            Leg::Tcp(b) => Some(*b),
            Leg::Unix => None,
        });
        match tcp {
            Some(Some(b)) => format!("-b {b}"),
            Some(None) => String::new(),
            None => "-b 65536".into(),
        }
    };
    let u = if rtt { "" } else { "-u " };
    for i in (1..n).rev() {
        let listen = &addr[i - 1].0;
        let script = if i == n - 1 {
            match rtt {
                true => format!("exec socat {} {listen} EXEC:cat", b(i)),
                false => format!("socat -u {} {listen} - | cat >/dev/null", b(i)),
            }
        } else {
            format!("exec socat {u}{} {listen} {}", b(i), addr[i].1)
        };
        env.spawn(&script);
        let up = || match &addr[i - 1].2 {
            Ok(name) => env.socket_exists(name),
            Err(port) => tcp_listening(*port),
        };
        env.wait_for("a socat listener", up);
    }
    format!("socat {u}{} {first} {}", b(0), addr[0].1)
}

/// How two daemons of section 1 are linked.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// `r2 connect 'R2_SOCKET=… r2 connect -'`: no process between them.
    Pipeline,
    /// `socat tcp-l:… exec:'r2 connect -'` and `r2 connect 'socat tcp:… -'`.
    Tcp(Option<u32>),
    /// `socat udp-l:… exec:'r2 connect -'` and `r2 connect 'socat udp:… -'`,
    /// with socat's `rcvbuf` on both sockets if given.
    Udp(Option<u32>),
}

impl Env {
    /// Links daemon `x` to `y` as a user would over `via`, sealed or
    /// plaintext (both ends ask); waits until it is up.
    fn link_via(&mut self, x: &(u32, PathBuf, String), y: &(u32, PathBuf, String), via: Via, plaintext: bool) {
        let pt = if plaintext { " --plaintext" } else { "" };
        let ys = y.1.display().to_string();
        let b = |b: Option<u32>| b.map(|b| format!("-b {b} ")).unwrap_or_default();
        match via {
            Via::Pipeline => self.connect(x, y, &format!("{pt} 'R2_SOCKET={ys} r2 connect{pt} -'")),
            Via::Tcp(buf) => {
                let p = port();
                self.spawn(&format!(
                    "R2_SOCKET={ys} exec socat {}tcp-l:{p},bind=127.0.0.1,reuseaddr exec:'r2 connect{pt} -'",
                    b(buf)
                ));
                self.wait_for("a tcp listener", || tcp_listening(p));
                self.connect(x, y, &format!("{pt} -n {} 'socat {}tcp:127.0.0.1:{p} -'", y.2, b(buf)));
            }
            Via::Udp(rcvbuf) => {
                let p = port();
                let rb = rcvbuf.map(|n| format!(",rcvbuf={n}")).unwrap_or_default();
                self.spawn(&format!("R2_SOCKET={ys} exec socat udp-l:{p},bind=127.0.0.1{rb} exec:'r2 connect{pt} -'"));
                self.wait_for("a udp listener", || {
                    std::fs::read_to_string("/proc/net/udp")
                        .unwrap_or_default()
                        .contains(&format!("0100007F:{p:04X} 00000000:0000"))
                });
                self.connect(x, y, &format!("{pt} -n {} 'socat udp:127.0.0.1:{p}{rb} -'", y.2));
            }
        }
    }

    /// Runs `r2 connect ARGS` for daemon `x` and waits until it lists `y`.
    fn connect(&mut self, x: &(u32, PathBuf, String), y: &(u32, PathBuf, String), args: &str) {
        self.spawn(&format!("exec r2 -s {} connect {args}", x.1.display()));
        self.wait_for("a link", || {
            let o = Command::new(bin()).arg("-s").arg(&x.1).arg("ls").output().unwrap();
            String::from_utf8_lossy(&o.stdout).contains(&y.2)
        });
    }
}

/// What a row of sections 1 and 2 runs.
enum Run {
    /// A tunnel from the daemon with socket .0 along path .1, into the far
    /// side's `cat`.
    R2(String, String),
    /// A socat path of these legs (bulk and round trips).
    Socat(Vec<Leg>),
    /// `dd | cat | cat | cat` for bulk, and a socat path for round trips.
    Pipes(Vec<Leg>),
    /// socat into `ssh -W` (scripts `sshw-sink.sh`, `sshw-echo.sh`), to a
    /// socat in front of `cat`.
    Ssh,
}

/// A row of sections 1 and 2: bulk MiB/s and one-byte round trips (µs)
/// over one path, beside the row `base`.
struct Row {
    name: String,
    run: Run,
    mib: u64,
    base: usize,
    bulk: Series,
    rtt: Vec<f64>,
}

impl Row {
    fn new(name: &str, run: Run, mib: u64, base: usize) -> Row {
        Row { name: name.into(), run, mib, base, bulk: Series::default(), rtt: Vec::new() }
    }

    /// One bulk run and `n` round trips.
    fn rep(&mut self, env: &mut Env, n: u64) {
        let dd = format!("dd if=/dev/zero bs=64k count={} 2>/dev/null", self.mib * 16);
        let script = match &self.run {
            Run::R2(s, path) => format!("{{ echo sink; {dd}; }} | r2 -s {s} tunnel {path} -"),
            Run::Socat(legs) => format!("{dd} | {}", socat_path(env, legs, false, "-")),
            Run::Pipes(_) => format!("{dd} | cat | cat | cat >/dev/null"),
            Run::Ssh => format!("{dd} | socat -u -b 65536 - EXEC:./sshw-sink.sh"),
        };
        let (_, t) = env.run(&script);
        self.bulk.0.push(self.mib as f64 / t.as_secs_f64());
        let script = match &self.run {
            Run::R2(s, path) => {
                let pp = pingpong(env, "pp-r2.pl", n, 200, "echo\\n");
                format!("r2 -s {s} tunnel {path} '{pp}' 2>&1")
            }
            Run::Socat(legs) | Run::Pipes(legs) => {
                let pp = pingpong(env, "pp.pl", n, 200, "");
                format!("{} 2>&1", socat_path(env, legs, true, &format!("'EXEC:{pp}'")))
            }
            Run::Ssh => {
                let pp = pingpong(env, "pp.pl", n, 200, "");
                format!("socat -b 65536 'EXEC:{pp}' EXEC:./sshw-echo.sh 2>&1")
            }
        };
        let (o, _) = env.run(&script);
        let got: Vec<f64> = o.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        assert!(got.len() as u64 == n, "{}: the round trips failed: {o}", self.name);
        self.rtt.extend(got);
    }
}

/// Prints rows with their ratios to their bases, and each row's target.
fn print_rows(out: &mut String, rows: &[Row], targets: &[(usize, &str)]) {
    let _ = writeln!(
        out,
        "   {:<34} {:>22} {:>6}   {:>7} {:>7} {:>11}   target",
        "MiB/s, µs", "bulk (min–max)", "ratio", "rtt p50", "p99", "ratios"
    );
    for (i, row) in rows.iter().enumerate() {
        let mut v = row.rtt.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let mut b = rows[row.base].rtt.clone();
        b.sort_by(|a, b| a.total_cmp(b));
        let (lo, hi) = row.bulk.range();
        let target = targets.iter().find(|t| t.0 == i).map_or("", |t| t.1);
        let _ = writeln!(
            out,
            "   {:<34} {:>8.1} ({:>5.0}–{:<5.0}) {:>6.2}   {:>7.1} {:>7.1} {:>5.2}, {:<5.2}  {target}",
            row.name,
            row.bulk.median(),
            lo,
            hi,
            row.bulk.median() / rows[row.base].bulk.median(),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            percentile(&v, 0.5) / percentile(&b, 0.5),
            percentile(&v, 0.99) / percentile(&b, 0.99),
        );
    }
}

fn main() {
    let reps = env_num("R2_BENCH_REPS", 5);
    let mib = env_num("R2_BENCH_MIB", 1024);
    let rtts = env_num("R2_BENCH_RTTS", 10_000);
    let only = std::env::var("R2_BENCH_ONLY").unwrap_or_default();
    let want = |section: char| only.is_empty() || only.contains(section);
    let mut out = String::new();
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim()
    );
    let _ = writeln!(out, "r2 bench — {machine}; {reps} repetitions interleaved; bulk {mib} MiB; {rtts} round trips");
    let mut env = Env::new();

    // Daemons: chains d0–…–d4 over sealed pipeline links and q0–…–q4 over
    // plaintext ones, then pairs linked over socat tcp (default buffers and
    // 64 KiB) and socat udp, sealed and plaintext. Each end's tunnel
    // process swallows or echoes: the first line says which.
    let dispatch = "'read m; if [ \"$m\" = sink ]; then exec cat >/dev/null; else exec cat; fi'";
    let producer = producer(&env, "producer.pl");
    let mut ds = Vec::new();
    for i in 0..5 {
        let t0 = Instant::now();
        let d = env.daemon(&format!("d{i}"), dispatch);
        ds.push((d, t0.elapsed()));
    }
    let startup = Series(ds.iter().map(|d| d.1.as_secs_f64() * 1000.0).collect());
    let ds: Vec<(u32, PathBuf, String)> = ds.into_iter().map(|d| d.0).collect();
    let idle_rss = status_kib(ds[0].0, "VmRSS:");
    let idle_anon = status_kib(ds[0].0, "RssAnon:");
    let idle_threads = threads(ds[0].0);
    let qs: Vec<(u32, PathBuf, String)> = (0..5).map(|i| env.daemon(&format!("q{i}"), dispatch)).collect();
    for i in 0..4 {
        env.link_via(&ds[i].clone(), &ds[i + 1].clone(), Via::Pipeline, false);
        env.link_via(&qs[i].clone(), &qs[i + 1].clone(), Via::Pipeline, true);
    }
    let path = |chain: &[(u32, PathBuf, String)], hops: usize| {
        let ids = chain[1..=hops].iter().map(|d| d.2.as_str()).collect::<Vec<_>>().join("/");
        Run::R2(chain[0].1.display().to_string(), ids)
    };
    let pair = |env: &mut Env, name: &str, via: Via, plaintext: bool| {
        let x = env.daemon(&format!("{name}x"), dispatch);
        let y = env.daemon(&format!("{name}y"), dispatch);
        env.link_via(&x, &y, via, plaintext);
        Run::R2(x.1.display().to_string(), y.2)
    };
    let tr_mib = (mib / 4).max(64);
    let k64 = Some(65536);
    // socat's rcvbuf as a user would raise it for a fast UDP link (up to
    // net.core.rmem_max, which caps it).
    let rcvbuf_4m = Some(4 << 20);
    let mut links = vec![
        Row::new("pipes dd|cat|cat|cat; socat 2", Run::Pipes(vec![Leg::Unix]), mib, 0),
        Row::new("r2 pipeline link, plaintext", path(&qs, 1), mib, 0),
        Row::new("r2 pipeline link, sealed", path(&ds, 1), mib, 0),
        Row::new("socat 4, tcp in the middle", Run::Socat(vec![Leg::Unix, Leg::Tcp(None), Leg::Unix]), mib, 3),
        Row::new("r2 socat tcp link, plaintext", pair(&mut env, "t", Via::Tcp(None), true), mib, 3),
        Row::new("r2 socat tcp link, sealed", pair(&mut env, "ts", Via::Tcp(None), false), mib, 3),
        Row::new("socat 4 -b 65536, tcp", Run::Socat(vec![Leg::Unix, Leg::Tcp(k64), Leg::Unix]), mib, 6),
        Row::new("r2 socat -b 65536 tcp, plaintext", pair(&mut env, "b", Via::Tcp(k64), true), mib, 6),
        Row::new("r2 socat -b 65536 tcp, sealed", pair(&mut env, "bs", Via::Tcp(k64), false), mib, 6),
        Row::new("r2 socat udp link, plaintext", pair(&mut env, "u", Via::Udp(None), true), tr_mib, 4),
        Row::new("r2 socat udp link, sealed", pair(&mut env, "us", Via::Udp(None), false), tr_mib, 5),
        Row::new("r2 udp, rcvbuf=4194304, plaintext", pair(&mut env, "ur", Via::Udp(rcvbuf_4m), true), tr_mib, 4),
    ];
    let link_targets = [
        (1, "≥ 0.8 bulk; ≤ 1.0, 1.5 rtt"),
        (4, "≥ 1.0 bulk; ≤ 1.0, 1.5 rtt"),
        (7, "≥ 1.0 bulk; ≤ 1.0, 1.5 rtt"),
        (9, "≥ 0.8 bulk"),
    ];
    let hop_mib = (mib / 4).max(64);
    let mut hops = vec![
        Row::new("socat 3 processes", Run::Socat(vec![Leg::Unix; 2]), hop_mib, 0),
        Row::new("r2 2 links, plaintext", path(&qs, 2), hop_mib, 0),
        Row::new("r2 2 links, sealed", path(&ds, 2), hop_mib, 0),
        Row::new("socat 5 processes", Run::Socat(vec![Leg::Unix; 4]), hop_mib, 3),
        Row::new("r2 4 links, plaintext", path(&qs, 4), hop_mib, 3),
        Row::new("r2 4 links, sealed", path(&ds, 4), hop_mib, 3),
    ];
    let a = ds[0].1.display().to_string();
    let q = qs[0].1.display().to_string();

    // 6. between network namespaces: the impaired path and the VPN.
    let net_mib = (mib / 4).clamp(32, 128);
    let mut netb = match want('6') {
        true => NetBench::new(&mut env, net_mib),
        false => Err("not asked for (R2_BENCH_ONLY)".into()),
    };
    if let Err(e) = &netb {
        eprintln!("section 6: {e}");
    }

    // 7. sealed links beside ssh -W and ssh -J.
    let mut sshb = match want('7') {
        true => SshBench::new(&mut env, (mib / 4).max(64), dispatch),
        false => Err("not asked for (R2_BENCH_ONLY)".into()),
    };
    if let Err(e) = &sshb {
        eprintln!("section 7: {e}");
    }

    let mut many: Vec<Many> = [(1, Chain::Plain), (10, Chain::Plain), (100, Chain::Plain), (100, Chain::Sealed)]
        .into_iter()
        .chain([1, 10, 100].map(|n| (n, Chain::Pipes)))
        .map(|(n, chain)| Many { n, chain, ..Many::default() })
        .collect();
    let mut peak = (0u64, 0u64);
    let rtt_each = (rtts / reps).max(100);
    for rep in 0..reps {
        eprintln!("repetition {}/{reps}", rep + 1);
        // 1. one link over each transport; the peak RSS is of the first
        // transfer, by daemons that have done nothing else yet
        for d in &ds[..2] {
            let _ = std::fs::write(format!("/proc/{}/clear_refs", d.0), "5");
        }
        for (i, row) in links.iter_mut().enumerate().filter(|_| want('1')) {
            row.rep(&mut env, rtt_each);
            if rep == 0 && i == 2 {
                peak = (status_kib(ds[0].0, "VmHWM:"), status_kib(ds[1].0, "VmHWM:"));
            }
        }
        // 6. the impaired path and the VPN between namespaces
        if let Ok(n) = &mut netb {
            n.rep(&mut env);
        }
        // 7. sealed links and ssh
        if let Ok(b) = &mut sshb {
            b.rep(&mut env, rtt_each);
        }
        // 2. hops
        for row in hops.iter_mut().filter(|_| want('2')) {
            row.rep(&mut env, rtt_each);
        }
        // 4. many tunnels, and as many pipe chains of the same shape, all
        // set up first with their producers ready, then released together
        // by one line each on a FIFO; timed from the release to each end
        for m in many.iter_mut().filter(|_| want('4')) {
            let each = (mib / m.n as u64).max(8);
            let (s, far) = match m.chain {
                Chain::Sealed => (&a, &ds[1]),
                _ => (&q, &qs[1]),
            };
            let commands: Vec<Command> = (0..m.n)
                .map(|i| {
                    let produce = format!("{producer} {i} {}", each * 16);
                    if m.chain == Chain::Pipes {
                        let mut c = env.command("/bin/sh");
                        c.arg("-c").arg(format!("{produce} | cat | cat | cat >/dev/null"));
                        c
                    } else {
                        let mut c = env.command("r2");
                        c.args(["-s", s, "tunnel", &far.2, &produce]);
                        c
                    }
                })
                .collect();
            let far_cats = || m.chain == Chain::Pipes || children_named(far.0, "cat") == m.n;
            let pids: Vec<u32> = match m.chain {
                Chain::Pipes => Vec::new(),
                Chain::Sealed => ds[..2].iter().map(|d| d.0).collect(),
                Chain::Plain => qs[..2].iter().map(|d| d.0).collect(),
            };
            let (times, cpu) = release_together(&env, commands, far_cats, &pids);
            let (min, max) = times.iter().fold((f64::MAX, 0f64), |(a, b), &t| (a.min(t), b.max(t)));
            let gib = (each * m.n as u64) as f64 / 1024.0;
            m.agg.0.push(gib * 1024.0 / max);
            m.fair.0.push(min / max);
            m.cpu.0.push(cpu.0 / gib);
            m.busy.0.push(cpu.1);
            m.daemons.0.push(cpu.2 / gib);
        }
    }
    let ping_out = env.run(&format!("r2 -s {q} ping -c 1000 -i 0 {}", qs[1].2)).0;
    let ping_sealed = env.run(&format!("r2 -s {a} ping -c 1000 -i 0 {}", ds[1].2)).0;
    if let Ok(b) = &mut sshb {
        b.round_trips(&env, (rtts / 5).max(500));
    }

    // 5. footprint: 100 idle tunnels between two fresh daemons, so that
    // what the bulk runs left in the heap does not hide their cost
    let f0 = env.daemon("f0", dispatch);
    let f1 = env.daemon("f1", dispatch);
    env.link(&f0.1, &f1.1, &f1.2);
    std::thread::sleep(Duration::from_millis(300));
    let before_rss = (status_kib(f0.0, "VmRSS:"), status_kib(f1.0, "VmRSS:"));
    let (t0, t1) = (threads(f0.0), threads(f1.0));
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(env.spawn(&format!("exec r2 -s {} tunnel {} 'echo echo; sleep 600'", f0.1.display(), f1.2)));
    }
    env.wait_for("100 idle tunnels", || threads(f1.0) >= t1 + 200);
    std::thread::sleep(Duration::from_millis(300));
    let with_idle = (status_kib(f0.0, "VmRSS:"), status_kib(f1.0, "VmRSS:"));
    let per_tunnel_threads = ((threads(f0.0) - t0) as f64 / 100.0, (threads(f1.0) - t1) as f64 / 100.0);

    // The table.
    let r = |s: &Series| format!("{:>9.1} ({:.1}–{:.1})", s.median(), s.range().0, s.range().1);
    if want('1') {
        let _ = writeln!(
            out,
            "\n1. one link over each transport: bulk ({mib} MiB; udp {tr_mib}) into cat, and one-byte\n   \
             round trips into cat; ratios to the socat path with as many processes (header), for\n   \
             udp to the tcp link; the targets are for plaintext links (sealed ones: section 7)"
        );
        print_rows(&mut out, &links, &link_targets);
        let ping_line = |o: &str| o.lines().find(|l| l.starts_with("rtt")).unwrap_or("").to_string();
        let _ = writeln!(
            out,
            "   r2 ping -c 1000 -i 0: plaintext {}; sealed {}",
            ping_line(&ping_out),
            ping_line(&ping_sealed)
        );
    }
    if want('2') {
        let _ = writeln!(
            out,
            "\n2. hops over pipeline links ({hop_mib} MiB): each hop one more daemon, and one more socat"
        );
        print_rows(&mut out, &hops, &[(1, "≤ 1 relay per hop (below)"), (4, "≤ 1 relay per hop (below)")]);
        let p50 = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(|a, b| a.total_cmp(b));
            percentile(&v, 0.5)
        };
        if want('1') {
            let relay = (p50(&hops[3].rtt) - p50(&links[0].rtt)) / 3.0;
            for (name, one, four) in [("plaintext", &links[1], &hops[4]), ("sealed", &links[2], &hops[5])] {
                let hop = (p50(&four.rtt) - p50(&one.rtt)) / 3.0;
                let _ = writeln!(
                    out,
                    "   round trip per extra hop, 1 to 4 links, {name}: r2 {hop:.1} µs, a socat relay {relay:.1} µs: {:.2}",
                    hop / relay
                );
            }
        }
    }
    if want('4') {
        let _ = writeln!(
            out,
            "\n4. many tunnels through one link, and as many pipe chains producer|cat|cat|cat (the same\n   \
             processes: producer, two daemons, cat): aggregate MiB/s and ratio to as many pipe chains\n   \
             (target ≥ 0.9 at 100), slowest/fastest (≥ 0.5), CPU time of all processes per GiB, share\n   \
             of the machine's CPU time that was busy, the daemons' CPU time per GiB and its ratio to\n   \
             one tunnel's (≤ 1.5 at 100)"
        );
        for m in &many {
            let pipes = many.iter().find(|o| o.n == m.n && o.chain == Chain::Pipes).unwrap_or(m);
            let one = many.iter().find(|o| o.n == 1 && o.chain == m.chain).unwrap_or(m);
            let what = match m.chain {
                Chain::Plain => "tunnels",
                Chain::Sealed => "sealed",
                Chain::Pipes => "pipe chains",
            };
            let _ = writeln!(
                out,
                "   {:>3} {what:<11} {}  {:.2}   fairness {:.2}   cpu {:.2} s/GiB  busy {:.0}%{}",
                m.n,
                r(&m.agg),
                m.agg.median() / pipes.agg.median(),
                m.fair.median(),
                m.cpu.median(),
                m.busy.median() * 100.0,
                match m.chain {
                    Chain::Pipes => String::new(),
                    _ => format!(
                        "  daemons {:.2} ({:.2})",
                        m.daemons.median(),
                        m.daemons.median() / one.daemons.median()
                    ),
                }
            );
        }
    }
    let static_bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/x86_64-unknown-linux-musl/release/r2");
    let size = std::fs::metadata(&static_bin)
        .map(|m| format!("{} KiB", m.len() / 1024))
        .unwrap_or("not built (make static)".into());
    let static_idle = if static_bin.exists() {
        let (pid, _, _) = env.daemon_of(&format!("{} daemon", static_bin.display()), "st", "cat");
        std::thread::sleep(Duration::from_millis(300));
        format!("{} KiB ({} KiB private)", status_kib(pid, "VmRSS:"), status_kib(pid, "RssAnon:"))
    } else {
        "not built (make static)".into()
    };
    let _ = writeln!(out, "\n5. footprint");
    let _ = writeln!(
        out,
        "   idle daemon RSS                 {idle_rss} KiB ({idle_anon} KiB private; the rest is text), {idle_threads} threads"
    );
    let _ = writeln!(out, "   idle daemon RSS, musl build     {static_idle}");
    let _ = writeln!(
        out,
        "   RSS with 100 idle tunnels       caller {} KiB, far side {} KiB (+{:.0} / +{:.0} KiB per tunnel over {} / {} KiB)",
        with_idle.0,
        with_idle.1,
        (with_idle.0.saturating_sub(before_rss.0)) as f64 / 100.0,
        (with_idle.1.saturating_sub(before_rss.1)) as f64 / 100.0,
        before_rss.0,
        before_rss.1
    );
    let _ = writeln!(
        out,
        "   threads per tunnel              caller {:.1}, far side {:.1}",
        per_tunnel_threads.0, per_tunnel_threads.1
    );
    let _ = writeln!(
        out,
        "   peak RSS during {mib} MiB        caller {} KiB, far side {} KiB (the first run)",
        peak.0, peak.1
    );
    let _ = writeln!(out, "   musl binary (make static)       {size}");
    let _ = writeln!(out, "   r2d start to socket answering   median {:.1} ms", startup.median());
    match &netb {
        Ok(n) => n.print(&mut out),
        Err(e) => {
            let _ = writeln!(out, "\n6. between network namespaces: {e}");
        }
    }
    match &sshb {
        Ok(b) => b.print(&mut out),
        Err(e) => {
            let _ = writeln!(out, "\n7. sealed links beside OpenSSH: {e}");
        }
    }
    drop(idle);
    print!("{out}");
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench.txt");
    let _ = std::fs::write(&file, &out);
    eprintln!("written to {}", file.display());
}
