//! Router tests with values only: routers wired to each other in memory.

use super::*;
use crate::wire::message::{nest_to, unnest_from};
use std::collections::VecDeque;

fn id(n: u8) -> NodeId {
    NodeId([n; 32])
}

/// Routers joined by in-memory links; endpoints collect what they receive.
struct Net {
    routers: Vec<Router>,
    wires: HashMap<(usize, PortId), (usize, PortId)>,
    inbox: HashMap<(usize, PortId), Vec<Packet>>,
    closed: Vec<(usize, PortId, Option<String>)>,
    ups: Vec<(usize, NodeId)>,
    tunnel_msgs: Vec<(usize, NodeId, Option<NodeId>, Vec<u8>)>,
    tunnels_gone: Vec<(usize, NodeId)>,
    queue: VecDeque<(usize, Event)>,
    next_port: PortId,
    now: Millis,
    /// Each router's shortcuts, checked against what it does.
    shortcuts: Vec<fuzz::ShortcutModel>,
    /// Each router's forgetting of shortcuts: all (None), or those naming
    /// a node.
    forgets: Vec<(usize, Option<NodeId>)>,
}

impl Net {
    fn new(n: u8) -> Net {
        Net {
            routers: (1..=n).map(|i| Router::new(id(i), Timers::default())).collect(),
            wires: HashMap::new(),
            inbox: HashMap::new(),
            closed: Vec::new(),
            ups: Vec::new(),
            tunnel_msgs: Vec::new(),
            tunnels_gone: Vec::new(),
            queue: VecDeque::new(),
            next_port: 100,
            now: 1_000,
            shortcuts: (1..=n).map(|_| fuzz::ShortcutModel::default()).collect(),
            forgets: Vec::new(),
        }
    }

    fn port(&mut self) -> PortId {
        self.next_port += 1;
        self.next_port
    }

    /// Links router a to router b; returns the ports.
    fn link(&mut self, a: usize, b: usize) -> (PortId, PortId) {
        self.link_expecting(a, b, None)
    }

    fn link_expecting(&mut self, a: usize, b: usize, expect: Option<NodeId>) -> (PortId, PortId) {
        let (pa, pb) = (self.port(), self.port());
        self.wires.insert((a, pa), (b, pb));
        self.wires.insert((b, pb), (a, pa));
        let (ida, idb) = (self.routers[a].own(), self.routers[b].own());
        self.queue.push_back((a, Event::LinkOpened { port: pa, expect, proven: idb }));
        self.queue.push_back((b, Event::LinkOpened { port: pb, expect: None, proven: ida }));
        self.run();
        (pa, pb)
    }

    fn endpoint(&mut self, a: usize, eid: NodeId) -> PortId {
        let p = self.port();
        self.inbox.insert((a, p), Vec::new());
        self.queue.push_back((a, Event::EndpointOpened { port: p, id: eid }));
        self.run();
        p
    }

    fn send(&mut self, a: usize, port: PortId, msg: &[u8]) {
        self.queue.push_back((a, Event::Received { port, packet: Packet::from_bytes(msg) }));
        self.run();
    }

    /// End-of-file on a port, as when a transport dies.
    fn cut(&mut self, a: usize, port: PortId) {
        self.queue.push_back((a, Event::Closed { port, error: None }));
        self.run();
    }

    fn tick(&mut self, ms: Millis) {
        self.now += ms;
        for i in 0..self.routers.len() {
            self.queue.push_back((i, Event::Tick));
        }
        self.run();
    }

