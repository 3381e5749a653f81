//! The Prometheus (OpenMetrics text) exposition of a [`Snapshot`]: the same
//! figures as `mpvr status --json`, under the names the README lists.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{DataSnap, Snapshot};

type Labels = Vec<(String, String)>;

#[derive(Default)]
struct Builder {
    registry: Registry,
    gauges: HashMap<&'static str, Family<Labels, Gauge<f64, AtomicU64>>>,
    counters: HashMap<&'static str, Family<Labels, Counter<u64>>>,
}

fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Builder {
    fn gauge(&mut self, name: &'static str, help: &str, l: &[(&str, &str)], v: f64) {
        let fam = self.gauges.entry(name).or_insert_with(|| {
            let f = Family::default();
            self.registry.register(name, help, f.clone());
            f
        });
        fam.get_or_create(&labels(l)).set(v);
    }

    /// `name` without `_total`: the exposition adds it.
    fn counter(&mut self, name: &'static str, help: &str, l: &[(&str, &str)], v: u64) {
        let fam = self.counters.entry(name).or_insert_with(|| {
            let f = Family::default();
            self.registry.register(name, help, f.clone());
            f
        });
        fam.get_or_create(&labels(l)).inc_by(v);
    }

    fn data(&mut self, l: &[(&str, &str)], d: &DataSnap) {
        self.counter("mpvr_path_data_delivered", "Data packets the path delivered", l, d.delivered);
        self.counter(
            "mpvr_path_data_missing",
            "Data packets another path delivered and this one did not",
            l,
            d.missing,
        );
        self.counter("mpvr_path_first_arrivals", "Data packets whose first copy came on the path", l, d.first);
        self.counter("mpvr_path_rescues", "Data packets only this path delivered", l, d.rescues);
    }
}

