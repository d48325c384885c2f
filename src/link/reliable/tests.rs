//! The reliability state machine over a simulated channel: seeded loss,
//! reordering, duplication and delay, in virtual time.

use super::*;
use crate::wire::message::Kind;
use crate::wire::NodeId;

/// xorshift64*: a seeded, reproducible source of choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A path: what it does to packets.
#[derive(Clone, Copy)]
struct Path {
    loss: u64,
    duplicate: u64,
    reorder: u64,
    delay: Micros,
    /// Packets larger than this are lost.
    mtu: usize,
}

struct InFlight {
    at: Micros,
    to: usize,
    bytes: Vec<u8>,
}

struct Sim {
    ends: [Reliable; 2],
    wire: Vec<InFlight>,
    rng: Rng,
    path: Path,
    now: Micros,
    got: [Vec<Packet>; 2],
    sent_packets: [u64; 2],
    max_unacked: u64,
    max_out_of_order: u64,
    /// Acknowledgements due are sent by [`Reliable::acknowledge`] first.
    acks_alone: bool,
}

impl Sim {
    fn new(seed: u64, path: Path, sizes: Sizes) -> Sim {
        Sim {
            ends: [Reliable::new(sizes, 0), Reliable::new(sizes, 0)],
            wire: Vec::new(),
            rng: Rng(seed | 1),
            path,
            now: 0,
            got: [Vec::new(), Vec::new()],
            sent_packets: [0; 2],
            max_unacked: 0,
            max_out_of_order: 0,
            acks_alone: false,
        }
    }

    /// Puts a packet from end `i` on the wire, or loses it.
    fn put(&mut self, i: usize, buf: &[u8]) {
        self.sent_packets[i] += 1;
        if buf.len() > self.path.mtu || self.rng.chance(self.path.loss) {
            return;
        }
        let copies = if self.rng.chance(self.path.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let extra = if self.rng.chance(self.path.reorder) { self.path.delay * 2 } else { 0 };
            self.wire.push(InFlight { at: self.now + self.path.delay + extra, to: 1 - i, bytes: buf.to_vec() });
        }
    }

    fn send_all(&mut self) {
        let mut buf = Vec::new();
        for i in 0..2 {
            // As a link's reader does: an acknowledgement due goes alone.
            if self.acks_alone && self.ends[i].acknowledge(self.now, &mut buf) {
                self.put(i, &buf);
            }
            while self.ends[i].transmit(self.now, &mut buf) {
                self.put(i, &buf);
            }
            self.max_unacked = self.max_unacked.max(self.ends[i].unacked_bytes());
            self.max_out_of_order = self.max_out_of_order.max(self.ends[i].out_of_order_bytes);
        }
    }

    /// Runs until `done` or `limit` of virtual time.
    fn run(&mut self, limit: Micros, mut done: impl FnMut(&Sim) -> bool) {
        while self.now < limit && !done(self) {
            self.send_all();
            let mut next = self.wire.iter().map(|p| p.at).min();
            for e in &mut self.ends {
                let pace = if e.has_work() { e.pacing_delay(self.now).map(|d| self.now + d.max(1)) } else { None };
                for t in [e.next_timeout(), pace].into_iter().flatten() {
                    next = Some(next.map_or(t, |n: Micros| n.min(t)));
                }
            }
            let Some(next) = next else { break };
            self.now = self.now.max(next);
            let due: Vec<InFlight> = {
                let (due, rest): (Vec<_>, Vec<_>) = self.wire.drain(..).partition(|p| p.at <= self.now);
                self.wire = rest;
                due
            };
            for p in due {
                self.ends[p.to].on_packet(self.now, &p.bytes).unwrap();
                while let Some(m) = self.ends[p.to].deliver() {
                    self.got[p.to].push(m);
                }
            }
            for e in &mut self.ends {
                if e.next_timeout().is_some_and(|t| t <= self.now) {
                    e.on_timeout(self.now);
                }
            }
        }
    }
}