    fn run(&mut self) {
        let mut out = Vec::new();
        while let Some((r, ev)) = self.queue.pop_front() {
            let predicted = self.shortcuts[r].predict(&ev);
            self.routers[r].handle(self.now, ev, &mut out);
            self.shortcuts[r].check(predicted, &out);
            for a in out.drain(..) {
                match a {
                    Action::Send { port, packet } => {
                        if let Some(&(peer, pp)) = self.wires.get(&(r, port)) {
                            self.queue.push_back((peer, Event::Received { port: pp, packet }));
                        } else if let Some(b) = self.inbox.get_mut(&(r, port)) {
                            b.push(packet);
                        }
                    }
                    Action::LinkUp { peer, .. } => self.ups.push((r, peer)),
                    Action::Tunnel { peer, via, packet } => {
                        self.tunnel_msgs.push((r, peer, via, packet.bytes().to_vec()))
                    }
                    Action::TunnelGone { peer } => self.tunnels_gone.push((r, peer)),
                    Action::Shortcut(_) => {}
                    Action::ForgetShortcuts => self.forgets.push((r, None)),
                    Action::ForgetShortcutsOf(n) => self.forgets.push((r, Some(n))),
                    Action::Close { port, error } => {
                        if let Some(far) = self.wires.remove(&(r, port)) {
                            self.wires.remove(&far);
                            self.queue.push_back((far.0, Event::Closed { port: far.1, error: None }));
                        }
                        self.closed.push((r, port, error));
                    }
                }
            }
            for r in &self.routers {
                r.check().unwrap();
            }
        }
    }

    fn take(&mut self, a: usize, port: PortId) -> Vec<Vec<u8>> {
        let b = self.inbox.get_mut(&(a, port)).unwrap();
        b.drain(..).map(|p| p.bytes().to_vec()).collect()
    }
}

/// `From(h1, … From(hk, inner))`.
fn nest_from(path: &[NodeId], inner: &[u8]) -> Vec<u8> {
    let mut p = Packet::from_bytes(inner);
    for h in path.iter().rev() {
        p.push_header(Kind::From, *h);
    }
    p.bytes().to_vec()
}

fn to_msg(to: NodeId, body: &[u8]) -> Vec<u8> {
    Packet::new(Kind::To, to, body).bytes().to_vec()
}

#[test]
fn hello_makes_neighbours() {
    let mut net = Net::new(2);
    let (pa, pb) = net.link(0, 1);
    assert_eq!(net.routers[0].links(), vec![(pa, id(2))]);
    assert_eq!(net.routers[1].links(), vec![(pb, id(1))]);
    assert_eq!(net.ups.len(), 2);
}

#[test]
fn ping_one_hop() {
    let mut net = Net::new(2);
    net.link(0, 1);
    let x = id(50);
    let ep = net.endpoint(0, x);
    net.send(0, ep, &nest_to(&[id(2), x], b"p1"));
    assert_eq!(net.take(0, ep), vec![nest_from(&[id(2), x], b"p1")]);
}

/// A chain 1-2-3-4; returns the ports (a side, b side) of each link.
fn chain(n: u8) -> (Net, Vec<(PortId, PortId)>) {
    let mut net = Net::new(n);
    let links = (0..n as usize - 1).map(|i| net.link(i, i + 1)).collect();
    (net, links)
}

#[test]
fn nesting_over_three_hops() {
    let (mut net, _) = chain(4);
    let x = id(60);
    let ep = net.endpoint(0, x);
    let path = [id(2), id(3), id(4)];
    let mut probe = path.to_vec();
    probe.push(x);
    net.send(0, ep, &nest_to(&probe, b"seq1"));
    assert_eq!(net.take(0, ep), vec![nest_from(&probe, b"seq1")]);
    // The first trip taught each relay a shortcut each way, and they
    // predict the second exactly (the Net checks each).
    assert_eq!(net.shortcuts.iter().map(|s| s.checked).sum::<usize>(), 0);
    net.send(0, ep, &nest_to(&probe, b"seq2"));
    assert_eq!(net.take(0, ep), vec![nest_from(&probe, b"seq2")]);
    let checked: Vec<usize> = net.shortcuts.iter().map(|s| s.checked).collect();
    assert_eq!(checked, vec![0, 2, 2, 1], "B and C relay both ways, D turns it round, A has no relay");
    // A message to the far end arrives there as From(X, m): ask D's list.
    net.send(0, ep, &nest_to(&[id(2), id(3), id(4), NodeId::LIST], b"?"));
    let got = net.take(0, ep);
    let u = unnest_from(&got[0], 4);
    assert_eq!(u.via, vec![id(2), id(3), id(4), NodeId::LIST]);
    assert_eq!(crate::wire::list::decode(u.inner), Some(vec![id(3)]));
}

