//! Coalescing toward the offloaded TUN (GRO), without copies.
//!
//! The packets a link's receive batch delivers stay where they were opened,
//! in the batch's storage. [`Coalescer::add`] takes them in order, as
//! ranges of that storage, and groups consecutive TCP segments of one flow
//! into items; [`Coalescer::seal`] rewrites the first segment's headers of
//! each multi-segment item in place (lengths, the IPv4 header checksum, PSH,
//! the TCP checksum as the pseudo-header sum the kernel completes) and makes
//! its virtio-net header (TSO with `gso_size` = the first segment's payload).
//! Each item is then one `writev`: the virtio-net header, the first segment
//! whole, and the payloads of the others from where they lie. No packet is
//! copied in user space and nothing is allocated once the tables have grown.
//!
//! Segments join an item only as the kernel's own GRO would take them: IPv4
//! without options or fragments, or IPv6 with TCP as the next header; the
//! same addresses, ports, TOS or traffic class and flow label, TTL or hop
//! limit, DF; the same TCP header length, options, acknowledgement and
//! window; flags ACK (PSH allowed, and it ends the item); the sequence
//! number that follows; a payload no larger than the first's (a smaller one
//! ends the item); a valid TCP checksum (a bad one is written alone, as it
//! came, for the kernel to drop); at most 64 KiB and [`MAX_SEGMENTS`]
//! segments. A segment of a flow that cannot join its flow's open item
//! closes that item and starts the next, so items are written in the order
//! their first segments came and no flow is reordered.
//!
//! tun-rs has its own GRO table; it copies every segment into a fresh
//! allocation before deciding, which cost about 6 % of a receiving daemon's
//! CPU under one TCP stream (perf), so mpvr does this itself.

use std::io::IoSlice;
use std::ops::Range;

use tun_rs::{
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_LEN, VirtioNetHdr, checksum, checksum_no_fold,
};

/// Segments in one item at most.
pub const MAX_SEGMENTS: usize = 64;
/// Slices one item's `writev` needs at most: the virtio-net header, the
/// first segment, the other segments' payloads.
pub const MAX_SLICES: usize = MAX_SEGMENTS + 1;

const TCP: u8 = 6;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const NONE: u32 = u32::MAX;
const MAX_LEN: usize = 65_535;
/// The virtio-net header's flag for a checksum the kernel completes
/// (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, linux/virtio_net.h; tun-rs keeps its
/// own private).
const NEEDS_CSUM: u8 = 1;

/// One packet's TCP facts, read once.
#[derive(Clone, Copy)]
struct Tcp {
    v6: bool,
    /// IP header length.
    ip: usize,
    /// IP and TCP header length.
    headers: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

/// Parse `p` as a TCP segment the coalescer may merge: `None` for anything
/// else (it is then written alone).
fn parse(p: &[u8]) -> Option<Tcp> {
    let (v6, ip) = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let total = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
            // No options; no fragment (MF clear, offset 0).
            let fragment = u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0;
            if p[0] & 0x0f != 5 || total != p.len() || fragment || p.get(9) != Some(&TCP) {
                return None;
            }
            (false, 20)
        }
        6 => {
            let payload = usize::from(u16::from_be_bytes([*p.get(4)?, *p.get(5)?]));
            if p.get(6) != Some(&TCP) || payload + 40 != p.len() {
                return None;
            }
            (true, 40)
        }
        _ => return None,
    };
    let offset = usize::from(*p.get(ip + 12)? >> 4) * 4;
    let headers = ip + offset;
    if offset < 20 || headers >= p.len() {
        return None;
    }
    let flags = p[ip + 13];
    if flags != ACK && flags != ACK | PSH || p[ip + 18..ip + 20] != [0, 0] {
        return None;
    }
    let seq = u32::from_be_bytes([p[ip + 4], p[ip + 5], p[ip + 6], p[ip + 7]]);
    Some(Tcp { v6, ip, headers, seq, flags, payload: p.len() - headers })
}

/// The pseudo-header sum of a TCP segment of `tcp_len` bytes, unfolded.
fn pseudo_header(p: &[u8], v6: bool, tcp_len: usize) -> u64 {
    let addresses = if v6 { &p[8..40] } else { &p[12..20] };
    let len = (tcp_len as u32).to_be_bytes();
    checksum_no_fold(&[0, 0, 0, TCP, len[0], len[1], len[2], len[3]], checksum_no_fold(addresses, 0))
}

