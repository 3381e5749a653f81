//! A deterministic network simulator that drives the real [`Node`].
//!
//! Virtual time, any number of hosts, point-to-point wires between them with a
//! [`LinkModel`] per direction, and a seeded random generator: the same seed
//! and the same calls give the same run, to the nanosecond. Events are
//! processed in (time, insertion order). Nodes see exactly the API the Linux
//! shell uses: TUN packets, datagrams with the link and source endpoint,
//! timers and link up/down.
//!
//! Addressing: wire `i` joins `172.16.i.1:51820` (first host) to
//! `172.16.i.2:51820` (second host); these addresses exist only inside the
//! simulator. Each host's links are numbered in the order its wires were made.
#![forbid(unsafe_code)]

pub mod compare;
pub mod link;
pub mod scenario;
pub mod spec;
pub mod traffic;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use link::{Channel, ChannelStats, GilbertElliott, Jitter, LinkModel};

use crate::proto::wire::Packet;
use crate::proto::{
    BundleConfig, DropReason, EndpointSpec, LinkId, LinkSettings, NextHop, Node, NodeConfig, Openings, Received,
    SetupError, Time, Transmits,
};

/// Index of a host in the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostIx(pub usize);

/// Index of a wire in the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WireIx(pub usize);

/// Direction on a wire: from its first host to its second, or back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// First host to second host.
    Forward,
    /// Second host to first host.
    Backward,
}

/// A constant-rate stream of test packets from one host to an address.
#[derive(Clone, Debug)]
pub struct Stream {
    /// Sending host.
    pub from: HostIx,
    /// Source address inside the tunnel.
    pub src: IpAddr,
    /// Destination address inside the tunnel.
    pub dst: IpAddr,
    /// First packet's send time.
    pub start: Time,
    /// Time between packets.
    pub interval: Duration,
    /// Number of packets.
    pub count: u64,
    /// IP packet size in bytes.
    pub size: usize,
    /// DSCP of its packets ([`traffic::EF`]: real-time media; 0 and large
    /// packets: bulk).
    pub dscp: u8,
}

impl Stream {
    /// When packet `n` (0-based) is sent.
    pub fn send_time(&self, n: u64) -> Time {
        self.start + self.interval.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

/// Index of a stream; its packet ids are `(index << 40) | n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamIx(pub usize);

const STREAM_SHIFT: u32 = 40;

/// A packet a node delivered to its TUN.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The host.
    pub host: HostIx,
    /// When.
    pub at: Time,
    /// The IP packet.
    pub packet: Vec<u8>,
}

/// A datagram arriving at a host, before the node saw it (recorded only when
/// [`Sim::record_arrivals`] is set).
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// Receiving host.
    pub host: HostIx,
    /// When.
    pub at: Time,
    /// On which wire.
    pub wire: WireIx,
    /// Header sender id and sequence number as sent (before any corruption).
    pub sender: u32,
    /// Sequence number.
    pub seq: u64,
    /// A bit was flipped on the way.
    pub corrupted: bool,
    /// Datagram length.
    pub len: usize,
    /// When it was sent.
    pub sent: Time,
    /// Its message type (wire value).
    pub msg_type: u8,
}

/// A datagram handed to a wire, whatever became of it (recorded only
/// when [`Sim::record_arrivals`] is set).
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    /// The wire.
    pub wire: WireIx,
    /// When.
    pub at: Time,
    /// Datagram length.
    pub len: usize,
    /// Its message type (wire value).
    pub msg_type: u8,
    /// Its header's flags byte.
    pub flags: u8,
}

/// What `handle_tun_packet` returned for a stream packet.
#[derive(Clone, Copy, Debug)]
pub struct TunSend {
    /// Packet id.
    pub id: u64,
    /// Sending host.
    pub host: HostIx,
    /// When.
    pub at: Time,
    /// Outcome.
    pub result: Result<crate::proto::Sent, DropReason>,
}

struct Wire {
    ends: [(HostIx, LinkId, SocketAddr); 2],
    channels: [Channel; 2],
}

