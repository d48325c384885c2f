//! Packet mode and a VPN: packet boundaries kept end to end, and `socat
//! tun` on both sides of a tunnel giving two network namespaces an `r20`
//! interface that carries ping and a bulk TCP transfer.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

/// Writes of every size from 1 to 4096 bytes, echoed by `r2d -p cat`, each
/// read back whole, in order: over one hop, and over two, where each
/// Datagram is sealed end to end (as an unordered message).
#[test]
fn packet_mode_keeps_every_record_whole() {
    for hops in [1, 2] {
        records_whole(hops);
    }
}

fn records_whole(hops: usize) {
    need("perl");
    let s = Scratch::new(&format!("rec{hops}"));
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &["-p", "cat"]);
    let r = (hops == 2).then(|| Daemon::start(&s, "r", &[]));
    let first = r.as_ref().unwrap_or(&b);
    let _l = connect(&s, &a, &[], &format!("R2_SOCKET={} r2 connect -", first.sock.display()), "link");
    let _rb = r.as_ref().map(|r| connect(&s, r, &[], &format!("R2_SOCKET={} r2 connect -", b.sock.display()), "rb"));
    a.wait_neighbours(&s, &[&first.id], SOON);
    if let Some(r) = &r {
        r.wait_neighbours(&s, &[&a.id, &b.id], SOON);
    }
    let path = match &r {
        Some(r) => format!("{}/{}", r.id, b.id),
        None => b.id.clone(),
    };
    let perl = r#"perl -e '
        my $pid = fork();
        if ($pid == 0) {
            close STDIN;
            for my $n (1..4096) {
                my $w = syswrite(STDOUT, chr($n % 251) x $n);
                die "short write" unless $w == $n;
            }
            exit 0;
        }
        close STDOUT;
        my ($want, $bad) = (1, 0);
        while ($want <= 4096) {
            my $r = sysread(STDIN, my $buf, 65536);
            last unless $r;
            $bad++ if $r != $want || $buf ne chr($want % 251) x $want;
            $want++;
        }
        waitpid($pid, 0);
        open my $f, ">", "result" or die;
        print $f "records ", $want - 1, " bad $bad\n";
    '"#;
    let mut c = Command::new(bin());
    c.arg("-s").arg(&a.sock).args(["tunnel", "-p", &path, perl]).current_dir(&s.dir);
    let o = run_bounded(c, Duration::from_secs(60));
    assert!(o.status.success(), "{hops} hops: {}", stderr_of(&o));
    assert_eq!(std::fs::read_to_string(s.path("result")).unwrap().trim(), "records 4096 bad 0", "{hops} hops");
}

/// `(rx_packets, tx_packets)` of a device in a namespace.
fn packets(ns: &Netns, dev: &str) -> (u64, u64) {
    let o =
        ns.sh(&format!("cat /sys/class/net/{dev}/statistics/rx_packets /sys/class/net/{dev}/statistics/tx_packets"));
    let v: Vec<u64> = stdout_of(&o).split_whitespace().filter_map(|x| x.parse().ok()).collect();
    assert_eq!(v.len(), 2, "no {dev} in {}", ns.0);
    (v[0], v[1])
}

fn tun(addr: &str) -> String {
    format!("socat -b 65536 TUN:{addr}/24,tun-type=tun,iff-no-pi,iff-up,tun-name=r20 -")
}

/// Two namespaces, each with a daemon; `r2d -p "socat tun…"` on one side and
/// `r2 tunnel -p B "socat tun…"` on the other. Ping works across r20, and so
/// does iperf3, with the packet counts of the two devices agreeing.
#[test]
fn vpn_between_two_namespaces() {
    assert!(is_root(), "this test needs root (network namespaces, tun devices)");
    assert!(exists("/dev/net/tun"), "this test needs /dev/net/tun");
    need("ip");
    need("socat");
    need("ping");
    need("iperf3");
    let s = Scratch::new("vpn");
    let na = Netns::new(format!("r2a-{}", std::process::id()));
    let nb = Netns::new(format!("r2b-{}", std::process::id()));
    let start = |ns: &Netns, name: &str, extra: &[&str]| {
        let sock = s.path(&format!("{name}.sock"));
        let mut c = ns.cmd(bin());
        c.arg("daemon").arg("-s").arg(&sock).arg("-k").arg(s.path(&format!("{name}.id"))).args(extra);
        c.env("PATH", s.env_path()).current_dir(&s.dir);
        let p = Proc::spawn(c, name, &s.path(&format!("{name}.log")));
        wait_for("daemon", SOON, || s.r2(&sock, &["id"]).status.success());
        let id = stdout_of(&s.r2(&sock, &["id"])).trim().to_string();
        (p, sock, id)
    };
    let (_pa, sa, _ida) = start(&na, "a", &[]);
    let (_pb, sb, idb) = start(&nb, "b", &["-p", &tun("10.47.0.2")]);
    let mut link = Command::new(bin());
    link.arg("-s").arg(&sa).args(["connect", &format!("R2_SOCKET={} r2 connect -", sb.display())]);
    link.env("PATH", s.env_path());
    let _link = Proc::spawn(link, "link", &s.path("link.err"));
    wait_for("the link", SOON, || stdout_of(&s.r2(&sa, &["ls"])).contains(&idb));
    let mut t = na.cmd(bin());
    t.arg("-s").arg(&sa).args(["tunnel", "-p", &idb, &tun("10.47.0.1")]);
    let _tunnel = Proc::spawn(t, "tunnel", &s.path("tunnel.err"));
    wait_for("r20 in both namespaces", SOON, || {
        na.sh("ip link show r20").status.success() && nb.sh("ip link show r20").status.success()
    });
    let o = na.sh("ping -c 3 -i 0.2 -W 5 10.47.0.2");
    assert!(o.status.success(), "ping across r20: {}{}", stdout_of(&o), stderr_of(&o));
    assert!(stdout_of(&o).contains("3 received"), "{}", stdout_of(&o));

    let mut srv = nb.cmd("iperf3");
    srv.args(["-s", "-1", "-B", "10.47.0.2"]).stdout(std::process::Stdio::null());
    let _srv = Proc::spawn(srv, "iperf3-s", &s.path("iperf-s.err"));
    wait_for("iperf3 server", SOON, || nb.sh("ss -ltn | grep -q 10.47.0.2:5201").status.success());
    let o = na.sh("iperf3 -c 10.47.0.2 -t 3 -f m");
    assert!(o.status.success(), "iperf3: {}{}", stdout_of(&o), stderr_of(&o));
    let report = stdout_of(&o);
    let line = report.lines().rfind(|l| l.contains("receiver")).unwrap_or_default().to_string();
    eprintln!("iperf3 across the r2 VPN: {line}");
    assert!(line.contains("Mbits/sec"), "{report}");
    // The traffic has stopped: what one device sent, the other received.
    let mut counts = ((0, 0), (0, 0));
    wait_for("the packet counts to agree", SOON, || {
        counts = (packets(&na, "r20"), packets(&nb, "r20"));
        let ((arx, atx), (brx, btx)) = counts;
        atx == brx && btx == arx
    });
    let ((arx, atx), _) = counts;
    assert!(atx > 1000 && arx > 100, "bulk traffic went through: {counts:?}");
    eprintln!("r20 packets: a tx {atx} rx {arx}, b matches");
}