/// Whether the TCP checksum of `p` is right.
fn checksum_valid(p: &[u8], t: &Tcp) -> bool {
    checksum(&p[t.ip..], pseudo_header(p, t.v6, p.len() - t.ip)) == 0xffff
}

/// Whether `a` and `b` (both TCP, of one IP version) are of one flow:
/// addresses and ports.
fn same_flow(a: &[u8], b: &[u8], t: &Tcp) -> bool {
    let addresses = if t.v6 { 8..40 } else { 12..20 };
    a[addresses.clone()] == b[addresses] && a[t.ip..t.ip + 4] == b[t.ip..t.ip + 4]
}

/// Whether segment `b` may follow segment `a` of its flow in one
/// super-packet, header for header (the sequence number, flags and sizes
/// are checked apart).
fn same_headers(a: &[u8], b: &[u8], t: &Tcp) -> bool {
    let ip_same = if t.v6 {
        // Version, traffic class, flow label; next header, hop limit.
        a[..4] == b[..4] && a[6..8] == b[6..8]
    } else {
        // Version, IHL, TOS; flags (DF); TTL, protocol.
        a[..2] == b[..2] && a[6] & 0xe0 == b[6] & 0xe0 && a[8..10] == b[8..10]
    };
    let (ta, tb) = (&a[t.ip..], &b[t.ip..]);
    // Acknowledgement; header length; window; options.
    ip_same && ta[8..13] == tb[8..13] && ta[14..16] == tb[14..16] && a[t.ip + 20..t.headers] == b[t.ip + 20..t.headers]
}

/// A group of segments written with one `writev`.
#[derive(Clone)]
struct Item {
    /// The first segment, whole.
    head: Range<usize>,
    tcp: Option<Tcp>,
    /// The packet's length so far (the first segment and later payloads).
    len: usize,
    /// The sequence number the next segment must have.
    next_seq: u32,
    segments: usize,
    /// First and last later segment in [`Coalescer::tails`] ([`NONE`]: none).
    first: u32,
    last: u32,
    open: bool,
    psh: bool,
    vnet: [u8; VIRTIO_NET_HDR_LEN],
}

/// A later segment's payload and the next one of its item.
#[derive(Clone)]
struct Tail {
    payload: Range<usize>,
    next: u32,
}

/// Groups a batch's packets for the offloaded TUN; see the module docs.
#[derive(Default)]
pub struct Coalescer {
    items: Vec<Item>,
    tails: Vec<Tail>,
    sealed: bool,
}

impl Coalescer {
    /// Take the packet at `range` of `storage` (any packet: what cannot be
    /// merged is written alone, in its place).
    pub fn add(&mut self, storage: &[u8], range: Range<usize>) {
        debug_assert!(!self.sealed, "add after seal without clear");
        let p = &storage[range.clone()];
        let tcp = parse(p);
        let Some(t) = &tcp else {
            // Anything else (FIN, SYN, a fragment, not TCP): nothing that
            // comes after it may be written before it.
            self.items.iter_mut().for_each(|i| i.open = false);
            return self.push(range, None, p);
        };
        // The flow's latest item, the only one it may join.
        let latest = self
            .items
            .iter()
            .rposition(|i| i.tcp.is_some_and(|h| h.v6 == t.v6) && same_flow(&storage[i.head.clone()], p, t));
        if let Some(at) = latest {
            let item = &mut self.items[at];
            let head = item.tcp.expect("a TCP item");
            let fits = item.open
                && t.seq == item.next_seq
                && head.headers == t.headers
                && t.payload <= head.payload
                && item.len + t.payload <= MAX_LEN
                && item.segments < MAX_SEGMENTS
                && same_headers(&storage[item.head.clone()], p, t)
                && checksum_valid(p, t);
            if fits {
                let tail = self.tails.len() as u32;
                self.tails.push(Tail { payload: range.start + t.headers..range.end, next: NONE });
                match item.last {
                    NONE => item.first = tail,
                    last => self.tails[last as usize].next = tail,
                }
                item.last = tail;
                item.len += t.payload;
                item.next_seq = t.seq.wrapping_add(t.payload as u32);
                item.segments += 1;
                item.psh |= t.flags & PSH != 0;
                item.open = t.flags & PSH == 0 && t.payload == head.payload;
                return;
            }
            item.open = false;
        }
        self.push(range, tcp, p);
    }

