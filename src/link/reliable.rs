//! Reliability on a robust link, with no I/O: what makes packets that may
//! be lost, reordered or duplicated into an ordered, exactly-once stream
//! of messages, and best-effort messages beside it.
//!
//! Fed messages to send, packets received and the time, [`Reliable`] says
//! which packets to send and when, and which messages arrived. It follows
//! QUIC's recovery (RFC 9002): packet numbers that are never reused, so an
//! acknowledgement is never ambiguous; acknowledgements of ranges; loss
//! declared by packet and time thresholds; a probe timeout with backoff;
//! NewReno congestion control (slow start, then growth by a TCP segment
//! per round trip, a decrease to 0.7 of the window on loss once per round
//! trip, as CUBIC and so Linux's TCP do, a floor of two packets) with
//! pacing at 1.25 x cwnd per smoothed round trip. The reliable messages
//! form one stream (the stream framing's `length message`), sent and
//! retransmitted by offset, so a message larger than a packet is split and
//! joined for free; the sender keeps at most [`WINDOW`] bytes
//! unacknowledged and the receiver at most as many out of order, so memory
//! is bounded per link. Best-effort messages (a
//! packet-mode tunnel's data, RFC 9221) go in pieces that are never
//! retransmitted: a message whose piece is lost is dropped whole. The
//! packet size starts at the size that works on any path and is probed
//! upward (RFC 8899): a padded probe that is acknowledged raises it.

use super::packet::{self, Frame, MAX_RANGES, NUMBER, PIECE_HEAD, STREAM_HEAD};
use super::ranges::Ranges;
use super::stream;
use crate::wire::message::MAX_MESSAGE;
use crate::wire::Packet;
use std::collections::{BTreeMap, VecDeque};

/// Time in microseconds, from any fixed start.
pub type Micros = u64;

/// The most unacknowledged stream bytes a sender keeps, and the most
/// bytes beyond the in-order point a receiver buffers.
pub const WINDOW: u64 = 4 * 1024 * 1024;
/// The most best-effort bytes waiting to be sent; more are dropped.
pub const BEST_EFFORT_QUEUE: usize = 256 * 1024;
/// Best-effort messages being joined at once; the oldest is dropped.
const ASSEMBLIES: usize = 32;

/// RFC 9002's constants.
const PACKET_THRESHOLD: u64 = 3;
const GRANULARITY: Micros = 1_000;
const INITIAL_RTT: Micros = 333_000;
/// How long a receiver may hold an acknowledgement.
pub const MAX_ACK_DELAY: Micros = 5_000;
/// The longest probe timeout, however many have passed.
const MAX_PTO: Micros = 2_000_000;
/// Acknowledge at once after this many ack-eliciting packets.
const ACK_EVERY: u32 = 2;
/// What the window grows by per round trip once past slow start: the
/// segment of a TCP on Ethernet (1500 less 52 bytes of headers), whatever
/// r2's packet size. Growing by one packet of 8136 bytes, as RFC 9002 has
/// it for packets that fit the path, took three times a CUBIC TCP's share
/// of a lossy bottleneck (tests/impaired.rs).
const GROWTH_PER_ROUND_TRIP: u64 = 1448;
/// How many packets pacing lets go at once.
const BURST: u64 = 10;
/// How many probes of one size may be lost before that size is given up.
const MAX_PROBES: u32 = 3;
/// How long a raised packet size is trusted before the search starts again.
const RAISE_AGAIN: Micros = 600_000_000;

/// A link's packet sizes: where to start, and the most to probe for.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub base: usize,
    pub max: usize,
}

/// What a sent packet carried, until it is acknowledged or lost.
#[derive(Debug)]
struct Sent {
    number: u64,
    time: Micros,
    size: usize,
    ack_eliciting: bool,
    /// Counted in bytes in flight (all but acknowledgement-only packets
    /// and size probes).
    in_flight: bool,
    stream: Vec<(u64, u64)>,
    /// A size probe of this many bytes.
    probe: Option<usize>,
}

/// The search for the largest packet that gets through (RFC 8899).
#[derive(Debug)]
struct Search {
    /// The size in use; known to get through.
    size: usize,
    /// The most that may get through.
    high: usize,
    sizes: Sizes,
    /// A probe in flight: its size.
    probing: Option<usize>,
    lost_at_size: u32,
    /// When the size was last raised or the search ended.
    since: Micros,
}

