//! The bytes of a forwarded write: what a follower sends its leader (an append, a pipeline of
//! appends, or any other write as a [`TxOp`]) and what comes back (the leader's answer, typed
//! error included, and the log index the leader had applied when it answered). Little-endian
//! fields through `codec.rs`; decoding checks every length and tag and never panics.
//!
//! Owns the encoding only: who sends what, and when, is `forward.rs`'s.

use std::borrow::Cow;

use super::codec::{Reader, put_bytes, put_id, put_pairs};
use super::filter_groups::FilterGroupOutcome;
use super::group_api::{AutoClaimed, GroupEntry};
use super::group_command::{Claim, ClaimTime, GroupStart, ReadFrom};
use super::groups::GroupError;
use super::ids::IdSpec;
use super::sessions::{SessionError, SessionOutcome};
use super::state::RetainEffect;
use super::topic_filter::TopicError;
use super::transaction::{GroupTx, TxAnswer, TxOp};
use super::{AppendRequest, EngineError, Message, Result, Trim, TrimTo};
use crate::store::{LogIndex, SetIdRefused, StoreError, StreamId};

/// A write a follower hands to its leader.
#[derive(Debug, Clone)]
pub enum ForwardOp {
    Append(AppendRequest),
    AppendMany(Vec<AppendRequest>),
    Run(TxOp),
    /// A transaction without reads or WATCH (MULTI … EXEC), as one log entry.
    Exec(Vec<TxOp>),
    /// An MQTT session or filter-group command: the entry's command bytes as they are logged
    /// (version, tag, payload); the leader takes no other tag.
    Command(bytes::Bytes),
}

/// The leader's answer.
#[derive(Debug, Clone)]
pub enum ForwardAnswer {
    Append(Result<Option<StreamId>>),
    AppendMany(Vec<Result<Option<StreamId>>>),
    Run(Result<TxAnswer>),
    Exec(Result<Vec<Result<TxAnswer>>>),
    Command(Result<CommandAnswer>),
}

/// What applying a session or filter-group command answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandAnswer {
    /// A session command's outcome.
    pub session: Option<SessionOutcome>,
    /// A filter-group command's outcome.
    pub filter_group: Option<FilterGroupOutcome>,
}

type Decoded<T> = std::result::Result<T, String>;

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_flag(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

fn put_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_u64(out, v);
        }
    }
}

fn put_opt_id(out: &mut Vec<u8>, v: Option<StreamId>) {
    match v {
        None => out.push(0),
        Some(id) => {
            out.push(1);
            put_id(out, id);
        }
    }
}

fn put_ids(out: &mut Vec<u8>, ids: &[StreamId]) {
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        put_id(out, *id);
    }
}

fn opt_u64(r: &mut Reader<'_>) -> Decoded<Option<u64>> {
    Ok(if r.flag()? { Some(r.u64()?) } else { None })
}

fn opt_id(r: &mut Reader<'_>) -> Decoded<Option<StreamId>> {
    Ok(if r.flag()? { Some(r.id()?) } else { None })
}

fn ids(r: &mut Reader<'_>) -> Decoded<Vec<StreamId>> {
    let n = r.count(16)?;
    (0..n).map(|_| r.id()).collect()
}

/// The request's bytes.
pub fn encode_op(op: &ForwardOp) -> Vec<u8> {
    let mut out = Vec::new();
    match op {
        ForwardOp::Append(req) => {
            out.push(1);
            put_append(&mut out, req);
        }
        ForwardOp::AppendMany(reqs) => {
            out.push(2);
            out.extend_from_slice(&(reqs.len() as u32).to_le_bytes());
            for req in reqs {
                put_append(&mut out, req);
            }
        }
        ForwardOp::Run(op) => {
            out.push(3);
            put_tx_op(&mut out, op);
        }
        ForwardOp::Exec(ops) => {
            out.push(4);
            out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
            for op in ops {
                put_tx_op(&mut out, op);
            }
        }
        ForwardOp::Command(command) => {
            out.push(5);
            put_bytes(&mut out, command);
        }
    }
    out
}

/// What [`encode_op`] wrote.
pub fn decode_op(b: &[u8]) -> Decoded<ForwardOp> {
    let mut r = Reader::new(b);
    let op = match r.u8()? {
        1 => ForwardOp::Append(append(&mut r)?),
        2 => {
            let n = r.count(32)?;
            ForwardOp::AppendMany((0..n).map(|_| append(&mut r)).collect::<Decoded<_>>()?)
        }
        3 => ForwardOp::Run(tx_op(&mut r)?),
        4 => {
            let n = r.count(1)?;
            ForwardOp::Exec((0..n).map(|_| tx_op(&mut r)).collect::<Decoded<_>>()?)
        }
        5 => ForwardOp::Command(r.bytes()?),
        k => return Err(format!("forwarded operation kind {k}")),
    };
    finish(&r)?;
    Ok(op)
}

fn finish(r: &Reader<'_>) -> Decoded<()> {
    if r.finished() {
        Ok(())
    } else {
        Err("bytes after the forwarded message".into())
    }
}

