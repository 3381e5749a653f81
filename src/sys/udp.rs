//! One UDP socket per link, pinned to its NIC with SO_BINDTODEVICE, with
//! batched I/O through quinn-udp: recvmmsg and UDP GRO on receive, UDP GSO
//! (one system call for a run of equal-size datagrams to one destination) on
//! send, with quinn-udp's fallbacks where the kernel lacks them.
//!
//! Each socket is bound to the wildcard address (dual-stack `[::]` where the
//! host has IPv6, else `0.0.0.0`) and the listen port, and pinned to its NIC:
//! the kernel lets several sockets share the port when each is bound to a
//! different device, picks the source address of the NIC per destination, and
//! delivers to each socket only what arrived on its NIC. An address change on
//! the NIC therefore needs no new socket.
//!
//! Bulk data has a socket of its own: each link has two, bound to the same
//! device and port in one `SO_REUSEPORT` group, and a classic BPF program
//! ([`STEERING`]) tells the kernel which one takes each datagram. Data the
//! sender flagged bulk goes to the first; real-time data (flags bit 2, see
//! [`crate::proto::wire`]) and every control message (probes, handshakes,
//! adverts) to the second, which its own reader drains. So a call's
//! datagrams and the link monitor's probes never wait in the kernel behind a
//! download's backlog when the host's CPU cannot keep up. A flow's
//! datagrams all take one socket (the class is per flow), so nothing is
//! reordered within a flow. One exception: UDP GRO may append a real-time
//! datagram to a train of bulk ones that arrived just before it, and the
//! train goes where its first datagram goes. Where the kernel refuses the
//! program (before 4.5), or `MPVR_DISABLE_OFFLOADS=queues` says so, a
//! link has one socket.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::ops::Range;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;

/// Socket buffer size asked for (the kernel caps it at net.core.*mem_max).
const BUFFER_BYTES: usize = 4 << 20;
/// Receive buffers per batch (one recvmmsg call).
pub const RECV_BATCH: usize = 16;
/// Size of one receive buffer: room for a full GRO train of datagrams.
const RECV_BUF: usize = 65_536;

/// A link's sockets: one for bulk data, and one beside it for the rest.
#[derive(Debug)]
pub struct LinkSocket {
    /// Bulk data, and everything when `rest` is an error. Sends go here.
    bulk: Half,
    /// Real-time data and control, or why the link has one socket.
    rest: Result<Half, String>,
    dual_stack: bool,
    gso: bool,
    gro: bool,
}

/// One socket and quinn-udp's state for it.
#[derive(Debug)]
struct Half {
    sock: tokio::net::UdpSocket,
    state: UdpSocketState,
}

/// Why a link has one socket when the environment says so.
const DISABLED_BY_ENV: &str = "disabled by MPVR_DISABLE_OFFLOADS";

/// The program of a link's two sockets' `SO_REUSEPORT` group, run by the
/// kernel on each datagram's UDP payload: its return value is the index of
/// the socket that takes it, in the order they joined (0 the bulk socket,
/// 1 the other). Data (type 1) without the real-time flag: 0; anything
/// else: 1. A datagram too short for the loads ends the program with 0.
pub const STEERING: [libc::sock_filter; 6] = {
    use crate::proto::wire::{FLAG_REALTIME, FLAGS_OFFSET, MessageType, TYPE_OFFSET};
    const fn op(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
        libc::sock_filter { code: code as u16, jt, jf, k }
    }
    [
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, TYPE_OFFSET as u32),
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 3, MessageType::Data as u32),
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, FLAGS_OFFSET as u32),
        op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, 1, 0, FLAG_REALTIME as u32),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 1),
    ]
};

/// Kernel offloads turned off by the environment variable
/// `MPVR_DISABLE_OFFLOADS` (a comma-separated list of `gso`, `gro`, `tun`,
/// `queues`): to rule them out when troubleshooting, and for the tests of
/// the plain paths that kernels without them (GSO before 4.18, GRO before
/// 5.0, TUN steering before 4.16) take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Disabled {
    /// UDP GSO (one send call for a run of datagrams).
    pub gso: bool,
    /// UDP GRO (one receive buffer for a train of datagrams).
    pub gro: bool,
    /// The TUN's offloads (TSO and GRO through a virtio-net header).
    pub tun: bool,
    /// The TUN's second queue, for everything but TCP ([`super::steer`]),
    /// and each link's second socket, for everything but bulk data.
    pub queues: bool,
}

impl Disabled {
    /// What `MPVR_DISABLE_OFFLOADS` turns off.
    pub fn from_env() -> Disabled {
        let v = std::env::var("MPVR_DISABLE_OFFLOADS").unwrap_or_default();
        let has = |w: &str| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(w));
        Disabled { gso: has("gso"), gro: has("gro"), tun: has("tun"), queues: has("queues") }
    }
}

