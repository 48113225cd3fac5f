//! The Raft core's view of the log: which term each index holds, as runs of equal terms
//! (terms change rarely, so a log of millions of entries is a handful of runs). It owns the
//! first and last index and `term_at`; it never holds an entry's bytes — those stay in the
//! store, which the driver reads when it sends.

use crate::store::{LogIndex, Term};

/// Terms of the indexes `first_index..=last_index`, plus the term of `first_index - 1` (the
/// entry just below the retained part: a snapshot's last entry, or index 0 with term 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTerms {
    /// Index and term of the entry just below the first retained one.
    base: (LogIndex, Term),
    /// `(first index, term)` of each run, in index order, terms rising.
    runs: Vec<(LogIndex, Term)>,
    last: LogIndex,
}

impl LogTerms {
    /// An empty log whose next index is `base_index + 1`; `base_term` is the term of
    /// `base_index` (0 for an empty log from the start).
    pub fn new(base_index: LogIndex, base_term: Term) -> LogTerms {
        LogTerms {
            base: (base_index, base_term),
            runs: Vec::new(),
            last: base_index,
        }
    }

    /// Index of the last entry (the base index when nothing is retained above it).
    pub fn last_index(&self) -> LogIndex {
        self.last
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> Term {
        self.runs.last().map_or(self.base.1, |r| r.1)
    }

    /// The index below which entries are not held (their terms unknown, except the base).
    pub fn base_index(&self) -> LogIndex {
        self.base.0
    }

    /// Term of `index`: `None` below the base or past the end.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.base.0 {
            return Some(self.base.1);
        }
        if index < self.base.0 || index > self.last {
            return None;
        }
        let run = self.runs.partition_point(|r| r.0 <= index);
        Some(self.runs[run - 1].1)
    }

    /// Appends `count` entries of `term` after the last one. A term lower than the last
    /// entry's is refused (`false`): terms never fall along a Raft log.
    pub fn append(&mut self, term: Term, count: u64) -> bool {
        if count == 0 {
            return true;
        }
        if term < self.last_term() {
            return false;
        }
        if self.runs.last().is_none_or(|r| r.1 != term) {
            self.runs.push((self.last + 1, term));
        }
        self.last += count;
        true
    }

    /// Drops every entry after `index` (a conflicting suffix). Never goes below the base.
    pub fn truncate_after(&mut self, index: LogIndex) {
        let index = index.max(self.base.0);
        if index >= self.last {
            return;
        }
        self.last = index;
        while self.runs.last().is_some_and(|r| r.0 > index) {
            self.runs.pop();
        }
    }

    /// The first index holding `term`, if any entry above the base has it.
    pub fn first_of_term(&self, term: Term) -> Option<LogIndex> {
        self.runs.iter().find(|r| r.1 == term).map(|r| r.0)
    }

    /// The last index holding `term`, if any entry above the base has it.
    pub fn last_of_term(&self, term: Term) -> Option<LogIndex> {
        let i = self.runs.iter().position(|r| r.1 == term)?;
        Some(self.runs.get(i + 1).map_or(self.last, |next| next.0 - 1))
    }

    /// Forgets the terms of entries up to `index` (they went into a snapshot or retention);
    /// `index` becomes the base.
    pub fn compact_to(&mut self, index: LogIndex) {
        if index <= self.base.0 {
            return;
        }
        let Some(term) = self.term_at(index) else {
            // Past the end: the log restarts empty at `index` (an installed snapshot); the
            // caller gives the term with `reset`.
            return;
        };
        let keep = self.runs.partition_point(|r| r.0 <= index);
        self.runs.drain(..keep);
        if index < self.last {
            self.runs.insert(0, (index + 1, term));
            // The run that covered `index` continues above it with the same term; merge.
            if self.runs.len() > 1 && self.runs[1].0 == index + 1 {
                self.runs.remove(0);
            }
        }
        self.base = (index, term);
    }

    /// Replaces everything with an empty log based at `(index, term)` (an installed snapshot).
    pub fn reset(&mut self, index: LogIndex, term: Term) {
        *self = LogTerms::new(index, term);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_found_by_run() {
        let mut l = LogTerms::new(0, 0);
        assert!(l.append(1, 3)); // 1..=3
        assert!(l.append(1, 1)); // 4
        assert!(l.append(4, 2)); // 5..=6
        assert!(!l.append(2, 1), "terms never fall");
        assert_eq!(l.last_index(), 6);
        assert_eq!(l.last_term(), 4);
        assert_eq!(l.term_at(0), Some(0));
        assert_eq!(l.term_at(4), Some(1));
        assert_eq!(l.term_at(5), Some(4));
        assert_eq!(l.term_at(7), None);
        assert_eq!(l.first_of_term(4), Some(5));
        assert_eq!(l.last_of_term(1), Some(4));
        assert_eq!(l.last_of_term(4), Some(6));
        assert_eq!(l.last_of_term(2), None);
        l.truncate_after(4);
        assert_eq!((l.last_index(), l.last_term()), (4, 1));
        assert!(l.append(5, 1));
        assert_eq!(l.term_at(5), Some(5));
    }

    #[test]
    fn compaction_keeps_the_terms_above_it() {
        let mut l = LogTerms::new(0, 0);
        l.append(1, 3);
        l.append(2, 3); // 4..=6
        l.compact_to(5);
        assert_eq!(l.base_index(), 5);
        assert_eq!(l.term_at(4), None);
        assert_eq!(l.term_at(5), Some(2));
        assert_eq!(l.term_at(6), Some(2));
        assert_eq!(l.last_index(), 6);
        l.compact_to(6);
        assert_eq!((l.last_index(), l.last_term()), (6, 2));
        assert!(l.append(3, 1));
        assert_eq!(l.term_at(7), Some(3));
        l.truncate_after(2);
        assert_eq!(l.last_index(), 6, "never below the base");
    }
}
