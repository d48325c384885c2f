//! Test harness: real daemons and clients of the built binary, on short
//! temporary socket paths, each process in its own process group so that
//! everything a test starts is ended when the test's handles drop.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A generous bound for things that should happen at once.
pub const SOON: Duration = Duration::from_secs(10);

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_r2"))
}

/// Polls `cond` until it holds, or panics after `limit` naming `what`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        if Instant::now() > end {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temporary directory under /tmp (short, for socket paths), with `r2`
/// and `r2d` symlinks in `bin/`; removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/r2t-{}-{tag}{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        symlink(bin(), dir.join("bin/r2")).unwrap();
        symlink(bin(), dir.join("bin/r2d")).unwrap();
        Scratch { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// PATH with this scratch's bin first, so that `r2` in shell commands
    /// and socat `exec:` runs the binary under test.
    pub fn env_path(&self) -> String {
        format!("{}:{}", self.dir.join("bin").display(), std::env::var("PATH").unwrap_or_default())
    }

    /// A command run by `sh -c` with this scratch's PATH, in its own
    /// process group.
    pub fn sh(&self, script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script).env("PATH", self.env_path()).current_dir(&self.dir).process_group(0);
        c
    }

    /// `r2 -s SOCKET ARGS…`, run to completion with a bound.
    pub fn r2(&self, sock: &Path, args: &[&str]) -> Output {
        let mut c = Command::new(bin());
        c.arg("-s").arg(sock).args(args);
        run_bounded(c, SOON)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("R2_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.dir.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs a command to completion, killing it if it outlives `limit`.
pub fn run_bounded(mut c: Command, limit: Duration) -> Output {
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let child = c.spawn().expect("spawn");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            kill_group(pid, libc_sig::KILL);
            panic!("{c:?} did not finish within {limit:?}");
        }
    }
}

pub mod libc_sig {
    pub const TERM: i32 = 15;
    pub const KILL: i32 = 9;
    pub const STOP: i32 = 19;
    pub const CONT: i32 = 18;
}

/// Sends a signal to a whole process group (ignoring errors).
pub fn kill_group(pgid: i32, sig: i32) {
    let _ =
        Command::new("kill").arg(format!("-{sig}")).arg("--").arg(format!("-{pgid}")).stderr(Stdio::null()).status();
}

/// Sends a signal to one process.
pub fn kill_pid(pid: u32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).stderr(Stdio::null()).status();
}

