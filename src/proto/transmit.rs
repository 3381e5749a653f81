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
//! what is pending first. The batch is reused: `clear` keeps its capacity, so
//! steady-state traffic allocates nothing.

use std::ops::Range;
use std::sync::Arc;

use super::crypto::{SessionKeys, key_index};
use super::ids::PathAddr;
use super::ids::Seq;
use super::wire::{HEADER_LEN, Header, TAG_LEN};

#[derive(Clone, Debug)]
struct Item {
    bytes: Range<usize>,
    paths: Range<usize>,
}

/// A datagram laid out in the buffer and not yet sealed: its bytes (header,
/// plaintext, room for the tag), its sequence number and which of the
/// batch's keys seal it.
#[derive(Clone, Debug)]
struct SealJob {
    bytes: Range<usize>,
    seq: Seq,
    keys: usize,
}

impl SealJob {
    /// Seal the datagram in `dgram` (exactly this job's bytes) in place
    /// with `keys`, the batch's key list.
    fn seal(&self, keys: &[Arc<SessionKeys>], dgram: &mut [u8]) {
        let (head, rest) = dgram.split_at_mut(HEADER_LEN);
        let (body, tag_out) = rest.split_at_mut(rest.len() - TAG_LEN);
        let tag = keys[self.keys].seal(self.seq, head, body);
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
    /// The keys the unsealed datagrams need, each once: a batch holds one
    /// reference per session, not one per datagram.
    keys: Vec<Arc<SessionKeys>>,
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

/// A batch with every datagram sealed ([`Transmits::sealed`]): what the
/// shell reads to send.
#[derive(Clone, Copy, Debug)]
pub struct Sealed<'a>(&'a Transmits);

impl<'a> Sealed<'a> {
    /// The datagrams in the order they were produced.
    pub fn iter(self) -> impl ExactSizeIterator<Item = Transmit<'a>> + 'a {
        let t = self.0;
        t.items.iter().map(move |i| Transmit {
            datagram: &t.buf[i.bytes.clone()],
            offset: i.bytes.start,
            paths: &t.paths[i.paths.clone()],
        })
    }

    /// Every datagram, back to back, in the order they were produced.
    pub fn bytes(self) -> &'a [u8] {
        &self.0.buf
    }

    /// Nothing to send.
    pub fn is_empty(self) -> bool {
        self.0.is_empty()
    }
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
        self.keys.clear();
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

    /// The batch, every datagram sealed first.
    pub fn sealed(&mut self) -> Sealed<'_> {
        self.seal();
        Sealed(self)
    }

    /// The datagrams in the order they were produced, sealed.
    pub fn iter(&mut self) -> impl ExactSizeIterator<Item = Transmit<'_>> + '_ {
        self.sealed().iter()
    }

    /// Every datagram, back to back, in the order they were produced, sealed.
    pub fn bytes(&mut self) -> &[u8] {
        self.sealed().bytes()
    }

    /// Datagrams queued and not sealed yet.
    pub fn unsealed(&self) -> usize {
        self.unsealed.len()
    }

    /// Seal every datagram queued for sealing, on this thread.
    pub fn seal(&mut self) {
        for job in self.unsealed.drain(..) {
            job.seal(&self.keys, &mut self.buf[job.bytes.clone()]);
        }
        self.keys.clear();
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
            job.seal(&self.keys, &mut self.buf[job.bytes.clone()]);
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
        let keys = key_index(&mut self.keys, keys);
        self.unsealed.push(SealJob { bytes: start..start + len, seq: header.seq, keys });
        let copies = self.pending;
        self.items.push(Item { bytes: start..start + len, paths: self.paths.len() - copies..self.paths.len() });
        self.pending = 0;
        copies
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::crypto::Cipher;
    use crate::proto::ids::{HostId, LinkId};
    use crate::proto::wire::{MessageType, Packet};

    fn h(n: u32) -> HostId {
        HostId::new(n).unwrap()
    }

    fn path() -> PathAddr {
        PathAddr { link: LinkId(1), remote: "192.0.2.2:51820".parse().unwrap() }
    }

    fn header(seq: u64) -> Header {
        let (sender, receiver) = (h(1), h(2));
        Header {
            msg_type: MessageType::Data,
            hop_limit: 8,
            key_phase: false,
            sole: false,
            realtime: false,
            sender,
            receiver,
            seq: Seq(seq),
        }
    }

    fn payload(seq: u64) -> Vec<u8> {
        (0..100 + seq as usize * 37).map(|i| (i as u64 * 31 + seq) as u8).collect()
    }

    /// Datagrams 1..=n queued for sealing, with an unsealed message and a
    /// raw one between them (as handshakes and shaped copies come).
    fn batch(keys: &Arc<SessionKeys>, n: u64) -> Transmits {
        let mut out = Transmits::new();
        for seq in 1..=n {
            out.add_path(path());
            out.push_sealed(&header(seq), &payload(seq), keys);
            if seq == n / 2 {
                out.add_path(path());
                out.push_plain(&header(0), b"handshake");
                out.push_raw(b"sealed before", path());
            }
        }
        out
    }

    #[test]
    fn what_is_read_is_sealed_once_and_opens() {
        let keys = Arc::new(SessionKeys::from_shared_secret(Cipher::ChaCha20Poly1305, &[5; 32], h(1), h(2)));
        let other = SessionKeys::from_shared_secret(Cipher::ChaCha20Poly1305, &[5; 32], h(2), h(1));
        let mut out = batch(&keys, 10);
        assert_eq!(out.unsealed(), 10);
        let mut opened = 0;
        for t in out.iter() {
            let Ok(hd) = Packet::new_checked(t.datagram).and_then(|p| Header::parse(&p)) else { continue };
            if hd.seq.0 == 0 {
                continue;
            }
            let mut d = t.datagram.to_vec();
            let (head, sealed) = d.split_at_mut(HEADER_LEN);
            let n = other.open(hd.seq, head, sealed).expect("sealed with the session's keys");
            assert_eq!(&sealed[..n], &payload(hd.seq.0)[..]);
            opened += 1;
        }
        assert_eq!((opened, out.unsealed()), (10, 0));
    }

    #[test]
    fn the_last_datagram_is_sealed_when_read_and_dropped_with_its_seal() {
        let keys = Arc::new(SessionKeys::from_shared_secret(Cipher::Aes256Gcm, &[7; 32], h(1), h(2)));
        let mut once = batch(&keys, 3);
        let mut out = batch(&keys, 3);
        let last = out.last_datagram().unwrap().to_vec();
        assert_eq!(out.unsealed(), 2, "only the last one sealed");
        let all = once.bytes();
        assert_eq!(&all[all.len() - last.len()..], &last[..]);
        // Queued on no path (every copy held by shapers): dropped, and
        // nothing is left to seal at its place.
        out.push_sealed(&header(9), &payload(9), &keys);
        assert_eq!(out.unsealed(), 3);
        out.drop_last_if_pathless();
        assert_eq!((out.len(), out.unsealed()), (5, 2));
        assert_eq!(out.bytes(), once.bytes());
    }
}
