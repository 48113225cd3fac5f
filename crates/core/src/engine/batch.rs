//! A transaction's log entry (command tag `Batch`) and how it is applied: part by part, each
//! part an operation with its own command bytes (what a single entry of that operation would
//! carry) and a run of the entry's sub-records. Part `k` is dispatched into the store and
//! applied to the engine state before part `k + 1` is, so a group command sees the streams as
//! the parts before it left them — on the leader, on every replica and at replay alike.
//!
//! Command bytes after the tag: parts `u32`, then per part: sub-records `u32`, command
//! length `u32`, command. The parts' sub-records follow each other in the entry's order and
//! cover all of them. A command that does not decode is one part with every sub-record and no
//! command (the store's own dispatch of the entry does the same).
//!
//! This module owns the format and the part loop; what a part does is `state.rs`'s and the
//! store's. It never reads a clock.

use std::ops::Range;

use bytes::Bytes;

use super::state::{EntryCommand, StateReply};
use super::{Applied, COMMAND_VERSION, CommandTag, entry_command};
use crate::store::{LogEntry, Outcome, StoreError, SubRecord};

/// One part of a batch: its sub-records and its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The entry's sub-records it owns.
    pub records: Range<usize>,
    /// Its command bytes (version, tag, payload).
    pub command: Bytes,
}

/// The command and sub-records of a batch of `(command, records)` parts.
pub fn encode(parts: Vec<(Bytes, Vec<SubRecord>)>) -> (Bytes, Vec<SubRecord>) {
    let mut c = vec![COMMAND_VERSION, CommandTag::Batch as u8];
    c.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    let mut records = Vec::new();
    for (command, recs) in parts {
        c.extend_from_slice(&(recs.len() as u32).to_le_bytes());
        c.extend_from_slice(&(command.len() as u32).to_le_bytes());
        c.extend_from_slice(&command);
        records.extend(recs);
    }
    (Bytes::from(c), records)
}

/// The parts of `entry` if it is a batch (`None` otherwise).
pub fn parts(entry: &LogEntry) -> Option<Vec<Part>> {
    match entry.command.as_ref() {
        [COMMAND_VERSION, t, ..] if *t == CommandTag::Batch as u8 => {}
        _ => return None,
    }
    let all = Part {
        records: 0..entry.records.len(),
        command: Bytes::new(),
    };
    Some(decode(&entry.command.slice(2..), entry.records.len()).unwrap_or_else(|| vec![all]))
}

fn decode(b: &Bytes, records: usize) -> Option<Vec<Part>> {
    let u32_at = |at: usize| -> Option<usize> {
        let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(bytes) as usize)
    };
    let n = u32_at(0)?;
    if n > b.len() / 8 {
        return None;
    }
    let (mut at, mut next) = (4, 0usize);
    let mut parts = Vec::with_capacity(n);
    for _ in 0..n {
        let recs = u32_at(at)?;
        let len = u32_at(at + 4)?;
        let end = at.checked_add(8)?.checked_add(len)?;
        if end > b.len() {
            return None;
        }
        let last = next.checked_add(recs)?;
        parts.push(Part {
            records: next..last,
            command: b.slice(at + 8..end),
        });
        (at, next) = (end, last);
    }
    (at == b.len() && next == records).then_some(parts)
}

/// Part `part` of `entry` as an entry of its own: what `state.rs` applies.
fn part_entry(entry: &LogEntry, part: &Part) -> LogEntry {
    LogEntry {
        index: entry.index,
        term: entry.term,
        kind: entry.kind,
        timestamp_ms: entry.timestamp_ms,
        command: part.command.clone(),
        records: entry.records[part.records.clone()].to_vec(),
    }
}

/// Applies one part, as an entry of its own, to the engine state.
pub type ApplyPart<'a> =
    dyn FnMut(&LogEntry, &EntryCommand, &[Outcome]) -> Result<StateReply, StoreError> + 'a;