    /// Start an item with the packet `p` at `range`.
    fn push(&mut self, range: Range<usize>, tcp: Option<Tcp>, p: &[u8]) {
        let open = tcp.as_ref().is_some_and(|t| t.flags & PSH == 0 && checksum_valid(p, t));
        let next_seq = tcp.map_or(0, |t| t.seq.wrapping_add(t.payload as u32));
        self.items.push(Item {
            head: range.clone(),
            tcp,
            len: range.len(),
            next_seq,
            segments: 1,
            first: NONE,
            last: NONE,
            open,
            psh: false,
            vnet: [0; VIRTIO_NET_HDR_LEN],
        });
    }

    /// Whether no packet waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Writes the items need.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Rewrite the headers of every multi-segment item in `storage` (the
    /// storage [`Coalescer::add`] was given) and make the virtio-net headers.
    pub fn seal(&mut self, storage: &mut [u8]) {
        if self.sealed {
            return;
        }
        self.sealed = true;
        for item in self.items.iter_mut().filter(|i| i.segments > 1) {
            let t = item.tcp.expect("only TCP items grow");
            let p = &mut storage[item.head.clone()];
            let len = item.len as u16;
            if t.v6 {
                p[4..6].copy_from_slice(&(len - 40).to_be_bytes());
            } else {
                p[2..4].copy_from_slice(&len.to_be_bytes());
                p[10..12].fill(0);
                let sum = !checksum(&p[..20], 0);
                p[10..12].copy_from_slice(&sum.to_be_bytes());
            }
            if item.psh {
                p[t.ip + 13] |= PSH;
            }
            // The kernel completes the checksum (CHECKSUM_PARTIAL): the field
            // holds the pseudo-header sum, folded and not inverted.
            let partial = checksum(&[], pseudo_header(p, t.v6, item.len - t.ip));
            p[t.ip + 16..t.ip + 18].copy_from_slice(&partial.to_be_bytes());
            let hdr = VirtioNetHdr {
                flags: NEEDS_CSUM,
                gso_type: if t.v6 { VIRTIO_NET_HDR_GSO_TCPV6 } else { VIRTIO_NET_HDR_GSO_TCPV4 },
                hdr_len: t.headers as u16,
                gso_size: t.payload as u16,
                csum_start: t.ip as u16,
                csum_offset: 16,
            };
            hdr.encode(&mut item.vnet).expect("the array is the header's size");
        }
    }