impl Search {
    fn next_probe(&self, now: Micros) -> Option<usize> {
        if self.probing.is_some() {
            return None;
        }
        if self.high < self.size + 16 {
            return (now.saturating_sub(self.since) >= RAISE_AGAIN && self.size < self.sizes.max)
                .then_some(self.sizes.max);
        }
        Some((self.size + self.high).div_ceil(2))
    }
}

/// A best-effort message waiting to go, in pieces.
#[derive(Debug)]
struct Outgoing {
    id: u32,
    msg: Packet,
    next: u16,
    count: u16,
    piece: usize,
}

/// A best-effort message being joined.
#[derive(Debug)]
struct Assembly {
    id: u32,
    count: u16,
    got: Vec<Option<Vec<u8>>>,
    have: u16,
}

/// Counters of what the link did, for `r2 stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets_sent: u64,
    pub packets_lost: u64,
    pub retransmitted_bytes: u64,
    pub duplicates: u64,
    pub best_effort_dropped: u64,
    pub probe_timeouts: u64,
}

/// One robust link's reliability and congestion state.
#[derive(Debug)]
pub struct Reliable {
    // Sending the stream.
    backlog: VecDeque<Packet>,
    /// Stream bytes from `send_base` to `send_end`.
    buf: VecDeque<u8>,
    send_base: u64,
    next_new: u64,
    acked: Ranges,
    lost: Ranges,
    // Best effort.
    outgoing: VecDeque<Outgoing>,
    outgoing_bytes: usize,
    next_id: u32,
    // Packets.
    next_number: u64,
    sent: VecDeque<Sent>,
    largest_acked: Option<u64>,
    // Recovery.
    latest_rtt: Micros,
    srtt: Micros,
    rttvar: Micros,
    min_rtt: Micros,
    have_rtt: bool,
    loss_time: Option<Micros>,
    pto_count: u32,
    last_eliciting: Option<Micros>,
    probes_due: u32,
    // Congestion.
    cwnd: u64,
    ssthresh: u64,
    in_flight: u64,
    recovery_start: Option<Micros>,
    cwnd_limited: bool,
    tokens: u64,
    tokens_at: Micros,
    // Packet size.
    search: Search,
    // Receiving.
    received: Ranges,
    largest_received: Option<(u64, Micros)>,
    eliciting_unacked: u32,
    ack_due: Option<Micros>,
    recv_next: u64,
    out_of_order: BTreeMap<u64, Vec<u8>>,
    out_of_order_bytes: u64,
    partial: Vec<u8>,
    assemblies: VecDeque<Assembly>,
    delivered: VecDeque<Packet>,
    /// The numbers of the packets that carried this end's first stream
    /// byte (its Hello), the first few.
    start_numbers: Vec<u64>,
    pub counts: Counts,
}

/// Why a link's peer is broken: its stream does not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenPeer(pub String);

impl std::fmt::Display for BrokenPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Reliable {
    /// A link whose packets start at `sizes.base` bytes.
    pub fn new(sizes: Sizes, now: Micros) -> Reliable {
        let sizes = Sizes { base: sizes.base.max(256), max: sizes.max.max(sizes.base.max(256)) };
        let mut r = Reliable {
            backlog: VecDeque::new(),
            buf: VecDeque::new(),
            send_base: 0,
            next_new: 0,
            acked: Ranges::default(),
            lost: Ranges::default(),
            outgoing: VecDeque::new(),
            outgoing_bytes: 0,
            next_id: 0,
            next_number: 0,
            sent: VecDeque::new(),
            largest_acked: None,
            latest_rtt: 0,
            srtt: INITIAL_RTT,
            rttvar: INITIAL_RTT / 2,
            min_rtt: u64::MAX,
            have_rtt: false,
            loss_time: None,
            pto_count: 0,
            last_eliciting: None,
            probes_due: 0,
            cwnd: 0,
            ssthresh: u64::MAX,
            in_flight: 0,
            recovery_start: None,
            cwnd_limited: false,
            tokens: 0,
            tokens_at: now,
            search: Search { size: sizes.base, high: sizes.max, sizes, probing: None, lost_at_size: 0, since: now },
            received: Ranges::default(),
            largest_received: None,
            eliciting_unacked: 0,
            ack_due: None,
            recv_next: 0,
            out_of_order: BTreeMap::new(),
            out_of_order_bytes: 0,
            partial: Vec::new(),
            assemblies: VecDeque::new(),
            delivered: VecDeque::new(),
            start_numbers: Vec::new(),
            counts: Counts::default(),
        };
        r.cwnd = r.initial_cwnd();
        r.tokens = BURST * r.mds() as u64;
        r
    }