#[test]
fn ls_lists_physical_neighbours_only() {
    let (mut net, _) = chain(3);
    let x = id(61);
    let ep = net.endpoint(0, x);
    net.send(0, ep, &nest_to(&[id(2), NodeId::LIST], b"?"));
    let got = net.take(0, ep);
    let u = unnest_from(&got[0], 4);
    // node 2 has neighbours 1 and 3; the virtual neighbour X is not listed
    assert_eq!(crate::wire::list::decode(u.inner), Some(vec![id(1), id(3)]));
}

fn expect_fail(reply: &[u8], via: &[NodeId], about: NodeId, code: FailCode) {
    let u = unnest_from(reply, 40);
    assert_eq!(u.via, via);
    let m = Msg::parse(u.inner).unwrap();
    assert_eq!((m.kind, m.id, m.fail().unwrap().0), (Kind::Fail, about, code));
}

#[test]
fn fail_names_the_failing_hop() {
    let (mut net, _) = chain(3);
    let x = id(70);
    let ep = net.endpoint(0, x);
    // 9 is no neighbour of node 2
    net.send(0, ep, &nest_to(&[id(2), id(9), x], b"p"));
    expect_fail(&net.take(0, ep)[0], &[id(2)], id(9), FailCode::NoRoute);
    // 9 is no neighbour of node 1 either: the local daemon answers
    net.send(0, ep, &nest_to(&[id(9), x], b"p"));
    expect_fail(&net.take(0, ep)[0], &[], id(9), FailCode::NoRoute);
    // no tunnel process at node 3
    net.send(0, ep, &nest_to(&[id(2), id(3), NodeId::TUNNEL], b"\x01"));
    expect_fail(&net.take(0, ep)[0], &[id(2), id(3)], NodeId::TUNNEL, FailCode::NoTunnelProcess);
}

#[test]
fn a_path_that_revisits_a_node_is_refused() {
    let (mut net, _) = chain(2);
    let x = id(80);
    let ep = net.endpoint(0, x);
    net.send(0, ep, &nest_to(&[id(2), id(1), id(2), x], b"p"));
    let got = net.take(0, ep);
    assert_eq!(got.len(), 1);
    expect_fail(&got[0], &[id(2), id(1)], x, FailCode::IdInUse);
}

#[test]
fn a_cut_reaches_both_ends_and_frees_everything() {
    let (mut net, links) = chain(4);
    let x = id(90);
    let ep = net.endpoint(0, x);
    let probe = [id(2), id(3), id(4), x];
    net.send(0, ep, &nest_to(&probe, b"p"));
    assert_eq!(net.take(0, ep).len(), 1);
    // node 3 holds X (via 2) connected with 4; cut 3-4
    net.cut(2, links[2].0);
    assert_eq!(net.take(0, ep), vec![nest_from(&[id(2), id(3), id(4)], b"")]);
    assert_eq!(net.routers[3].held(), (0, 0));
    // the endpoint ends: X is freed at every node
    net.cut(0, ep);
    assert_eq!(net.routers[0].held(), (1, 1));
    assert_eq!(net.routers[1].held(), (2, 2));
    assert_eq!(net.routers[2].held(), (1, 1));
    net.cut(0, links[0].0);
    net.cut(1, links[1].0);
    for r in &net.routers {
        assert_eq!(r.held(), (0, 0));
    }
}