fn put_append(out: &mut Vec<u8>, req: &AppendRequest) {
    out.push(req.db);
    put_bytes(out, &req.key);
    match req.id {
        IdSpec::Auto => out.push(0),
        IdSpec::AutoSeq(ms) => {
            out.push(1);
            put_u64(out, ms);
        }
        IdSpec::Explicit(id) => {
            out.push(2);
            put_id(out, id);
        }
    }
    put_pairs(out, &req.fields);
    put_pairs(out, &req.properties);
    put_bytes(out, &req.message_key);
    put_flag(out, req.nomkstream);
    match &req.trim {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            put_trim(out, t);
        }
    }
    out.push(match req.retain {
        RetainEffect::None => 0,
        RetainEffect::Set => 1,
        RetainEffect::Clear => 2,
    });
    match &req.producer {
        None => out.push(0),
        Some((id, seq)) => {
            out.push(1);
            put_bytes(out, id);
            put_u64(out, *seq);
        }
    }
}

fn append(r: &mut Reader<'_>) -> Decoded<AppendRequest> {
    let db = r.u8()?;
    let key = r.bytes()?;
    let id = match r.u8()? {
        0 => IdSpec::Auto,
        1 => IdSpec::AutoSeq(r.u64()?),
        2 => IdSpec::Explicit(r.id()?),
        k => return Err(format!("ID spec {k}")),
    };
    let fields = r.pairs()?;
    let properties = r.pairs()?;
    let message_key = r.bytes()?;
    let nomkstream = r.flag()?;
    let trim = if r.flag()? { Some(trim(r)?) } else { None };
    let retain = match r.u8()? {
        0 => RetainEffect::None,
        1 => RetainEffect::Set,
        2 => RetainEffect::Clear,
        k => return Err(format!("retain effect {k}")),
    };
    let producer = if r.flag()? {
        Some((r.bytes()?, r.u64()?))
    } else {
        None
    };
    Ok(AppendRequest {
        db,
        key,
        id,
        fields,
        properties,
        message_key,
        nomkstream,
        trim,
        retain,
        producer,
    })
}

fn put_trim(out: &mut Vec<u8>, t: &Trim) {
    match t.to {
        TrimTo::MaxLen(n) => {
            out.push(0);
            put_u64(out, n);
        }
        TrimTo::MinId(id) => {
            out.push(1);
            put_id(out, id);
        }
    }
    put_u64(out, t.limit);
    put_flag(out, t.approx);
}

fn trim(r: &mut Reader<'_>) -> Decoded<Trim> {
    let to = match r.u8()? {
        0 => TrimTo::MaxLen(r.u64()?),
        1 => TrimTo::MinId(r.id()?),
        k => return Err(format!("trim kind {k}")),
    };
    Ok(Trim {
        to,
        limit: r.u64()?,
        approx: r.flag()?,
    })
}

fn put_start(out: &mut Vec<u8>, s: GroupStart) {
    match s {
        GroupStart::Id(id) => {
            out.push(0);
            put_id(out, id);
        }
        GroupStart::Last => out.push(1),
    }
}

fn start(r: &mut Reader<'_>) -> Decoded<GroupStart> {
    match r.u8()? {
        0 => Ok(GroupStart::Id(r.id()?)),
        1 => Ok(GroupStart::Last),
        k => Err(format!("group start {k}")),
    }
}

fn put_tx_op(out: &mut Vec<u8>, op: &TxOp) {
    match op {
        TxOp::Append(req) => {
            out.push(1);
            put_append(out, req);
        }
        TxOp::Delete { db, key, ids } => {
            out.push(2);
            out.push(*db);
            put_bytes(out, key);
            put_ids(out, ids);
        }
        TxOp::Trim { db, key, trim } => {
            out.push(3);
            out.push(*db);
            put_bytes(out, key);
            put_trim(out, trim);
        }
        TxOp::Drop { db, keys } => {
            out.push(4);
            out.push(*db);
            out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
            for k in keys {
                put_bytes(out, k);
            }
        }
        TxOp::Flush { db } => {
            out.push(5);
            put_opt_u64(out, db.map(u64::from));
        }
        TxOp::SetId {
            db,
            key,
            id,
            entries_added,
            max_deleted,
        } => {
            out.push(6);
            out.push(*db);
            put_bytes(out, key);
            put_id(out, *id);
            put_opt_u64(out, *entries_added);
            put_opt_id(out, *max_deleted);
        }
        TxOp::Group(g) => {
            out.push(7);
            put_group(out, g);
        }
        TxOp::Read => out.push(8),
    }
}

fn tx_op(r: &mut Reader<'_>) -> Decoded<TxOp> {
    Ok(match r.u8()? {
        1 => TxOp::Append(append(r)?),
        2 => TxOp::Delete {
            db: r.u8()?,
            key: r.bytes()?,
            ids: ids(r)?,
        },
        3 => TxOp::Trim {
            db: r.u8()?,
            key: r.bytes()?,
            trim: trim(r)?,
        },
        4 => {
            let db = r.u8()?;
            let n = r.count(4)?;
            TxOp::Drop {
                db,
                keys: (0..n).map(|_| r.bytes()).collect::<Decoded<_>>()?,
            }
        }
        5 => TxOp::Flush {
            db: match opt_u64(r)? {
                None => None,
                Some(db) => Some(u8::try_from(db).map_err(|_| format!("database {db}"))?),
            },
        },
        6 => TxOp::SetId {
            db: r.u8()?,
            key: r.bytes()?,
            id: r.id()?,
            entries_added: opt_u64(r)?,
            max_deleted: opt_id(r)?,
        },
        7 => TxOp::Group(group(r)?),
        8 => TxOp::Read,
        k => return Err(format!("operation kind {k}")),
    })
}

