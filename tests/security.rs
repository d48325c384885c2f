//! Proven ids and private links, with real daemons: a pin that the peer
//! cannot prove fails on both sides; a recorded link played back is
//! refused; what tunnels carry never shows in a link's bytes unless both
//! ends asked for plaintext; the key file is the node's alone. (A stream
//! that flips bits: transports.rs.)

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// `r2 connect` from `a` to `b` through `tee`s that record what each sends:
/// a's bytes in `NAME.a`, b's in `NAME.b`.
fn recorded(s: &Scratch, a: &Daemon, b: &Daemon, opts: &[&str], name: &str) -> Proc {
    let far = opts.join(" ");
    let t = format!("tee {name}.a | R2_SOCKET={} r2 connect {far} - | tee {name}.b", b.sock.display());
    connect(s, a, opts, &t, name)
}

fn read(s: &Scratch, file: &str) -> Vec<u8> {
    std::fs::read(s.path(file)).unwrap_or_default()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_pin_the_neighbour_cannot_prove_fails_on_both_sides() {
    let s = Scratch::new("pin");
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &[]);
    let c = Daemon::start(&s, "c", &[]);
    // a wants c, but the transport leads to b.
    let t = format!("R2_SOCKET={} r2 connect -", b.sock.display());
    let mut l = connect(&s, &a, &["-n", &c.id], &t, "wrong");
    assert_eq!(l.wait_exit(SOON).code(), Some(1));
    let err = std::fs::read_to_string(s.path("wrong.err")).unwrap();
    assert!(err.contains(&format!("expected {}, the neighbour proved it is {}", c.id, b.id)), "{err}");
    assert!(err.contains(&format!("refused by {}: node id mismatch", a.id)), "b's side says why too: {err}");
    assert!(a.neighbours(&s).is_empty() && b.neighbours(&s).is_empty());
    // The right pin links.
    let _ok = connect(&s, &a, &["-n", &b.id], &t, "right");
    a.wait_neighbours(&s, &[&b.id], SOON);
}

/// What a sent on a link, recorded and played back later to b (whose key
/// is the same, its nonce and ephemeral key new), does not make a link:
/// the handshake fails, b says so, and a's id is never b's neighbour.
#[test]
fn a_recorded_link_played_back_is_refused() {
    let s = Scratch::new("replay");
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &[]);
    let l = recorded(&s, &a, &b, &[], "rec");
    a.wait_neighbours(&s, &[&b.id], SOON);
    let o = s.r2(&a.sock, &["ping", "-c", "2", "-i", "0.1", &b.id]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    drop(l);
    b.wait_neighbours(&s, &[], SOON);
    let bytes = read(&s, "rec.a");
    assert!(bytes.len() > 200, "a's handshake and messages were recorded ({} bytes)", bytes.len());
    // Played back, as a new link to b, with time for b to answer.
    let mut p = connect(&s, &b, &[], &format!("cat {}; sleep 3", s.path("rec.a").display()), "play");
    assert_eq!(p.wait_exit(SOON).code(), Some(1));
    let err = std::fs::read_to_string(s.path("play.err")).unwrap();
    assert!(err.contains("handshake failed"), "{err}");
    assert!(b.neighbours(&s).is_empty());
    assert_eq!(b.log().matches(&format!("neighbour {} is up", a.id)).count(), 1, "only the recorded link was up");
}