struct SimHost {
    node: Node,
    /// What the node was built from, to build it again on a restart.
    cfg: NodeConfig,
    neighbours: Vec<BundleConfig>,
    routes: Vec<(IpNet, NextHop)>,
    /// Link -> (wire, direction in which this host sends on it).
    links: HashMap<LinkId, (WireIx, Dir)>,
    /// What [`Sim::configure_link`] said of its links.
    link_settings: Vec<(LinkId, LinkSettings)>,
    timer_at: Option<Time>,
    next_link: u32,
}

enum EventKind {
    StreamTick { stream: StreamIx, n: u64 },
    Tun { host: HostIx, packet: Vec<u8> },
    Arrive { host: HostIx, link: LinkId, from: SocketAddr, bytes: Vec<u8> },
    Timer { host: HostIx },
    LinkState { host: HostIx, link: LinkId, up: bool },
    Restart { host: HostIx },
    Rebind { wire: WireIx, host: HostIx, addr: SocketAddr },
}

struct Event {
    at: Time,
    order: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// The simulator.
pub struct Sim {
    now: Time,
    rng: ChaCha8Rng,
    hosts: Vec<SimHost>,
    wires: Vec<Wire>,
    streams: Vec<Stream>,
    queue: BinaryHeap<Reverse<Event>>,
    order: u64,
    out: Transmits,
    /// Reused for the three-step receive the daemon does (`crate::proto::opening`).
    openings: Openings,
    copies: Vec<link::Handover>,
    /// Record every datagram arrival in [`Sim::arrivals`].
    pub record_arrivals: bool,
    deliveries: Vec<Delivery>,
    answers: Vec<Delivery>,
    offers: Vec<Offer>,
    arrivals: Vec<Arrival>,
    tun_sends: Vec<TunSend>,
    /// Datagrams a node addressed to an endpoint its link does not lead to.
    pub unreachable: u64,
}

impl Sim {
    /// An empty network whose randomness comes from `seed`.
    pub fn new(seed: u64) -> Sim {
        Sim {
            now: Time::ZERO,
            rng: ChaCha8Rng::seed_from_u64(seed),
            hosts: Vec::new(),
            wires: Vec::new(),
            streams: Vec::new(),
            queue: BinaryHeap::new(),
            order: 0,
            out: Transmits::new(),
            openings: Openings::new(),
            copies: Vec::new(),
            record_arrivals: false,
            deliveries: Vec::new(),
            answers: Vec::new(),
            offers: Vec::new(),
            arrivals: Vec::new(),
            tun_sends: Vec::new(),
            unreachable: 0,
        }
    }

    /// 32 bytes from the simulator's generator: a seed for a node's own
    /// generator, or a key, reproducible from the simulator's seed.
    pub fn random_bytes(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        rand::RngCore::fill_bytes(&mut self.rng, &mut b);
        b
    }

    /// Current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Add a host running a node with `cfg`.
    pub fn add_host(&mut self, cfg: NodeConfig) -> Result<HostIx, SetupError> {
        let node = Node::new(cfg.clone())?;
        self.hosts.push(SimHost {
            node,
            cfg,
            neighbours: Vec::new(),
            routes: Vec::new(),
            links: HashMap::new(),
            timer_at: None,
            next_link: 1,
            link_settings: Vec::new(),
        });
        let h = HostIx(self.hosts.len() - 1);
        self.rearm(h);
        Ok(h)
    }

    /// The node of host `h`.
    pub fn node(&self, h: HostIx) -> &Node {
        &self.hosts[h.0].node
    }

    /// The node of host `h`, to configure it.
    pub fn node_mut(&mut self, h: HostIx) -> &mut Node {
        &mut self.hosts[h.0].node
    }