/// A local endpoint's end frees it at the far node, and forgets, where it
/// was a local endpoint as where it was a virtual neighbour, only the
/// shortcuts that name it.
#[test]
fn endpoint_end_reaches_the_far_node() {
    let (mut net, _) = chain(3);
    let x = id(91);
    let ep = net.endpoint(0, x);
    net.send(0, ep, &nest_to(&[id(2), id(3), x], b"p"));
    assert_eq!(net.routers[2].held(), (1, 2)); // link to 2, and X
    net.forgets.clear();
    net.cut(0, ep);
    assert_eq!(net.routers[2].held(), (1, 1));
    assert_eq!(net.routers[1].held(), (2, 2));
    assert!(net.forgets.contains(&(0, Some(x))), "{:?}", net.forgets);
    assert!(net.forgets.contains(&(2, Some(x))), "{:?}", net.forgets);
    assert!(!net.forgets.iter().any(|(_, n)| n.is_none()), "{:?}", net.forgets);
}

#[test]
fn hello_refusals() {
    // -n mismatch
    let mut net = Net::new(2);
    let (pa, pb) = net.link_expecting(0, 1, Some(id(7)));
    assert!(net.routers[0].links().is_empty());
    assert!(net.routers[1].links().is_empty());
    let err = |net: &Net, r: usize, p: PortId| {
        net.closed.iter().find(|c| c.0 == r && c.1 == p).and_then(|c| c.2.clone()).unwrap()
    };
    assert!(err(&net, 0, pa).contains("mismatch"), "{}", err(&net, 0, pa));
    assert!(err(&net, 1, pb).contains("refused by"), "{}", err(&net, 1, pb));

    // the same id twice, and our own id
    let mut net = Net::new(3);
    net.routers[2] = Router::new(id(2), Timers::default());
    net.link(0, 1);
    let (pa, _) = net.link(0, 2);
    assert!(err(&net, 0, pa).contains("already linked"));
    assert_eq!(net.routers[0].links().len(), 1);
    let mut net = Net::new(2);
    net.routers[1] = Router::new(id(1), Timers::default());
    let (pa, _) = net.link(0, 1);
    assert!(err(&net, 0, pa).contains("own id"));
}

#[test]
fn bad_hello_and_hello_timeout() {
    let mut net = Net::new(1);
    let p = net.port();
    net.queue.push_back((0, Event::LinkOpened { port: p, expect: None, proven: id(5) }));
    net.run();
    net.send(0, p, Packet::new(Kind::Hello, id(5), b"r2\x07").bytes());
    assert!(net.closed.last().unwrap().2.as_deref().unwrap().contains("version 7"));
    let q = net.port();
    net.queue.push_back((0, Event::LinkOpened { port: q, expect: None, proven: id(5) }));
    net.run();
    net.tick(4_999);
    assert!(net.routers[0].held().0 == 1);
    net.tick(1);
    assert!(net.closed.last().unwrap().2.as_deref().unwrap().contains("no Hello"));
    assert_eq!(net.routers[0].held(), (0, 0));
}

#[test]
fn keepalive_pings_and_detects_silence() {
    let mut net = Net::new(2);
    let (pa, pb) = net.link(0, 1);
    // Wired links echo, so pings keep the link alive.
    for _ in 0..10 {
        net.tick(2_000);
    }
    assert_eq!(net.routers[0].links().len(), 1);
    // Now the link goes silent: unwire it without closing.
    net.wires.clear();
    let mut out = Vec::new();
    let t = net.now;
    net.routers[0].handle(t + 2_000, Event::Tick, &mut out);
    assert!(matches!(&out[..], [Action::Send { port, .. }] if *port == pa));
    out.clear();
    net.routers[0].handle(t + 6_000, Event::Tick, &mut out);
    assert!(matches!(&out[..], [Action::ForgetShortcuts, Action::Close { port, error: Some(_) }] if *port == pa));
    let _ = pb;
}

