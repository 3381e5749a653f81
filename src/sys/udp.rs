//! One UDP socket per link, pinned to its NIC with SO_BINDTODEVICE.
//!
//! Each socket is bound to the wildcard address (dual-stack `[::]` where the
//! host has IPv6, else `0.0.0.0`) and the listen port, and pinned to its NIC:
//! the kernel lets several sockets share the port when each is bound to a
//! different device, picks the source address of the NIC per destination, and
//! delivers to each socket only what arrived on its NIC. An address change on
//! the NIC therefore needs no new socket.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size asked for (the kernel caps it at net.core.*mem_max).
const BUFFER_BYTES: usize = 4 << 20;

/// A link's socket.
#[derive(Debug)]
pub struct LinkSocket {
    sock: tokio::net::UdpSocket,
    dual_stack: bool,
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

impl LinkSocket {
    /// Open the socket of NIC `ifname` on `port`. Needs CAP_NET_RAW for
    /// SO_BINDTODEVICE and a tokio runtime.
    pub fn bind(ifname: &str, port: u16) -> io::Result<LinkSocket> {
        let (s, dual_stack) = match open(Domain::IPV6, ifname, port) {
            Ok(s) => (s, true),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => (open(Domain::IPV4, ifname, port)?, false),
            Err(e) => return Err(e),
        };
        let sock = tokio::net::UdpSocket::from_std(s.into())?;
        Ok(LinkSocket { sock, dual_stack })
    }

    fn wire_addr(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(v4) if self.dual_stack => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => other,
        }
    }

    /// Send without waiting: a full socket buffer on one link must never hold
    /// back the others, so `WouldBlock` is returned to be counted as a drop.
    pub fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.sock.try_send_to(datagram, self.wire_addr(to))
    }

    /// Receive one datagram; the source is in its canonical form (IPv4 for
    /// an IPv4-mapped address).
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, from) = self.sock.recv_from(buf).await?;
        Ok((n, SocketAddr::new(from.ip().to_canonical(), from.port())))
    }
}