/// A socket of `domain` on `port`, pinned to `ifname`; in a `SO_REUSEPORT`
/// group with the others opened so when `shared`.
fn open(domain: Domain, ifname: &str, port: u16, shared: bool) -> io::Result<Socket> {
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if domain == Domain::IPV6 {
        s.set_only_v6(false)?;
    }
    s.bind_device(Some(ifname.as_bytes()))?;
    if shared {
        s.set_reuse_port(true)?;
    }
    let _ = s.set_recv_buffer_size(BUFFER_BYTES);
    let _ = s.set_send_buffer_size(BUFFER_BYTES);
    s.set_nonblocking(true)?;
    let addr: SocketAddr = match domain {
        Domain::IPV6 => (Ipv6Addr::UNSPECIFIED, port).into(),
        _ => (Ipv4Addr::UNSPECIFIED, port).into(),
    };
    s.bind(&addr.into())?;
    Ok(s)
}

/// Buffers for one batched receive, reused from call to call.
pub struct RecvBatch {
    storage: Vec<u8>,
    meta: [RecvMeta; RECV_BATCH],
    filled: usize,
}

impl Default for RecvBatch {
    fn default() -> RecvBatch {
        RecvBatch { storage: vec![0u8; RECV_BATCH * RECV_BUF], meta: [RecvMeta::default(); RECV_BATCH], filled: 0 }
    }
}

impl RecvBatch {
    /// Every datagram of the last receive, in order, as its source and its
    /// range in [`RecvBatch::storage`] (a GRO buffer is split at its stride).
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, Range<usize>)> + '_ {
        self.meta[..self.filled].iter().enumerate().flat_map(|(i, meta)| {
            let from = SocketAddr::new(meta.addr.ip().to_canonical(), meta.addr.port());
            let len = meta.len.min(RECV_BUF);
            let stride = if meta.stride == 0 { len } else { meta.stride }.max(1);
            let base = i * RECV_BUF;
            (0..len).step_by(stride).map(move |off| (from, base + off..base + (off + stride).min(len)))
        })
    }

    /// Where a single-datagram receive writes (the first buffer).
    pub fn first_slot(&mut self) -> &mut [u8] {
        &mut self.storage[..RECV_BUF]
    }

    /// Record that the first buffer holds one datagram of `len` bytes from `from`.
    pub fn set_single(&mut self, from: SocketAddr, len: usize) {
        let m = &mut self.meta[0];
        m.addr = from;
        m.len = len;
        m.stride = len;
        self.filled = 1;
    }

    /// The bytes the ranges of [`RecvBatch::datagrams`] point into.
    pub fn storage(&mut self) -> &mut [u8] {
        &mut self.storage
    }
}

impl LinkSocket {
    /// Open the sockets of NIC `ifname` on `port`: bulk data apart unless
    /// `disabled` says otherwise or the kernel refuses the steering. Needs
    /// CAP_NET_RAW for SO_BINDTODEVICE and a tokio runtime.
    pub fn bind(ifname: &str, port: u16, disabled: Disabled) -> io::Result<LinkSocket> {
        // A socket outside any group first: it fails where anything holds
        // the port on this device (another program, another daemon), which
        // a member of a new group would not (two root processes' sockets
        // may share a group).
        let (first, domain) = match open(Domain::IPV6, ifname, port, false) {
            Ok(s) => (s, Domain::IPV6),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                (open(Domain::IPV4, ifname, port, false)?, Domain::IPV4)
            }
            Err(e) => return Err(e),
        };
        let (bulk, rest) = if disabled.queues {
            (Half::new(first, disabled)?, Err(DISABLED_BY_ENV.to_string()))
        } else {
            drop(first);
            let bulk = Half::new(open(domain, ifname, port, true)?, disabled)?;
            let rest = open(domain, ifname, port, true)
                .and_then(|s| {
                    attach_steering(&s)?;
                    Half::new(s, disabled)
                })
                .map_err(|e| format!("the kernel refused the steering ({e})"));
            (bulk, rest)
        };
        let gro = bulk.state.gro_segments() > 1 && !disabled.gro;
        let gso = bulk.state.max_gso_segments() > 1 && !disabled.gso;
        Ok(LinkSocket { bulk, rest, dual_stack: domain == Domain::IPV6, gso, gro })
    }

    /// Whether sends use UDP GSO and receives UDP GRO (the kernel has
    /// them and they are not disabled).
    pub fn offloads(&self) -> (bool, bool) {
        (self.gso, self.gro)
    }

    /// Whether bulk data has a socket of its own: `Ok(())`, or why not.
    pub fn bulk_apart(&self) -> Result<(), &str> {
        self.rest.as_ref().map(|_| ()).map_err(|e| e.as_str())
    }

    /// How many sockets to read: 1, or 2 with bulk data apart.
    pub fn queue_count(&self) -> usize {
        if self.rest.is_ok() { 2 } else { 1 }
    }

    fn wire_addr(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(v4) if self.dual_stack => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => other,
        }
    }

    /// Most datagrams one [`LinkSocket::try_send`] may carry.
    pub fn max_segments(&self) -> usize {
        if self.gso { self.bulk.state.max_gso_segments() } else { 1 }
    }

    /// Send `contents` to `to` without waiting: one datagram, or with
    /// `segment_size` a run of datagrams of that size (the last may be
    /// shorter; at most [`LinkSocket::max_segments`]). A full socket buffer on
    /// one link must never hold back the others, so `WouldBlock` is returned
    /// to be counted as a drop.
    pub fn try_send(&self, contents: &[u8], segment_size: Option<usize>, to: SocketAddr) -> io::Result<()> {
        let t = Transmit { destination: self.wire_addr(to), ecn: None, contents, segment_size, src_ip: None };
        let Half { sock, state } = &self.bulk;
        sock.try_io(Interest::WRITABLE, || state.try_send(sock.into(), &t))
    }

    /// Wait for datagrams in socket `queue` (0 bulk data, or everything
    /// with one socket; 1 the rest) and receive as many as one batch holds.
    pub async fn recv(&self, queue: usize, batch: &mut RecvBatch) -> io::Result<()> {
        let half = match (queue, &self.rest) {
            (0, _) => &self.bulk,
            (1, Ok(rest)) => rest,
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("the link has no socket {queue}"))),
        };
        half.recv(batch).await
    }
}