/// A link whose reader relays by shortcut is alive though the router sees
/// none of its messages.
#[test]
fn relays_heard_keep_a_link_alive() {
    let mut net = Net::new(2);
    let (pa, _) = net.link(0, 1);
    net.wires.clear();
    let mut out = Vec::new();
    let t = net.now;
    for s in 1..=5 {
        net.routers[0].handle(t + s * 2_000, Event::Heard { port: pa }, &mut out);
        net.routers[0].handle(t + s * 2_000, Event::Tick, &mut out);
    }
    assert!(out.is_empty(), "no ping, no close: {out:?}");
    assert_eq!(net.routers[0].links().len(), 1);
}

#[test]
fn malformed_frames_close_only_their_link() {
    let (mut net, links) = chain(3);
    let (_, pb) = links[0];
    net.send(1, pb, &[9u8; 40]); // unknown kind
    assert_eq!(net.routers[1].links().len(), 1);
    assert_eq!(net.routers[2].links().len(), 1);
    // nested garbage: answered, the link stays
    let (mut net, links) = chain(2);
    let (_, pb) = links[0];
    let mut m = vec![Kind::From as u8];
    m.extend_from_slice(&id(40).0);
    m.extend_from_slice(&[Kind::From as u8; 40]);
    net.send(1, pb, &m);
    assert_eq!(net.routers[1].links().len(), 1);
}

#[test]
fn reserved_from_a_physical_neighbour_is_refused() {
    let (mut net, links) = chain(2);
    let (pa, pb) = links[0];
    net.wires.clear(); // capture what router 1 answers
    net.inbox.insert((1, pb), Vec::new());
    net.send(1, pb, &to_msg(NodeId::LIST, b"?"));
    let got = net.take(1, pb);
    expect_fail(&got[0], &[], NodeId::LIST, FailCode::Refused);
    let _ = pa;
}

#[test]
fn eps_and_fail_get_no_fail() {
    let (mut net, links) = chain(2);
    let (_, pb) = links[0];
    net.wires.clear();
    net.inbox.insert((1, pb), Vec::new());
    net.send(1, pb, &to_msg(id(77), b""));
    net.send(1, pb, Packet::new(Kind::To, id(77), Packet::fail(id(1), FailCode::NoRoute, "").bytes()).bytes());
    assert!(net.take(1, pb).is_empty());
}

#[test]
fn tunnel_messages_reach_node_0_and_come_back() {
    let (mut net, links) = chain(3);
    net.routers[2] = Router::new(id(3), Timers::default()).with_tunnels();
    // relink 2-3 with the new router 3
    net.cut(1, links[1].0);
    net.link(1, 2);
    let x = id(99);
    let ep = net.endpoint(0, x);
    net.send(0, ep, &nest_to(&[id(2), id(3), NodeId::TUNNEL], b"\x01open"));
    assert_eq!(net.tunnel_msgs, vec![(2, x, Some(id(2)), b"\x01open".to_vec())]);
    // node 0 answers
    net.queue.push_back((2, Event::FromTunnel { to: x, packet: Packet::from_bytes(b"\x04credit") }));
    net.run();
    assert_eq!(net.take(0, ep), vec![nest_from(&[id(2), id(3), NodeId::TUNNEL], b"\x04credit")]);
    // the endpoint ends: the instance is told
    net.cut(0, ep);
    assert_eq!(net.tunnels_gone, vec![(2, x)]);
    assert_eq!(net.routers[2].held(), (1, 1));
    // and without a tunnel process, the caller is told at once
    let ep = net.endpoint(0, x);
    net.send(0, ep, &nest_to(&[id(2), NodeId::TUNNEL], b"\x01open"));
    expect_fail(&net.take(0, ep)[0], &[id(2)], NodeId::TUNNEL, FailCode::NoTunnelProcess);
}

