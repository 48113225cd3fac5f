//! The apply journal: what applying each entry read from the store while a snapshot was being
//! written off the applier thread — the entry's dispatch outcomes, and every answer its group
//! commands got from the streams. With it, the state at the snapshot's index plus the log
//! entries after it give the state at the store's later checkpoint without the store as it was
//! then (group commands read the streams as of their own index, which the store no longer is).
//!
//! This module records and replays answers and encodes them; it never decides what an entry
//! does (that is `state.rs` and `groups.rs`, which see the same answers either way).

use std::cell::RefCell;
use std::collections::VecDeque;

use super::codec::{Reader, put_id};
use super::groups::{EntryRef, StreamFacts, Streams};
use crate::store::{LogIndex, Outcome, SetIdRefused, StoreError, StreamId};

/// One answer a group command got from the streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// `Streams::facts`.
    Facts(Option<StreamFacts>),
    /// `Streams::after`.
    After(Vec<EntryRef>),
    /// `Streams::live`.
    Live(Option<EntryRef>),
}

/// What applying one entry read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Its log index.
    pub index: LogIndex,
    /// Its dispatch outcomes.
    pub outcomes: Vec<Outcome>,
    /// Its group commands' answers, in the order they were asked.
    pub reads: Vec<Read>,
}

/// Streams that answer from the store and remember every answer.
pub struct Recorder<'a> {
    inner: &'a dyn Streams,
    reads: RefCell<Vec<Read>>,
}

impl<'a> Recorder<'a> {
    /// Records what `inner` answers.
    pub fn new(inner: &'a dyn Streams) -> Self {
        Recorder {
            inner,
            reads: RefCell::new(Vec::new()),
        }
    }

    /// The answers so far, in order.
    pub fn take(&self) -> Vec<Read> {
        std::mem::take(&mut self.reads.borrow_mut())
    }
}

impl Streams for Recorder<'_> {
    fn facts(&self, db: u8, key: &[u8]) -> Result<Option<StreamFacts>, StoreError> {
        let a = self.inner.facts(db, key)?;
        self.reads.borrow_mut().push(Read::Facts(a));
        Ok(a)
    }

    fn after(
        &self,
        db: u8,
        key: &[u8],
        after: StreamId,
        count: u64,
    ) -> Result<Vec<EntryRef>, StoreError> {
        let a = self.inner.after(db, key, after, count)?;
        self.reads.borrow_mut().push(Read::After(a.clone()));
        Ok(a)
    }

    fn live(&self, db: u8, key: &[u8], id: StreamId) -> Result<Option<EntryRef>, StoreError> {
        let a = self.inner.live(db, key, id)?;
        self.reads.borrow_mut().push(Read::Live(a));
        Ok(a)
    }
}

/// Streams that answer from a journal entry, in order. An answer of the wrong kind, or one too
/// many, means the journal does not belong to this state: `Corruption`.
pub struct Replayer {
    reads: RefCell<VecDeque<Read>>,
    index: LogIndex,
}

impl Replayer {
    /// Answers `reads` in order, for the entry at `index` (named in errors).
    pub fn new(index: LogIndex, reads: Vec<Read>) -> Self {
        Replayer {
            reads: RefCell::new(reads.into()),
            index,
        }
    }

    /// Whether every answer was used.
    pub fn finished(&self) -> bool {
        self.reads.borrow().is_empty()
    }

    fn next(&self, what: &str) -> Result<Read, StoreError> {
        self.reads
            .borrow_mut()
            .pop_front()
            .ok_or_else(|| self.mismatch(what))
    }

    fn mismatch(&self, what: &str) -> StoreError {
        StoreError::Corruption {
            file: super::SNAPSHOT_DIR.into(),
            offset: self.index,
            reason: format!(
                "the apply journal has no {what} answer where entry {} asks for one",
                self.index
            ),
        }
    }
}

impl Streams for Replayer {
    fn facts(&self, _: u8, _: &[u8]) -> Result<Option<StreamFacts>, StoreError> {
        match self.next("facts")? {
            Read::Facts(a) => Ok(a),
            _ => Err(self.mismatch("facts")),
        }
    }

    fn after(&self, _: u8, _: &[u8], _: StreamId, _: u64) -> Result<Vec<EntryRef>, StoreError> {
        match self.next("after")? {
            Read::After(a) => Ok(a),
            _ => Err(self.mismatch("after")),
        }
    }

    fn live(&self, _: u8, _: &[u8], _: StreamId) -> Result<Option<EntryRef>, StoreError> {
        match self.next("live")? {
            Read::Live(a) => Ok(a),
            _ => Err(self.mismatch("live")),
        }
    }
}

