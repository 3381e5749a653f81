//! The raw-IP transport of the seed design: mpvr datagrams straight in IP
//! packets of their own protocol number (no UDP header, 8 bytes less per
//! copy), one raw socket per link pinned with SO_BINDTODEVICE. For networks
//! without NAT only: NATs and most firewalls drop unknown protocols.
//!
//! An IPv4 raw socket hands the IP header up with the payload; it is checked
//! and stripped here. An IPv6 raw socket hands the payload only.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Default protocol number: 253, reserved for experimentation (RFC 3692).
pub const DEFAULT_PROTOCOL: u8 = 253;

/// The raw sockets (IPv4 and, where the host has it, IPv6) of one link.
#[derive(Debug)]
pub struct RawLinkSocket {
    v4: AsyncFd<Socket>,
    v6: Option<AsyncFd<Socket>>,
}

fn open(domain: Domain, ifname: &str, protocol: u8) -> io::Result<AsyncFd<Socket>> {
    let s = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(protocol))))?;
    s.bind_device(Some(ifname.as_bytes()))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    // Don't fragment, and ignore what ICMP says of the path: mpvr measures
    // each path's MTU itself (as quinn-udp sets the UDP sockets).
    let (level, name, value) = match domain {
        Domain::IPV6 => (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_PROBE),
        _ => (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_PROBE),
    };
    // SAFETY: the descriptor is valid for the call, and the option value
    // is a c_int that lives for it, with its size passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the Socket owns a valid file descriptor and is neither closed
    // nor replaced while the AsyncFd owns it.
    unsafe { AsyncFd::register_with_interest(s, Interest::READABLE | Interest::WRITABLE) }.map_err(io::Error::from)
}

fn recv_from(s: &Socket, buf: &mut [u8]) -> io::Result<(usize, SockAddr)> {
    // SAFETY: MaybeUninit<u8> has the layout of u8, and recvfrom only
    // writes initialised bytes into the buffer.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    s.recv_from(uninit)
}

impl RawLinkSocket {
    /// Open the raw sockets of NIC `ifname` for `protocol`. Needs CAP_NET_RAW.
    pub fn bind(ifname: &str, protocol: u8) -> io::Result<RawLinkSocket> {
        let v4 = open(Domain::IPV4, ifname, protocol)?;
        let v6 = match open(Domain::IPV6, ifname, protocol) {
            Ok(s) => Some(s),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => None,
            Err(e) => return Err(e),
        };
        Ok(RawLinkSocket { v4, v6 })
    }

    /// Send one datagram to `to` (the port is ignored) without waiting.
    pub fn try_send(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        let (fd, addr) = match to.ip() {
            IpAddr::V4(ip) => (&self.v4, SocketAddr::new(IpAddr::V4(ip), 0)),
            IpAddr::V6(ip) => match &self.v6 {
                Some(fd) => (fd, SocketAddr::new(IpAddr::V6(ip), 0)),
                None => return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
            },
        };
        fd.get_ref().send_to(datagram, &SockAddr::from(addr)).map(|_| ())
    }

    /// Wait for a datagram; write it at the start of `buf` and return its
    /// length and source (port 0).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let ready = match &self.v6 {
                Some(v6) => tokio::select! {
                    r = self.v4.readable() => (r?, false),
                    r = v6.readable() => (r?, true),
                },
                None => (self.v4.readable().await?, false),
            };
            let (mut guard, v6) = ready;
            match guard.try_io(|fd| recv_from(fd.get_ref(), buf)) {
                Ok(Ok((n, from))) => {
                    let from = from.as_socket().map(|a| SocketAddr::new(a.ip().to_canonical(), 0));
                    if v6 {
                        let Some(from) = from else { continue };
                        return Ok((n, from));
                    }
                    // IPv4: the IP header comes first.
                    let Some(&first) = buf.first() else { continue };
                    let ihl = usize::from(first & 0x0f) * 4;
                    if first >> 4 != 4 || ihl < 20 || n < ihl {
                        continue;
                    }
                    let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                    buf.copy_within(ihl..n, 0);
                    return Ok((n - ihl, SocketAddr::new(IpAddr::V4(src), 0)));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}