#[test]
fn a_broken_path_ends_the_instance() {
    let mut net = Net::new(3);
    net.routers[2] = Router::new(id(3), Timers::default()).with_tunnels();
    let _ab = net.link(0, 1);
    let (bc, _) = net.link(1, 2);
    let x = id(98);
    let ep = net.endpoint(0, x);
    net.send(0, ep, &nest_to(&[id(2), id(3), NodeId::TUNNEL], b"\x01open"));
    net.cut(1, bc);
    assert_eq!(net.tunnels_gone, vec![(2, x)]);
    assert_eq!(net.take(0, ep), vec![nest_from(&[id(2), id(3)], b"")]);
    assert_eq!(net.routers[2].held(), (0, 0));
}

#[test]
fn fails_are_rate_limited_and_unknown_ids_keep_no_state() {
    let (mut net, links) = chain(2);
    let (_, pb) = links[0];
    net.wires.clear();
    net.inbox.insert((1, pb), Vec::new());
    for i in 0..1000u32 {
        let mut who = [7u8; 32];
        who[..4].copy_from_slice(&i.to_be_bytes());
        net.send(1, pb, &to_msg(NodeId(who), b"x"));
    }
    assert_eq!(net.take(1, pb).len(), 100, "one second's budget of Fails");
    assert_eq!(net.routers[1].held(), (1, 1), "no state per unknown id");
    assert_eq!(net.routers[1].counters().dropped_rate_limited, 900);
    net.now += 1000;
    net.send(1, pb, &to_msg(id(99), b"x"));
    assert_eq!(net.take(1, pb).len(), 1, "a new second, a new budget");
}

#[test]
fn no_transit_refuses_to_relay() {
    let mut net = Net::new(3);
    let policy = Policy { transit: false, ..Policy::default() };
    net.routers[1] = Router::new(id(2), Timers::default()).with_policy(policy);
    net.link(0, 1);
    net.link(1, 2);
    let x = id(60);
    let ep = net.endpoint(0, x);
    net.send(0, ep, &nest_to(&[id(2), id(3), x], b"p"));
    expect_fail(&net.take(0, ep)[0], &[id(2)], id(3), FailCode::Refused);
    // but node 2 itself still answers: its list, and pings to it
    net.send(0, ep, &nest_to(&[id(2), x], b"p"));
    assert_eq!(net.take(0, ep), vec![nest_from(&[id(2), x], b"p")]);
    net.send(0, ep, &nest_to(&[id(2), NodeId::LIST], b"?"));
    assert_eq!(net.take(0, ep).len(), 1);
}

#[test]
fn virtual_neighbours_per_link_are_capped() {
    let mut net = Net::new(2);
    let policy = Policy { max_virtual: 3, ..Policy::default() };
    net.routers[1] = Router::new(id(2), Timers::default()).with_policy(policy);
    net.link(0, 1);
    let mut eps = Vec::new();
    for i in 0..5 {
        let x = id(100 + i);
        let ep = net.endpoint(0, x);
        net.send(0, ep, &nest_to(&[id(2), x], b"p"));
        eps.push(ep);
    }
    assert_eq!(net.routers[1].virtual_count(), 3);
    expect_fail(&net.take(0, eps[4])[0], &[id(2)], id(104), FailCode::Refused);
}

#[test]
fn deep_nesting_is_peeled_one_layer_at_a_time() {
    // 1900 layers of To inside one frame from a neighbour: the router
    // peels one and passes the rest on; nothing recurses.
    let (mut net, links) = chain(2);
    let (_, pb) = links[0];
    net.wires.clear();
    net.inbox.insert((1, pb), Vec::new());
    let hops = vec![id(1); 1900];
    net.send(1, pb, &nest_to(&hops, b"deep"));
    let got = net.take(1, pb);
    assert_eq!(got.len(), 1);
    let m = Msg::parse(&got[0]).unwrap();
    assert_eq!((m.kind, m.id, got[0].len()), (Kind::From, id(1), 1900 * 33 + 4));
}

