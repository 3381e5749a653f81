//! Sending what the core queued: each datagram's copies on their links'
//! sockets, runs of equal-size datagrams for the same paths in one system
//! call (UDP GSO), without waiting.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::warn;

use super::shared::Shared;
use crate::proto::{self, LinkId, Sealed, Transmits};
use crate::sys::LinkIo;

impl Shared {
    /// Put every copy in `out` on its link's socket, without waiting.
    /// Consecutive datagrams of one size for the same paths go to each path
    /// in one system call (UDP GSO): a batch read from the TUN costs a few
    /// sends per path, not one per packet.
    /// Datagrams still to be sealed are sealed here, first: the caller has
    /// released the node's lock, so sealing runs beside the other tasks.
    pub(super) fn send(&self, out: &mut Transmits) {
        if out.is_empty() {
            return;
        }
        let out = out.sealed();
        let sockets = self.sockets.read().unwrap_or_else(|e| e.into_inner());
        for_each_run(out, |r| self.send_run(&sockets, out.bytes(), r));
    }

    fn send_run(&self, sockets: &HashMap<LinkId, Arc<LinkIo>>, bytes: &[u8], r: &Run<'_>) {
        for p in r.paths {
            let Some(s) = sockets.get(&p.link) else {
                self.io.send_no_socket.fetch_add(r.count as u64, Ordering::Relaxed);
                continue;
            };
            let contents = &bytes[r.start..r.end];
            let result = if r.count == 1 {
                s.try_send(contents, None, p.remote)
            } else if s.max_segments() >= r.count {
                s.try_send(contents, Some(r.size), p.remote)
            } else {
                contents.chunks(r.size).try_for_each(|d| s.try_send(d, None, p.remote))
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.io.send_would_block.fetch_add(r.count as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    let n = self.io.send_errors.fetch_add(r.count as u64, Ordering::Relaxed) + r.count as u64;
                    self.note_send_error(p.link, &e, n);
                }
            }
        }
    }
}

/// Split `out` into [`Run`]s, in order.
fn for_each_run<'a>(out: Sealed<'a>, mut f: impl FnMut(&Run<'a>)) {
    let mut run: Option<Run<'a>> = None;
    for t in out.iter() {
        if let Some(r) = &mut run
            && r.extend(&t)
        {
            continue;
        }
        if let Some(r) = run.take() {
            f(&r);
        }
        run = Some(Run::new(&t));
    }
    if let Some(r) = run {
        f(&r);
    }
}

/// Most datagrams sent in one GSO call.
const MAX_RUN: usize = 64;
/// Most bytes sent in one GSO call: the whole run is one UDP send, so it
/// must fit one IPv4 datagram (65 535 bytes less the 20-byte IP and 8-byte
/// UDP headers; IPv6 allows a little more). A larger run is refused whole by
/// the kernel with EMSGSIZE, every copy in it lost: 64 datagrams of 1 436
/// bytes are 91 904, and a TSO super-packet cut at the MSS fills such runs.
const MAX_RUN_BYTES: usize = 65_507;

/// Datagrams contiguous in a [`Transmits`], all of `size` bytes (the last
/// may be shorter), all for the same paths.
struct Run<'a> {
    paths: &'a [proto::PathAddr],
    size: usize,
    start: usize,
    end: usize,
    count: usize,
    closed: bool,
}

