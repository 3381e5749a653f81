//! AF_PACKET sockets: whole frames in and out of one interface, for the
//! link emulator (frames it sends are not read back: PACKET_IGNORE_OUTGOING)
//! and for captures in the end-to-end tests and benchmarks (both directions).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// An AF_PACKET socket bound to one interface, all protocols.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn if_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 { Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface named {name}"))) } else { Ok(i) }
}

impl PacketSocket {
    /// Open and bind to interface `name`; frames it sends itself are not
    /// read back. Needs CAP_NET_RAW.
    pub fn bind(name: &str) -> io::Result<PacketSocket> {
        Self::open(name, true)
    }

    /// Open and bind to interface `name` to watch it: what it receives and
    /// what the host sends on it (a capture, as tcpdump's). Needs CAP_NET_RAW.
    pub fn capture(name: &str) -> io::Result<PacketSocket> {
        Self::open(name, false)
    }

    fn open(name: &str, ignore_outgoing: bool) -> io::Result<PacketSocket> {
        let index = if_index(name)?;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) })?;
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields set are plain integers.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: sll is a valid sockaddr_ll and its size is passed.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        })?;
        let s = PacketSocket { fd };
        if ignore_outgoing {
            s.setopt(libc::SOL_PACKET, 23 /* PACKET_IGNORE_OUTGOING */, 1)?;
        }
        let _ = s.setopt(libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
        let _ = s.setopt(libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);
        Ok(s)
    }

    fn setopt(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
        // SAFETY: value is a c_int and its size is passed.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        })
        .map(|_| ())
    }

    /// Give up waiting in [`PacketSocket::recv`] after `timeout`.
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval { tv_sec: timeout.as_secs() as _, tv_usec: timeout.subsec_micros() as _ };
        // SAFETY: tv is a timeval and its size is passed.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        })
        .map(|_| ())
    }

    /// Receive one frame (blocking, up to the read timeout).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Send one frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: frame is valid for reads of frame.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr() as *const libc::c_void, frame.len(), 0) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}
