//! The batch of datagrams the core asks the shell to send.
//!
//! Encrypt once, send N times (DESIGN.md invariant 4) is built into the
//! shape: a [`Transmit`] is one sealed datagram and the list of paths it goes
//! out on. `Transmits::push_sealed` is the only place a datagram is sealed.
//! The batch is reused: `clear` keeps its capacity, so steady-state traffic
//! allocates nothing.

use std::ops::Range;

use super::crypto::SessionKeys;
use super::ids::PathAddr;
use super::wire::{HEADER_LEN, Header, TAG_LEN};

#[derive(Clone, Debug)]
struct Item {
    bytes: Range<usize>,
    paths: Range<usize>,
}

/// Datagrams to send, each with the paths to send it on.
#[derive(Clone, Debug, Default)]
pub struct Transmits {
    buf: Vec<u8>,
    items: Vec<Item>,
    paths: Vec<PathAddr>,
    /// Paths collected for the datagram being built (not yet committed).
    pending: usize,
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

    /// The datagrams in the order they were produced.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Transmit<'_>> + '_ {
        self.items.iter().map(|i| Transmit {
            datagram: &self.buf[i.bytes.clone()],
            offset: i.bytes.start,
            paths: &self.paths[i.paths.clone()],
        })
    }

    /// Every datagram, back to back, in the order they were produced.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
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

    /// The bytes of the datagram queued last.
    pub(crate) fn last_datagram(&self) -> Option<&[u8]> {
        self.items.last().map(|i| &self.buf[i.bytes.clone()])
    }

    /// Forget the datagram queued last if it goes on no path (every copy
    /// of it was held by a shaper).
    pub(crate) fn drop_last_if_pathless(&mut self) {
        if let Some(i) = self.items.last()
            && i.paths.is_empty()
        {
            self.buf.truncate(i.bytes.start);
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

    /// Seal `payload` once under `header` and queue it for every staged path.
    /// Returns the number of copies.
    pub(crate) fn push_sealed(&mut self, header: &Header, payload: &[u8], keys: &SessionKeys) -> usize {
        let start = self.buf.len();
        let len = HEADER_LEN + payload.len() + TAG_LEN;
        self.buf.resize(start + len, 0);
        let dgram = &mut self.buf[start..];
        header.emit(dgram);
        let (head, rest) = dgram.split_at_mut(HEADER_LEN);
        let (body, tag_out) = rest.split_at_mut(payload.len());
        body.copy_from_slice(payload);
        let tag = keys.seal(header.seq, head, body);
        tag_out.copy_from_slice(&tag);
        let copies = self.pending;
        self.items.push(Item { bytes: start..start + len, paths: self.paths.len() - copies..self.paths.len() });
        self.pending = 0;
        copies
    }
}
