//! The newest applied log entries, kept in memory as the applier decoded them: a reader at the
//! head of the log (an MQTT subscriber, a blocked XREAD, a long-poll) takes its messages from
//! here instead of reading the CommitLog back, so a thousand subscribers of one topic cost one
//! decode, not a thousand reads. Bounded by entry count and bytes; the oldest go first.
//!
//! Only applied entries are kept: an applied entry is committed, and a committed entry at a
//! log index never changes, so nothing here is ever stale. With each entry goes which of its
//! sub-records apply added as messages (an append that failed its check at apply is in the
//! entry but was not added). It never holds an entry that is not contiguous with the ones
//! before it (a gap clears it).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::entry::{LogEntry, LogIndex};

/// Entries kept at most.
const MAX_ENTRIES: usize = 4096;
/// Bytes (encoded sub-records) kept at most.
const MAX_BYTES: usize = 32 << 20;

/// A kept entry: the entry, which sub-records were added as messages, its size.
type Kept = (Arc<LogEntry>, Added, usize);

/// Which sub-records of an entry were added as messages: a bit each for up to 64 (an entry
/// of its own for nearly every write, no allocation), a flag each beyond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// Bit `k` for sub-record `k`.
    Bits(u64),
    /// Entries of more than 64 sub-records.
    Many(Arc<[bool]>),
}

impl Added {
    /// From each sub-record's flag, in order.
    pub fn from_flags(flags: impl ExactSizeIterator<Item = bool>) -> Added {
        if flags.len() <= 64 {
            Added::Bits(
                flags
                    .enumerate()
                    .fold(0, |bits, (k, f)| bits | (u64::from(f) << k)),
            )
        } else {
            Added::Many(flags.collect())
        }
    }

    /// Whether sub-record `k` was added (`false` past the end).
    pub fn get(&self, k: usize) -> bool {
        match self {
            Added::Bits(bits) => k < 64 && bits >> k & 1 == 1,
            Added::Many(flags) => flags.get(k).copied().unwrap_or(false),
        }
    }
}

#[derive(Default)]
struct Ring {
    entries: VecDeque<Kept>,
    bytes: usize,
}

/// The newest applied entries.
#[derive(Default)]
pub struct RecentEntries {
    ring: Mutex<Ring>,
}

impl std::fmt::Debug for RecentEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = self.lock();
        f.debug_struct("RecentEntries")
            .field("entries", &ring.entries.len())
            .field("bytes", &ring.bytes)
            .finish()
    }
}

impl RecentEntries {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `entries` (applied, in log order), each with which of its sub-records were added.
    pub fn push(&self, entries: &[Arc<LogEntry>], added: Vec<Added>) {
        let mut ring = self.lock();
        for (e, added) in entries.iter().zip(added) {
            let follows = ring
                .entries
                .back()
                .is_none_or(|(last, _, _)| last.index + 1 == e.index);
            if !follows {
                ring.entries.clear();
                ring.bytes = 0;
            }
            let size: usize = e.records.iter().map(|r| r.encoded_len()).sum::<usize>() + 64;
            ring.entries.push_back((e.clone(), added, size));
            ring.bytes += size;
            while ring.entries.len() > MAX_ENTRIES
                || (ring.bytes > MAX_BYTES && ring.entries.len() > 1)
            {
                if let Some((_, _, s)) = ring.entries.pop_front() {
                    ring.bytes -= s;
                }
            }
        }
    }

    /// The entry at `index`, if it is kept.
    pub fn get(&self, index: LogIndex) -> Option<Arc<LogEntry>> {
        self.get_added(index).map(|(e, _)| e)
    }

    /// The entry at `index` and which of its sub-records were added, if it is kept.
    pub fn get_added(&self, index: LogIndex) -> Option<(Arc<LogEntry>, Added)> {
        let ring = self.lock();
        let first = ring.entries.front()?.0.index;
        let at = usize::try_from(index.checked_sub(first)?).ok()?;
        ring.entries.get(at).map(|(e, a, _)| (e.clone(), a.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::entry::EntryKind;

    fn entry(index: LogIndex) -> Arc<LogEntry> {
        Arc::new(LogEntry {
            index,
            term: 1,
            kind: EntryKind::Command,
            timestamp_ms: 0,
            command: bytes::Bytes::new(),
            records: Vec::new(),
        })
    }

    #[test]
    fn keeps_the_newest_contiguous_entries_only() {
        let r = RecentEntries::default();
        assert!(r.get(1).is_none());
        let push = |from: u64, to: u64| {
            let entries: Vec<_> = (from..=to).map(entry).collect();
            let added = entries
                .iter()
                .map(|_| Added::from_flags([true].into_iter()))
                .collect();
            r.push(&entries, added);
        };
        push(1, 3);
        assert_eq!(r.get(2).map(|e| e.index), Some(2));
        assert!(r.get(0).is_none() && r.get(4).is_none());
        // A gap (entries this node did not apply in order) starts over.
        push(10, 10);
        assert!(r.get(3).is_none());
        assert_eq!(r.get(10).map(|e| e.index), Some(10));
        push(11, 10 + MAX_ENTRIES as u64);
        assert_eq!(r.get_added(11).map(|(_, a)| a.get(0)), Some(true));
        assert!(r.get(10).is_none(), "the oldest goes past the bound");
        assert!(r.get(11).is_some());
    }

    #[test]
    fn added_flags_read_back_as_given_in_bits_and_beyond() {
        for n in [0, 1, 3, 63, 64, 65, 200] {
            let flags: Vec<bool> = (0..n).map(|k| k % 3 != 1).collect();
            let added = Added::from_flags(flags.iter().copied());
            assert_eq!(matches!(added, Added::Bits(_)), n <= 64, "{n} flags");
            for (k, f) in flags.iter().enumerate() {
                assert_eq!(added.get(k), *f, "flag {k} of {n}");
            }
            assert!(!added.get(n) && !added.get(n + 64), "past the end");
        }
    }
}