/// The OpenMetrics text of `s`.
pub fn render(s: &Snapshot) -> String {
    let mut b = Builder::default();
    let host = s.host.to_string();
    b.gauge(
        "mpvr_info",
        "Host id, TUN and policies",
        &[("host", &host), ("tun", &s.tun), ("policy", &s.policy), ("bulk_policy", &s.bulk_policy)],
        1.0,
    );
    b.gauge("mpvr_uptime_seconds", "Seconds since the daemon started", &[], s.uptime_s);
    let t = &s.totals;
    for (dir, c) in [("in", t.tun_in), ("out", t.tun_out)] {
        b.counter(
            "mpvr_tun_packets",
            "Packets read from (in) or written to (out) the TUN",
            &[("direction", dir)],
            c.packets,
        );
        b.counter("mpvr_tun_bytes", "Bytes read from (in) or written to (out) the TUN", &[("direction", dir)], c.bytes);
    }
    b.counter("mpvr_copies_sent", "Copies sent (datagrams x paths)", &[], t.copies_out.packets);
    if let Some(e) = &s.exit {
        if let Some(state) = &e.state {
            for st in ["through the exit", "direct", "blocked"] {
                let v = f64::from(u8::from(state == st));
                b.gauge("mpvr_full_tunnel_state", "1 for the full tunnel's current state", &[("state", st)], v);
            }
        }
        if let Some(n) = e.tracked {
            b.gauge("mpvr_exit_tracked_connections", "Connections the kernel tracks on the exit host", &[], n as f64);
        }
    }
    if let Some(m) = s.tun_mtu {
        b.gauge("mpvr_tun_mtu_bytes", "The TUN's MTU", &[], f64::from(m));
    }
    b.counter("mpvr_icmp_too_big", "Packets no path carries answered with ICMP too big", &[], t.icmp_too_big);
    b.counter("mpvr_fragmented_packets", "IPv4 packets fragmented to fit the paths", &[], t.fragmented);
    b.counter("mpvr_mss_clamped", "TCP SYNs whose MSS was lowered to what the paths carry", &[], t.mss_clamped);
    b.counter("mpvr_datagrams_received", "Datagrams received on all links", &[], t.datagrams_in.packets);
    b.counter(
        "mpvr_handshake_work",
        "Diffie-Hellman operations done for others' handshake messages (bounded under load by cookies)",
        &[],
        t.handshake_work,
    );
    b.counter("mpvr_cookie_replies", "Cookie replies sent while under load", &[], t.cookies_out);
    b.counter("mpvr_forwarded_packets", "Packets relayed toward another neighbour", &[], t.forwarded.packets);
    for (reason, n) in &t.drops {
        b.counter("mpvr_drops", "Packets dropped, by reason", &[("reason", reason)], *n);
    }
    for (event, n) in &t.io {
        b.counter(
            "mpvr_io_events",
            "I/O outcomes the daemon counts (send errors, full buffers, ...)",
            &[("event", event)],
            *n,
        );
    }
    for (queue, n) in t.tun_queue_reads.iter().enumerate() {
        let q = queue.to_string();
        b.counter(
            "mpvr_tun_queue_read_packets",
            "Packets read from each TUN queue (with TCP apart: 0 TCP, 1 everything else)",
            &[("queue", &q)],
            *n,
        );
    }
    for (socket, n) in t.link_queue_reads.iter().enumerate() {
        let s = socket.to_string();
        b.counter(
            "mpvr_link_socket_read_datagrams",
            "Datagrams read from the links' sockets, summed over links (with bulk apart: 0 bulk data, 1 the rest)",
            &[("socket", &s)],
            *n,
        );
    }
    for (class, c) in &t.classes {
        for (dir, n) in [("out", c.out), ("in", c.into)] {
            let cl = [("class", class.as_str()), ("direction", dir)];
            b.counter("mpvr_class_packets", "Data packets by class, sealed (out) or delivered (in)", &cl, n.packets);
            b.counter("mpvr_class_bytes", "Data bytes by class, sealed (out) or delivered (in)", &cl, n.bytes);
        }
    }
    b.gauge("mpvr_links_up", "Network interfaces in use as links (0: mpvr carries nothing)", &[], s.links.len() as f64);
    if let Some(c) = &s.config {
        b.counter("mpvr_config_reloads", "Config reloads that applied", &[], c.reloads);
        b.gauge(
            "mpvr_config_reload_refused",
            "1 if the last reload was refused (the config before it runs)",
            &[],
            if c.last_error.is_some() { 1.0 } else { 0.0 },
        );
    }
    for l in &s.links {
        let ll = [("link", l.name.as_str())];
        b.gauge(
            "mpvr_link_role",
            "The link's role (1 for the role it has)",
            &[("link", &l.name), ("role", &l.role)],
            1.0,
        );
        if let Some(r) = l.rate_bps {
            b.gauge("mpvr_link_rate_bits_per_second", "The link's configured upload rate", &ll, r as f64);
        }
        for (class, c) in &l.by_class {
            let cl = [("link", l.name.as_str()), ("class", class.as_str())];
            b.counter("mpvr_link_class_tx_bytes", "Data bytes sent on the link, by class", &cl, c.bytes);
        }
        if let Some(sh) = &l.shaper {
            for (lane, n) in &sh.drops {
                let cl = [("link", l.name.as_str()), ("lane", lane.as_str())];
                b.counter("mpvr_link_shaper_drops", "Copies the link's shaper dropped, by lane", &cl, *n);
                b.counter(
                    "mpvr_link_shaper_queued",
                    "Copies that waited in the link's shaper, by lane",
                    &cl,
                    sh.queued[lane],
                );
                b.gauge(
                    "mpvr_link_shaper_backlog_bytes",
                    "Bytes waiting in the link's shaper, by lane",
                    &cl,
                    sh.backlog_bytes[lane] as f64,
                );
                b.gauge(
                    "mpvr_link_shaper_delay_seconds",
                    "Queueing delay of the last copy the link's shaper sent, by lane",
                    &cl,
                    sh.delay_ms[lane] / 1e3,
                );
            }
        }
        b.counter("mpvr_link_rx_packets", "Datagrams received on the link", &ll, l.rx.packets);
        b.counter("mpvr_link_rx_bytes", "Bytes received on the link", &ll, l.rx.bytes);
        b.counter("mpvr_link_tx_packets", "Copies sent on the link", &ll, l.tx.packets);
        b.counter("mpvr_link_tx_bytes", "Bytes sent on the link", &ll, l.tx.bytes);
        for (reason, n) in l.drops.iter().filter(|(_, n)| **n > 0) {
            b.counter(
                "mpvr_link_drops",
                "Datagrams received on the link and dropped",
                &[("link", &l.name), ("reason", reason)],
                *n,
            );
        }
    }
    for p in &s.peers {
        let peer = p.id.to_string();
        let pl = [("peer", peer.as_str())];
        b.gauge(
            "mpvr_peer_session",
            "1 if a session with the peer can carry packets",
            &pl,
            f64::from(u8::from(p.session.is_some())),
        );
        b.counter("mpvr_peer_handshakes", "Handshakes completed with the peer", &pl, p.handshakes);
        b.counter(
            "mpvr_peer_bad_source_packets",
            "Authenticated packets from the peer refused: source address not routed to it",
            &pl,
            p.bad_source,
        );
        b.counter("mpvr_peer_sent_packets", "Packets sealed for the peer (once each)", &pl, p.sealed.packets);
        b.counter(
            "mpvr_peer_received_packets",
            "Packets accepted from the peer (first copies)",
            &pl,
            p.accepted.packets,
        );
        for (dir, c) in [("out", p.exit_out), ("in", p.exit_in)] {
            let ld = [("peer", peer.as_str()), ("direction", dir)];
            b.counter(
                "mpvr_exit_packets",
                "Packets this exit forwarded for the peer, out of the overlay or back",
                &ld,
                c.packets,
            );
            b.counter(
                "mpvr_exit_bytes",
                "Bytes this exit forwarded for the peer, out of the overlay or back",
                &ld,
                c.bytes,
            );
        }
        for x in &p.paths {
            let l = [("peer", peer.as_str()), ("link", x.link.as_str()), ("remote", x.remote.as_str())];
            for state in ["up", "degraded", "suspect", "down"] {
                let v = f64::from(u8::from(x.state == state));
                let ls = [l[0], l[1], l[2], ("state", state)];
                b.gauge("mpvr_path_state", "1 for the path's current state", &ls, v);
            }
            if let Some(rtt) = x.rtt_ms {
                b.gauge("mpvr_path_rtt_seconds", "Smoothed RTT (RFC 6298)", &l, rtt / 1e3);
                b.gauge("mpvr_path_rttvar_seconds", "RTT variation (RFC 6298)", &l, x.rttvar_ms.unwrap_or(0.0) / 1e3);
            }
            for (dir, j, owd) in [("out", x.jitter_out_ms, x.owd_var_out_ms), ("in", x.jitter_in_ms, x.owd_var_in_ms)] {
                let ld = [l[0], l[1], l[2], ("direction", dir)];
                b.gauge("mpvr_path_jitter_seconds", "Interarrival jitter (RFC 3550) of probes", &ld, j / 1e3);
                if let Some(o) = owd {
                    b.gauge("mpvr_path_owd_variation_seconds", "One-way delay above its recent minimum", &ld, o / 1e3);
                }
            }
            b.gauge("mpvr_path_probe_loss_ratio", "Lost fraction of the last 64 probes", &l, x.probe_loss);
            b.gauge(
                "mpvr_path_mtu_bytes",
                "Largest packet (outer IP) sent on the path: measured, or not yet ruled out",
                &l,
                f64::from(x.mtu.mtu),
            );
            b.gauge(
                "mpvr_path_mtu_measured",
                "1 once the path's MTU is measured (0 while a first search runs)",
                &l,
                f64::from(u8::from(x.mtu.measured.is_some())),
            );
            b.counter("mpvr_path_mtu_shrinks", "Times the path's MTU was found to have shrunk", &l, x.mtu.shrinks);
            if let Some(sh) = &x.shaper {
                let drops: u64 = sh.drops.values().sum();
                b.counter(
                    "mpvr_path_shaper_drops",
                    "Copies dropped by the shaper toward the peer's download rate",
                    &l,
                    drops,
                );
                b.gauge(
                    "mpvr_path_shaper_bulk_delay_seconds",
                    "Smoothed bulk queueing delay in the shaper toward the peer's download rate",
                    &l,
                    sh.bulk_delay_ms / 1e3,
                );
            }
            b.counter("mpvr_path_probes_sent", "Probes sent on the path", &l, x.probes.sent);
            b.counter("mpvr_path_probes_lost", "Probes given up on the path", &l, x.probes.lost);
            b.counter("mpvr_path_tx_packets", "Copies sent on the path", &l, x.tx.packets);
            b.counter("mpvr_path_tx_bytes", "Bytes sent on the path", &l, x.tx.bytes);
            b.counter(
                "mpvr_path_rx_packets",
                "Authenticated datagrams received on the path",
                &l,
                x.rx_first.packets + x.rx_later.packets,
            );
            for (dir, d) in [("in", &x.inbound), ("out", &x.outbound)] {
                let ld = [l[0], l[1], l[2], ("direction", dir)];
                b.data(&ld, d);
            }
        }
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &b.registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_has_its_series() {
        let s = super::super::build::simulated();
        let text = render(&s);
        for needle in [
            "mpvr_path_state{peer=\"2\",link=\"wan1\",remote=\"172.16.0.2:51820\",state=\"up\"} 1",
            "mpvr_path_state{peer=\"2\",link=\"wan2\",remote=\"172.16.1.2:51820\",state=\"down\"} 1",
            "mpvr_path_rtt_seconds{peer=\"2\",link=\"wan1\"",
            "mpvr_path_first_arrivals_total{peer=\"2\",link=\"wan1\",remote=\"172.16.0.2:51820\",direction=\"out\"}",
            "mpvr_drops_total{reason=\"duplicate\"}",
            "mpvr_tun_queue_read_packets_total{queue=\"0\"} 52113",
            "mpvr_tun_queue_read_packets_total{queue=\"1\"} 1207",
            "mpvr_link_socket_read_datagrams_total{socket=\"0\"} 61870",
            "mpvr_link_socket_read_datagrams_total{socket=\"1\"} 2310",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