fn put_group(out: &mut Vec<u8>, g: &GroupTx) {
    match g {
        GroupTx::Create {
            db,
            key,
            group,
            start,
            mkstream,
            entries_read,
        } => {
            out.push(1);
            out.push(*db);
            put_bytes(out, key);
            put_bytes(out, group);
            put_start(out, *start);
            put_flag(out, *mkstream);
            put_opt_u64(out, *entries_read);
        }
        GroupTx::Destroy { db, key, group } => {
            out.push(2);
            out.push(*db);
            put_bytes(out, key);
            put_bytes(out, group);
        }
        GroupTx::SetId {
            db,
            key,
            group,
            start,
            entries_read,
        } => {
            out.push(3);
            out.push(*db);
            put_bytes(out, key);
            put_bytes(out, group);
            put_start(out, *start);
            put_opt_u64(out, *entries_read);
        }
        GroupTx::CreateConsumer {
            db,
            key,
            group,
            consumer,
        } => {
            out.push(4);
            out.push(*db);
            put_bytes(out, key);
            put_bytes(out, group);
            put_bytes(out, consumer);
        }
        GroupTx::DeleteConsumer {
            db,
            key,
            group,
            consumer,
        } => {
            out.push(5);
            out.push(*db);
            put_bytes(out, key);
            put_bytes(out, group);
            put_bytes(out, consumer);
        }
        GroupTx::Read {
            db,
            group,
            consumer,
            streams,
            count,
            noack,
        } => {
            out.push(6);
            out.push(*db);
            put_bytes(out, group);
            put_bytes(out, consumer);
            out.extend_from_slice(&(streams.len() as u32).to_le_bytes());
            for (key, from) in streams {
                put_bytes(out, key);
                match from {
                    ReadFrom::New => out.push(0),
                    ReadFrom::Pending(id) => {
                        out.push(1);
                        put_id(out, *id);
                    }
                }
            }
            put_u64(out, *count);
            put_flag(out, *noack);
        }
        GroupTx::Ack {
            db,
            key,
            group,
            ids,
        } => {
            out.push(7);
            out.push(*db);
            put_bytes(out, key);
            put_bytes(out, group);
            put_ids(out, ids);
        }
        GroupTx::Claim {
            db,
            key,
            group,
            claim,
        } => {
            out.push(8);
            out.push(*db);
            put_bytes(out, key);
            put_bytes(out, group);
            put_bytes(out, &claim.consumer);
            put_u64(out, claim.min_idle_ms);
            put_ids(out, &claim.ids);
            match claim.delivered {
                None => out.push(0),
                Some(ClaimTime::Idle(ms)) => {
                    out.push(1);
                    put_u64(out, ms);
                }
                Some(ClaimTime::At(ms)) => {
                    out.push(2);
                    put_u64(out, ms);
                }
            }
            put_opt_u64(out, claim.retry_count);
            put_flag(out, claim.force);
            put_flag(out, claim.justid);
            put_opt_id(out, claim.last_id);
        }
        GroupTx::AutoClaim {
            db,
            key,
            group,
            consumer,
            min_idle_ms,
            start,
            count,
            justid,
        } => {
            out.push(9);
            out.push(*db);
            put_bytes(out, key);
            put_bytes(out, group);
            put_bytes(out, consumer);
            put_u64(out, *min_idle_ms);
            put_id(out, *start);
            put_u64(out, *count);
            put_flag(out, *justid);
        }
    }
}