#[test]
fn endpoints_may_not_send_paths_over_the_hop_limit() {
    let (mut net, _) = chain(2);
    let x = id(62);
    let ep = net.endpoint(0, x);
    let mut hops = vec![id(2); crate::wire::id::MAX_HOPS + 1];
    hops.push(x);
    net.send(0, ep, &nest_to(&hops, b"p"));
    expect_fail(&net.take(0, ep)[0], &[], id(1), FailCode::Refused);
}

#[test]
fn a_link_that_ends_before_hello_is_an_error() {
    let mut net = Net::new(1);
    let p = net.port();
    net.queue.push_back((0, Event::LinkOpened { port: p, expect: None, proven: id(5) }));
    net.run();
    net.cut(0, p);
    assert!(net.closed.last().unwrap().2.as_deref().unwrap().contains("before the neighbour said Hello"));
}

#[test]
fn a_fail_from_an_unknown_neighbour_keeps_no_state() {
    let (mut net, links) = chain(2);
    let (_, pb) = links[0];
    let mut m = Packet::fail(id(5), FailCode::NoRoute, "x");
    m.push_header(Kind::From, id(44));
    net.send(1, pb, m.bytes());
    assert_eq!(net.routers[1].held(), (1, 1));
}

/// Every kind of shortcut is the router's: the caller's tunnel end learns
/// the way of its Data, each relay how to pass it on, the far link how to
/// deliver it to the instance, and the instance the way back; each then
/// predicts exactly what the router does with the next Data (the Net
/// checks every prediction).
#[test]
fn tunnel_data_teaches_every_kind_of_shortcut() {
    let (mut net, links) = chain(3);
    net.routers[2] = Router::new(id(3), Timers::default()).with_tunnels();
    net.cut(1, links[1].0);
    net.link(1, 2);
    let x = id(98);
    let ep = net.endpoint(0, x);
    let path = [id(2), id(3), NodeId::TUNNEL];
    net.send(0, ep, &nest_to(&path, b"\x01\x00\x10\x00\x00"));
    let mut lanes = Vec::new();
    for round in 0..2 {
        net.send(0, ep, &nest_to(&path, b"\x02data"));
        net.queue.push_back((2, Event::FromTunnel { to: x, packet: Packet::from_bytes(b"\x02back") }));
        net.run();
        assert_eq!(net.take(0, ep), vec![nest_from(&path, b"\x02back")], "round {round}");
        lanes = net.shortcuts.iter().map(|s| s.lanes()).collect();
    }
    let last = net.tunnel_msgs.last().map(|t| t.3.clone());
    assert_eq!(last, Some(b"\x02data".to_vec()));
    assert!(lanes[0].contains(&"endpoint"), "the caller's reader: {lanes:?}");
    assert!(lanes[1].contains(&"link"), "the relay: {lanes:?}");
    assert!(lanes[2].contains(&"link") && lanes[2].contains(&"tunnel"), "the far side: {lanes:?}");
    let checked: Vec<usize> = net.shortcuts.iter().map(|s| s.checked).collect();
    // B learnt the way out from Open already.
    assert_eq!(checked, vec![1, 3, 2], "A sends, B relays both ways, C delivers and sends back");
}