    /// The largest packet in use.
    pub fn packet_size(&self) -> usize {
        self.search.size
    }

    fn mds(&self) -> usize {
        self.search.size
    }

    fn initial_cwnd(&self) -> u64 {
        let m = self.mds() as u64;
        (10 * m).min((2 * m).max(14_720))
    }

    fn min_cwnd(&self) -> u64 {
        2 * self.mds() as u64
    }

    /// The congestion window, in bytes.
    pub fn cwnd(&self) -> u64 {
        self.cwnd
    }

    /// The smoothed round trip.
    pub fn srtt(&self) -> Micros {
        self.srtt
    }

    /// Bytes sent and not yet acknowledged or lost.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Queues a message for the reliable stream.
    pub fn push(&mut self, msg: Packet) {
        self.backlog.push_back(msg);
    }

    /// Queues a best-effort message; false if it is dropped (the queue is
    /// full).
    pub fn push_best_effort(&mut self, msg: Packet) -> bool {
        if self.outgoing_bytes + msg.len() > BEST_EFFORT_QUEUE {
            self.counts.best_effort_dropped += 1;
            return false;
        }
        let piece = self.mds().saturating_sub(NUMBER + 64 + PIECE_HEAD).max(64);
        let count = msg.len().div_ceil(piece).max(1);
        let Ok(count) = u16::try_from(count) else {
            self.counts.best_effort_dropped += 1;
            return false;
        };
        self.outgoing_bytes += msg.len();
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.outgoing.push_back(Outgoing { id, msg, next: 0, count, piece });
        true
    }

    /// Whether anything waits to be sent: messages, lost bytes or an
    /// acknowledgement.
    pub fn has_work(&self) -> bool {
        !self.backlog.is_empty()
            || !self.outgoing.is_empty()
            || !self.lost.is_empty()
            || self.next_new < self.send_end()
    }

    /// Messages waiting, in the backlog and the window, and their bytes:
    /// for `r2 stats` and tests.
    pub fn unacked_bytes(&self) -> u64 {
        self.send_end() - self.send_base
    }

