//! A robust link on an impaired path that the test builds itself: two
//! network namespaces joined by veth, with a `tbf` bottleneck and an
//! nftables rule that drops packets at random. Over it a tunnel on a UDP
//! link runs beside a TCP connection, and each must get a fair share.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn count(s: &Scratch, file: &str) -> u64 {
    std::fs::read_to_string(s.path(file)).unwrap_or_default().trim().parse().unwrap_or(0)
}

/// A sink that counts what it reads into FILE, rewritten every 50 ms.
fn counter(file: &str) -> String {
    format!(
        r#"perl -MTime::HiRes=time -e '$t = 0; while (sysread(STDIN, $b, 65536)) {{ $n += length $b; if (time - $t > 0.05) {{ open F, ">{file}.new"; print F $n; close F; rename "{file}.new", "{file}"; $t = time }} }}'"#
    )
}

/// 10 s of a tunnel over a UDP link beside 10 s of one TCP connection,
/// through 100 Mbit/s and 1 % random loss: each gets 0.5 to 2 times the
/// other's goodput, and together they use the path.
#[test]
fn a_robust_link_shares_a_bottleneck_with_tcp() {
    assert!(is_root(), "this test needs root (network namespaces, tc, nftables)");
    need("ip");
    need("tc");
    need("nft");
    need("socat");
    let s = Scratch::new("imp");
    let tag = std::process::id() % 100_000;
    let (a, b) = (Netns::new(format!("r2ia{tag}")), Netns::new(format!("r2ib{tag}")));
    let (va, vb) = (format!("r2ia{tag}"), format!("r2ib{tag}"));
    let ok = Command::new("ip")
        .args(["link", "add", &va, "netns", &a.0, "type", "veth", "peer", "name", &vb, "netns", &b.0])
        .status();
    assert!(ok.map(|s| s.success()).unwrap_or(false), "cannot make a veth pair");
    a.sh_ok(&format!("ip link set lo up; ip addr add 10.48.0.1/24 dev {va}; ip link set {va} up"));
    b.sh_ok(&format!("ip link set lo up; ip addr add 10.48.0.2/24 dev {vb}; ip link set {vb} up"));
    // The bottleneck and the loss, on the way from a to b.
    a.sh_ok(&format!("tc qdisc add dev {va} root tbf rate 100mbit burst 64kb latency 50ms"));
    // (Dropped as they arrive: a drop on the sender's output hook would
    // fail its sendto with EPERM, which is no loss on a path.)
    b.sh_ok(
        "nft add table inet imp && nft add chain inet imp in '{ type filter hook input priority 0; }' && \
          nft add rule inet imp in ip saddr 10.48.0.1 numgen random mod 100 == 0 drop",
    );

    let daemon = |ns: &Netns, name: &str, tunnel: &str| {
        let sock = s.path(&format!("{name}.sock"));
        let id_file = s.path(&format!("{name}.id"));
        let p = ns.spawn(
            &s,
            &format!("exec r2d -s {} -k {} -v {tunnel}", sock.display(), id_file.display()),
            &format!("d{name}"),
        );
        wait_for("a daemon", SOON, || s.r2(&sock, &["id"]).status.success());
        let id = stdout_of(&s.r2(&sock, &["id"])).trim().to_string();
        (p, sock, id)
    };
    let (_da, sa, _) = daemon(&a, "a", "cat");
    let (_db, sb, idb) =
        daemon(&b, "b", &format!("\"{}\"", counter("r2.count").replace('"', "\\\"").replace('$', "\\$")));
    let _acceptor =
        b.spawn(&s, &format!("R2_SOCKET={} exec socat udp-l:47230 exec:'r2 connect -'", sb.display()), "acc");
    wait_for("the UDP listener", SOON, || {
        let o = Command::new("ip").args(["netns", "exec", &b.0, "ss", "-lun"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).contains(":47230")
    });
    let _link =
        a.spawn(&s, &format!("exec r2 -s {} connect -n {idb} 'socat udp:10.48.0.2:47230 -'", sa.display()), "link");
    let up = Instant::now() + SOON;
    while !stdout_of(&s.r2(&sa, &["ls"])).contains(&idb) {
        if Instant::now() > up {
            for f in ["link.err", "acc.err", "da.err", "db.err"] {
                eprintln!("== {f}\n{}", std::fs::read_to_string(s.path(f)).unwrap_or_default());
            }
            panic!("no link within {SOON:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _sink = b.spawn(&s, &format!("socat -u tcp-l:47231,reuseaddr - | {}", counter("tcp.count")), "tcpsink");
    wait_for("the TCP listener", SOON, || {
        let o = Command::new("ip").args(["netns", "exec", &b.0, "ss", "-ltn"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).contains(":47231")
    });

    let secs = 12;
    let _tcp = a.spawn(&s, &format!("exec timeout {secs} socat -u /dev/zero tcp:10.48.0.2:47231"), "tcp");
    let _r2 = a.spawn(&s, &format!("exec timeout {secs} r2 -s {} tunnel {idb} - < /dev/zero", sa.display()), "r2");
    // The rates while both run: between 3 s and 10 s.
    let t0 = Instant::now();
    let sample = |at: u64| {
        while t0.elapsed() < Duration::from_secs(at) {
            std::thread::sleep(Duration::from_millis(20));
        }
        (count(&s, "tcp.count"), count(&s, "r2.count"))
    };
    let (t3, r3) = sample(3);
    let (t10, r10) = sample(10);
    if t10 == t3 || r10 == r3 {
        for f in ["tcp.err", "r2.err", "tcpsink.err", "link.err", "acc.err", "da.err", "db.err"] {
            eprintln!("== {f}\n{}", std::fs::read_to_string(s.path(f)).unwrap_or_default());
        }
    }
    let (t, r) = (t10 - t3, r10 - r3);
    let mbit = |n: u64| n as f64 * 8.0 / 1e6 / 7.0;
    eprintln!(
        "through 100 Mbit/s and 1 % loss, both at once: TCP {:.1} Mbit/s, r2 over UDP {:.1} Mbit/s, ratio {:.2}",
        mbit(t),
        mbit(r),
        r as f64 / t.max(1) as f64
    );
    eprintln!("{}", stdout_of(&s.r2(&sa, &["ls", "-l"])));
    let ratio = r as f64 / t.max(1) as f64;
    assert!((0.5..=2.0).contains(&ratio), "unfair: r2 {r} bytes beside TCP {t} bytes ({ratio:.2})");
    assert!(mbit(t + r) > 40.0, "together {:.1} Mbit/s of 100", mbit(t + r));
}