/// Applies a batch entry part by part: `dispatch` gives a part's store outcomes (dispatching
/// it, or from a journal; `true` for the last part), `apply_part` applies the part (as an
/// entry of its own) to the engine state, and `pause(k)` runs before part `k` (and
/// `pause(parts)` after the last); `stops` lists the `k` where it may hold apply. Consecutive
/// plain appends (nothing for the engine state to do) with no stop between them are
/// dispatched together. Returns every sub-record's outcome in order, and what each part did.
pub fn apply(
    entry: &LogEntry,
    parts: &[Part],
    stops: &[usize],
    dispatch: &mut dyn FnMut(Range<usize>, bool) -> Result<Vec<Outcome>, StoreError>,
    apply_part: &mut ApplyPart<'_>,
    pause: &mut dyn FnMut(usize),
) -> Result<(Vec<Outcome>, Vec<Applied>), StoreError> {
    let mut all = Vec::with_capacity(entry.records.len());
    let mut applied = Vec::with_capacity(parts.len());
    let mut k = 0;
    while k < parts.len() {
        pause(k);
        let mut end = k + 1;
        if plain_append(&parts[k]) {
            while end < parts.len() && plain_append(&parts[end]) && !stops.contains(&end) {
                end += 1;
            }
        }
        let last = end == parts.len();
        if end > k + 1 {
            // A run of plain appends: one dispatch, each part's outcomes its own.
            let range = parts[k].records.start..parts[end - 1].records.end;
            let mut outcomes = dispatch(range, last)?.into_iter();
            for part in &parts[k..end] {
                let mine: Vec<Outcome> = outcomes.by_ref().take(part.records.len()).collect();
                all.extend(mine.iter().cloned());
                applied.push(Applied::new(mine, StateReply::default()));
            }
        } else {
            let part = &parts[k];
            let outcomes = dispatch(part.records.clone(), last)?;
            let sub = part_entry(entry, part);
            let reply = apply_part(&sub, &entry_command(&sub), &outcomes)?;
            all.extend(outcomes.iter().cloned());
            applied.push(Applied::new(outcomes, reply));
        }
        for j in k + 1..end {
            pause(j); // no stop inside a run: nothing to hold
        }
        k = end;
    }
    if parts.is_empty() {
        // Nothing to dispatch: the entry is dispatched all the same.
        let n = entry.records.len();
        dispatch(n..n, true)?;
    }
    pause(parts.len());
    Ok((all, applied))
}

/// An XADD with nothing for the engine state (no producer sequence, no retained message):
/// applying it is the store's dispatch alone.
fn plain_append(part: &Part) -> bool {
    is_plain_append(&part.command)
}

/// Whether `command` (an entry's or a part's) is a plain XADD's: no producer sequence, no
/// retained message — nothing for the engine state to do.
pub(super) fn is_plain_append(command: &[u8]) -> bool {
    command == [COMMAND_VERSION, CommandTag::Append as u8]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &'static str) -> SubRecord {
        SubRecord {
            topic: Bytes::from_static(topic.as_bytes()),
            ..SubRecord::default()
        }
    }

    fn entry_of(command: Bytes, records: Vec<SubRecord>) -> LogEntry {
        LogEntry {
            index: 5,
            term: 1,
            kind: crate::store::EntryKind::Command,
            timestamp_ms: 0,
            command,
            records,
        }
    }

    #[test]
    fn parts_round_trip_and_cover_the_records() {
        let (command, records) = encode(vec![
            (Bytes::from_static(&[1, 1]), vec![record("a"), record("b")]),
            (Bytes::from_static(&[1, 7, 9, 9]), vec![]),
            (Bytes::from_static(&[1, 3]), vec![record("c")]),
        ]);
        let entry = entry_of(command, records);
        let parts = parts(&entry).expect("a batch");
        assert_eq!(
            parts.iter().map(|p| p.records.clone()).collect::<Vec<_>>(),
            vec![0..2, 2..2, 2..3]
        );
        assert_eq!(parts[1].command.as_ref(), &[1, 7, 9, 9]);
    }

    #[test]
    fn a_batch_that_does_not_decode_is_one_part_of_everything() {
        let (command, mut records) = encode(vec![(Bytes::from_static(&[1, 1]), vec![record("a")])]);
        records.push(record("b")); // the parts no longer cover the records
        let entry = entry_of(command, records);
        let parts = parts(&entry).expect("a batch");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].records, 0..2);
        assert!(parts[0].command.is_empty());
        // Every cut of a valid command is refused (lengths no longer match), never a panic.
        let (command, _) = encode(vec![(Bytes::from_static(&[1, 1]), vec![record("a")])]);
        let body = command.slice(2..);
        assert!(decode(&body, 1).is_some());
        for cut in 0..body.len() {
            assert_eq!(decode(&body.slice(..cut), 1), None, "cut at {cut}");
        }
    }
}