impl Half {
    /// Take `s` into quinn-udp and tokio, with UDP GRO off if `disabled`
    /// says so.
    fn new(s: Socket, disabled: Disabled) -> io::Result<Half> {
        let state = UdpSocketState::new((&s).into())?;
        if disabled.gro && state.gro_segments() > 1 {
            // quinn-udp turned UDP_GRO on: off again, so datagrams come
            // one per buffer (what a kernel before 5.0 does).
            set_udp_gro(&s, false)?;
        }
        Ok(Half { sock: tokio::net::UdpSocket::from_std(s.into())?, state })
    }

    async fn recv(&self, batch: &mut RecvBatch) -> io::Result<()> {
        loop {
            self.sock.readable().await?;
            let mut chunks = batch.storage.chunks_mut(RECV_BUF);
            let mut iovs: [IoSliceMut<'_>; RECV_BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().expect("RECV_BATCH chunks")));
            let r = self
                .sock
                .try_io(Interest::READABLE, || self.state.recv((&self.sock).into(), &mut iovs, &mut batch.meta));
            match r {
                Ok(n) => {
                    batch.filled = n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Give the `SO_REUSEPORT` group of `s` the [`STEERING`] program.
fn attach_steering(s: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let prog = libc::sock_fprog { len: STEERING.len() as u16, filter: STEERING.as_ptr().cast_mut() };
    // SAFETY: setsockopt on a valid socket with a pointer to a sock_fprog
    // and its size; the kernel copies the program, which outlives the call.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Turn UDP GRO on or off on `s`.
fn set_udp_gro(s: &Socket, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = on.into();
    // SAFETY: setsockopt on a valid socket with a pointer to an int and its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ids::{HostId, Seq};
    use crate::proto::wire::{Header, MessageType, OVERHEAD};
    use std::time::Duration;

    fn datagram(msg_type: MessageType, realtime: bool) -> Vec<u8> {
        let h = |n| HostId::new(n).unwrap();
        let header = Header {
            msg_type,
            hop_limit: 1,
            key_phase: false,
            sole: false,
            realtime,
            sender: h(1),
            receiver: h(2),
            seq: Seq(1),
        };
        let mut b = vec![0u8; OVERHEAD + 100];
        header.emit(&mut b);
        b
    }

    /// What each socket received, as (type, flags) pairs, until it is quiet.
    fn drain(s: &std::net::UdpSocket) -> Vec<(u8, u8)> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = s.recv(&mut buf) {
            got.push(if n >= 4 { (buf[1], buf[3]) } else { (0, 0) });
        }
        got
    }

    #[test]
    fn the_kernel_puts_bulk_data_in_the_first_socket_and_the_rest_in_the_second() {
        // The program run by this machine's kernel, on loopback (the group
        // as the daemon makes it, without the device pinning, which needs
        // privileges): bulk data to the first socket, real-time data and
        // every control message to the second.
        let group = |port: u16| {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into()).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            std::net::UdpSocket::from(s)
        };
        let bulk = group(0);
        let port = bulk.local_addr().unwrap().port();
        let rest = group(port);
        attach_steering(&Socket::from(rest.try_clone().unwrap())).unwrap();
        let sender = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let send = |d: &[u8]| sender.send_to(d, (Ipv4Addr::LOCALHOST, port)).unwrap();
        let (data, probe) = (MessageType::Data as u8, MessageType::Probe as u8);
        for _ in 0..3 {
            send(&datagram(MessageType::Data, false));
            send(&datagram(MessageType::Data, true));
            send(&datagram(MessageType::Probe, false));
            send(&datagram(MessageType::HandshakeInit, false));
        }
        // Too short for the loads: the program ends with 0.
        send(&[4, 1]);
        let (b, r) = (drain(&bulk), drain(&rest));
        assert_eq!(b, [(data, 0), (data, 0), (data, 0), (0, 0)], "the bulk socket");
        let init = MessageType::HandshakeInit as u8;
        assert_eq!(r, [(data, 4), (probe, 0), (init, 0)].repeat(3), "the other socket");
    }
}