impl<'a> Run<'a> {
    fn new(t: &proto::Transmit<'a>) -> Run<'a> {
        let len = t.datagram.len();
        Run { paths: t.paths, size: len, start: t.offset, end: t.offset + len, count: 1, closed: false }
    }

    /// Take `t` into the run if it fits; a shorter datagram ends the run.
    fn extend(&mut self, t: &proto::Transmit<'a>) -> bool {
        let len = t.datagram.len();
        let fits = !self.closed
            && self.count < MAX_RUN
            && self.end - self.start + len <= MAX_RUN_BYTES
            && t.offset == self.end
            && len <= self.size
            && len > 0
            && t.paths == self.paths;
        if fits {
            self.end += len;
            self.count += 1;
            self.closed = len < self.size;
        }
        fits
    }
}

impl Shared {
    /// Log a send error at most once per interval per link.
    fn note_send_error(&self, link: LinkId, e: &io::Error, total: u64) {
        if self.send_error_log.ready(link) {
            warn!(%link, error = %e, send_errors_total = total, "sending on this link fails");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{BundleConfig, HostId, NextHop, Node, Time};
    use crate::proto::{EndpointSpec, NodeConfig};
    use crate::sim::traffic::udp_packet;
    use std::net::SocketAddr;

    /// Two nodes with keys and a route from the first to the second, which
    /// has two links; their endpoints. Hands not yet shaken.
    fn pair() -> (Node, Node, SocketAddr, SocketAddr) {
        let h = |n| HostId::new(n).unwrap();
        let (ea, eb): (SocketAddr, SocketAddr) =
            ("192.0.2.1:51820".parse().unwrap(), "192.0.2.2:51820".parse().unwrap());
        let mut node = Node::new(NodeConfig::new(h(1), [1; 32])).unwrap();
        let mut peer = Node::new(NodeConfig::new(h(2), [2; 32])).unwrap();
        node.add_link(Time::ZERO, LinkId(1));
        node.add_link(Time::ZERO, LinkId(2));
        peer.add_link(Time::ZERO, LinkId(1));
        let endpoints = vec![EndpointSpec { remote: eb, link: None }];
        let public_key = peer.public_key();
        node.add_bundle(BundleConfig { host: h(2), public_key, psk: None, endpoints }).unwrap();
        let endpoints = vec![EndpointSpec { remote: ea, link: None }];
        let public_key = node.public_key();
        peer.add_bundle(BundleConfig { host: h(1), public_key, psk: None, endpoints }).unwrap();
        node.add_route("10.9.0.2/32".parse().unwrap(), NextHop::Host(h(2))).unwrap();
        (node, peer, ea, eb)
    }

    #[test]
    fn equal_size_datagrams_for_the_same_paths_form_one_run() {
        let (mut node, mut peer, ea, eb) = pair();
        crate::sim::shake_hands(&mut node, LinkId(1), ea, &mut peer, LinkId(1), eb, Time::ZERO);
        let mut out = Transmits::new();
        let (a, b) = ("10.9.0.1".parse().unwrap(), "10.9.0.2".parse().unwrap());
        for (i, size) in [1400, 1400, 1400, 600, 1400, 1400].into_iter().enumerate() {
            node.handle_tun_packet(Time::ZERO, &udp_packet(a, b, i as u64, size), &mut out).unwrap();
        }
        let mut runs = Vec::new();
        for_each_run(out.sealed(), |r| runs.push((r.count, r.size, r.end - r.start, r.paths.len())));
        // 3 x 1400 + the shorter 600 close one run; the last two make another.
        assert_eq!(runs, vec![(4, 1436, 3 * 1436 + 636, 2), (2, 1436, 2 * 1436, 2)]);
    }

    #[test]
    fn a_run_fits_one_udp_send() {
        let (mut node, mut peer, ea, eb) = pair();
        crate::sim::shake_hands(&mut node, LinkId(1), ea, &mut peer, LinkId(1), eb, Time::ZERO);
        let mut out = Transmits::new();
        let (a, b) = ("10.9.0.1".parse().unwrap(), "10.9.0.2".parse().unwrap());
        // What a TSO super-packet cut at the MSS gives: a long train of
        // equal segments, more than one send can carry.
        for i in 0..100 {
            node.handle_tun_packet(Time::ZERO, &udp_packet(a, b, i, 1400), &mut out).unwrap();
        }
        let mut runs = Vec::new();
        for_each_run(out.sealed(), |r| runs.push((r.count, r.end - r.start)));
        assert!(runs.iter().all(|&(_, bytes)| bytes <= MAX_RUN_BYTES), "{runs:?}");
        assert_eq!(runs.iter().map(|r| r.0).sum::<usize>(), 100);
        // Each run as full as the byte limit allows: 45 x 1436 = 64 620.
        assert_eq!(runs[0], (45, 45 * 1436));
    }
}
