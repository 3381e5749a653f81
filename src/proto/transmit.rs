//! The batch of datagrams the core asks the shell to send.
//!
//! Encrypt once, send N times (DESIGN.md invariant 4) is built into the
//! shape: a [`Transmit`] is one sealed datagram and the list of paths it goes
//! out on. `Transmits::push_sealed` is the only place a datagram is queued
//! for sealing, and [`Transmits::seal`] the only place it is sealed.
//!
//! Sealing is deferred: the core lays out header and payload and notes the
//! key and sequence number; the batch is sealed in one pass later, so a
//! shell that keeps the core behind a lock seals after releasing it
//! (sequence numbers are taken in order under the lock; the keys are
//! shared, read-only). Nothing can read an unsealed datagram: every reader
//! ([`Transmits::iter`], [`Transmits::bytes`]) takes `&mut self` and seals
//! what is pending first. [`Transmits::seal_split`] seals on several
//! threads at once. The batch is reused: `clear` keeps its capacity, so
//! steady-state traffic allocates nothing.

use std::ops::Range;
use std::sync::Arc;

use super::crypto::SessionKeys;
use super::ids::Seq;
use super::ids::PathAddr;
use super::wire::{HEADER_LEN, Header, TAG_LEN};

#[derive(Clone, Debug)]
struct Item {
    bytes: Range<usize>,
    paths: Range<usize>,
}

/// A datagram laid out in the buffer and not yet sealed: its bytes (header,
/// plaintext, room for the tag), its sequence number and the keys.
#[derive(Clone, Debug)]
struct SealJob {
    bytes: Range<usize>,
    seq: Seq,
    keys: Arc<SessionKeys>,
}

impl SealJob {
    /// Seal the datagram in `dgram` (exactly this job's bytes) in place.
    fn seal(&self, dgram: &mut [u8]) {
        let (head, rest) = dgram.split_at_mut(HEADER_LEN);
        let (body, tag_out) = rest.split_at_mut(rest.len() - TAG_LEN);
        let tag = self.keys.seal(self.seq, head, body);
        tag_out.copy_from_slice(&tag);
    }
}

/// Datagrams to send, each with the paths to send it on.
#[derive(Clone, Debug, Default)]
pub struct Transmits {
    buf: Vec<u8>,
    items: Vec<Item>,
    paths: Vec<PathAddr>,
    /// Paths collected for the datagram being built (not yet committed).
    pending: usize,
    /// Datagrams not yet sealed, in buffer order.
    unsealed: Vec<SealJob>,
}

/// One sealed datagram and where to send copies of it.
#[derive(Clone, Copy, Debug)]
pub struct Transmit<'a> {
    /// The bytes, identical for every copy.
    pub datagram: &'a [u8],
    /// Where `datagram` starts in [`Transmits::bytes`]: consecutive datagrams
    /// are contiguous there, so a shell can hand a run of equal-size ones to
    /// the kernel in one call (UDP GSO).
    pub offset: usize,
    /// One copy goes on each of these.
    pub paths: &'a [PathAddr],
}

impl Transmits {
    /// An empty batch.
    pub fn new() -> Transmits {
        Transmits::default()
    }