    /// Stream bytes received out of order, held until the gap fills.
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order_bytes
    }

    fn send_end(&self) -> u64 {
        self.send_base + self.buf.len() as u64
    }

    /// Moves backlog into the stream while the window allows.
    fn fill(&mut self) {
        while let Some(m) = self.backlog.front() {
            if self.buf.len() as u64 + (stream::LEN_PREFIX + m.len()) as u64 > WINDOW && !self.buf.is_empty() {
                return;
            }
            let Some(m) = self.backlog.pop_front() else { return };
            self.buf.extend(stream::prefix(m.len()));
            self.buf.extend(m.bytes());
            crate::sys::buffers::recycle(m);
        }
    }

    /// Whether the packet `bytes` acknowledges one that carried this end's
    /// first stream byte: its sender has this end's Hello.
    pub fn acknowledges_start(&self, bytes: &[u8]) -> bool {
        let Ok((_, frames)) = packet::decode(bytes) else { return false };
        frames.iter().any(|f| match f {
            Frame::Ack { ranges, .. } => {
                self.start_numbers.iter().any(|&n| ranges.iter().any(|&(l, c)| n <= l && n + c as u64 > l))
            }
            _ => false,
        })
    }

    /// The next message that arrived, in order (best-effort ones as soon
    /// as they are whole).
    pub fn deliver(&mut self) -> Option<Packet> {
        self.delivered.pop_front()
    }

    /// A packet arrived at `now`. Err: the peer's stream does not decode
    /// (a bug or an attack: the link must close).
    pub fn on_packet(&mut self, now: Micros, bytes: &[u8]) -> Result<(), BrokenPeer> {
        let (number, frames) = packet::decode(bytes).map_err(|e| BrokenPeer(e.to_string()))?;
        if number == u64::MAX {
            return Err(BrokenPeer("a packet number past the last".into()));
        }
        let floor = self.received.first().map_or(0, |(s, _)| s);
        if self.received.contains(number) || (self.received.len() >= MAX_RANGES && number < floor) {
            self.counts.duplicates += 1;
            // The sender may have missed our acknowledgement.
            self.ack_due = Some(now);
            return Ok(());
        }
        self.received.insert(number, number + 1);
        while self.received.len() > MAX_RANGES {
            self.received.pop_first();
        }
        let in_order = self.largest_received.map_or(true, |(l, _)| number == l + 1);
        if self.largest_received.map_or(true, |(l, _)| number > l) {
            self.largest_received = Some((number, now));
        }
        let mut eliciting = false;
        for f in frames {
            match f {
                Frame::Ping => eliciting = true,
                Frame::Ack { delay_us, ranges } => self.on_ack(now, delay_us as Micros, &ranges),
                Frame::Stream { offset, data } => {
                    eliciting = true;
                    self.on_stream(offset, data)?;
                }
                Frame::Piece { id, index, count, data } => {
                    eliciting = true;
                    self.on_piece(id, index, count, data);
                }
            }
        }
        if eliciting {
            self.eliciting_unacked += 1;
            let at = if !in_order || self.eliciting_unacked >= ACK_EVERY { now } else { now + MAX_ACK_DELAY };
            self.ack_due = Some(self.ack_due.map_or(at, |d| d.min(at)));
        }
        Ok(())
    }

    fn on_stream(&mut self, offset: u64, data: &[u8]) -> Result<(), BrokenPeer> {
        let end = offset + data.len() as u64;
        if end <= self.recv_next || offset >= self.recv_next + WINDOW {
            if end <= self.recv_next {
                self.counts.duplicates += 1;
            }
            return Ok(());
        }
        // Trim what is already delivered.
        let skip = self.recv_next.saturating_sub(offset) as usize;
        let (offset, data) = (offset + skip as u64, &data[skip..]);
        if offset > self.recv_next {
            // What a chunk held before this one covers is not kept twice.
            let covered = self.out_of_order.range(..offset).next_back().map_or(0, |(&o, d)| o + d.len() as u64);
            let skip = covered.saturating_sub(offset).min(data.len() as u64) as usize;
            let (offset, data) = (offset + skip as u64, &data[skip..]);
            if data.is_empty() {
                return Ok(());
            }
            // A chunk already held from here is kept unless this one is
            // longer (a retransmission may pack the bytes differently).
            let held = self.out_of_order.get(&offset).map_or(0, Vec::len);
            if self.out_of_order_bytes + data.len() as u64 > 2 * WINDOW {
                return Err(BrokenPeer("the peer overran the receive window".into()));
            }
            if data.len() > held {
                self.out_of_order_bytes += (data.len() - held) as u64;
                self.out_of_order.insert(offset, data.to_vec());
            }
            return Ok(());
        }
        self.partial.extend_from_slice(data);
        self.recv_next = end;
        // Join what waited for this.
        while let Some((&o, _)) = self.out_of_order.iter().next() {
            if o > self.recv_next {
                break;
            }
            let Some(d) = self.out_of_order.remove(&o) else { break };
            self.out_of_order_bytes -= d.len() as u64;
            let e = o + d.len() as u64;
            if e > self.recv_next {
                let skip = (self.recv_next - o) as usize;
                self.partial.extend_from_slice(&d[skip..]);
                self.recv_next = e;
            }
        }
        self.split_messages()
    }

    /// Takes whole messages off the front of the in-order bytes.
    fn split_messages(&mut self) -> Result<(), BrokenPeer> {
        let mut at = 0;
        loop {
            match stream::decode(&self.partial[at..]) {
                Ok(Some((used, msg))) => {
                    self.delivered.push_back(Packet::from_bytes(msg));
                    at += used;
                }
                Ok(None) => break,
                Err(e) => return Err(BrokenPeer(format!("the peer's stream: {e}"))),
            }
        }
        self.partial.drain(..at);
        Ok(())
    }

    fn on_piece(&mut self, id: u32, index: u16, count: u16, data: &[u8]) {
        if count == 1 {
            // A message in one piece: nothing to join.
            if index == 0 && data.len() >= crate::wire::message::HEADER {
                self.delivered.push_back(Packet::from_bytes(data));
            }
            return;
        }
        let pos = match self.assemblies.iter().position(|a| a.id == id) {
            Some(p) if self.assemblies[p].count == count => p,
            Some(_) => return,
            None => {
                if self.assemblies.len() >= ASSEMBLIES {
                    self.assemblies.pop_front();
                    self.counts.best_effort_dropped += 1;
                }
                let got = (0..count).map(|_| None).collect();
                self.assemblies.push_back(Assembly { id, count, got, have: 0 });
                self.assemblies.len() - 1
            }
        };
        let a = &mut self.assemblies[pos];
        let total: usize = a.got.iter().flatten().map(Vec::len).sum();
        if a.got[index as usize].is_some() || total + data.len() > MAX_MESSAGE {
            return;
        }
        a.got[index as usize] = Some(data.to_vec());
        a.have += 1;
        if a.have == a.count {
            let Some(a) = self.assemblies.remove(pos) else { return };
            let mut whole = Vec::with_capacity(a.got.iter().flatten().map(Vec::len).sum());
            for piece in a.got.iter().flatten() {
                whole.extend_from_slice(piece);
            }
            if whole.len() >= crate::wire::message::HEADER {
                self.delivered.push_back(Packet::from_bytes(&whole));
            }
        }
    }

    fn on_ack(&mut self, now: Micros, delay: Micros, ranges: &[(u64, u32)]) {
        let Some(&(largest, _)) = ranges.first() else { return };
        if largest >= self.next_number {
            return; // acknowledges what was never sent: ignored
        }
        let is_acked = |n: u64| ranges.iter().any(|&(l, c)| n <= l && n + c as u64 > l);
        let newly_largest = self.largest_acked.map_or(true, |l| largest > l);
        if newly_largest {
            self.largest_acked = Some(largest);
        }
        let mut acked_bytes = 0u64;
        let mut rtt_sample = None;
        let mut any_eliciting = false;
        let mut kept = VecDeque::with_capacity(self.sent.len());
        for s in std::mem::take(&mut self.sent) {
            if !is_acked(s.number) {
                kept.push_back(s);
                continue;
            }
            if s.number == largest && newly_largest {
                rtt_sample = Some(now.saturating_sub(s.time));
            }
            any_eliciting |= s.ack_eliciting;
            if s.in_flight {
                self.in_flight = self.in_flight.saturating_sub(s.size as u64);
                if self.recovery_start.map_or(true, |r| s.time > r) {
                    acked_bytes += s.size as u64;
                }
            }
            if let Some(size) = s.probe {
                self.probe_acked(now, size);
            }
            for &(a, b) in &s.stream {
                self.acked.insert(a, b);
            }
        }
        self.sent = kept;
        if let Some(rtt) = rtt_sample.filter(|_| any_eliciting) {
            self.rtt_sample(rtt, delay);
        }
        self.advance_base();
        if acked_bytes > 0 {
            self.grow(acked_bytes);
        }
        self.pto_count = 0;
        self.detect_lost(now);
    }

    fn rtt_sample(&mut self, rtt: Micros, delay: Micros) {
        self.latest_rtt = rtt;
        self.min_rtt = self.min_rtt.min(rtt);
        let delay = delay.min(MAX_ACK_DELAY);
        let adjusted = if rtt >= self.min_rtt + delay { rtt - delay } else { rtt };
        if !self.have_rtt {
            self.have_rtt = true;
            self.srtt = adjusted;
            self.rttvar = adjusted / 2;
        } else {
            let diff = self.srtt.abs_diff(adjusted);
            self.rttvar = (3 * self.rttvar + diff) / 4;
            self.srtt = (7 * self.srtt + adjusted) / 8;
        }
    }

    /// Drops stream bytes acknowledged from the front.
    fn advance_base(&mut self) {
        if let Some((s, e)) = self.acked.first() {
            if s <= self.send_base && e > self.send_base {
                let n = (e - self.send_base) as usize;
                self.buf.drain(..n.min(self.buf.len()));
                self.send_base = e;
            }
        }
        self.acked.remove_below(self.send_base);
        self.lost.remove_below(self.send_base);
    }

    fn grow(&mut self, acked: u64) {
        if !self.cwnd_limited {
            return;
        }
        if self.cwnd < self.ssthresh {
            self.cwnd += acked;
        } else {
            self.cwnd += (GROWTH_PER_ROUND_TRIP * acked / self.cwnd.max(1)).max(1);
        }
        self.cwnd = self.cwnd.min(2 * WINDOW);
    }

    fn loss_delay(&self) -> Micros {
        (self.latest_rtt.max(self.srtt) * 9 / 8).max(GRANULARITY)
    }

    fn detect_lost(&mut self, now: Micros) {
        self.loss_time = None;
        let Some(largest) = self.largest_acked else { return };
        let delay = self.loss_delay();
        let mut lost_any_in_flight: Option<Micros> = None;
        let mut kept = VecDeque::with_capacity(self.sent.len());
        for s in std::mem::take(&mut self.sent) {
            if s.number > largest {
                kept.push_back(s);
                continue;
            }
            let by_time = now.saturating_sub(s.time) >= delay;
            if largest - s.number >= PACKET_THRESHOLD || by_time {
                self.counts.packets_lost += 1;
                if s.in_flight {
                    self.in_flight = self.in_flight.saturating_sub(s.size as u64);
                    lost_any_in_flight = Some(lost_any_in_flight.map_or(s.time, |t: Micros| t.max(s.time)));
                }
                if let Some(size) = s.probe {
                    self.probe_lost(now, size);
                }
                for &(a, b) in &s.stream {
                    self.lost.insert(a.max(self.send_base), b);
                }
            } else {
                let at = s.time + delay;
                self.loss_time = Some(self.loss_time.map_or(at, |t| t.min(at)));
                kept.push_back(s);
            }
        }
        self.sent = kept;
        if let Some(sent_at) = lost_any_in_flight {
            self.congestion_event(now, sent_at);
        }
    }

    fn congestion_event(&mut self, now: Micros, sent_at: Micros) {
        if self.recovery_start.is_some_and(|r| sent_at <= r) {
            return;
        }
        self.recovery_start = Some(now);
        // CUBIC's beta (RFC 9438 section 4.6) rather than NewReno's half:
        // the TCP beside a link on a lossy path is CUBIC, and at half r2
        // got less than half of TCP's share there.
        self.ssthresh = (self.cwnd * 7 / 10).max(self.min_cwnd());
        self.cwnd = self.ssthresh;
    }

    fn probe_acked(&mut self, now: Micros, size: usize) {
        let s = &mut self.search;
        s.probing = None;
        s.lost_at_size = 0;
        if size > s.size {
            s.size = size;
            s.since = now;
        }
        if s.high < s.size {
            s.high = s.size;
        }
        // The window is never under two packets of the size in use.
        self.cwnd = self.cwnd.max(self.min_cwnd());
    }

    fn probe_lost(&mut self, now: Micros, size: usize) {
        let s = &mut self.search;
        s.probing = None;
        s.lost_at_size += 1;
        if s.lost_at_size >= MAX_PROBES {
            s.lost_at_size = 0;
            s.high = size.saturating_sub(1).max(s.size);
            s.since = now;
        }
    }

    fn pto_base(&self) -> Micros {
        self.srtt + (4 * self.rttvar).max(GRANULARITY) + MAX_ACK_DELAY
    }

    fn pto_deadline(&self) -> Option<Micros> {
        let last = self.last_eliciting?;
        if !self.sent.iter().any(|s| s.ack_eliciting) {
            return None;
        }
        let backoff = self.pto_base().saturating_mul(1 << self.pto_count.min(16));
        Some(last + backoff.min(MAX_PTO))
    }

    /// The earliest time at which [`Reliable::on_timeout`] has work, or a
    /// packet may go that pacing holds back now.
    pub fn next_timeout(&self) -> Option<Micros> {
        let timer = self.loss_time.or_else(|| self.pto_deadline());
        [timer, self.ack_due].into_iter().flatten().min()
    }

    /// Time has passed: loss by time, or a probe timeout.
    pub fn on_timeout(&mut self, now: Micros) {
        if self.loss_time.is_some_and(|t| now >= t) {
            self.detect_lost(now);
            return;
        }
        if self.pto_deadline().is_some_and(|t| now >= t) {
            self.counts.probe_timeouts += 1;
            self.pto_count += 1;
            self.probes_due = 2;
            if self.pto_count >= 3 && self.search.size > self.search.sizes.base {
                // Perhaps the path's packets shrank: start again small.
                let sizes = self.search.sizes;
                self.search =
                    Search { size: sizes.base, high: sizes.max, sizes, probing: None, lost_at_size: 0, since: now };
                self.cwnd = self.cwnd.max(self.min_cwnd());
            }
            // The oldest data in flight goes again.
            if let Some(s) = self.sent.iter().find(|s| !s.stream.is_empty()) {
                for &(a, b) in &s.stream.clone() {
                    self.lost.insert(a.max(self.send_base), b);
                }
            }
        }
    }

    /// When pacing lets the next full packet go; None: now.
    pub fn pacing_delay(&mut self, now: Micros) -> Option<Micros> {
        self.refill(now);
        let need = self.mds() as u64;
        if self.tokens >= need {
            return None;
        }
        let rate = self.rate_per_ms();
        Some(((need - self.tokens) * 1000).div_ceil(rate.max(1)))
    }

    /// Pacing rate in bytes per millisecond: 1.25 cwnd per srtt.
    fn rate_per_ms(&self) -> u64 {
        let srtt = self.srtt.max(1) as u128;
        ((self.cwnd as u128 * 1250) / srtt).min(u64::MAX as u128) as u64
    }

    fn refill(&mut self, now: Micros) {
        let elapsed = now.saturating_sub(self.tokens_at);
        self.tokens_at = now;
        let cap = BURST * self.mds() as u64;
        let add = (elapsed as u128 * self.rate_per_ms() as u128 / 1000).min(cap as u128) as u64;
        self.tokens = (self.tokens + add).min(cap);
    }

    /// Whether an acknowledgement is due at `now`.
    fn ack_now(&self, now: Micros) -> bool {
        self.ack_due.is_some_and(|d| now >= d)
    }

    /// Writes the next packet to send at `now` into `out` (cleared first);
    /// false if nothing may go now (see [`Reliable::next_timeout`] and
    /// [`Reliable::pacing_delay`] for when to ask again).
    pub fn transmit(&mut self, now: Micros, out: &mut Vec<u8>) -> bool {
        out.clear();
        self.fill();
        let probe = self.probes_due > 0;
        let mds = self.mds() as u64;
        // One packet may go whenever none is in flight, whatever the window.
        let window_open = probe || self.in_flight == 0 || self.in_flight + mds <= self.cwnd;
        let paced = !probe && self.pacing_delay(now).is_some();
        let want = self.has_work();
        if want && !window_open {
            self.cwnd_limited = true;
        }
        let data_ok = window_open && !paced;
        // No size probe before the peer has answered: a first packet alone
        // is what a forking listener (socat udp-l,fork) gives one child.
        let size_probe = if data_ok && self.largest_acked.is_some() { self.search.next_probe(now) } else { None };
        if !self.ack_now(now) && !(data_ok && (want || probe)) && size_probe.is_none() {
            return false;
        }
        let number = self.next_number;
        packet::start(number, out);
        self.write_ack(now, out);
        let mut ranges = Vec::new();
        let mut eliciting = false;
        if data_ok && size_probe.is_none() {
            eliciting = self.write_data(mds as usize, out, &mut ranges);
        }
        if probe && !eliciting && size_probe.is_none() {
            out.push(packet::PING);
            eliciting = true;
        }
        if let Some(p) = size_probe {
            out.push(packet::PING);
            out.resize(p.max(out.len()), packet::PADDING);
            eliciting = true;
            self.search.probing = Some(p);
        }
        if out.len() <= NUMBER {
            out.clear();
            return false;
        }
        if probe && eliciting {
            self.probes_due -= 1;
        }
        self.next_number += 1;
        self.counts.packets_sent += 1;
        if !eliciting {
            return true;
        }
        let len = out.len();
        self.last_eliciting = Some(now);
        let in_flight = size_probe.is_none();
        if in_flight {
            self.in_flight += len as u64;
            self.tokens = self.tokens.saturating_sub(len as u64);
            if self.in_flight + mds > self.cwnd {
                self.cwnd_limited = true;
            } else if !self.has_work() {
                self.cwnd_limited = self.in_flight * 2 >= self.cwnd;
            }
        }
        if ranges.iter().any(|&(a, _)| a == 0) && self.start_numbers.len() < 16 {
            self.start_numbers.push(number);
        }
        self.sent.push_back(Sent {
            number,
            time: now,
            size: len,
            ack_eliciting: true,
            in_flight,
            stream: ranges,
            probe: size_probe,
        });
        true
    }

    /// Writes into `out` (cleared first) a packet that carries only the
    /// acknowledgement due at `now`; false if none is due. It is what
    /// [`Reliable::transmit`] would send first, for a link's reader to send
    /// at once, without waking its sender.
    pub fn acknowledge(&mut self, now: Micros, out: &mut Vec<u8>) -> bool {
        out.clear();
        if !self.ack_now(now) {
            return false;
        }
        packet::start(self.next_number, out);
        self.write_ack(now, out);
        if out.len() <= NUMBER {
            out.clear();
            return false;
        }
        // Not ack-eliciting: nothing to remember of it.
        self.next_number += 1;
        self.counts.packets_sent += 1;
        true
    }

    /// The packet of [`Reliable::acknowledge`] did not get out whole: the
    /// acknowledgement is due again, for `transmit`.
    pub fn acknowledge_again(&mut self, now: Micros) {
        self.ack_due = Some(now);
    }

    fn write_ack(&mut self, now: Micros, out: &mut Vec<u8>) {
        let Some((_, at)) = self.largest_received else { return };
        if self.ack_due.is_none() && self.eliciting_unacked == 0 {
            return;
        }
        let ranges: Vec<(u64, u32)> = self
            .received
            .0
            .iter()
            .rev()
            .take(MAX_RANGES)
            .map(|(&s, &e)| (e - 1, (e - s).min(u32::MAX as u64) as u32))
            .collect();
        let delay = now.saturating_sub(at).min(u32::MAX as u64) as u32;
        packet::ack(delay, &ranges, out);
        self.ack_due = None;
        self.eliciting_unacked = 0;
    }

    /// Fills the packet with pieces, lost stream bytes and new ones, up to
    /// `size` bytes; whether it wrote any.
    fn write_data(&mut self, size: usize, out: &mut Vec<u8>, ranges: &mut Vec<(u64, u64)>) -> bool {
        let mut wrote = false;
        // Best-effort pieces go first: they are what cannot wait.
        while let Some(o) = self.outgoing.front_mut() {
            let start = o.next as usize * o.piece;
            let end = (start + o.piece).min(o.msg.len());
            if out.len() + PIECE_HEAD + (end - start) > size {
                break;
            }
            packet::piece(o.id, o.next, o.count, &o.msg.bytes()[start..end], out);
            wrote = true;
            o.next += 1;
            if o.next == o.count {
                if let Some(o) = self.outgoing.pop_front() {
                    self.outgoing_bytes -= o.msg.len();
                }
            }
        }
        while out.len() + STREAM_HEAD < size {
            let room = (size - out.len() - STREAM_HEAD).min(u16::MAX as usize) as u64;
            let (start, end, again) = match self.next_lost() {
                Some((s, e)) => (s, e.min(s + room), true),
                None if self.next_new < self.send_end() && self.next_new < self.send_base + WINDOW => {
                    (self.next_new, self.send_end().min(self.next_new + room), false)
                }
                None => break,
            };
            let from = (start - self.send_base) as usize;
            let len = (end - start) as usize;
            let (a, b) = self.buf.as_slices();
            out.push(packet::STREAM);
            out.extend_from_slice(&start.to_be_bytes());
            out.extend_from_slice(&(len as u16).to_be_bytes());
            copy_range(a, b, from, len, out);
            ranges.push((start, end));
            wrote = true;
            if again {
                self.lost = self.lost.without(start, end);
                self.counts.retransmitted_bytes += len as u64;
            } else {
                self.next_new = end;
            }
        }
        wrote
    }

    /// The first lost range that is not acknowledged since.
    fn next_lost(&mut self) -> Option<(u64, u64)> {
        while let Some((s, e)) = self.lost.first() {
            match self.acked.first_gap(s.max(self.send_base), e) {
                Some(gap) => return Some(gap),
                None => self.lost.pop_first(),
            }
        }
        None
    }
}

/// Appends bytes `from..from+len` of the ring's two slices.
fn copy_range(a: &[u8], b: &[u8], from: usize, len: usize, out: &mut Vec<u8>) {
    if from < a.len() {
        let n = len.min(a.len() - from);
        out.extend_from_slice(&a[from..from + n]);
        if n < len {
            out.extend_from_slice(&b[..len - n]);
        }
    } else {
        let f = from - a.len();
        out.extend_from_slice(&b[f..f + len]);
    }
}

#[cfg(test)]
mod tests;
