//! The readers: one task per link socket and one for the TUN, each
//! reading a batch per system call and calling the core once for it.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::debug;

use super::BUF_LEN;
use super::shared::Shared;
use crate::proto::{LinkId, Openings, Received, Transmits};
use crate::sys::LinkIo;
use crate::sys::gro::Coalescer;
use crate::sys::tun::RecvBufs;
use crate::sys::udp::{RECV_BATCH, RecvBatch};

/// Read one link's socket until aborted: a batch per system call, opened
/// outside the node's lock and handled by the core under one lock, then
/// deliveries and sends.
/// TCP deliveries go to the TUN in batches (coalesced per flow where the TUN
/// has offloads), other packets one by one in their place, all written
/// before the next receive: nothing waits for a
/// batch to fill.
/// With bulk data apart ([`crate::sys::udp`]), each of a link's two
/// sockets has this reader: `queue` says which.
pub(super) async fn read_link(
    shared: Arc<Shared>,
    link: LinkId,
    socket: Arc<LinkIo>,
    queue: usize,
    fatal: mpsc::UnboundedSender<String>,
) {
    let mut batch = RecvBatch::default();
    let mut delivered: Vec<Range<usize>> = Vec::with_capacity(RECV_BATCH);
    let mut ranges: Vec<(SocketAddr, Range<usize>)> = Vec::with_capacity(RECV_BATCH);
    let mut out = Transmits::new();
    let mut openings = Openings::new();
    let mut to_tun = Coalescer::default();
    loop {
        if let Err(e) = socket.recv(queue, &mut batch).await {
            shared.io.recv_errors.fetch_add(1, Ordering::Relaxed);
            debug!(%link, error = %e, "receive failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        delivered.clear();
        ranges.clear();
        ranges.extend(batch.datagrams());
        shared.io.link_read[queue].fetch_add(ranges.len() as u64, Ordering::Relaxed);
        // Open the batch outside the node's lock (crate::proto::opening):
        // plan under it, open without it, then handle under it again.
        openings.clear();
        {
            let now = shared.now();
            let node = shared.node();
            for (_, range) in &ranges {
                node.plan_open(now, &batch.storage()[range.clone()], &mut openings);
            }
        }
        let storage = batch.storage();
        for (i, (_, range)) in ranges.iter().enumerate() {
            openings.open(i, &mut storage[range.clone()]);
        }
        let timer_moved = {
            let now = shared.now();
            let mut node = shared.node();
            for (i, (from, range)) in ranges.drain(..).enumerate() {
                if let Received::Deliver(r) =
                    node.handle_opened(now, link, from, &mut storage[range.clone()], openings.ahead(i), &mut out)
                {
                    delivered.push(range.start + r.start..range.start + r.end);
                }
            }
            shared.log_events(&mut node);
            shared.timer_moved(&node)
        };
        let offloaded = shared.tun.offloaded();
        for r in &delivered {
            if offloaded {
                // TCP segments of a flow merge; real-time datagrams and
                // everything else are written alone, in their place.
                to_tun.add(storage, r.clone());
            } else if shared.tun.send_one(&storage[r.clone()]).await.is_err() {
                shared.io.tun_write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        write_tun(&shared, &mut to_tun, storage).await;
        shared.send(&mut out);
        out.clear();
        if timer_moved {
            shared.wake_main();
        }
        if fatal.is_closed() {
            return;
        }
    }
}

/// Write what `gro` holds to the TUN, counting failures.
async fn write_tun(shared: &Shared, gro: &mut Coalescer, storage: &mut [u8]) {
    if !gro.is_empty() {
        let failed = shared.tun.send_coalesced(gro, storage).await;
        shared.io.tun_write_errors.fetch_add(failed as u64, Ordering::Relaxed);
    }
}

/// Read TUN queue `queue` until it fails: wait for packets, take every
/// other one already queued (up to [`crate::sys::tun::BATCH`]; a
/// super-packet of the offloaded TUN comes as its segments), run the core
/// once for all of them. With TCP in a queue of its own, each queue has
/// this reader, so what is not TCP never waits behind TCP's batches.
pub(super) async fn read_tun(shared: Arc<Shared>, queue: usize, fatal: mpsc::UnboundedSender<String>) {
    let mut bufs = RecvBufs::new(BUF_LEN);
    let mut out = Transmits::new();
    let mut answers: Vec<Vec<u8>> = Vec::new();
    loop {
        match shared.tun.recv_batch(queue, &mut bufs).await {
            Ok(n) => _ = shared.io.tun_read[queue].fetch_add(n as u64, Ordering::Relaxed),
            Err(e) => {
                let _ = fatal.send(format!("reading the TUN (queue {queue}) failed: {e}"));
                return;
            }
        }
        let timer_moved = {
            let now = shared.now();
            let mut node = shared.node();
            for packet in bufs.packets() {
                let _ = node.handle_tun_packet(now, packet, &mut out);
            }
            answers.extend(std::iter::from_fn(|| node.poll_tun_packet()));
            shared.log_events(&mut node);
            shared.timer_moved(&node)
        };
        shared.send(&mut out);
        out.clear();
        if timer_moved {
            shared.wake_main();
        }
        // ICMP "too big" for packets no path carries: the sender's stack adapts.
        for a in answers.drain(..) {
            if shared.tun.send_one(&a).await.is_err() {
                shared.io.tun_write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
