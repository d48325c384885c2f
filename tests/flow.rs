//! Flow control: a tunnel whose consumer is stopped must not slow another
//! tunnel on the same link, nor grow any daemon's memory with the data in
//! flight; it completes intact once the consumer runs again.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

/// A ping-pong of one byte, `n` times, through a tunnel to `cat`; returns
/// the sorted round trips in microseconds.
fn ping_pong(s: &Scratch, sock: &std::path::Path, path: &str, n: usize, out: &str) -> Vec<u64> {
    let perl = format!(
        r#"perl -MTime::HiRes=time -e '
            $| = 1;
            syswrite(STDOUT, "echo\n");
            my @rtt;
            for (1..{n}) {{
                my $t = time;
                syswrite(STDOUT, "x") == 1 or die;
                sysread(STDIN, my $b, 1) == 1 or die "no echo";
                push @rtt, int((time - $t) * 1e6);
            }}
            open my $f, ">", "{out}" or die;
            print $f join("\n", sort {{ $a <=> $b }} @rtt), "\n";
        '"#
    );
    let mut c = Command::new(bin());
    c.arg("-s").arg(sock).args(["tunnel", path, &perl]).current_dir(&s.dir);
    let o = run_bounded(c, Duration::from_secs(60));
    assert!(o.status.success(), "ping-pong: {}", stderr_of(&o));
    std::fs::read_to_string(s.path(out)).unwrap().lines().filter_map(|l| l.parse().ok()).collect()
}

fn median(v: &[u64]) -> u64 {
    v[v.len() / 2]
}

/// `n` tunnels at once, each echoing 1 MiB through cat; returns the time.
fn parallel_echoes(s: &Scratch, sock: &std::path::Path, path: &str, n: usize) -> Duration {
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do \
           ({{ echo echo; head -c 1048576 /dev/zero; }} | r2 -s {sock} tunnel {path} - | wc -c > echo.$i) & \
           i=$((i+1)); done; wait",
        sock = sock.display()
    );
    let t0 = std::time::Instant::now();
    let o = run_bounded(s.sh(&script), Duration::from_secs(300));
    let t = t0.elapsed();
    assert!(o.status.success(), "{}", stderr_of(&o));
    for i in 0..n {
        let got = std::fs::read_to_string(s.path(&format!("echo.{i}"))).unwrap();
        assert_eq!(got.trim(), "1048576", "echo tunnel {i}");
    }
    t
}

#[test]
fn a_stopped_consumer_stalls_only_its_own_tunnel() {
    stalled_consumer(256 << 20, 0);
}

/// 1 GiB into a stopped consumer beside 100 live tunnels (make stress).
#[test]
#[ignore = "stress: run by make stress"]
fn stress_a_stopped_consumer_beside_100_live_tunnels() {
    stalled_consumer(1 << 30, 100);
}

fn stalled_consumer(size: u64, live: usize) {
    need("perl");
    let s = Scratch::new("flow");
    let a = Daemon::start(&s, "a", &[]);
    let b = Daemon::start(&s, "b", &["read mode; if [ \"$mode\" = bulk ]; then exec sha256sum; else exec cat; fi"]);
    let _l = connect(&s, &a, &[], &format!("R2_SOCKET={} r2 connect -", b.sock.display()), "link");
    a.wait_neighbours(&s, &[&b.id], SOON);
    let base = ping_pong(&s, &a.sock, &b.id, 200, "base");
    let base_live = (live > 0).then(|| parallel_echoes(&s, &a.sock, &b.id, live));
    let idle = (rss_kib(a.proc.pid()), rss_kib(b.proc.pid()));

    // The data offered to a sha256sum that is stopped as soon as it starts.
    let script = format!("{{ echo bulk; head -c {size} /dev/zero; }}; exec >&-; cat > sum");
    let mut c = Command::new(bin());
    c.arg("-s").arg(&a.sock).args(["tunnel", &b.id, &script]).current_dir(&s.dir);
    let mut bulk = Proc::spawn(c, "bulk", &s.path("bulk.err"));
    let mut sha = Vec::new();
    wait_for("sha256sum to start", SOON, || {
        sha = children_named(b.proc.pid(), "sha256sum");
        !sha.is_empty()
    });
    kill_pid(sha[0], libc_sig::STOP);
    // Let the window fill; the other tunnels must not notice.
    let during = ping_pong(&s, &a.sock, &b.id, 200, "during");
    let held = (rss_kib(a.proc.pid()), rss_kib(b.proc.pid()));
    if let Some(before) = base_live {
        let beside = parallel_echoes(&s, &a.sock, &b.id, live);
        eprintln!("{live} tunnels echoing 1 MiB each: {before:?} alone, {beside:?} beside the stalled one");
        assert!(beside <= before * 2 + Duration::from_secs(2), "{beside:?} vs {before:?}");
    }
    assert!(bulk.is_running(), "the bulk tunnel waits for its consumer");
    eprintln!(
        "ping-pong median: {} us idle, {} us beside a stalled tunnel; p99 {} / {} us",
        median(&base),
        median(&during),
        base[base.len() * 99 / 100],
        during[during.len() * 99 / 100]
    );
    eprintln!("RSS KiB: a {} -> {}, b {} -> {}", idle.0, held.0, idle.1, held.1);
    assert!(
        median(&during) <= 5 * median(&base) + 5_000,
        "latency beside a stalled tunnel: {} us vs {} us",
        median(&during),
        median(&base)
    );
    // Memory: the windows (1 MiB each way), not the 256 MiB offered.
    for (i, h) in [idle.0, idle.1].iter().zip([held.0, held.1]) {
        assert!(h <= i + 8 * 1024, "RSS grew from {i} KiB to {h} KiB with a stalled tunnel");
    }
    kill_pid(sha[0], libc_sig::CONT);
    assert!(bulk.wait_exit(Duration::from_secs(600)).success());
    let o = run_bounded(s.sh(&format!("head -c {size} /dev/zero | sha256sum")), Duration::from_secs(120));
    assert_eq!(std::fs::read_to_string(s.path("sum")).unwrap(), stdout_of(&o));
}