/// A child process, its group killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(mut c: Command, name: &str, stderr: &Path) -> Proc {
        c.process_group(0);
        c.stderr(fs::File::create(stderr).unwrap());
        let child = c.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { child, name: name.to_string() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit, with a bound.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > end {
                panic!("{} did not exit within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        if self.is_running() {
            kill_group(pid, libc_sig::TERM);
            let end = Instant::now() + Duration::from_secs(3);
            while self.is_running() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        kill_group(pid, libc_sig::KILL);
        let _ = self.child.wait();
    }
}

/// A running daemon.
pub struct Daemon {
    pub proc: Proc,
    pub sock: PathBuf,
    pub id: String,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `r2d -s NAME.sock -k NAME.id EXTRA…` and waits until it answers.
    pub fn start(s: &Scratch, name: &str, extra: &[&str]) -> Daemon {
        let c = Command::new(s.path("bin/r2d"));
        Daemon::spawn(s, c, name, extra, SOON)
    }

    /// Starts the daemon command `c` with `-s NAME.sock -k NAME.id -v
    /// EXTRA…`, its log in NAME.log, and waits up to `limit` until it
    /// answers.
    pub fn spawn(s: &Scratch, mut c: Command, name: &str, extra: &[&str], limit: Duration) -> Daemon {
        let sock = s.path(&format!("{name}.sock"));
        let log = s.path(&format!("{name}.log"));
        c.arg("-s").arg(&sock).arg("-k").arg(s.path(&format!("{name}.id"))).arg("-v").args(extra);
        if c.get_envs().all(|(k, _)| k != "PATH") {
            c.env("PATH", s.env_path());
        }
        c.stdin(Stdio::null()).stdout(Stdio::null());
        let mut proc = Proc::spawn(c, name, &log);
        let mut id = String::new();
        wait_for(&format!("daemon {name} to answer"), limit, || {
            assert!(proc.is_running(), "daemon {name} died: {}", fs::read_to_string(&log).unwrap_or_default());
            let out = s.r2(&sock, &["id"]);
            id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            out.status.success()
        });
        Daemon { proc, sock, id, log }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The ids the daemon lists as its neighbours.
    pub fn neighbours(&self, s: &Scratch) -> Vec<String> {
        let out = s.r2(&self.sock, &["ls"]);
        assert!(out.status.success(), "ls: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split('\t').next().unwrap_or("").to_string()).collect()
    }

    /// Waits until the neighbour list is exactly `ids`.
    pub fn wait_neighbours(&self, s: &Scratch, ids: &[&str], limit: Duration) {
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_for(&format!("{} to list {want:?}", self.proc.name), limit, || {
            let mut got = self.neighbours(s);
            got.sort();
            got == want
        });
    }
}

/// `r2 connect` from daemon `d` over `transport`, in the background.
pub fn connect(s: &Scratch, d: &Daemon, opts: &[&str], transport: &str, name: &str) -> Proc {
    let mut c = Command::new(s.path("bin/r2"));
    c.arg("-s").arg(&d.sock).arg("connect").args(opts).arg(transport);
    c.env("PATH", s.env_path()).current_dir(&s.dir).stdin(Stdio::null()).stdout(Stdio::null());
    Proc::spawn(c, name, &s.path(&format!("{name}.err")))
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn need(cmd: &str) {
    let ok = Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).stdout(Stdio::null()).status();
    assert!(ok.map(|s| s.success()).unwrap_or(false), "this test needs `{cmd}` (installed by .ci/run)");
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

pub fn exists(p: impl AsRef<OsStr>) -> bool {
    Path::new(p.as_ref()).exists()
}

/// The pids of processes named `name` among the descendants of `pid`.
pub fn children_named(pid: u32, name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        let kids = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        for k in kids.split_whitespace().filter_map(|k| k.parse::<u32>().ok()) {
            let comm = std::fs::read_to_string(format!("/proc/{k}/comm")).unwrap_or_default();
            if comm.trim() == name {
                found.push(k);
            }
            stack.push(k);
        }
    }
    found
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Zombie children of a process.
pub fn zombies(pid: u32) -> usize {
    let kids = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    kids.split_whitespace()
        .filter(|k| fs::read_to_string(format!("/proc/{k}/stat")).unwrap_or_default().contains(") Z "))
        .count()
}

/// The daemon's counters, by name.
pub fn counters(s: &Scratch, d: &Daemon) -> std::collections::HashMap<String, u64> {
    let o = s.r2(&d.sock, &["stats"]);
    stdout_of(&o)
        .lines()
        .filter_map(|l| {
            let v: Vec<&str> = l.split('\t').collect();
            (v.len() == 3 && v[0] == "counter").then(|| (v[1].to_string(), v[2].parse().unwrap_or(0)))
        })
        .collect()
}

/// For an sshd in inetd mode (`sshd -i -f CONFIG`, as a tunnel process or
/// ssh's ProxyCommand): checks root and openssh, makes a host key and a user
/// key (`userkey`) in the scratch, and writes `sshd_config` there, with
/// `extra` lines; returns the config's path.
pub fn sshd_config(s: &Scratch, extra: &str) -> PathBuf {
    assert!(is_root(), "this test needs root (sshd)");
    need("ssh");
    need("ssh-keygen");
    assert!(exists("/usr/sbin/sshd"), "this test needs /usr/sbin/sshd (openssh-server)");
    let keys = "ssh-keygen -q -t ed25519 -N '' -f hostkey && ssh-keygen -q -t ed25519 -N '' -f userkey";
    let o = run_bounded(s.sh(keys), Duration::from_secs(60));
    assert!(o.status.success(), "{keys}: {}", stderr_of(&o));
    fs::create_dir_all("/run/sshd").unwrap();
    let cfg = format!(
        "HostKey {d}/hostkey\nAuthorizedKeysFile {d}/userkey.pub\nPermitRootLogin yes\nStrictModes no\nUsePAM no\n\
         PidFile none\nLogLevel ERROR\n{extra}",
        d = s.dir.display()
    );
    fs::write(s.path("sshd_config"), cfg).unwrap();
    s.path("sshd_config")
}

/// A network namespace of the test's own (its loopback up), deleted on
/// drop with what is in it; a stale one of the same name goes first.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let ok = Command::new("ip").args(["netns", "add", &name]).status().map(|s| s.success());
        assert_eq!(ok.ok(), Some(true), "cannot create network namespace {name}");
        let ns = Netns(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(prog);
        c
    }

    /// Runs a command in the namespace, which must succeed: its output.
    pub fn run(&self, argv: &[&str]) -> String {
        let mut c = self.cmd(argv[0]);
        c.args(&argv[1..]);
        let o = run_bounded(c, Duration::from_secs(30));
        assert!(o.status.success(), "{argv:?} in {}: {}{}", self.0, stdout_of(&o), stderr_of(&o));
        stdout_of(&o)
    }

    /// `sh -c SCRIPT` in the namespace, within a minute.
    pub fn sh(&self, script: &str) -> Output {
        let mut c = self.cmd("sh");
        c.arg("-c").arg(script);
        run_bounded(c, Duration::from_secs(60))
    }

    /// `sh -c SCRIPT` in the namespace, which must succeed.
    pub fn sh_ok(&self, script: &str) {
        let o = self.sh(script);
        assert!(o.status.success(), "{script} in {}: {}", self.0, stderr_of(&o));
    }

    /// `sh -c SCRIPT` in the namespace, in the background, with the
    /// scratch directory's PATH and its stderr in `NAME.err` there.
    pub fn spawn(&self, s: &Scratch, script: &str, name: &str) -> Proc {
        let mut c = self.cmd("sh");
        c.arg("-c").arg(script).env("PATH", s.env_path()).current_dir(&s.dir);
        c.stdin(Stdio::null()).stdout(Stdio::null());
        Proc::spawn(c, name, &s.path(&format!("{name}.err")))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