    /// Join `a` and `b` with a wire; `ab` models a -> b, `ba` models b -> a.
    /// Both nodes learn the new link at once.
    pub fn connect(&mut self, a: HostIx, b: HostIx, ab: LinkModel, ba: LinkModel) -> WireIx {
        let w = WireIx(self.wires.len());
        let i = u8::try_from(w.0).expect("at most 256 wires");
        let addr = |last| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(172, 16, i, last)), 51820);
        let now = self.now;
        let mut end = |h: HostIx, last, dir| {
            let host = &mut self.hosts[h.0];
            let link = LinkId(host.next_link);
            host.next_link += 1;
            host.links.insert(link, (w, dir));
            host.node.add_link(now, link);
            (h, link, addr(last))
        };
        let ea = end(a, 1, Dir::Forward);
        let eb = end(b, 2, Dir::Backward);
        self.wires.push(Wire { ends: [ea, eb], channels: [Channel::new(ab), Channel::new(ba)] });
        self.rearm(a);
        self.rearm(b);
        w
    }

    /// The local link and endpoint of `h` on wire `w`.
    pub fn end(&self, w: WireIx, h: HostIx) -> (LinkId, SocketAddr) {
        let e = self.wires[w.0].ends.iter().find(|e| e.0 == h).expect("host is on the wire");
        (e.1, e.2)
    }

    /// Make `a` and `b` neighbours over every wire that joins them, each path
    /// pinned to its wire, each knowing the other's public key.
    pub fn pair(&mut self, a: HostIx, b: HostIx) -> Result<(), SetupError> {
        for (me, other) in [(a, b), (b, a)] {
            let endpoints = self
                .wires
                .iter()
                .filter(|w| w.ends.iter().any(|e| e.0 == me) && w.ends.iter().any(|e| e.0 == other))
                .map(|w| {
                    let mine = w.ends.iter().find(|e| e.0 == me).expect("end");
                    let theirs = w.ends.iter().find(|e| e.0 == other).expect("end");
                    EndpointSpec { remote: theirs.2, link: Some(mine.1) }
                })
                .collect();
            let (ho, public_key) = (self.node(other).host(), self.node(other).public_key());
            let n = BundleConfig { host: ho, public_key, psk: None, endpoints };
            self.node_mut(me).add_bundle(n.clone())?;
            self.hosts[me.0].neighbours.push(n);
            self.rearm(me);
        }
        Ok(())
    }

    /// Route `prefix` on host `h` to `next`.
    pub fn route(&mut self, h: HostIx, prefix: IpNet, next: NextHop) -> Result<(), SetupError> {
        self.node_mut(h).add_route(prefix, next)?;
        self.hosts[h.0].routes.push((prefix, next));
        Ok(())
    }

    /// Restart host `h` at `at`: a new node from the same settings, keys,
    /// neighbours and routes, with no session and a new random generator
    /// (as a rebooted daemon).
    pub fn restart(&mut self, h: HostIx, at: Time) {
        self.push(at, EventKind::Restart { host: h });
    }

    /// From `at` on, `h`'s end of wire `w` has the address `addr` (a NAT
    /// that changed its mapping, or a host that moved).
    pub fn rebind(&mut self, w: WireIx, h: HostIx, addr: SocketAddr, at: Time) {
        self.push(at, EventKind::Rebind { wire: w, host: h, addr });
    }

    /// The channel of wire `w` in direction `d`.
    pub fn channel(&self, w: WireIx, d: Dir) -> &Channel {
        &self.wires[w.0].channels[d as usize]
    }

    /// The channel of wire `w` in direction `d`, to change its model.
    pub fn channel_mut(&mut self, w: WireIx, d: Dir) -> &mut Channel {
        &mut self.wires[w.0].channels[d as usize]
    }

    /// Black out both directions of wire `w` during `[start, end)`.
    pub fn blackout(&mut self, w: WireIx, start: Time, end: Time) {
        for c in &mut self.wires[w.0].channels {
            c.model.blackouts.push((start, end));
        }
    }

    /// Give the local link of `h` on wire `w` a role and rate, now.
    pub fn configure_link(&mut self, h: HostIx, w: WireIx, settings: LinkSettings) {
        let (link, _) = self.end(w, h);
        let now = self.now;
        let host = &mut self.hosts[h.0];
        host.link_settings.retain(|(l, _)| *l != link);
        host.link_settings.push((link, settings));
        host.node.configure_link(now, link, settings);
        self.rearm(h);
    }

    /// Take the local link of `h` on wire `w` down (as if its NIC vanished)
    /// at `at`, and back up at `back` if given.
    pub fn link_down(&mut self, h: HostIx, w: WireIx, at: Time, back: Option<Time>) {
        let (link, _) = self.end(w, h);
        self.push(at, EventKind::LinkState { host: h, link, up: false });
        if let Some(b) = back {
            self.push(b, EventKind::LinkState { host: h, link, up: true });
        }
    }

    /// Hand `packet` to host `h`'s node as if read from its TUN at `at`.
    pub fn send_tun(&mut self, h: HostIx, at: Time, packet: Vec<u8>) {
        self.push(at, EventKind::Tun { host: h, packet });
    }

    /// Hand raw bytes to host `h` as if received on wire `w` from `from` at `at`.
    pub fn inject(&mut self, h: HostIx, w: WireIx, from: SocketAddr, at: Time, bytes: Vec<u8>) {
        let (link, _) = self.end(w, h);
        self.push(at, EventKind::Arrive { host: h, link, from, bytes });
    }

    /// Start a stream of test packets.
    pub fn add_stream(&mut self, s: Stream) -> StreamIx {
        let ix = StreamIx(self.streams.len());
        let start = s.start;
        let any = s.count > 0;
        self.streams.push(s);
        if any {
            self.push(start, EventKind::StreamTick { stream: ix, n: 0 });
        }
        ix
    }

    /// A stream's definition.
    pub fn stream(&self, s: StreamIx) -> &Stream {
        &self.streams[s.0]
    }

    /// Every packet delivered to a TUN so far.
    pub fn deliveries(&self) -> &[Delivery] {
        &self.deliveries
    }

    /// Every datagram arrival so far (when recording).
    pub fn arrivals(&self) -> &[Arrival] {
        &self.arrivals
    }

    /// Outcome of every stream packet handed to a node.
    pub fn tun_sends(&self) -> &[TunSend] {
        &self.tun_sends
    }

    fn push(&mut self, at: Time, kind: EventKind) {
        self.order += 1;
        self.queue.push(Reverse(Event { at: at.max(self.now), order: self.order, kind }));
    }

    /// Run every event up to and including `until`; the clock ends at `until`.
    pub fn run_until(&mut self, until: Time) {
        while let Some(Reverse(ev)) = self.queue.peek() {
            if ev.at > until {
                break;
            }
            let Some(Reverse(ev)) = self.queue.pop() else {
                break;
            };
            self.now = ev.at;
            self.handle(ev.kind);
        }
        self.now = until;
    }

    fn handle(&mut self, kind: EventKind) {
        let now = self.now;
        match kind {
            EventKind::StreamTick { stream, n } => {
                let s = &self.streams[stream.0];
                let id = ((stream.0 as u64) << STREAM_SHIFT) | n;
                let packet = traffic::udp_packet_marked(s.src, s.dst, id, s.size, s.dscp);
                let host = s.from;
                if n + 1 < s.count {
                    let next = s.send_time(n + 1);
                    self.push(next, EventKind::StreamTick { stream, n: n + 1 });
                }
                let result = self.hosts[host.0].node.handle_tun_packet(now, &packet, &mut self.out);
                self.tun_sends.push(TunSend { id, host, at: now, result });
                self.take_answers(host);
                self.flush(host);
            }
            EventKind::Tun { host, packet } => {
                let _ = self.hosts[host.0].node.handle_tun_packet(now, &packet, &mut self.out);
                self.take_answers(host);
                self.flush(host);
            }
            EventKind::Arrive { host, link, from, mut bytes } => {
                // As the daemon does: planned, opened (outside its lock
                // there), then handled.
                let node = &mut self.hosts[host.0].node;
                self.openings.clear();
                node.plan_open(now, &bytes, &mut self.openings);
                self.openings.open(0, &mut bytes);
                let r = node.handle_opened(now, link, from, &mut bytes, self.openings.ahead(0), &mut self.out);
                if let Received::Deliver(range) = r {
                    self.deliveries.push(Delivery { host, at: now, packet: bytes[range].to_vec() });
                }
                self.flush(host);
            }
            EventKind::Timer { host } => {
                if self.hosts[host.0].timer_at == Some(now) {
                    self.hosts[host.0].timer_at = None;
                    self.hosts[host.0].node.handle_timeout(now, &mut self.out);
                    self.flush(host);
                    // A node whose timer stays due after handle_timeout would
                    // spin a real daemon: make that a loud failure here.
                    let due_again = self.hosts[host.0].node.poll_timeout().is_some_and(|t| t <= now);
                    assert!(
                        !due_again,
                        "{} wants its timer again at {now} after handling it",
                        self.hosts[host.0].node.host()
                    );
                }
            }
            EventKind::LinkState { host, link, up } => {
                let node = &mut self.hosts[host.0].node;
                if up {
                    node.add_link(now, link);
                } else {
                    node.remove_link(now, link);
                }
                self.rearm(host);
            }
            EventKind::Restart { host } => {
                let seed = self.random_bytes();
                let sh = &mut self.hosts[host.0];
                let mut cfg = sh.cfg.clone();
                cfg.rng_seed = seed;
                let mut node = Node::new(cfg).expect("the settings worked before");
                let mut links: Vec<LinkId> = sh.links.keys().copied().collect();
                links.sort();
                for &(l, settings) in &sh.link_settings {
                    node.configure_link(now, l, settings);
                }
                for l in links {
                    node.add_link(now, l);
                }
                for n in &sh.neighbours {
                    node.add_bundle(n.clone()).expect("the neighbours worked before");
                }
                for (p, next) in &sh.routes {
                    node.add_route(*p, *next).expect("the routes worked before");
                }
                sh.node = node;
                sh.timer_at = None;
                self.rearm(host);
            }
            EventKind::Rebind { wire, host, addr } => {
                for e in &mut self.wires[wire.0].ends {
                    if e.0 == host {
                        e.2 = addr;
                    }
                }
            }
        }
    }

    /// Record the ICMP answers host `h` wrote to its TUN.
    fn take_answers(&mut self, h: HostIx) {
        while let Some(packet) = self.hosts[h.0].node.poll_tun_packet() {
            self.answers.push(Delivery { host: h, at: self.now, packet });
        }
    }

    /// Every datagram handed to a wire, in order (with [`Sim::record_arrivals`]).
    pub fn offers(&self) -> &[Offer] {
        &self.offers
    }

    /// ICMP answers the hosts wrote to their TUNs ("too big"), in order.
    pub fn tun_answers(&self) -> &[Delivery] {
        &self.answers
    }

    /// Put what host `h` queued on the wires, then re-arm its timer.
    fn flush(&mut self, h: HostIx) {
        let mut out = std::mem::take(&mut self.out);
        for t in out.iter() {
            for path in t.paths {
                let Some(&(w, dir)) = self.hosts[h.0].links.get(&path.link) else {
                    self.unreachable += 1;
                    continue;
                };
                let wire = &mut self.wires[w.0];
                let (src, dst) = match dir {
                    Dir::Forward => (wire.ends[0], wire.ends[1]),
                    Dir::Backward => (wire.ends[1], wire.ends[0]),
                };
                if dst.2 != path.remote {
                    self.unreachable += 1;
                    continue;
                }
                self.copies.clear();
                if self.record_arrivals {
                    let p = Packet::new_unchecked(t.datagram);
                    let (msg_type, flags) = (p.msg_type(), p.flags());
                    self.offers.push(Offer { wire: w, at: self.now, len: t.datagram.len(), msg_type, flags });
                }
                wire.channels[dir as usize].transit(&mut self.rng, self.now, t.datagram.len(), &mut self.copies);
                for i in 0..self.copies.len() {
                    let c = self.copies[i];
                    let mut bytes = t.datagram.to_vec();
                    if let Some(bit) = c.flip_bit {
                        bytes[bit / 8] ^= 1 << (bit % 8);
                    }
                    if self.record_arrivals {
                        let p = Packet::new_unchecked(t.datagram);
                        self.arrivals.push(Arrival {
                            host: dst.0,
                            at: c.at,
                            wire: w,
                            sender: p.sender(),
                            seq: p.seq().0,
                            corrupted: c.flip_bit.is_some(),
                            len: t.datagram.len(),
                            sent: self.now,
                            msg_type: p.msg_type(),
                        });
                    }
                    self.push(c.at, EventKind::Arrive { host: dst.0, link: dst.1, from: src.2, bytes });
                }
            }
        }
        self.out = out;
        self.out.clear();
        self.rearm(h);
    }

    fn rearm(&mut self, h: HostIx) {
        let want = self.hosts[h.0].node.poll_timeout();
        if let Some(t) = want
            && self.hosts[h.0].timer_at != Some(t.max(self.now))
        {
            let t = t.max(self.now);
            self.hosts[h.0].timer_at = Some(t);
            self.push(t, EventKind::Timer { host: h });
        } else if want.is_none() {
            self.hosts[h.0].timer_at = None;
        }
    }

    /// Per-packet result of a stream at its destination host `to`.
    pub fn stream_report(&self, s: StreamIx, to: HostIx) -> StreamReport {
        let stream = &self.streams[s.0];
        let mut first: Vec<Option<Time>> = vec![None; stream.count as usize];
        let mut report = StreamReport { sent: stream.count, ..StreamReport::default() };
        for d in self.deliveries.iter().filter(|d| d.host == to) {
            let Some(id) = traffic::packet_id(&d.packet) else {
                report.mangled += 1;
                continue;
            };
            if id >> STREAM_SHIFT != s.0 as u64 {
                continue;
            }
            let n = id & ((1 << STREAM_SHIFT) - 1);
            match first.get_mut(n as usize) {
                Some(slot @ None) => *slot = Some(d.at),
                Some(Some(_)) => report.delivered_twice += 1,
                None => report.mangled += 1,
            }
        }
        for (n, at) in first.iter().enumerate() {
            match at {
                Some(at) => report.latency.push(*at - stream.send_time(n as u64)),
                None => report.lost_ids.push(n as u64),
            }
        }
        report.delivered = report.latency.len() as u64;
        report
    }
}