/// Encodes journal entries (see `docs/storage-format.md`, Apply journals).
pub fn encode(entries: &[JournalEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.index.to_le_bytes());
        out.extend_from_slice(&(e.outcomes.len() as u32).to_le_bytes());
        for o in &e.outcomes {
            match o {
                Outcome::Added => out.push(0),
                Outcome::Rejected { last } => {
                    out.push(1);
                    put_id(&mut out, *last);
                }
                Outcome::Deleted(b) => out.extend_from_slice(&[2, u8::from(*b)]),
                Outcome::Trimmed(n) => {
                    out.push(3);
                    out.extend_from_slice(&n.to_le_bytes());
                }
                Outcome::Dropped(b) => out.extend_from_slice(&[4, u8::from(*b)]),
                Outcome::Created(b) => out.extend_from_slice(&[5, u8::from(*b)]),
                Outcome::IdSet(refused) => {
                    out.extend_from_slice(&[6, refused.map_or(0, |r| r as u8)]);
                }
            }
        }
        out.extend_from_slice(&(e.reads.len() as u32).to_le_bytes());
        for r in &e.reads {
            match r {
                Read::Facts(None) => out.push(0),
                Read::Facts(Some(f)) => {
                    out.push(1);
                    out.extend_from_slice(&f.length.to_le_bytes());
                    put_id(&mut out, f.last_id);
                    put_id(&mut out, f.first_id);
                    put_id(&mut out, f.max_deleted_id);
                    out.extend_from_slice(&f.entries_added.to_le_bytes());
                }
                Read::After(refs) => {
                    out.push(2);
                    out.extend_from_slice(&(refs.len() as u32).to_le_bytes());
                    for r in refs {
                        put_ref(&mut out, r);
                    }
                }
                Read::Live(None) => out.push(3),
                Read::Live(Some(r)) => {
                    out.push(4);
                    put_ref(&mut out, r);
                }
            }
        }
    }
    out
}

/// Decodes what `encode` wrote; every count is checked against the bytes that hold it.
pub fn decode(b: &[u8]) -> Result<Vec<JournalEntry>, String> {
    let mut r = Reader::new(b);
    let n = r.u64()?;
    if n > (b.len() / 16) as u64 {
        return Err(format!("journal entry count {n} exceeds its bytes"));
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let index = r.u64()?;
        let no = r.count(1)?;
        let mut outcomes = Vec::with_capacity(no);
        for _ in 0..no {
            outcomes.push(match r.u8()? {
                0 => Outcome::Added,
                1 => Outcome::Rejected { last: r.id()? },
                2 => Outcome::Deleted(r.flag()?),
                3 => Outcome::Trimmed(r.u64()?),
                4 => Outcome::Dropped(r.flag()?),
                5 => Outcome::Created(r.flag()?),
                6 => Outcome::IdSet(match r.u8()? {
                    0 => None,
                    1 => Some(SetIdRefused::NoKey),
                    2 => Some(SetIdRefused::IdTooSmall),
                    3 => Some(SetIdRefused::AddedTooSmall),
                    c => return Err(format!("XSETID outcome {c}")),
                }),
                t => return Err(format!("outcome tag {t}")),
            });
        }
        let nr = r.count(1)?;
        let mut reads = Vec::with_capacity(nr);
        for _ in 0..nr {
            reads.push(match r.u8()? {
                0 => Read::Facts(None),
                1 => Read::Facts(Some(StreamFacts {
                    length: r.u64()?,
                    last_id: r.id()?,
                    first_id: r.id()?,
                    max_deleted_id: r.id()?,
                    entries_added: r.u64()?,
                })),
                2 => {
                    let k = r.count(26)?;
                    let mut refs = Vec::with_capacity(k);
                    for _ in 0..k {
                        refs.push(entry_ref(&mut r)?);
                    }
                    Read::After(refs)
                }
                3 => Read::Live(None),
                4 => Read::Live(Some(entry_ref(&mut r)?)),
                t => return Err(format!("read tag {t}")),
            });
        }
        out.push(JournalEntry {
            index,
            outcomes,
            reads,
        });
    }
    if !r.finished() {
        return Err(format!("{} bytes after the journal", r.remaining()));
    }
    Ok(out)
}

fn put_ref(out: &mut Vec<u8>, r: &EntryRef) {
    put_id(out, r.id);
    out.extend_from_slice(&r.log_index.to_le_bytes());
    out.extend_from_slice(&r.sub.to_le_bytes());
}

fn entry_ref(r: &mut Reader<'_>) -> Result<EntryRef, String> {
    Ok(EntryRef {
        id: r.id()?,
        log_index: r.u64()?,
        sub: r.u16()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journals_round_trip_and_damage_never_panics() {
        let r = EntryRef {
            id: StreamId::new(5, 1),
            log_index: 9,
            sub: 2,
        };
        let entries = vec![
            JournalEntry {
                index: 10,
                outcomes: vec![
                    Outcome::Added,
                    Outcome::Rejected {
                        last: StreamId::new(3, 3),
                    },
                    Outcome::Deleted(true),
                    Outcome::Trimmed(4),
                    Outcome::Dropped(false),
                    Outcome::Created(true),
                    Outcome::IdSet(None),
                    Outcome::IdSet(Some(SetIdRefused::AddedTooSmall)),
                ],
                reads: Vec::new(),
            },
            JournalEntry {
                index: 11,
                outcomes: Vec::new(),
                reads: vec![
                    Read::Facts(None),
                    Read::Facts(Some(StreamFacts {
                        length: 1,
                        last_id: StreamId::new(1, 0),
                        first_id: StreamId::new(1, 0),
                        max_deleted_id: StreamId::default(),
                        entries_added: 1,
                    })),
                    Read::After(vec![r, r]),
                    Read::Live(None),
                    Read::Live(Some(r)),
                ],
            },
        ];
        let b = encode(&entries);
        assert_eq!(decode(&b), Ok(entries));
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err());
        }
        let mut flipped = b.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = decode(&flipped);
            flipped[i] ^= 0xff;
        }
    }
}