    /// The slices of item `i` (after [`Coalescer::seal`]) into `iov`; returns
    /// how many it filled.
    pub fn slices<'a>(&'a self, i: usize, storage: &'a [u8], iov: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
        debug_assert!(self.sealed, "slices before seal");
        let item = &self.items[i];
        iov[0] = IoSlice::new(&item.vnet);
        iov[1] = IoSlice::new(&storage[item.head.clone()]);
        let mut n = 2;
        let mut at = item.first;
        while at != NONE {
            let tail = &self.tails[at as usize];
            iov[n] = IoSlice::new(&storage[tail.payload.clone()]);
            n += 1;
            at = tail.next;
        }
        n
    }

    /// Forget every item (the buffers stay for the next batch).
    pub fn clear(&mut self) {
        self.items.clear();
        self.tails.clear();
        self.sealed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tun_rs::gso_split;

    /// A TCP segment with right checksums.
    fn segment(v6: bool, flow: u8, seq: u32, payload: &[u8], flags: u8, id: u16) -> Vec<u8> {
        let ip = if v6 { 40 } else { 20 };
        let tcp_len = 32 + payload.len(); // 12 bytes of options (timestamps)
        let mut p = vec![0u8; ip + tcp_len];
        if v6 {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            p[6] = TCP;
            p[7] = 64;
            p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&((ip + tcp_len) as u16).to_be_bytes());
            p[4..6].copy_from_slice(&id.to_be_bytes());
            p[6] = 0x40;
            p[8] = 64;
            p[9] = TCP;
            p[12..16].copy_from_slice(&[10, 9, 0, 1]);
            p[16..20].copy_from_slice(&[10, 9, 0, 2]);
            let sum = !checksum(&p[..20], 0);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        let t = &mut p[ip..];
        t[0..2].copy_from_slice(&(40000 + u16::from(flow)).to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&7u32.to_be_bytes());
        t[12] = 8 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        t[32..].copy_from_slice(payload);
        let sum = !checksum(&p[ip..], pseudo_header(&p, v6, tcp_len));
        p[ip + 16..ip + 18].copy_from_slice(&sum.to_be_bytes());
        p
    }

    /// Lay `packets` out in one storage and coalesce them all; returns what
    /// each write would write, as bytes.
    fn coalesce(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut storage = Vec::new();
        let mut ranges = Vec::new();
        for p in packets {
            ranges.push(storage.len()..storage.len() + p.len());
            storage.extend_from_slice(p);
            storage.extend_from_slice(&[0xee; 7]); // a gap, as between datagrams
        }
        let mut c = Coalescer::default();
        for r in ranges {
            c.add(&storage, r);
        }
        c.seal(&mut storage);
        let mut writes = Vec::new();
        for i in 0..c.len() {
            let mut iov = [IoSlice::new(&[]); MAX_SLICES];
            let n = c.slices(i, &storage, &mut iov);
            writes.push(iov[..n].iter().flat_map(|s| s.iter().copied()).collect());
        }
        writes
    }

    /// What the kernel makes of a write: its packets (a super-packet cut by
    /// tun-rs's splitter, which the TUN reader uses for the kernel's).
    fn packets_of(write: &[u8]) -> Vec<Vec<u8>> {
        let hdr = VirtioNetHdr::decode(write).unwrap();
        let mut packet = write[VIRTIO_NET_HDR_LEN..].to_vec();
        if hdr.gso_type == 0 {
            assert_eq!(hdr.flags, 0, "a lone packet goes as it came");
            return vec![packet];
        }
        let v6 = hdr.gso_type == VIRTIO_NET_HDR_GSO_TCPV6;
        let mut out = vec![vec![0u8; 65_536]; MAX_SEGMENTS];
        let mut sizes = vec![0; MAX_SEGMENTS];
        let n = gso_split(&mut packet, hdr, &mut out, &mut sizes, 0, v6).unwrap();
        out.into_iter()
            .zip(sizes)
            .take(n)
            .map(|(mut b, s)| {
                b.truncate(s);
                b
            })
            .collect()
    }

    /// A packet with the IPv4 identification and header checksum zeroed:
    /// the kernel numbers a super-packet's segments afresh.
    fn without_ip_id(p: &[u8]) -> Vec<u8> {
        let mut p = p.to_vec();
        if p[0] >> 4 == 4 {
            p[4..6].fill(0);
            p[10..12].fill(0);
        }
        p
    }

    #[test]
    fn consecutive_segments_of_a_flow_become_one_write() {
        for v6 in [false, true] {
            let segs: Vec<_> =
                (0..5u16).map(|i| segment(v6, 1, 1000 + u32::from(i) * 1200, &[i as u8; 1200], ACK, 10 + i)).collect();
            let writes = coalesce(&segs);
            assert_eq!(writes.len(), 1, "v6 {v6}");
            let hdr = VirtioNetHdr::decode(&writes[0]).unwrap();
            assert_eq!((hdr.flags, hdr.gso_size), (NEEDS_CSUM, 1200));
            assert_eq!(hdr.gso_type, if v6 { VIRTIO_NET_HDR_GSO_TCPV6 } else { VIRTIO_NET_HDR_GSO_TCPV4 });
            assert_eq!(usize::from(hdr.hdr_len), if v6 { 72 } else { 52 });
            assert_eq!(packets_of(&writes[0]), segs);
        }
    }

    #[test]
    fn a_short_or_pushed_segment_ends_the_item() {
        let s = |seq, len, flags| segment(false, 1, seq, &vec![1; len], flags, 0);
        let segs =
            vec![s(0, 1000, ACK), s(1000, 500, ACK), s(1500, 1000, ACK), s(2500, 1000, ACK | PSH), s(3500, 1000, ACK)];
        let writes = coalesce(&segs);
        assert_eq!(writes.len(), 3);
        let got: Vec<_> = writes.iter().flat_map(|w| packets_of(w)).map(|p| without_ip_id(&p)).collect();
        let want: Vec<_> = segs.iter().map(|p| without_ip_id(p)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_bad_checksum_a_gap_or_other_flags_are_written_alone_in_order() {
        let mut bad = segment(false, 1, 1000, &[2; 1000], ACK, 0);
        *bad.last_mut().unwrap() ^= 1;
        let segs = vec![
            segment(false, 1, 0, &[1; 1000], ACK, 0),
            bad.clone(),
            segment(false, 1, 2000, &[3; 1000], ACK, 0), // follows the bad one: not merged ahead of it
            segment(false, 1, 3000, &[4; 1000], ACK | 0x01, 0), // FIN
            segment(false, 1, 5000, &[5; 1000], ACK, 0),
            segment(false, 1, 9000, &[6; 1000], ACK, 0), // a gap
        ];
        let writes = coalesce(&segs);
        assert_eq!(writes.len(), segs.len());
        for (w, s) in writes.iter().zip(&segs) {
            assert_eq!(&w[VIRTIO_NET_HDR_LEN..], &s[..], "written as it came");
        }
    }

    #[test]
    fn flows_interleave_and_anything_else_ends_every_item() {
        let mut udp = segment(false, 1, 0, &[9; 100], ACK, 0);
        udp[9] = 17;
        let segs = vec![
            segment(false, 1, 0, &[1; 1000], ACK, 0),
            segment(true, 2, 0, &[2; 1000], ACK, 0),
            segment(false, 1, 1000, &[1; 1000], ACK, 1),
            udp.clone(),
            segment(true, 2, 1000, &[2; 1000], ACK, 0),
            segment(true, 2, 2000, &[2; 1000], ACK, 0),
        ];
        let writes = coalesce(&segs);
        assert_eq!(writes.len(), 4);
        assert_eq!(packets_of(&writes[0]), vec![segs[0].clone(), segs[2].clone()]);
        assert_eq!(packets_of(&writes[1]), vec![segs[1].clone()]);
        assert_eq!(&writes[2][VIRTIO_NET_HDR_LEN..], &udp[..]);
        assert_eq!(packets_of(&writes[3]), vec![segs[4].clone(), segs[5].clone()]);
    }

    #[test]
    fn short_or_odd_packets_are_written_alone() {
        let whole = segment(false, 1, 0, &[1; 100], ACK, 0);
        let short = vec![0x45, 0, 0, 4];
        let segs = vec![short, vec![0x45], vec![0x60, 0, 0, 0, 0, 0, TCP], whole[..30].to_vec(), vec![]];
        let writes = coalesce(&segs);
        assert_eq!(writes.len(), segs.len());
        for (w, s) in writes.iter().zip(&segs) {
            assert_eq!(&w[VIRTIO_NET_HDR_LEN..], &s[..]);
        }
    }

    #[test]
    fn an_item_stops_at_64_kib() {
        let segs: Vec<_> = (0..60u32).map(|i| segment(false, 1, i * 1400, &[7; 1400], ACK, i as u16)).collect();
        let writes = coalesce(&segs);
        assert_eq!(writes.len(), 2);
        assert!(writes.iter().all(|w| w.len() - VIRTIO_NET_HDR_LEN <= MAX_LEN));
        let got: Vec<_> = writes.iter().flat_map(|w| packets_of(w)).collect();
        assert_eq!(got, segs);
    }

    proptest! {
        /// Whatever comes (flows interleaved, sizes, flags, gaps, repeats,
        /// bad checksums), the kernel gets every packet once, each flow's
        /// in the order they came, byte for byte but for the IPv4 ID.
        #[test]
        fn every_packet_arrives_once_in_order(
            plan in proptest::collection::vec((0u8..3, 0usize..4, 1usize..1400, 0u8..10), 1..120)
        ) {
            let mut next = [0u32; 3];
            let segs: Vec<_> = plan.iter().map(|&(flow, mode, len, flags)| {
                let v6 = flow == 2;
                let seq = match mode {
                    0 => next[flow as usize].wrapping_sub(len as u32), // a repeat
                    1 => next[flow as usize].wrapping_add(100),         // a gap
                    _ => next[flow as usize],
                };
                let full = if mode == 3 { 1200 } else { len };
                let f = match flags { 0 => ACK | PSH, 1 => ACK | 0x01, 2 => 0x02, _ => ACK };
                next[flow as usize] = seq.wrapping_add(full as u32);
                let mut p = segment(v6, flow, seq, &vec![flow; full], f, 0);
                if flags == 9 {
                    *p.last_mut().unwrap() ^= 0x55;
                }
                p
            }).collect();
            let writes = coalesce(&segs);
            let got: Vec<_> = writes.iter().flat_map(|w| packets_of(w)).map(|p| without_ip_id(&p)).collect();
            for flow in 0..3u8 {
                let port = (40000 + u16::from(flow)).to_be_bytes();
                let of = |p: &&Vec<u8>| {
                    let ip = if p[0] >> 4 == 6 { 40 } else { 20 };
                    p[ip..ip + 2] == port
                };
                let want: Vec<_> = segs.iter().filter(of).map(|p| without_ip_id(p)).collect();
                let have: Vec<_> = got.iter().filter(of).cloned().collect();
                prop_assert_eq!(have, want);
            }
            prop_assert_eq!(got.len(), segs.len());
        }
    }
}