    /// Forget every datagram, keeping the memory.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
        self.paths.clear();
        self.pending = 0;
        self.unsealed.clear();
    }

    /// Number of datagrams (not copies).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of copies: the sum over datagrams of their paths.
    pub fn copies(&self) -> usize {
        self.items.iter().map(|i| i.paths.len()).sum()
    }

    /// The datagrams in the order they were produced, sealed.
    pub fn iter(&mut self) -> impl ExactSizeIterator<Item = Transmit<'_>> + '_ {
        self.seal();
        self.items.iter().map(|i| Transmit {
            datagram: &self.buf[i.bytes.clone()],
            offset: i.bytes.start,
            paths: &self.paths[i.paths.clone()],
        })
    }

    /// Every datagram, back to back, in the order they were produced, sealed.
    pub fn bytes(&mut self) -> &[u8] {
        self.seal();
        &self.buf
    }

    /// Datagrams queued and not sealed yet.
    pub fn unsealed(&self) -> usize {
        self.unsealed.len()
    }

    /// Seal every datagram queued for sealing, on this thread.
    pub fn seal(&mut self) {
        for job in self.unsealed.drain(..) {
            job.seal(&mut self.buf[job.bytes.clone()]);
        }
    }

    /// Seal every datagram queued for sealing on up to `threads` threads
    /// (scoped: they end before this returns), each taking an equal share
    /// of the datagrams. Worth it for large batches only: a thread costs
    /// tens of microseconds to start.
    pub fn seal_split(&mut self, threads: usize) {
        let per = self.unsealed.len().div_ceil(threads.max(1)).max(1);
        if per >= self.unsealed.len() {
            return self.seal();
        }
        let jobs = std::mem::take(&mut self.unsealed);
        std::thread::scope(|scope| {
            // Jobs are in buffer order and do not overlap: each chunk of
            // jobs gets the disjoint stretch of the buffer it covers.
            let mut rest: &mut [u8] = &mut self.buf;
            let mut base = 0;
            for chunk in jobs.chunks(per) {
                let end = chunk.last().map_or(base, |j| j.bytes.end);
                let (mine, tail) = std::mem::take(&mut rest).split_at_mut(end - base);
                let start = base;
                scope.spawn(move || {
                    for job in chunk {
                        job.seal(&mut mine[job.bytes.start - start..job.bytes.end - start]);
                    }
                });
                rest = tail;
                base = end;
            }
        });
        self.unsealed = jobs;
        self.unsealed.clear();
    }

    /// Stage a path for the next datagram.
    pub(crate) fn add_path(&mut self, path: PathAddr) {
        self.paths.push(path);
        self.pending += 1;
    }

    /// Queue a datagram sealed before (one a shaper held) for one path.
    pub(crate) fn push_raw(&mut self, datagram: &[u8], path: PathAddr) {
        debug_assert_eq!(self.pending, 0);
        let start = self.buf.len();
        self.buf.extend_from_slice(datagram);
        self.paths.push(path);
        self.items.push(Item { bytes: start..self.buf.len(), paths: self.paths.len() - 1..self.paths.len() });
    }

    /// The bytes of the datagram queued last, sealed.
    pub(crate) fn last_datagram(&mut self) -> Option<&[u8]> {
        if let Some(job) = self.unsealed.pop_if(|j| Some(&j.bytes) == self.items.last().map(|i| &i.bytes)) {
            job.seal(&mut self.buf[job.bytes.clone()]);
        }
        self.items.last().map(|i| &self.buf[i.bytes.clone()])
    }

    /// Forget the datagram queued last if it goes on no path (every copy
    /// of it was held by a shaper).
    pub(crate) fn drop_last_if_pathless(&mut self) {
        if let Some(i) = self.items.last()
            && i.paths.is_empty()
        {
            self.buf.truncate(i.bytes.start);
            self.unsealed.pop_if(|j| j.bytes == i.bytes);
            self.items.pop();
        }
    }

    /// Queue an unsealed message (a handshake) for every staged path.
    /// Returns the number of copies.
    pub(crate) fn push_plain(&mut self, header: &Header, payload: &[u8]) -> usize {
        let start = self.buf.len();
        let len = HEADER_LEN + payload.len();
        self.buf.resize(start + len, 0);
        header.emit(&mut self.buf[start..]);
        self.buf[start + HEADER_LEN..start + len].copy_from_slice(payload);
        let copies = self.pending;
        self.items.push(Item { bytes: start..start + len, paths: self.paths.len() - copies..self.paths.len() });
        self.pending = 0;
        copies
    }

    /// Queue `payload` under `header` for every staged path, to be sealed
    /// once with `keys` before anything reads it. Returns the number of copies.
    pub(crate) fn push_sealed(&mut self, header: &Header, payload: &[u8], keys: &Arc<SessionKeys>) -> usize {
        let start = self.buf.len();
        let len = HEADER_LEN + payload.len() + TAG_LEN;
        self.buf.resize(start + len, 0);
        let dgram = &mut self.buf[start..];
        header.emit(dgram);
        dgram[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        self.unsealed.push(SealJob { bytes: start..start + len, seq: header.seq, keys: Arc::clone(keys) });
        let copies = self.pending;
        self.items.push(Item { bytes: start..start + len, paths: self.paths.len() - copies..self.paths.len() });
        self.pending = 0;
        copies
    }
}
