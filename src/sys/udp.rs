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

/// A link's socket.
#[derive(Debug)]
pub struct LinkSocket {
    sock: tokio::net::UdpSocket,
    state: UdpSocketState,
    dual_stack: bool,
    gso: bool,
    gro: bool,
}

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
    /// The TUN's second queue, for everything but TCP ([`super::steer`]).
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

fn open(domain: Domain, ifname: &str, port: u16) -> io::Result<Socket> {
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if domain == Domain::IPV6 {
        s.set_only_v6(false)?;
    }
    s.bind_device(Some(ifname.as_bytes()))?;
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
    /// Open the socket of NIC `ifname` on `port`. Needs CAP_NET_RAW for
    /// SO_BINDTODEVICE and a tokio runtime.
    pub fn bind(ifname: &str, port: u16, disabled: Disabled) -> io::Result<LinkSocket> {
        let (s, dual_stack) = match open(Domain::IPV6, ifname, port) {
            Ok(s) => (s, true),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => (open(Domain::IPV4, ifname, port)?, false),
            Err(e) => return Err(e),
        };
        let state = UdpSocketState::new((&s).into())?;
        let gro = state.gro_segments() > 1 && !disabled.gro;
        if disabled.gro && state.gro_segments() > 1 {
            // quinn-udp turned UDP_GRO on: off again, so datagrams come
            // one per buffer (what a kernel before 5.0 does).
            set_udp_gro(&s, false)?;
        }
        let gso = state.max_gso_segments() > 1 && !disabled.gso;
        let sock = tokio::net::UdpSocket::from_std(s.into())?;
        Ok(LinkSocket { sock, state, dual_stack, gso, gro })
    }

    /// Whether sends use UDP GSO and receives UDP GRO (the kernel has
    /// them and they are not disabled).
    pub fn offloads(&self) -> (bool, bool) {
        (self.gso, self.gro)
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
        if self.gso { self.state.max_gso_segments() } else { 1 }
    }

    /// Send `contents` to `to` without waiting: one datagram, or with
    /// `segment_size` a run of datagrams of that size (the last may be
    /// shorter; at most [`LinkSocket::max_segments`]). A full socket buffer on
    /// one link must never hold back the others, so `WouldBlock` is returned
    /// to be counted as a drop.
    pub fn try_send(&self, contents: &[u8], segment_size: Option<usize>, to: SocketAddr) -> io::Result<()> {
        let t = Transmit { destination: self.wire_addr(to), ecn: None, contents, segment_size, src_ip: None };
        self.sock.try_io(Interest::WRITABLE, || self.state.try_send((&self.sock).into(), &t))
    }

    /// Wait for datagrams and receive as many as one batch holds.
    pub async fn recv(&self, batch: &mut RecvBatch) -> io::Result<()> {
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
