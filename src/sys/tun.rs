//! The TUN device (tun-rs): created with its name and MTU and brought up;
//! addresses and routes are set through netlink. Closing it (drop, exit, or
//! a crash) makes the kernel delete it with every address and route on it.
//!
//! With offloads (the default), the device is opened with a virtio-net
//! header (`IFF_VNET_HDR`) and TSO4/TSO6 with checksum offload, plus UDP
//! segmentation (USO) where the kernel has it (6.2 and later). The kernel
//! then hands mpvr TCP (and UDP) super-packets of up to 64 KiB in one read;
//! tun-rs cuts them into packets of the TUN's MTU, headers and checksums
//! fixed, and the core sees ordinary packets. Toward the TUN, consecutive TCP
//! segments of one flow in a batch are coalesced back into one super-packet
//! per write (GRO, [`super::gro`]: one `writev` from where the packets were
//! opened), with no waiting: a batch is written as soon as the
//! links' receive batch is processed. Every other packet (UDP: calls, QUIC)
//! is written alone, in its place: coalescing UDP cost a call 5-9 of 301
//! packets through a link cut in the namespace test. Without offloads (the kernel refuses
//! them, or `MPVR_DISABLE_OFFLOADS=tun`), one packet per read and write.
//!
//! The device has two queues (`IFF_MULTI_QUEUE`): TCP in queue 0,
//! everything else in queue 1, as [`super::steer`]'s program tells the
//! kernel; the daemon reads each with its own task, so a call's packets are
//! read at once whatever TCP has queued. Packets are written through queue
//! 0. Without the steering (a kernel before 4.16, no CAP_BPF, or
//! `MPVR_DISABLE_OFFLOADS=queues`) the device has one queue.

use std::io::{self, IoSlice};
use std::sync::Arc;

use tun_rs::{AsyncDevice, VIRTIO_NET_HDR_LEN};

use super::gro::{Coalescer, MAX_SLICES};
use super::udp::Disabled;

/// Packet buffers one [`Tun::recv_batch`] fills at most: tun-rs's own
/// batch size.
pub const BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;
/// Packets the plain device reads per batch (one system call each).
const PLAIN_BATCH: usize = 32;
/// Free buffers a read of one super-packet needs: 64 KiB cut at the
/// smallest MSS an IPv6-capable TUN has (1280-byte MTU) is 54 segments.
const SEGMENTS_PER_READ: usize = 64;
/// The largest read: a virtio-net header and a 64 KiB super-packet.
const SCRATCH: usize = VIRTIO_NET_HDR_LEN + 65_536;

/// How the TUN was opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offload {
    /// TSO and checksum offload; `udp` when the kernel took USO too.
    On {
        /// UDP segmentation offload (USO) too.
        udp: bool,
    },
    /// One packet per read and write, and why.
    Off(String),
}

impl std::fmt::Display for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Offload::On { udp: true } => f.write_str("TSO, USO"),
            Offload::On { udp: false } => f.write_str("TSO"),
            Offload::Off(why) => write!(f, "off: {why}"),
        }
    }
}

/// Whether TCP has a TUN queue of its own ([`super::steer`]).
pub enum Queues {
    /// Two queues: TCP in queue 0 (the device's first), everything else
    /// in queue 1, this one, each with its reader.
    TcpApart(AsyncDevice),
    /// One queue for everything, and why.
    One(String),
}

impl std::fmt::Display for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Queues::TcpApart(_) => f.write_str("TCP apart"),
            Queues::One(why) => write!(f, "one: {why}"),
        }
    }
}

/// Why an offload or the second queue is off when the environment says so.
const DISABLED_BY_ENV: &str = "disabled by MPVR_DISABLE_OFFLOADS";

/// The TUN and how it was opened.
pub struct Tun {
    /// Queue 0: TCP when steered, else everything. Writes go here.
    dev: AsyncDevice,
    offload: Offload,
    queues: Queues,
}

/// Create the TUN `name` with `mtu`, up, with offloads and with TCP in a
/// queue of its own unless `disabled` says otherwise. A kernel that
/// refuses the offloads gets the plain device instead; one that refuses a
/// second queue or its steering, one queue. Returns it and its interface
/// index.
pub fn create(name: &str, mtu: u16, disabled: Disabled) -> io::Result<(Arc<Tun>, u32)> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(offload)
            .multi_queue(!disabled.queues)
            .enable(true)
            .build_async()
    };
    let (dev, offload) = if disabled.tun {
        (build(false)?, Offload::Off(DISABLED_BY_ENV.into()))
    } else {
        match build(true) {
            Ok(dev) => {
                let udp = dev.udp_gso();
                (dev, Offload::On { udp })
            }
            // The name is taken: no use trying again without offloads.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Err(e),
            Err(e) => (build(false)?, Offload::Off(format!("the kernel refused them ({e})"))),
        }
    };
    let index = dev.if_index()?;
    let queues = if disabled.queues {
        Queues::One(DISABLED_BY_ENV.into())
    } else {
        match dev.try_clone().and_then(|rest| super::steer::attach(&dev).map(|()| rest)) {
            Ok(rest) => Queues::TcpApart(rest),
            // A second queue the kernel would fill by flow hash, unsteered,
            // is of no use: it goes (closing it detaches it).
            Err(e) => Queues::One(format!("the kernel refused the steering ({e})")),
        }
    };
    Ok((Arc::new(Tun { dev, offload, queues }), index))
}