/// A marker sent through a tunnel over a relay never appears in either
/// link's bytes, either way, over sealed links and over links both ends
/// asked to be plaintext (the tunnel is sealed end to end); a one-hop
/// tunnel over a plaintext link relies on the link, and shows it (so the
/// check can fail).
#[test]
fn tunnel_data_never_shows_in_a_sealed_link() {
    for plaintext in [false, true] {
        let s = Scratch::new(if plaintext { "clear" } else { "sealed" });
        let a = Daemon::start(&s, "a", &[]);
        let r = Daemon::start(&s, "r", &["cat"]);
        let b = Daemon::start(&s, "b", &["cat"]);
        let opts: &[&str] = if plaintext { &["--plaintext"] } else { &[] };
        let _ar = recorded(&s, &a, &r, opts, "ar");
        let _rb = recorded(&s, &r, &b, opts, "rb");
        a.wait_neighbours(&s, &[&r.id], SOON);
        wait_for("r's two links", SOON, || r.neighbours(&s).len() == 2);
        let layer = stdout_of(&s.r2(&a.sock, &["ls", "-l"]));
        let want = if plaintext { "plaintext (both ends asked) stream" } else { "sealed stream" };
        assert!(layer.contains(want), "{layer}");
        let marker = "MARKER-7d1c9e0b-through-the-tunnel";
        let tunnel = |path: &str, marker: &str| {
            sh_ok(&s, &format!("echo {marker} > in"));
            let o = run_bounded(s.sh(&format!("r2 -s {} tunnel {path} - < in > out", a.sock.display())), SOON);
            assert!(o.status.success(), "{}", stderr_of(&o));
            assert_eq!(std::fs::read_to_string(s.path("out")).unwrap().trim(), marker, "the tunnel works");
        };
        tunnel(&format!("{}/{}", r.id, b.id), marker);
        for f in ["ar.a", "ar.b", "rb.a", "rb.b"] {
            let bytes = read(&s, f);
            assert!(!bytes.is_empty(), "{f} recorded");
            assert!(!contains(&bytes, marker.as_bytes()), "the marker in {f} (plaintext links {plaintext})");
        }
        let one_hop = "MARKER-one-hop-relies-on-the-link";
        tunnel(&r.id, one_hop);
        assert_eq!(contains(&read(&s, "ar.a"), one_hop.as_bytes()), plaintext, "one hop, plaintext {plaintext}");
    }
}

/// Plaintext only when both ends ask: one end asking is not enough.
#[test]
fn plaintext_only_when_both_ends_ask() {
    let s = Scratch::new("ask");
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &[]);
    for (near, far, want) in
        [("--plaintext", "", "sealed"), ("", "--plaintext", "sealed"), ("--plaintext", "--plaintext", "plaintext")]
    {
        let opts: Vec<&str> = [near].into_iter().filter(|o| !o.is_empty()).collect();
        let t = format!("R2_SOCKET={} r2 connect {far} -", b.sock.display());
        let l = connect(&s, &a, &opts, &t, "ask");
        a.wait_neighbours(&s, &[&b.id], SOON);
        for d in [&a, &b] {
            let ls = stdout_of(&s.r2(&d.sock, &["ls", "-l"]));
            assert!(ls.contains(&format!("\t{want} ")), "{near:?} {far:?}: {ls}");
        }
        drop(l);
        a.wait_neighbours(&s, &[], SOON);
        b.wait_neighbours(&s, &[], SOON);
    }
}

#[test]
fn the_key_file_is_the_node_s_alone() {
    let s = Scratch::new("keyf");
    let a = Daemon::start(&s, "a", &[]);
    let mode = std::fs::metadata(s.path("a.id")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(s.path("a.id")).unwrap();
    assert!(text.starts_with("r2 key 1\n") && text.contains(&format!("id {}\n", a.id)), "{text}");
    // A key file whose id is another node's (claimed without its secret)
    // is refused at start.
    let b = Daemon::start(&s, "b", &[]);
    let forged = text.replace(&a.id, &b.id);
    std::fs::write(s.path("f.id"), forged).unwrap();
    std::fs::set_permissions(s.path("f.id"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = run_bounded(
        s.sh(&format!("r2d -s {} -k {}", s.path("f.sock").display(), s.path("f.id").display())),
        Duration::from_secs(5),
    );
    assert!(!o.status.success());
    assert!(stderr_of(&o).contains("is not the public key of its secret"), "{}", stderr_of(&o));
}

fn sh_ok(s: &Scratch, script: &str) {
    let o = run_bounded(s.sh(script), SOON);
    assert!(o.status.success(), "{script}: {}", stderr_of(&o));
}