/// What arrived of a stream.
#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    /// Packets sent.
    pub sent: u64,
    /// Distinct packets delivered.
    pub delivered: u64,
    /// Deliveries of a packet already delivered (must stay 0).
    pub delivered_twice: u64,
    /// Deliveries whose content did not match what was sent (must stay 0).
    pub mangled: u64,
    /// Packet numbers never delivered.
    pub lost_ids: Vec<u64>,
    /// Latency of each delivered packet, in packet order.
    pub latency: Vec<Duration>,
}

impl StreamReport {
    /// Packets lost.
    pub fn lost(&self) -> u64 {
        self.sent - self.delivered
    }

    /// Loss as a fraction of packets sent.
    pub fn loss_rate(&self) -> f64 {
        if self.sent == 0 { 0.0 } else { self.lost() as f64 / self.sent as f64 }
    }

    /// Latency percentile `p` in `[0, 100]`.
    pub fn latency_percentile(&self, p: f64) -> Option<Duration> {
        let mut v = self.latency.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        Some(v[i.min(v.len() - 1)])
    }
}

/// Complete a handshake between two nodes that are already each other's
/// neighbours, passing their datagrams to each other directly (no simulated
/// network): `a` initiates from `a_link`/`a_addr`, `b` answers on
/// `b_link`/`b_addr`. For unit tests and benchmarks that need a session.
///
/// # Panics
/// If no session results (a test bug: wrong keys or addresses).
pub fn shake_hands(
    a: &mut Node,
    a_link: LinkId,
    a_addr: SocketAddr,
    b: &mut Node,
    b_link: LinkId,
    b_addr: SocketAddr,
    now: Time,
) {
    let mut to_b = Transmits::new();
    a.handle_timeout(now, &mut to_b);
    for _ in 0..4 {
        let mut to_a = Transmits::new();
        for t in to_b.iter().filter(|t| t.paths.iter().any(|p| p.remote == b_addr)) {
            b.handle_datagram(now, b_link, a_addr, &mut t.datagram.to_vec(), &mut to_a);
        }
        to_b.clear();
        for t in to_a.iter().filter(|t| t.paths.iter().any(|p| p.remote == a_addr)) {
            a.handle_datagram(now, a_link, b_addr, &mut t.datagram.to_vec(), &mut to_b);
        }
        if to_b.is_empty() {
            break;
        }
    }
    let (ha, hb) = (a.host(), b.host());
    assert!(a.bundle(hb).is_some_and(|n| n.has_session()), "no session at {ha}");
    assert!(b.bundle(ha).is_some_and(|n| n.has_session()), "no session at {hb}");
}