fn messages(n: usize, seed: u64) -> Vec<Packet> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let len = [0, 1, 100, 1500, 5000, 65_536][(rng.next() % 6) as usize];
            let body: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            Packet::new(Kind::To, NodeId([i as u8; 32]), &body)
        })
        .collect()
}

const SIZES: Sizes = Sizes { base: 1200, max: 1200 };

fn exchange(seed: u64, path: Path, n: usize) -> Sim {
    exchange_with(seed, path, n, false)
}

fn exchange_with(seed: u64, path: Path, n: usize, acks_alone: bool) -> Sim {
    let ms = messages(n, seed);
    let mut sim = Sim::new(seed, path, SIZES);
    sim.acks_alone = acks_alone;
    for m in &ms {
        sim.ends[0].push(m.clone());
        sim.ends[1].push(m.clone());
    }
    sim.run(600_000_000, |s| s.got[0].len() == n && s.got[1].len() == n);
    assert_eq!(sim.got[1].len(), n, "seed {seed}: A to B delivered {} of {n}", sim.got[1].len());
    for side in 0..2 {
        let e = &sim.ends[1 - side];
        assert_eq!(sim.got[side].len(), n, "seed {seed} side {side} at {}: in flight {} cwnd {} sent {} lost {:?} backlog {} next_new {} end {} base {} timeout {:?}", sim.now, e.in_flight, e.cwnd, e.sent.len(), e.lost, e.backlog.len(), e.next_new, e.send_end(), e.send_base, e.next_timeout());
        if let Some(i) = (0..n).find(|&i| sim.got[side][i] != ms[i]) {
            panic!("seed {seed}: side {side} message {i} of {n}: {:?} != {:?}", sim.got[side][i], ms[i]);
        }
    }
    assert!(sim.max_unacked <= WINDOW + 70_000, "seed {seed}: {} unacknowledged", sim.max_unacked);
    assert!(sim.max_out_of_order <= WINDOW, "seed {seed}: {} out of order", sim.max_out_of_order);
    sim
}

#[test]
fn a_clean_path_delivers_in_order_without_retransmission() {
    let path = Path { loss: 0, duplicate: 0, reorder: 0, delay: 10_000, mtu: 1500 };
    let sim = exchange(1, path, 200);
    for e in &sim.ends {
        assert_eq!(e.counts.retransmitted_bytes, 0);
        assert_eq!(e.counts.packets_lost, 0);
    }
}

#[test]
fn lossy_reordering_duplicating_paths_deliver_everything_exactly_once() {
    for seed in 1..=12u64 {
        let loss = [0, 5, 10, 30][seed as usize % 4];
        let path = Path { loss, duplicate: 5, reorder: 10, delay: 5_000 + seed * 1000, mtu: 1500 };
        // Also with acknowledgements sent alone, as a link's reader does.
        let sim = exchange_with(seed, path, 120, seed % 2 == 0);
        if loss > 0 {
            assert!(sim.ends[0].counts.retransmitted_bytes > 0, "seed {seed}");
        }
    }
}