/// The caller's end of a one-hop tunnel: its link's reader learns to
/// deliver the far side's Data to the caller's end (keyed by the message
/// as it comes, `To(x, From(0, Data …`), and predicts exactly what the
/// router does with the next; control messages do not teach it.
#[test]
fn a_callers_link_learns_to_deliver_its_data() {
    let (mut net, links) = chain(2);
    net.routers[1] = Router::new(id(2), Timers::default()).with_tunnels();
    net.cut(0, links[0].0);
    net.link(0, 1);
    let x = id(98);
    let ep = net.endpoint(0, x);
    let path = [id(2), NodeId::TUNNEL];
    net.send(0, ep, &nest_to(&path, b"\x01\x00\x10\x00\x00"));
    net.queue.push_back((1, Event::FromTunnel { to: x, packet: Packet::from_bytes(b"\x04\0\0\0\x01") }));
    net.run();
    assert!(!net.shortcuts[0].lanes().contains(&"link"), "a Credit teaches nothing");
    for round in 0..2 {
        net.send(0, ep, &nest_to(&path, b"\x02data"));
        net.queue.push_back((1, Event::FromTunnel { to: x, packet: Packet::from_bytes(b"\x02back") }));
        net.run();
        let got = net.take(0, ep);
        assert_eq!(got.last(), Some(&nest_from(&path, b"\x02back")), "round {round}");
    }
    let lanes = net.shortcuts[0].lanes();
    assert!(lanes.contains(&"link") && lanes.contains(&"endpoint"), "the caller's side: {lanes:?}");
    assert_eq!(net.shortcuts[0].checked, 2, "A sends its Data and delivers the far side's by shortcut");
    let key = |m: &[u8]| caller_delivery_key(m).map(<[u8]>::len);
    assert_eq!(key(&to_msg(x, &nest_from(&[NodeId::TUNNEL], b"\x02d"))), Some(DELIVERY_KEY));
    assert_eq!(key(&to_msg(x, &nest_from(&[NodeId::TUNNEL], b"\x02"))), None, "Data without data");
    assert_eq!(key(&to_msg(x, &nest_from(&[NodeId::TUNNEL], b"\x03"))), None, "Eof");
    assert_eq!(key(&to_msg(x, &nest_from(&[id(3), NodeId::TUNNEL], b"\x02d"))), None, "more than one hop");
}

/// Control messages of a tunnel never teach a shortcut: only Data (and
/// Datagrams, in packet mode) go by one.
#[test]
fn only_tunnel_data_makes_shortcuts() {
    let key = |m: &[u8]| tunnel_data_key(m).map(<[u8]>::len);
    assert_eq!(key(&nest_to(&[id(2), NodeId::TUNNEL], b"\x02d")), Some(2 * HEADER + 1));
    assert_eq!(key(&nest_to(&[id(2), NodeId::TUNNEL], b"\x02")), None, "Data without data");
    assert_eq!(key(&nest_to(&[id(2), NodeId::TUNNEL], b"\x06\0\0\0\0\0\0\0\0d")), Some(2 * HEADER + 1), "Datagram");
    assert_eq!(key(&nest_to(&[id(2), NodeId::TUNNEL], b"\x04\0\0\0\x01")), None, "Credit");
    assert_eq!(key(&nest_to(&[id(2), id(3)], b"\x02d")), None, "not to node 0");
    let from = |m: &[u8]| Packet::new(Kind::From, id(9), m).bytes().to_vec();
    assert!(delivery_key(&from(&nest_to(&[NodeId::TUNNEL], b"\x02d"))).is_some());
    assert!(delivery_key(&from(&nest_to(&[NodeId::TUNNEL], b"\x03"))).is_none(), "Eof");
    assert!(delivery_key(&from(&nest_to(&[id(4)], b"\x02d"))).is_none(), "transit");
}

/// A neighbour that comes back on a new link (a caller restarted over
/// UDP, with no end of file on the old one) while its old link is silent:
/// the new link waits, and is up as soon as the old one is found dead.
#[test]
fn a_returning_neighbour_waits_for_its_silent_old_link() {
    let mut net = Net::new(3);
    net.routers[2] = Router::new(id(2), Timers::default());
    let (old, _) = net.link(0, 1);
    // Router 1 goes away without a word: its old link falls silent.
    net.wires.retain(|&(r, _), _| r != 1);
    net.tick(2_500);
    let (new, _) = net.link(0, 2);
    assert!(!net.closed.iter().any(|c| c.0 == 0 && c.1 == new), "waiting, not refused");
    assert_eq!(net.routers[0].links(), vec![(old, id(2))], "still the old link");
    for _ in 0..20 {
        net.tick(250);
    }
    assert!(net.closed.iter().any(|c| c.0 == 0 && c.1 == old), "the old link found dead");
    assert_eq!(net.routers[0].links(), vec![(new, id(2))], "the new link up");
}
