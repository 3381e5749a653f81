//! Opening a batch of received datagrams outside the node's lock.
//!
//! Opening (the session's AEAD over every byte) is most of what a received
//! datagram costs; the state it reads (the session's keys) is read-only once
//! made. A shell that keeps the [`Node`](super::node::Node) behind a lock
//! handles a batch in three steps:
//!
//! 1. under the lock, [`Node::plan_open`](super::node::Node::plan_open)
//!    notes for each datagram the keys and sequence number it would be
//!    opened with (cheap: header, peer, session, window);
//! 2. without it, [`Openings::open`] opens each planned datagram in place
//!    (other tasks use the node meanwhile; two link readers open at once);
//! 3. under the lock again,
//!    [`Node::handle_opened`](super::node::Node::handle_opened) handles each
//!    datagram as [`Node::handle_datagram`](super::node::Node::handle_datagram)
//!    does, using the result of step 2 in place of opening.
//!
//! Nothing is trusted between the steps: step 3 repeats every check of the
//! receive path (header, peer, session, window) and takes step 2's result
//! only if it was made with the very keys the session of that key phase
//! holds now, for the same sequence number and datagram length. A datagram
//! opened with keys replaced in between is dropped as failing
//! authentication (it would not open with the new ones); one not opened
//! ahead is opened in step 3. The sim and tests use `handle_datagram`, which
//! does all three at once.

use std::sync::Arc;

use super::crypto::{SessionKeys, key_index};
use super::ids::Seq;
use super::wire::{HEADER_LEN, TAG_LEN};

/// What became of one datagram of the batch.
#[derive(Clone, Copy, Debug)]
enum Opening {
    /// Not a sealed message of a live session (a handshake, a stranger's,
    /// too old): step 3 handles it in full.
    Skip,
    /// To be opened with `keys` (an index into the batch's key list).
    Planned { keys: usize, seq: Seq },
    /// Opened in place: the plaintext's length, or `None` if it failed to
    /// authenticate.
    Opened { keys: usize, seq: Seq, len: usize, plain: Option<usize> },
}

/// A batch's plans and results, by the datagram's place in the batch.
/// Reused: `clear` keeps the memory, and a batch holds each session's keys
/// once, so a datagram costs no allocation and no reference count.
#[derive(Debug, Default)]
pub struct Openings {
    items: Vec<Opening>,
    keys: Vec<Arc<SessionKeys>>,
}

/// Step 2's result for one datagram, handed to
/// [`Node::handle_opened`](super::node::Node::handle_opened) (from
/// [`Openings::ahead`]); empty if the datagram was not opened ahead.
#[derive(Clone, Copy, Debug)]
pub struct Ahead<'a>(pub(crate) Option<OpenedAhead<'a>>);

/// Step 2's result for one datagram, as step 3 checks it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpenedAhead<'a> {
    pub keys: &'a Arc<SessionKeys>,
    pub seq: Seq,
    pub len: usize,
    pub plain: Option<usize>,
}

impl Openings {
    /// An empty batch.
    pub fn new() -> Openings {
        Openings::default()
    }

    /// Forget every plan, keeping the memory.
    pub fn clear(&mut self) {
        self.items.clear();
        self.keys.clear();
    }

    /// Plan the next datagram: opened with `keys` at `seq`, or not at all.
    pub(crate) fn plan(&mut self, job: Option<(&Arc<SessionKeys>, Seq)>) {
        let item = match job {
            None => Opening::Skip,
            Some((keys, seq)) => Opening::Planned { keys: key_index(&mut self.keys, keys), seq },
        };
        self.items.push(item);
    }

    /// Open datagram `i` of the batch in place, if it was planned: `datagram`
    /// must be the buffer planned at `i`. Needs no lock.
    pub fn open(&mut self, i: usize, datagram: &mut [u8]) {
        let Some(item) = self.items.get_mut(i) else { return };
        let Opening::Planned { keys, seq } = *item else { return };
        let plain = if datagram.len() < HEADER_LEN + TAG_LEN {
            None
        } else {
            let (head, sealed) = datagram.split_at_mut(HEADER_LEN);
            self.keys[keys].open(seq, head, sealed).ok()
        };
        *item = Opening::Opened { keys, seq, len: datagram.len(), plain };
    }

    /// What step 2 did with datagram `i`, for step 3.
    pub fn ahead(&self, i: usize) -> Ahead<'_> {
        Ahead(match self.items.get(i) {
            Some(&Opening::Opened { keys, seq, len, plain }) => {
                Some(OpenedAhead { keys: &self.keys[keys], seq, len, plain })
            }
            Some(Opening::Skip | Opening::Planned { .. }) | None => None,
        })
    }
}