fn group(r: &mut Reader<'_>) -> Decoded<GroupTx> {
    Ok(match r.u8()? {
        1 => GroupTx::Create {
            db: r.u8()?,
            key: r.bytes()?,
            group: r.bytes()?,
            start: start(r)?,
            mkstream: r.flag()?,
            entries_read: opt_u64(r)?,
        },
        2 => GroupTx::Destroy {
            db: r.u8()?,
            key: r.bytes()?,
            group: r.bytes()?,
        },
        3 => GroupTx::SetId {
            db: r.u8()?,
            key: r.bytes()?,
            group: r.bytes()?,
            start: start(r)?,
            entries_read: opt_u64(r)?,
        },
        4 => GroupTx::CreateConsumer {
            db: r.u8()?,
            key: r.bytes()?,
            group: r.bytes()?,
            consumer: r.bytes()?,
        },
        5 => GroupTx::DeleteConsumer {
            db: r.u8()?,
            key: r.bytes()?,
            group: r.bytes()?,
            consumer: r.bytes()?,
        },
        6 => {
            let db = r.u8()?;
            let group = r.bytes()?;
            let consumer = r.bytes()?;
            let n = r.count(5)?;
            let mut streams = Vec::with_capacity(n);
            for _ in 0..n {
                let key = r.bytes()?;
                let from = match r.u8()? {
                    0 => ReadFrom::New,
                    1 => ReadFrom::Pending(r.id()?),
                    k => return Err(format!("read position {k}")),
                };
                streams.push((key, from));
            }
            GroupTx::Read {
                db,
                group,
                consumer,
                streams,
                count: r.u64()?,
                noack: r.flag()?,
            }
        }
        7 => GroupTx::Ack {
            db: r.u8()?,
            key: r.bytes()?,
            group: r.bytes()?,
            ids: ids(r)?,
        },
        8 => {
            let db = r.u8()?;
            let key = r.bytes()?;
            let group = r.bytes()?;
            let consumer = r.bytes()?;
            let min_idle_ms = r.u64()?;
            let claim_ids = ids(r)?;
            let delivered = match r.u8()? {
                0 => None,
                1 => Some(ClaimTime::Idle(r.u64()?)),
                2 => Some(ClaimTime::At(r.u64()?)),
                k => return Err(format!("claim time {k}")),
            };
            GroupTx::Claim {
                db,
                key,
                group,
                claim: Claim {
                    consumer,
                    min_idle_ms,
                    ids: claim_ids,
                    delivered,
                    retry_count: opt_u64(r)?,
                    force: r.flag()?,
                    justid: r.flag()?,
                    last_id: opt_id(r)?,
                },
            }
        }
        9 => GroupTx::AutoClaim {
            db: r.u8()?,
            key: r.bytes()?,
            group: r.bytes()?,
            consumer: r.bytes()?,
            min_idle_ms: r.u64()?,
            start: r.id()?,
            count: r.u64()?,
            justid: r.flag()?,
        },
        k => return Err(format!("group operation {k}")),
    })
}

/// The answer's bytes: the leader's applied index when it answered, then the answer.
pub fn encode_answer(applied: LogIndex, answer: &ForwardAnswer) -> Vec<u8> {
    let mut out = Vec::new();
    put_u64(&mut out, applied);
    match answer {
        ForwardAnswer::Append(r) => {
            out.push(1);
            put_result(&mut out, r, |out, id| put_opt_id(out, *id));
        }
        ForwardAnswer::AppendMany(rs) => {
            out.push(2);
            out.extend_from_slice(&(rs.len() as u32).to_le_bytes());
            for r in rs {
                put_result(&mut out, r, |out, id| put_opt_id(out, *id));
            }
        }
        ForwardAnswer::Run(r) => {
            out.push(3);
            put_result(&mut out, r, put_tx_answer);
        }
        ForwardAnswer::Exec(r) => {
            out.push(4);
            put_result(&mut out, r, |out, answers| {
                out.extend_from_slice(&(answers.len() as u32).to_le_bytes());
                for a in answers {
                    put_result(out, a, put_tx_answer);
                }
            });
        }
        ForwardAnswer::Command(r) => {
            out.push(5);
            put_result(&mut out, r, put_command_answer);
        }
    }
    out
}

/// What [`encode_answer`] wrote.
pub fn decode_answer(b: &[u8]) -> Decoded<(LogIndex, ForwardAnswer)> {
    let mut r = Reader::new(b);
    let applied = r.u64()?;
    let answer = match r.u8()? {
        1 => ForwardAnswer::Append(result(&mut r, opt_id)?),
        2 => {
            let n = r.count(2)?;
            ForwardAnswer::AppendMany(
                (0..n)
                    .map(|_| result(&mut r, opt_id))
                    .collect::<Decoded<_>>()?,
            )
        }
        3 => ForwardAnswer::Run(result(&mut r, tx_answer)?),
        4 => ForwardAnswer::Exec(result(&mut r, |r| {
            let n = r.count(2)?;
            (0..n)
                .map(|_| result(r, tx_answer))
                .collect::<Decoded<Vec<_>>>()
        })?),
        5 => ForwardAnswer::Command(result(&mut r, command_answer)?),
        k => return Err(format!("forwarded answer kind {k}")),
    };
    finish(&r)?;
    Ok((applied, answer))
}

fn put_session_error(out: &mut Vec<u8>, e: &SessionError) {
    out.push(match e {
        SessionError::NoSession => 0,
        SessionError::TooManySessions => 1,
        SessionError::PacketIdInUse => 2,
        SessionError::TakenOver => 3,
    });
}

fn session_error(r: &mut Reader<'_>) -> Decoded<SessionError> {
    Ok(match r.u8()? {
        0 => SessionError::NoSession,
        1 => SessionError::TooManySessions,
        2 => SessionError::PacketIdInUse,
        3 => SessionError::TakenOver,
        k => return Err(format!("session error {k}")),
    })
}

