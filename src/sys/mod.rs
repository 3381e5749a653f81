//! The Linux side: netlink, the TUN device, per-link UDP sockets,
//! privileges. Thin wrappers with typed APIs; no protocol decisions.

pub mod gro;
pub mod netlink;
pub mod packet;
pub mod privilege;
pub mod raw;
pub mod steer;
pub mod tun;
pub mod udp;

use std::io;
use std::net::SocketAddr;

/// How datagrams travel between hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// In UDP (the default; works through NAT).
    Udp,
    /// Directly in IP packets of this protocol number (no UDP header; no NAT).
    Ip(u8),
}

impl Transport {
    /// Bytes the transport adds inside the IP packet.
    pub const fn header_len(self) -> usize {
        match self {
            Transport::Udp => crate::proto::wire::UDP_HEADER_LEN,
            Transport::Ip(_) => 0,
        }
    }
}

/// Whether this CPU has the instructions that make AES-256-GCM fast and
/// constant-time (AES rounds and carry-less multiplication): then mpvr
/// offers it for sessions' data ([`crate::proto::Cipher`]).
pub fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A link's socket, whichever the transport.
#[derive(Debug)]
pub enum LinkIo {
    /// UDP, batched (the default).
    Udp(udp::LinkSocket),
    /// Raw IP, one datagram per call.
    Ip(raw::RawLinkSocket),
}

impl LinkIo {
    /// Open the socket of NIC `ifname` for `transport`.
    pub fn bind(ifname: &str, port: u16, transport: Transport, disabled: udp::Disabled) -> io::Result<LinkIo> {
        match transport {
            Transport::Udp => udp::LinkSocket::bind(ifname, port, disabled).map(LinkIo::Udp),
            Transport::Ip(p) => raw::RawLinkSocket::bind(ifname, p).map(LinkIo::Ip),
        }
    }

    /// Whether sends use UDP GSO and receives UDP GRO.
    pub fn offloads(&self) -> (bool, bool) {
        match self {
            LinkIo::Udp(s) => s.offloads(),
            LinkIo::Ip(_) => (false, false),
        }
    }

    /// Most datagrams one [`LinkIo::try_send`] may carry.
    pub fn max_segments(&self) -> usize {
        match self {
            LinkIo::Udp(s) => s.max_segments(),
            LinkIo::Ip(_) => 1,
        }
    }

    /// Send one datagram, or with `segment_size` a run of them (UDP only:
    /// see [`udp::LinkSocket::try_send`]), without waiting.
    pub fn try_send(&self, contents: &[u8], segment_size: Option<usize>, to: SocketAddr) -> io::Result<()> {
        match (self, segment_size) {
            (LinkIo::Udp(s), _) => s.try_send(contents, segment_size, to),
            (LinkIo::Ip(s), None) => s.try_send(contents, to),
            (LinkIo::Ip(s), Some(size)) => contents.chunks(size).try_for_each(|d| s.try_send(d, to)),
        }
    }

    /// Whether bulk data has a socket of its own (see [`udp`]): `Ok(())`,
    /// or why not.
    pub fn bulk_apart(&self) -> Result<(), &str> {
        match self {
            LinkIo::Udp(s) => s.bulk_apart(),
            LinkIo::Ip(_) => Err("the IP transport has one socket per link"),
        }
    }

    /// How many sockets to read (see [`udp`]: bulk data apart): 1 or 2.
    pub fn queue_count(&self) -> usize {
        match self {
            LinkIo::Udp(s) => s.queue_count(),
            LinkIo::Ip(_) => 1,
        }
    }

    /// Wait for datagrams in socket `queue` (below [`LinkIo::queue_count`])
    /// and put them in `batch`.
    pub async fn recv(&self, queue: usize, batch: &mut udp::RecvBatch) -> io::Result<()> {
        match self {
            LinkIo::Udp(s) => s.recv(queue, batch).await,
            LinkIo::Ip(s) => {
                let (n, from) = s.recv(batch.first_slot()).await?;
                batch.set_single(from, n);
                Ok(())
            }
        }
    }
}
