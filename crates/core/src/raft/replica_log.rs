//! The driver's half of replication against the store: the core's `LogTerms` rebuilt from the
//! CommitLog at open, the appends a `SendEntries` action becomes (bounded in bytes, the store's
//! records as they are), and a follower's `Persist` carried out (guarded truncation, records
//! appended byte for byte). IO only; every decision is the core's.

use crate::store::{AppendTicket, LogIndex, MessageStore, Result, StoreError};

use super::log_terms::LogTerms;
use super::message::{AppendHeader, Entry, Message};

/// The terms of the log as the store holds it, as runs found by binary search (terms never
/// fall along the log, so each change of term costs a few `term_at` lookups). The base is
/// the first entry held (the ones before it are gone to retention and committed).
pub fn log_terms(store: &MessageStore) -> Result<LogTerms> {
    let log = store.log();
    let (first, last) = (log.first_index(), log.last_index());
    if last < first || last == 0 {
        return Ok(LogTerms::new(last, log.last_term()));
    }
    let base = if first <= 1 { 0 } else { first };
    let mut terms = LogTerms::new(base, log.term_at(base)?);
    let mut at = base + 1;
    while at <= last {
        let term = log.term_at(at)?;
        // The last index holding `term`: binary search in `at..=last`.
        let (mut lo, mut hi) = (at, last);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if log.term_at(mid)? == term {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        if !terms.append(term, lo - at + 1) {
            return Err(StoreError::Corruption {
                file: "commitlog".into(),
                offset: 0,
                reason: format!("term {term} at index {at} follows a higher term"),
            });
        }
        at = lo + 1;
    }
    Ok(terms)
}

/// The appends that carry entries `header.prev_index + 1 ..= last` to a follower, each at
/// most `max_bytes` of records (an entry larger than that goes alone), in order, each with
/// the right `prev_index`/`prev_term`. A probe (nothing to send) is one empty append.
pub fn appends(
    store: &MessageStore,
    header: AppendHeader,
    last: LogIndex,
    max_bytes: u64,
) -> Result<Vec<Message>> {
    let mut out = Vec::new();
    let mut h = header;
    loop {
        let from = h.prev_index + 1;
        let entries: Vec<Entry> = if from <= last {
            store
                .log()
                .raw_entries(from, last, max_bytes)?
                .into_iter()
                .map(|(term, data)| Entry { term, data })
                .collect()
        } else {
            Vec::new()
        };
        let next = match entries.last() {
            Some(e) => (h.prev_index + entries.len() as u64, e.term),
            None => (h.prev_index, h.prev_term),
        };
        let done = entries.is_empty() || next.0 >= last;
        out.push(Message::Append { header: h, entries });
        if done {
            return Ok(out);
        }
        h = AppendHeader {
            prev_index: next.0,
            prev_term: next.1,
            ..h
        };
    }
}

/// Carries out a follower's `Persist`: the conflicting suffix after `truncate_after` goes
/// (through the store's guard: never below what was dispatched), then each record is appended
/// as sent. Returns the last entry's ticket (durable in order: awaiting it covers them all).
///
/// The store may hold entries past what the core knows: ones this node appended as leader
/// just before it stepped down, whose `Appended` had not reached the core yet. They were never
/// sent to anyone nor counted, so they go too.
pub fn persist(
    store: &MessageStore,
    truncate_after: Option<LogIndex>,
    first_index: LogIndex,
    entries: &[Entry],
) -> Result<Option<AppendTicket>> {
    let keep = truncate_after.unwrap_or(first_index.saturating_sub(1));
    if store.log().last_index() > keep {
        store.truncate_after(keep)?;
    }
    let next = store.log().last_index() + 1;
    if next != first_index {
        return Err(StoreError::BadRecord(format!(
            "entries for index {first_index} offered at index {next}"
        )));
    }
    let mut ticket = None;
    for e in entries {
        ticket = Some(store.log().append_raw(&e.data, e.term)?);
    }
    Ok(ticket)
}