fn put_command_answer(out: &mut Vec<u8>, a: &CommandAnswer) {
    match &a.session {
        None => out.push(0),
        Some(o) => {
            out.push(1);
            match o {
                // Acknowledgements of shared messages and the hand-over of ended sessions are
                // done in apply; the caller sees Done.
                SessionOutcome::Done | SessionOutcome::AckShared(_) | SessionOutcome::Ended(_) => {
                    out.push(0)
                }
                SessionOutcome::Opened { present, epoch } => {
                    out.push(1);
                    put_flag(out, *present);
                    put_u64(out, *epoch);
                }
                SessionOutcome::Unsubscribed(each) => {
                    out.push(2);
                    out.extend_from_slice(&(each.len() as u32).to_le_bytes());
                    out.extend(each.iter().map(|b| u8::from(*b)));
                }
                SessionOutcome::Released(was) => {
                    out.push(3);
                    put_flag(out, *was);
                }
                SessionOutcome::Error(e) => {
                    out.push(4);
                    put_session_error(out, e);
                }
            }
        }
    }
    match &a.filter_group {
        None => out.push(0),
        Some(o) => {
            out.push(1);
            match o {
                FilterGroupOutcome::NoGroup => out.push(0),
                FilterGroupOutcome::PendingLimit => out.push(1),
                FilterGroupOutcome::Bool(b) => {
                    out.push(2);
                    put_flag(out, *b);
                }
                FilterGroupOutcome::Count(n) => {
                    out.push(3);
                    put_u64(out, *n);
                }
                FilterGroupOutcome::Delivered(positions) => {
                    out.push(4);
                    out.extend_from_slice(&(positions.len() as u32).to_le_bytes());
                    for ((index, sub), topic) in positions {
                        put_u64(out, *index);
                        out.extend_from_slice(&sub.to_le_bytes());
                        put_bytes(out, topic);
                    }
                }
            }
        }
    }
}

fn command_answer(r: &mut Reader<'_>) -> Decoded<CommandAnswer> {
    let session = if r.flag()? {
        Some(match r.u8()? {
            0 => SessionOutcome::Done,
            1 => SessionOutcome::Opened {
                present: r.flag()?,
                epoch: r.u64()?,
            },
            2 => {
                let n = r.count(1)?;
                SessionOutcome::Unsubscribed((0..n).map(|_| r.flag()).collect::<Decoded<_>>()?)
            }
            3 => SessionOutcome::Released(r.flag()?),
            4 => SessionOutcome::Error(session_error(r)?),
            k => return Err(format!("session outcome {k}")),
        })
    } else {
        None
    };
    let filter_group = if r.flag()? {
        Some(match r.u8()? {
            0 => FilterGroupOutcome::NoGroup,
            1 => FilterGroupOutcome::PendingLimit,
            2 => FilterGroupOutcome::Bool(r.flag()?),
            3 => FilterGroupOutcome::Count(r.u64()?),
            4 => {
                let n = r.count(14)?;
                let mut positions = Vec::with_capacity(n);
                for _ in 0..n {
                    positions.push(((r.u64()?, r.u16()?), r.bytes()?));
                }
                FilterGroupOutcome::Delivered(positions)
            }
            k => return Err(format!("filter-group outcome {k}")),
        })
    } else {
        None
    };
    Ok(CommandAnswer {
        session,
        filter_group,
    })
}

fn put_result<T>(out: &mut Vec<u8>, r: &Result<T>, put: impl Fn(&mut Vec<u8>, &T)) {
    match r {
        Ok(v) => {
            out.push(0);
            put(out, v);
        }
        Err(e) => {
            out.push(1);
            put_error(out, e);
        }
    }
}

fn result<T>(
    r: &mut Reader<'_>,
    get: impl Fn(&mut Reader<'_>) -> Decoded<T>,
) -> Decoded<Result<T>> {
    Ok(if r.flag()? {
        Err(error(r)?)
    } else {
        Ok(get(r)?)
    })
}

fn put_entries(out: &mut Vec<u8>, entries: &[GroupEntry]) {
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        put_id(out, e.id);
        match &e.message {
            None => out.push(0),
            Some(m) => {
                out.push(1);
                put_id(out, m.id);
                put_pairs(out, &m.fields);
                put_pairs(out, &m.properties);
                put_bytes(out, &m.message_key);
                put_u64(out, m.timestamp_ms);
                put_u64(out, m.log_index);
                out.extend_from_slice(&m.sub.to_le_bytes());
            }
        }
    }
}

fn entries(r: &mut Reader<'_>) -> Decoded<Vec<GroupEntry>> {
    let n = r.count(17)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.id()?;
        let message = if r.flag()? {
            Some(Message {
                id: r.id()?,
                fields: r.pairs()?,
                properties: r.pairs()?,
                message_key: r.bytes()?,
                timestamp_ms: r.u64()?,
                log_index: r.u64()?,
                sub: r.u16()?,
            })
        } else {
            None
        };
        out.push(GroupEntry { id, message });
    }
    Ok(out)
}

fn put_tx_answer(out: &mut Vec<u8>, a: &TxAnswer) {
    match a {
        TxAnswer::Id(id) => {
            out.push(1);
            put_opt_id(out, *id);
        }
        TxAnswer::Count(n) => {
            out.push(2);
            put_u64(out, *n);
        }
        TxAnswer::Done => out.push(3),
        TxAnswer::Bool(b) => {
            out.push(4);
            put_flag(out, *b);
        }
        TxAnswer::Streams(streams) => {
            out.push(5);
            out.extend_from_slice(&(streams.len() as u32).to_le_bytes());
            for (key, es) in streams {
                put_bytes(out, key);
                put_entries(out, es);
            }
        }
        TxAnswer::Entries(es) => {
            out.push(6);
            put_entries(out, es);
        }
        TxAnswer::AutoClaimed(a) => {
            out.push(7);
            put_id(out, a.next);
            put_entries(out, &a.entries);
            put_ids(out, &a.deleted);
        }
        TxAnswer::Read => out.push(8),
    }
}