/// An acknowledgement that is due goes alone, once; one that is not due
/// yet waits for its delay, and data is left to `transmit`.
#[test]
fn an_acknowledgement_due_goes_alone() {
    let path = Path { loss: 0, duplicate: 0, reorder: 0, delay: 1_000, mtu: 1500 };
    let mut sim = Sim::new(5, path, SIZES);
    sim.ends[0].push(Packet::new(Kind::To, NodeId([9; 32]), &[7; 4000]));
    let mut sent = vec![Vec::new(); 3];
    for p in &mut sent {
        assert!(sim.ends[0].transmit(0, p));
    }
    let mut out = Vec::new();
    let receiver = &mut sim.ends[1];
    assert!(!receiver.acknowledge(10, &mut out), "nothing received");
    receiver.on_packet(10, &sent[0]).unwrap();
    assert!(!receiver.acknowledge(10, &mut out) && out.is_empty(), "one packet: the ack may wait");
    receiver.on_packet(20, &sent[1]).unwrap();
    assert!(receiver.acknowledge(20, &mut out), "two packets: at once");
    let (_, frames) = packet::decode(&out).unwrap();
    assert!(matches!(frames[..], [Frame::Ack { .. }]), "{frames:?}");
    assert!(!receiver.acknowledge(20, &mut out), "once");
    assert!(!receiver.transmit(20, &mut out), "and transmit has nothing left to send");
    receiver.on_packet(30, &sent[2]).unwrap();
    assert!(!receiver.acknowledge(29 + MAX_ACK_DELAY, &mut out));
    assert!(receiver.acknowledge(30 + MAX_ACK_DELAY, &mut out), "its delay is up");
    let sender = &mut sim.ends[0];
    assert!(sender.in_flight() > 0);
    sender.on_packet(40 + MAX_ACK_DELAY, &out).unwrap();
    assert_eq!(sender.in_flight(), 0, "the last acknowledges all three");
}

#[test]
fn congestion_window_grows_and_shrinks_on_loss() {
    let path = Path { loss: 0, duplicate: 0, reorder: 0, delay: 20_000, mtu: 1500 };
    let mut sim = Sim::new(3, path, SIZES);
    let start = sim.ends[0].cwnd();
    assert_eq!(start, 12_000, "10 packets of 1200 (RFC 9002 7.2)");
    for m in messages(400, 3) {
        sim.ends[0].push(m);
    }
    sim.run(200_000, |_| false);
    let grown = sim.ends[0].cwnd();
    assert!(grown > 4 * start, "slow start: {start} -> {grown}");
    // Every packet lost for a while: the window shrinks, never under two
    // packets.
    let mut peak = grown;
    sim.path.loss = 100;
    sim.run(sim.now + 30_000, |sim| {
        peak = peak.max(sim.ends[0].cwnd());
        false
    });
    sim.path.loss = 0;
    sim.run(sim.now + 60_000, |_| false);
    let after = sim.ends[0].cwnd();
    assert!(after < peak && after >= 2 * 1200, "{peak} -> {after}");
}

#[test]
fn past_slow_start_the_window_grows_by_a_tcp_segment_per_round_trip_whatever_the_packet_size() {
    let mut r = Reliable::new(SIZES, 0);
    r.search.size = 8136;
    r.cwnd_limited = true;
    r.cwnd = 100_000;
    r.ssthresh = 100_000;
    // A window's worth acknowledged, in pieces: about one segment more
    // (a little less, as the window grows on the way), not one packet.
    for _ in 0..10 {
        r.grow(10_000);
    }
    assert!((100_000 + 1400..=100_000 + 1448).contains(&r.cwnd), "{}", r.cwnd);
}

#[test]
fn a_congestion_event_takes_the_window_to_seven_tenths_once_per_round_trip() {
    let mut r = Reliable::new(SIZES, 0);
    r.cwnd = 100_000;
    r.congestion_event(1_000, 500);
    assert_eq!((r.cwnd, r.ssthresh), (70_000, 70_000), "CUBIC's beta");
    // A packet sent before the recovery began is part of the same event.
    r.congestion_event(2_000, 900);
    assert_eq!(r.cwnd, 70_000);
    // One sent after it is a new one; and the floor is two packets.
    r.congestion_event(3_000, 1_500);
    assert_eq!(r.cwnd, 49_000);
    r.cwnd = 3_000;
    r.congestion_event(4_000, 3_500);
    assert_eq!(r.cwnd, r.min_cwnd());
}

