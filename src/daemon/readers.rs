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
use crate::proto::{LinkId, Received, Transmits};
use crate::sys::LinkIo;
use crate::sys::udp::{RECV_BATCH, RecvBatch};

/// Read one link's socket until aborted: a batch per system call, the core
/// called for the whole batch under one lock, then deliveries and sends.
pub(super) async fn read_link(
    shared: Arc<Shared>,
    link: LinkId,
    socket: Arc<LinkIo>,
    fatal: mpsc::UnboundedSender<String>,
) {
    let mut batch = RecvBatch::default();
    let mut delivered: Vec<Range<usize>> = Vec::with_capacity(RECV_BATCH);
    let mut ranges: Vec<(SocketAddr, Range<usize>)> = Vec::with_capacity(RECV_BATCH);
    let mut out = Transmits::new();
    loop {
        if let Err(e) = socket.recv(&mut batch).await {
            shared.io.recv_errors.fetch_add(1, Ordering::Relaxed);
            debug!(%link, error = %e, "receive failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        delivered.clear();
        {
            let now = shared.now();
            let mut node = shared.node();
            ranges.clear();
            ranges.extend(batch.datagrams());
            let storage = batch.storage();
            for (from, range) in ranges.drain(..) {
                if let Received::Deliver(r) =
                    node.handle_datagram(now, link, from, &mut storage[range.clone()], &mut out)
                {
                    delivered.push(range.start + r.start..range.start + r.end);
                }
            }
            shared.log_events(&mut node);
            shared.timer_moved(&node);
        }
        for r in &delivered {
            if shared.tun.send(&batch.storage()[r.clone()]).await.is_err() {
                shared.io.tun_write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        shared.send(&out);
        out.clear();
        if fatal.is_closed() {
            return;
        }
    }
}

/// Packets read from the TUN in one go.
const TUN_BATCH: usize = 32;

/// Read the TUN until it fails: wait for one packet, take every other one
/// already queued (up to [`TUN_BATCH`]), run the core once for all of them.
pub(super) async fn read_tun(shared: Arc<Shared>, fatal: mpsc::UnboundedSender<String>) {
    let mut storage = vec![0u8; TUN_BATCH * BUF_LEN];
    let mut lens = [0usize; TUN_BATCH];
    let mut out = Transmits::new();
    let mut answers: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut slots = storage.chunks_mut(BUF_LEN);
        let first = slots.next().expect("TUN_BATCH slots");
        lens[0] = match shared.tun.recv(first).await {
            Ok(n) => n,
            Err(e) => {
                let _ = fatal.send(format!("reading the TUN failed: {e}"));
                return;
            }
        };
        let mut n = 1;
        for slot in slots {
            match shared.tun.try_recv(slot) {
                Ok(len) => {
                    lens[n] = len;
                    n += 1;
                }
                Err(_) => break,
            }
        }
        {
            let now = shared.now();
            let mut node = shared.node();
            for (slot, len) in storage.chunks(BUF_LEN).zip(&lens[..n]) {
                let _ = node.handle_tun_packet(now, &slot[..*len], &mut out);
            }
            answers.extend(std::iter::from_fn(|| node.poll_tun_packet()));
            shared.log_events(&mut node);
            shared.timer_moved(&node);
        }
        shared.send(&out);
        out.clear();
        // ICMP "too big" for packets no path carries: the sender's stack adapts.
        for a in answers.drain(..) {
            if shared.tun.send(&a).await.is_err() {
                shared.io.tun_write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