fn tx_answer(r: &mut Reader<'_>) -> Decoded<TxAnswer> {
    Ok(match r.u8()? {
        1 => TxAnswer::Id(opt_id(r)?),
        2 => TxAnswer::Count(r.u64()?),
        3 => TxAnswer::Done,
        4 => TxAnswer::Bool(r.flag()?),
        5 => {
            let n = r.count(8)?;
            let mut streams = Vec::with_capacity(n);
            for _ in 0..n {
                streams.push((r.bytes()?, entries(r)?));
            }
            TxAnswer::Streams(streams)
        }
        6 => TxAnswer::Entries(entries(r)?),
        7 => TxAnswer::AutoClaimed(AutoClaimed {
            next: r.id()?,
            entries: entries(r)?,
            deleted: ids(r)?,
        }),
        8 => TxAnswer::Read,
        k => return Err(format!("answer kind {k}")),
    })
}

fn put_error(out: &mut Vec<u8>, e: &EngineError) {
    match e {
        EngineError::IdTooSmall { last } => {
            out.push(1);
            put_id(out, *last);
        }
        EngineError::IdZero => out.push(2),
        EngineError::IdExhausted => out.push(3),
        EngineError::NoFields => out.push(4),
        EngineError::BadDb(db) => {
            out.push(5);
            out.push(*db);
        }
        EngineError::TooLarge { size, limit } => {
            out.push(6);
            put_u64(out, *size as u64);
            put_u64(out, *limit as u64);
        }
        EngineError::RetainedLimit { limit } => {
            out.push(7);
            put_u64(out, *limit);
        }
        EngineError::BadTopic(t) => {
            out.push(8);
            out.push(match t {
                TopicError::Empty => 0,
                TopicError::TooLong => 1,
                TopicError::BadText => 2,
                TopicError::WildcardInName => 3,
                TopicError::BadWildcard => 4,
            });
        }
        EngineError::Group(g) => {
            out.push(9);
            out.push(match g {
                GroupError::NoGroup => 0,
                GroupError::GroupExists => 1,
                GroupError::NoStream => 2,
                GroupError::PendingLimit => 3,
            });
        }
        EngineError::InvalidArgument(why) => {
            out.push(10);
            put_bytes(out, why.as_bytes());
        }
        EngineError::Session(s) => {
            out.push(11);
            put_session_error(out, s);
        }
        EngineError::NoPermission { key, publish } => {
            out.push(12);
            put_bytes(out, key);
            put_flag(out, *publish);
        }
        EngineError::BadCredentials => out.push(13),
        EngineError::SetId(s) => {
            out.push(14);
            out.push(*s as u8);
        }
        EngineError::NotLeader { leader } => {
            out.push(15);
            put_opt_u64(out, *leader);
        }
        EngineError::ShuttingDown => out.push(16),
        EngineError::Store(s) => {
            out.push(17);
            let text = match s {
                StoreError::Failed(why) => why.to_string(),
                other => other.to_string(),
            };
            put_bytes(out, text.as_bytes());
        }
    }
}