/// Buffers for [`Tun::recv_batch`], reused from call to call.
pub struct RecvBufs {
    scratch: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    filled: usize,
}

impl RecvBufs {
    /// Buffers for packets of up to `packet` bytes.
    pub fn new(packet: usize) -> RecvBufs {
        // Zeroed allocations each (not clones): pages a short packet never
        // reaches stay untouched.
        let bufs = (0..BATCH).map(|_| vec![0; packet]).collect();
        RecvBufs { scratch: vec![0; SCRATCH], bufs, sizes: vec![0; BATCH], filled: 0 }
    }

    /// The packets of the last [`Tun::recv_batch`], in order.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs.iter().zip(&self.sizes).take(self.filled).map(|(b, n)| &b[..*n])
    }
}

impl Tun {
    /// How the device was opened.
    pub fn offload(&self) -> &Offload {
        &self.offload
    }

    /// Whether TCP has a queue of its own.
    pub fn queues(&self) -> &Queues {
        &self.queues
    }

    /// How many queues to read: 1, or 2 with TCP apart.
    pub fn queue_count(&self) -> usize {
        match self.queues {
            Queues::TcpApart(_) => 2,
            Queues::One(_) => 1,
        }
    }

    /// Set the MTU.
    pub fn set_mtu(&self, mtu: u16) -> io::Result<()> {
        self.dev.set_mtu(mtu)
    }

    /// Wait for packets in `queue` (below [`Tun::queue_count`]) and read as
    /// many as `bufs` holds: a super-packet comes out as its segments.
    /// Returns how many packets `bufs` holds.
    pub async fn recv_batch(&self, queue: usize, bufs: &mut RecvBufs) -> io::Result<usize> {
        let dev = match (queue, &self.queues) {
            (0, _) => &self.dev,
            (1, Queues::TcpApart(rest)) => rest,
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("the TUN has no queue {queue}"))),
        };
        let RecvBufs { scratch, bufs: b, sizes, filled } = bufs;
        *filled = dev.recv_multiple(scratch, b, sizes, 0).await?;
        let (need, most) = if self.offloaded() { (SEGMENTS_PER_READ, BATCH) } else { (1, PLAIN_BATCH) };
        while most - *filled >= need {
            let at = *filled;
            match dev.try_recv_multiple(scratch, &mut b[at..], &mut sizes[at..], 0) {
                Ok(n) => *filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // A bad super-packet (tun-rs refuses it) is that packet's
                // loss, not the batch's.
                Err(_) if *filled > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(*filled)
    }

    /// Whether the device has offloads: then every packet toward it goes
    /// through [`Tun::send_coalesced`] (what does not merge is written
    /// alone, in its place), else through [`Tun::send_one`].
    pub fn offloaded(&self) -> bool {
        matches!(self.offload, Offload::On { .. })
    }

    /// Write the packets `gro` holds (ranges of `storage`, which this
    /// rewrites where segments merge): one `writev` per item, no copies.
    /// Empties `gro`; returns how many writes failed.
    pub async fn send_coalesced(&self, gro: &mut Coalescer, storage: &mut [u8]) -> usize {
        gro.seal(storage);
        let storage = &*storage;
        let mut failed = 0;
        for i in 0..gro.len() {
            let mut iov = [IoSlice::new(&[]); MAX_SLICES];
            let n = gro.slices(i, storage, &mut iov);
            if self.dev.send_vectored(&iov[..n]).await.is_err() {
                failed += 1;
            }
        }
        gro.clear();
        failed
    }

    /// Write one packet (an ICMP answer of the core's), with an empty
    /// virtio-net header in front when the device has offloads.
    pub async fn send_one(&self, packet: &[u8]) -> io::Result<()> {
        if self.offloaded() {
            let hdr = [0u8; VIRTIO_NET_HDR_LEN];
            self.dev.send_vectored(&[IoSlice::new(&hdr), IoSlice::new(packet)]).await.map(|_| ())
        } else {
            self.dev.send(packet).await.map(|_| ())
        }
    }
}