#[test]
fn pacing_spreads_a_window_over_the_round_trip() {
    let path = Path { loss: 0, duplicate: 0, reorder: 0, delay: 50_000, mtu: 1500 };
    let mut sim = Sim::new(4, path, SIZES);
    for m in messages(50, 4) {
        sim.ends[0].push(m);
    }
    // At the start: a burst of at most BURST packets, then paced.
    let mut buf = Vec::new();
    let mut burst = 0;
    while sim.ends[0].transmit(0, &mut buf) {
        burst += 1;
    }
    assert!(burst as u64 <= BURST, "{burst} packets at once");
    let wait = sim.ends[0].pacing_delay(0).unwrap();
    assert!(wait > 0 && wait < 100_000, "{wait} µs to the next");
}

#[test]
fn best_effort_messages_are_never_retransmitted_and_drop_whole() {
    let path = Path { loss: 10, duplicate: 5, reorder: 10, delay: 5_000, mtu: 1500 };
    let mut sim = Sim::new(5, path, SIZES);
    let ms: Vec<Packet> =
        (0..60u32).map(|i| Packet::new(Kind::To, NodeId([1; 32]), &vec![(i % 251) as u8; 4000])).collect();
    let reliable = messages(20, 5);
    for (i, m) in ms.iter().enumerate() {
        assert!(sim.ends[0].push_best_effort(m.clone()));
        if i % 3 == 0 {
            sim.ends[0].push(reliable[i / 3].clone());
        }
    }
    sim.run(30_000_000, |s| {
        s.got[1].iter().filter(|p| p.len() != 4000 + 33).count() == 20 && s.wire.is_empty() && !s.ends[0].has_work()
    });
    let (be, rel): (Vec<&Packet>, Vec<&Packet>) = sim.got[1].iter().partition(|p| p.len() == 4000 + 33);
    assert!(rel.into_iter().cloned().collect::<Vec<_>>() == reliable, "the reliable ones all, in order");
    assert!(be.iter().all(|p| ms.contains(p)), "no best-effort message is a mix of others");
    let distinct: std::collections::HashSet<&[u8]> = be.iter().map(|p| p.bytes()).collect();
    assert_eq!(distinct.len(), be.len(), "no best-effort message twice");
    assert!(be.len() < ms.len() && be.len() > ms.len() / 3, "{} of {} best-effort arrived", be.len(), ms.len());
}

#[test]
fn the_packet_size_is_probed_up_to_what_the_path_carries() {
    let path = Path { loss: 0, duplicate: 0, reorder: 0, delay: 2_000, mtu: 3000 };
    let mut sim = Sim::new(6, path, Sizes { base: 1200, max: 8000 });
    for m in messages(300, 6) {
        sim.ends[0].push(m);
    }
    sim.run(5_000_000, |_| false);
    let size = sim.ends[0].packet_size();
    assert!((2900..=3000).contains(&size), "found {size} on a path of 3000");
    assert_eq!(sim.got[1].len(), 300);
}

#[test]
fn garbage_that_passed_the_checksum_is_refused() {
    let mut r = Reliable::new(SIZES, 0);
    // A stream whose length prefix is over the cap.
    let mut b = Vec::new();
    packet::start(0, &mut b);
    packet::stream(0, &[0x7f, 0xff, 0xff, 0xff], &mut b);
    assert!(r.on_packet(0, &b).is_err());
    let mut r = Reliable::new(SIZES, 0);
    assert!(r.on_packet(0, &[1, 2, 3]).is_err());
    // Data far beyond the window is dropped, not buffered.
    let mut r = Reliable::new(SIZES, 0);
    let mut b = Vec::new();
    packet::start(0, &mut b);
    packet::stream(WINDOW + 5, &[1; 100], &mut b);
    r.on_packet(0, &b).unwrap();
    assert_eq!(r.out_of_order_bytes, 0);
    // An acknowledgement of packets never sent changes nothing.
    let mut b = Vec::new();
    packet::start(1, &mut b);
    packet::ack(0, &[(1000, 5)], &mut b);
    r.on_packet(0, &b).unwrap();
    assert_eq!(r.largest_acked, None);
}
