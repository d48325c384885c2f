//! The daemon's life: its socket (mode, peer credentials, stale and live
//! sockets, long paths), its key file, and signals.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn socket_is_private_and_checked_by_peer_credentials() {
    assert!(is_root(), "this test needs root, to run a client as another user (runuser)");
    need("runuser");
    let s = Scratch::new("perm");
    let a = Daemon::start(&s, "a", &[]);
    let mode = std::fs::metadata(&a.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Open the file mode up, so that only the credential check stands.
    std::fs::set_permissions(&a.sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Command::new("runuser");
    c.args(["-u", "nobody", "--"]).arg(bin()).arg("-s").arg(&a.sock).arg("id");
    let o = run_bounded(c, SOON);
    assert_eq!(o.status.code(), Some(1));
    // the daemon's own refusal, not the file mode's
    assert!(stderr_of(&o).contains("permission denied: uid 65534 is neither"), "{}", stderr_of(&o));
    assert!(a.log().contains("refused"), "the daemon logs it");
    // root is let in
    assert!(s.r2(&a.sock, &["id"]).status.success());
}

#[test]
fn one_daemon_per_socket_and_stale_sockets_are_replaced() {
    let s = Scratch::new("live");
    let mut a = Daemon::start(&s, "a", &[]);
    let mut c = Command::new(bin());
    c.arg("daemon").arg("-s").arg(&a.sock).arg("-k").arg(s.path("other.id"));
    let o = run_bounded(c, SOON);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_of(&o).contains("already running"), "{}", stderr_of(&o));
    assert_eq!(stdout_of(&s.r2(&a.sock, &["id"])).trim(), a.id, "the first daemon still answers");
    // kill -9 leaves a stale socket; a restart replaces it and keeps the id
    kill_pid(a.proc.pid(), libc_sig::KILL);
    a.proc.wait_exit(SOON);
    assert!(exists(&a.sock));
    let b = Daemon::start(&s, "a", &[]);
    assert_eq!(b.id, a.id, "same id file, same id");
}

#[test]
fn sigterm_ends_clients_and_removes_the_socket() {
    let s = Scratch::new("term");
    let mut a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &[]);
    let mut c = connect(&s, &a, &[], &format!("R2_SOCKET={} r2 connect -", b.sock.display()), "conn");
    a.wait_neighbours(&s, &[&b.id], SOON);
    kill_pid(a.proc.pid(), libc_sig::TERM);
    assert_eq!(a.proc.wait_exit(SOON).code(), Some(0));
    assert!(!exists(&a.sock), "socket removed");
    assert_eq!(c.wait_exit(SOON).code(), Some(1));
    let err = std::fs::read_to_string(s.path("conn.err")).unwrap();
    assert!(err.contains("shutting down"), "{err}");
    b.wait_neighbours(&s, &[], SOON);
}

#[test]
fn bad_socket_paths() {
    let s = Scratch::new("path");
    let long = format!("/tmp/{}.sock", "x".repeat(120));
    let mut c = Command::new(bin());
    c.args(["daemon", "-s", &long, "-k"]).arg(s.path("a.id"));
    let o = run_bounded(c, SOON);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_of(&o).contains("longer than"), "{}", stderr_of(&o));
    std::fs::write(s.path("plain.sock"), "not a socket").unwrap();
    let mut c = Command::new(bin());
    c.arg("daemon").arg("-s").arg(s.path("plain.sock")).arg("-k").arg(s.path("a.id"));
    let o = run_bounded(c, SOON);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr_of(&o).contains("not a socket"), "{}", stderr_of(&o));
}

/// A user without XDG_RUNTIME_DIR gets a private directory under /tmp, and
/// an id file named after the socket under XDG_STATE_HOME.
#[test]
fn default_paths_for_a_user() {
    assert!(is_root(), "this test needs root, to run the daemon as another user (setpriv)");
    need("setpriv");
    let s = Scratch::new("user");
    std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = "/tmp/r2-65534";
    let _ = std::fs::remove_dir_all(dir);
    let state = s.path("state");
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(bin()).arg("daemon");
    c.env_remove("XDG_RUNTIME_DIR").env_remove("R2_SOCKET").env("XDG_STATE_HOME", &state);
    c.stdout(std::process::Stdio::null());
    let _d = Proc::spawn(c, "userd", &s.path("userd.err"));
    let sock = std::path::Path::new(dir).join("r2.sock");
    wait_for("the user's socket", SOON, || exists(&sock));
    let md = std::fs::metadata(dir).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o700);
    assert!(exists(state.join("r2/r2.key")));
    drop(_d);
    let _ = std::fs::remove_dir_all(dir);
}

/// The id is the public key in the key file (mode 0600); an id file of an
/// earlier r2 is refused with a message, and nothing is overwritten.
#[test]
fn the_id_is_the_key_files_public_key() {
    let s = Scratch::new("key");
    let a = Daemon::start(&s, "a", &[]);
    let key = std::fs::read_to_string(s.path("a.id")).unwrap();
    assert!(key.starts_with("r2 key 1\nsecret "), "{key}");
    assert!(key.ends_with(&format!("\nid {}\n", a.id)), "r2 id is the key file's public key: {key}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(s.path("a.id")).unwrap().permissions().mode() & 0o777, 0o600);
    let old = "6Xb2RtEfug8nxD6A7Afvd3SPt4ePCibjFHLcyRqVqFgC\n";
    std::fs::write(s.path("old.id"), old).unwrap();
    let mut c = Command::new(bin());
    c.arg("daemon").arg("-s").arg(s.path("old.sock")).arg("-k").arg(s.path("old.id"));
    let o = run_bounded(c, SOON);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_of(&o));
    let e = stderr_of(&o);
    assert!(e.contains("id file of an earlier r2") && e.contains("Move the file away"), "{e}");
    assert_eq!(std::fs::read_to_string(s.path("old.id")).unwrap(), old, "the old file is left as it was");
    assert!(!exists(s.path("old.sock")), "no daemon started");
}

/// An answer whose reader has gone (`r2 ls | grep -q ID`) ends the command
/// quietly with 0, not with a panic.
#[test]
fn answers_to_a_reader_that_has_gone_end_quietly() {
    need("bash");
    let s = Scratch::new("epipe");
    let a = Daemon::start(&s, "a", &[]);
    for cmd in ["stats", "id", "ls"] {
        let script = format!("set -o pipefail; (sleep 0.3; r2 -s {} {cmd}) | true", a.sock.display());
        let o = run_bounded(
            {
                let mut c = Command::new("bash");
                c.args(["-c", &script]).env("PATH", s.env_path());
                c
            },
            SOON,
        );
        assert!(o.status.success(), "{cmd}: {:?} {}", o.status, stderr_of(&o));
        assert!(stderr_of(&o).is_empty(), "{cmd}: {}", stderr_of(&o));
    }
}