fn error(r: &mut Reader<'_>) -> Decoded<EngineError> {
    let text = |r: &mut Reader<'_>| -> Decoded<String> {
        Ok(String::from_utf8_lossy(&r.bytes()?).into_owned())
    };
    Ok(match r.u8()? {
        1 => EngineError::IdTooSmall { last: r.id()? },
        2 => EngineError::IdZero,
        3 => EngineError::IdExhausted,
        4 => EngineError::NoFields,
        5 => EngineError::BadDb(r.u8()?),
        6 => EngineError::TooLarge {
            size: r.u64()? as usize,
            limit: r.u64()? as usize,
        },
        7 => EngineError::RetainedLimit { limit: r.u64()? },
        8 => EngineError::BadTopic(match r.u8()? {
            0 => TopicError::Empty,
            1 => TopicError::TooLong,
            2 => TopicError::BadText,
            3 => TopicError::WildcardInName,
            4 => TopicError::BadWildcard,
            k => return Err(format!("topic error {k}")),
        }),
        9 => EngineError::Group(match r.u8()? {
            0 => GroupError::NoGroup,
            1 => GroupError::GroupExists,
            2 => GroupError::NoStream,
            3 => GroupError::PendingLimit,
            k => return Err(format!("group error {k}")),
        }),
        10 => EngineError::InvalidArgument(Cow::Owned(text(r)?)),
        11 => EngineError::Session(session_error(r)?),
        12 => EngineError::NoPermission {
            key: r.bytes()?,
            publish: r.flag()?,
        },
        13 => EngineError::BadCredentials,
        14 => EngineError::SetId(match r.u8()? {
            1 => SetIdRefused::NoKey,
            2 => SetIdRefused::IdTooSmall,
            3 => SetIdRefused::AddedTooSmall,
            k => return Err(format!("XSETID refusal {k}")),
        }),
        15 => EngineError::NotLeader {
            leader: opt_u64(r)?,
        },
        16 => EngineError::ShuttingDown,
        17 => EngineError::Store(StoreError::Failed(text(r)?.into())),
        k => return Err(format!("error kind {k}")),
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    fn rich_append() -> AppendRequest {
        AppendRequest {
            db: 3,
            key: b("k"),
            id: IdSpec::AutoSeq(17),
            fields: vec![(b("f"), b("v")), (b(""), b("\0\x7f"))],
            properties: vec![(b("content-type"), b("text/plain"))],
            message_key: b("mk"),
            nomkstream: true,
            trim: Some(Trim {
                to: TrimTo::MinId(StreamId::new(5, 6)),
                limit: 100,
                approx: true,
            }),
            retain: RetainEffect::Clear,
            producer: Some((b("fwd:2:abc"), 99)),
        }
    }

    fn ops() -> Vec<ForwardOp> {
        let g = |op| ForwardOp::Run(TxOp::Group(op));
        vec![
            ForwardOp::Exec(vec![
                TxOp::Append(rich_append()),
                TxOp::Drop {
                    db: 0,
                    keys: vec![b("z")],
                },
            ]),
            ForwardOp::Exec(vec![]),
            ForwardOp::Append(rich_append()),
            ForwardOp::AppendMany(vec![rich_append(), AppendRequest::new(0, b("x"), vec![])]),
            ForwardOp::Run(TxOp::Delete {
                db: 1,
                key: b("k"),
                ids: vec![StreamId::new(1, 2)],
            }),
            ForwardOp::Run(TxOp::Trim {
                db: 0,
                key: b("k"),
                trim: Trim::max_len(10),
            }),
            ForwardOp::Run(TxOp::Drop {
                db: 2,
                keys: vec![b("a"), b("b")],
            }),
            ForwardOp::Run(TxOp::Flush { db: Some(4) }),
            ForwardOp::Run(TxOp::Flush { db: None }),
            ForwardOp::Run(TxOp::SetId {
                db: 0,
                key: b("k"),
                id: StreamId::new(9, 9),
                entries_added: Some(3),
                max_deleted: None,
            }),
            ForwardOp::Run(TxOp::Read),
            ForwardOp::Command(b("\x01\x09session command bytes")),
            g(GroupTx::Create {
                db: 0,
                key: b("k"),
                group: b("g"),
                start: GroupStart::Last,
                mkstream: true,
                entries_read: Some(2),
            }),
            g(GroupTx::Destroy {
                db: 0,
                key: b("k"),
                group: b("g"),
            }),
            g(GroupTx::SetId {
                db: 0,
                key: b("k"),
                group: b("g"),
                start: GroupStart::Id(StreamId::new(1, 0)),
                entries_read: None,
            }),
            g(GroupTx::CreateConsumer {
                db: 0,
                key: b("k"),
                group: b("g"),
                consumer: b("c"),
            }),
            g(GroupTx::DeleteConsumer {
                db: 0,
                key: b("k"),
                group: b("g"),
                consumer: b("c"),
            }),
            g(GroupTx::Read {
                db: 0,
                group: b("g"),
                consumer: b("c"),
                streams: vec![
                    (b("k"), ReadFrom::New),
                    (b("j"), ReadFrom::Pending(StreamId::new(0, 1))),
                ],
                count: 10,
                noack: true,
            }),
            g(GroupTx::Ack {
                db: 0,
                key: b("k"),
                group: b("g"),
                ids: vec![StreamId::new(1, 1), StreamId::new(2, 2)],
            }),
            g(GroupTx::Claim {
                db: 0,
                key: b("k"),
                group: b("g"),
                claim: Claim {
                    consumer: b("c"),
                    min_idle_ms: 5,
                    ids: vec![StreamId::new(1, 1)],
                    delivered: Some(ClaimTime::At(1234)),
                    retry_count: Some(2),
                    force: true,
                    justid: false,
                    last_id: Some(StreamId::new(7, 0)),
                },
            }),
            g(GroupTx::AutoClaim {
                db: 0,
                key: b("k"),
                group: b("g"),
                consumer: b("c"),
                min_idle_ms: 0,
                start: StreamId::new(0, 0),
                count: 100,
                justid: true,
            }),
        ]
    }

    fn answers() -> Vec<ForwardAnswer> {
        let message = Message {
            id: StreamId::new(1, 2),
            fields: vec![(b("f"), b("v"))],
            properties: vec![],
            message_key: b(""),
            timestamp_ms: 42,
            log_index: 7,
            sub: 1,
        };
        let entries = vec![
            GroupEntry {
                id: StreamId::new(1, 2),
                message: Some(message),
            },
            GroupEntry {
                id: StreamId::new(1, 3),
                message: None,
            },
        ];
        let errors = vec![
            EngineError::IdTooSmall {
                last: StreamId::new(3, 4),
            },
            EngineError::IdZero,
            EngineError::IdExhausted,
            EngineError::NoFields,
            EngineError::BadDb(16),
            EngineError::TooLarge { size: 9, limit: 8 },
            EngineError::RetainedLimit { limit: 1 },
            EngineError::BadTopic(TopicError::BadWildcard),
            EngineError::Group(GroupError::GroupExists),
            EngineError::InvalidArgument(Cow::Borrowed("why")),
            EngineError::Session(SessionError::PacketIdInUse),
            EngineError::NoPermission {
                key: b("k"),
                publish: true,
            },
            EngineError::BadCredentials,
            EngineError::SetId(SetIdRefused::AddedTooSmall),
            EngineError::NotLeader { leader: Some(3) },
            EngineError::NotLeader { leader: None },
            EngineError::ShuttingDown,
            EngineError::Store(StoreError::Failed("disk".into())),
        ];
        let mut out = vec![
            ForwardAnswer::Append(Ok(Some(StreamId::new(1, 1)))),
            ForwardAnswer::Append(Ok(None)),
            ForwardAnswer::AppendMany(vec![Ok(None), Err(EngineError::NoFields)]),
            ForwardAnswer::Run(Ok(TxAnswer::Id(None))),
            ForwardAnswer::Run(Ok(TxAnswer::Count(5))),
            ForwardAnswer::Run(Ok(TxAnswer::Done)),
            ForwardAnswer::Run(Ok(TxAnswer::Bool(true))),
            ForwardAnswer::Run(Ok(TxAnswer::Streams(vec![(b("k"), entries.clone())]))),
            ForwardAnswer::Run(Ok(TxAnswer::Entries(entries.clone()))),
            ForwardAnswer::Run(Ok(TxAnswer::AutoClaimed(AutoClaimed {
                next: StreamId::new(9, 9),
                entries,
                deleted: vec![StreamId::new(1, 1)],
            }))),
            ForwardAnswer::Run(Ok(TxAnswer::Read)),
            ForwardAnswer::Exec(Ok(vec![
                Ok(TxAnswer::Id(Some(StreamId::new(1, 1)))),
                Err(EngineError::NoFields),
            ])),
            ForwardAnswer::Exec(Err(EngineError::NotLeader { leader: Some(2) })),
            ForwardAnswer::Command(Ok(CommandAnswer::default())),
            ForwardAnswer::Command(Ok(CommandAnswer {
                session: Some(SessionOutcome::Opened {
                    present: true,
                    epoch: 41,
                }),
                filter_group: None,
            })),
            ForwardAnswer::Command(Ok(CommandAnswer {
                session: Some(SessionOutcome::Unsubscribed(vec![true, false])),
                filter_group: None,
            })),
            ForwardAnswer::Command(Ok(CommandAnswer {
                session: Some(SessionOutcome::Released(false)),
                filter_group: None,
            })),
            ForwardAnswer::Command(Ok(CommandAnswer {
                session: Some(SessionOutcome::Error(SessionError::PacketIdInUse)),
                filter_group: None,
            })),
            ForwardAnswer::Command(Ok(CommandAnswer {
                session: Some(SessionOutcome::Done),
                filter_group: Some(FilterGroupOutcome::Delivered(vec![
                    ((7, 1), b("a/b")),
                    ((9, 0), b("a/c")),
                ])),
            })),
            ForwardAnswer::Command(Ok(CommandAnswer {
                session: None,
                filter_group: Some(FilterGroupOutcome::Count(3)),
            })),
            ForwardAnswer::Command(Ok(CommandAnswer {
                session: None,
                filter_group: Some(FilterGroupOutcome::Bool(true)),
            })),
            ForwardAnswer::Command(Ok(CommandAnswer {
                session: None,
                filter_group: Some(FilterGroupOutcome::PendingLimit),
            })),
            ForwardAnswer::Command(Err(EngineError::Session(SessionError::NoSession))),
            ForwardAnswer::Command(Err(EngineError::Session(SessionError::TakenOver))),
        ];
        out.extend(errors.into_iter().map(|e| ForwardAnswer::Run(Err(e))));
        out
    }

    #[test]
    fn every_operation_and_answer_round_trips_and_a_cut_one_is_refused() {
        for op in ops() {
            let bytes = encode_op(&op);
            let back = decode_op(&bytes).expect("decodes");
            assert_eq!(encode_op(&back), bytes, "{op:?}");
            for cut in 0..bytes.len() {
                assert!(decode_op(&bytes[..cut]).is_err(), "{op:?} cut at {cut}");
            }
        }
        for answer in answers() {
            let bytes = encode_answer(77, &answer);
            let (applied, back) = decode_answer(&bytes).expect("decodes");
            assert_eq!(applied, 77);
            assert_eq!(encode_answer(77, &back), bytes, "{answer:?}");
            assert_eq!(format!("{answer:?}"), format!("{back:?}"));
            for cut in 0..bytes.len() {
                assert!(
                    decode_answer(&bytes[..cut]).is_err(),
                    "{answer:?} cut at {cut}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_op(&bytes);
            let _ = decode_answer(&bytes);
        }

        #[test]
        fn a_flipped_byte_in_an_operation_never_panics(i in 0usize..4096, x in 1u8..=255) {
            for op in ops() {
                let mut bytes = encode_op(&op);
                let at = i % bytes.len();
                bytes[at] ^= x;
                let _ = decode_op(&bytes);
            }
        }
    }
}
