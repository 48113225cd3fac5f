//! Consumer-group commands: XGROUP, XREADGROUP, XACK, XPENDING, XCLAIM, XAUTOCLAIM and XINFO
//! GROUPS / CONSUMERS, with Redis 7.0's argument order, reply shapes and error texts. Every
//! change is one engine command, decided when it is applied (so two readers never get the
//! same entry); checks that Redis makes before touching the key (and whose errors name a key)
//! are made here first, on the applied state.

use std::time::{Duration, Instant};

use bytes::Bytes;
use manifold_core::engine::{
    Claim, ClaimTime, Client, GroupEntry, GroupStart, GroupTx, MAX_AUTOCLAIM_COUNT, PendingQuery,
    ReadFrom, TopicKey, Turn, TxAnswer, TxOp, Wake,
};
use manifold_core::store::StreamId;

use super::connection::help;
use super::read::{Blocked, ReadArgs, parse_read, per_stream};
use super::streams::entry_reply;
use super::{Ctx, Plan};
use crate::args::{self, IdForm, id_bulk, is};
use crate::errors::engine_error;
use crate::reply::{Protocol, Reply};

type Result<T> = std::result::Result<T, Reply>;

/// How long a reader waiting in line for its turn goes without looking at the line again.
const LINE_RECHECK: Duration = Duration::from_millis(100);

/// `-ERR The XGROUP subcommand requires the key to exist. ...`
fn no_stream() -> Reply {
    Reply::err(
        "The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically.",
    )
}

/// `-NOGROUP No such key '<key>' or consumer group '<group>'` (XPENDING, XCLAIM, XAUTOCLAIM).
fn no_key_or_group(key: &[u8], group: &[u8]) -> Reply {
    Reply::Error(format!(
        "NOGROUP No such key '{}' or consumer group '{}'",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(group)
    ))
}

/// `-NOGROUP No such consumer group '<group>' for key name '<key>'` (XGROUP, XINFO).
fn no_group_for_key(key: &[u8], group: &[u8]) -> Reply {
    Reply::Error(format!(
        "NOGROUP No such consumer group '{}' for key name '{}'",
        String::from_utf8_lossy(group),
        String::from_utf8_lossy(key)
    ))
}

/// Whether the stream exists and whether it has the group, on the applied state.
fn stream_and_group(ctx: &Ctx<'_>, key: &[u8], group: &[u8]) -> Result<(bool, bool)> {
    let groups = ctx
        .client()?
        .groups_info(ctx.conn.db, key)
        .map_err(|e| ctx.engine_error(&e, key, group))?;
    Ok(match groups {
        None => (false, false),
        Some(g) => (true, g.iter().any(|g| g.name.as_ref() == group)),
    })
}

/// Entries a group read or claim handed out: IDs only with JUSTID, else each as
/// [`group_entry`].
fn claimed_reply(entries: &[GroupEntry], justid: bool) -> Reply {
    Reply::Array(
        entries
            .iter()
            .map(|e| {
                if justid {
                    id_bulk(e.id)
                } else {
                    group_entry(e)
                }
            })
            .collect(),
    )
}

/// A group read's or claim's entry: `[id, fields]`, `[id, nil]` for a message gone.
fn group_entry(e: &GroupEntry) -> Reply {
    match &e.message {
        Some(m) => entry_reply(m),
        None => Reply::Array(vec![id_bulk(e.id), Reply::NilArray]),
    }
}

pub fn xgroup_help() -> Reply {
    help(&[
        "XGROUP <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "CREATE <key> <groupname> <id|$> [option]",
        "    Create a new consumer group. Options are:",
        "    * MKSTREAM",
        "      Create the empty stream if it does not exist.",
        "    * ENTRIESREAD entries_read",
        "      Set the group's entries_read counter (internal use).",
        "CREATECONSUMER <key> <groupname> <consumer>",
        "    Create a new consumer in the specified group.",
        "DELCONSUMER <key> <groupname> <consumer>",
        "    Remove the specified consumer.",
        "DESTROY <key> <groupname>",
        "    Remove the specified group.",
        "SETID <key> <groupname> <id|$> [ENTRIESREAD entries_read]",
        "    Set the current group ID and entries_read counter.",
        "HELP",
        "    Prints this help.",
    ])
}

/// XGROUP CREATE / SETID / DESTROY / CREATECONSUMER / DELCONSUMER.
pub fn plan_xgroup(ctx: &Ctx<'_>, in_tx: bool) -> Result<Plan> {
    let sub = ctx.spec.name;
    let a = ctx.args.clone();
    let create = sub == "xgroup|create";
    let setid = sub == "xgroup|setid";
    // Options from the sixth argument: MKSTREAM (CREATE), ENTRIESREAD n (CREATE, SETID).
    let wrong = || {
        Reply::err(format!(
            "unknown subcommand or wrong number of arguments for '{}'. Try XGROUP HELP.",
            String::from_utf8_lossy(&a[1])
        ))
    };
    let mut mkstream = false;
    let mut entries_read: Option<Option<u64>> = None;
    let mut i = 5;
    while i < a.len() {
        if create && is(&a[i], "mkstream") {
            mkstream = true;
            i += 1;
        } else if (create || setid) && is(&a[i], "entriesread") && i + 1 < a.len() {
            let n = args::int(&a[i + 1])?;
            if n < 0 && n != -1 {
                return Err(Reply::err("value for ENTRIESREAD must be positive or -1"));
            }
            entries_read = Some((n >= 0).then_some(n as u64));
            i += 2;
        } else {
            return Err(wrong());
        }
    }
    if (create && a.len() > 8) || (setid && a.len() != 5 && a.len() != 7) {
        return Err(wrong());
    }
    let (key, group) = (a[2].clone(), a[3].clone());
    if !in_tx {
        // Redis checks the key and the group before the ID (the engine would after).
        let (exists, has_group) = stream_and_group(ctx, &key, &group)?;
        if !(exists || create && mkstream) {
            return Err(no_stream());
        }
        let needs_group = matches!(
            sub,
            "xgroup|setid" | "xgroup|createconsumer" | "xgroup|delconsumer"
        );
        if needs_group && !has_group {
            return Err(no_group_for_key(&key, &group));
        }
    }
    let db = ctx.conn.db;
    let op = match sub {
        "xgroup|create" | "xgroup|setid" => {
            let start = if a[4].as_ref() == b"$" {
                GroupStart::Last
            } else if create {
                GroupStart::Id(args::stream_id(&a[4], IdForm::Strict, 0)?)
            } else {
                GroupStart::Id(args::stream_id(&a[4], IdForm::Interval, 0)?)
            };
            let entries_read = entries_read.flatten();
            let (key, group) = (key.clone(), group.clone());
            if create {
                GroupTx::Create {
                    db,
                    key,
                    group,
                    start,
                    mkstream,
                    entries_read,
                }
            } else {
                GroupTx::SetId {
                    db,
                    key,
                    group,
                    start,
                    entries_read,
                }
            }
        }
        "xgroup|destroy" => GroupTx::Destroy {
            db,
            key: key.clone(),
            group: group.clone(),
        },
        "xgroup|createconsumer" => GroupTx::CreateConsumer {
            db,
            key: key.clone(),
            group: group.clone(),
            consumer: a[4].clone(),
        },
        _ => GroupTx::DeleteConsumer {
            db,
            key: key.clone(),
            group: group.clone(),
            consumer: a[4].clone(),
        },
    };
    Ok(Plan::op(
        ctx,
        TxOp::Group(op),
        move |answer, _| match answer {
            Ok(TxAnswer::Done) => Reply::Ok,
            Ok(TxAnswer::Bool(b)) => Reply::Int(i64::from(b)),
            Ok(TxAnswer::Count(n)) => Reply::Int(n as i64),
            Ok(other) => super::unexpected(other),
            Err(e) => engine_error(&e, "xgroup", &key, &group),
        },
    ))
}

/// XREADGROUP's streams and where each reads from; with `check`, per stream in order the key
/// and the group must exist before its ID is read (as Redis checks them).
fn read_group_streams(
    ctx: &Ctx<'_>,
    parsed: &ReadArgs,
    group: &Bytes,
    check: bool,
) -> Result<Vec<(Bytes, ReadFrom)>> {
    let mut streams = Vec::with_capacity(parsed.keys.len());
    for (key, id) in parsed.keys.iter().zip(&parsed.ids) {
        if check && !stream_and_group(ctx, key, group)?.1 {
            return Err(Reply::Error(format!(
                "NOGROUP No such key '{}' or consumer group '{}' in XREADGROUP with GROUP option",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(group)
            )));
        }
        let from = match id.as_ref() {
            b"$" => {
                return Err(Reply::err(
                    "The $ ID is meaningless in the context of XREADGROUP: you want to read the history of this consumer by specifying a proper ID, or use the > ID to get new messages. The $ ID would just return an empty result set.",
                ));
            }
            b">" => ReadFrom::New,
            other => ReadFrom::Pending(args::stream_id(other, IdForm::Strict, 0)?),
        };
        streams.push((key.clone(), from));
    }
    Ok(streams)
}

/// A group read's reply: per stream as XREAD's, `[id, nil]` for pending entries whose message
/// is gone; none served is nil.
fn served_reply(protocol: Protocol, served: Vec<(Bytes, Vec<GroupEntry>)>) -> Reply {
    if served.is_empty() {
        return Reply::NilArray;
    }
    let served = served
        .into_iter()
        .map(|(k, e)| (k, claimed_reply(&e, false)))
        .collect();
    per_stream(protocol, served)
}

/// XREADGROUP inside a transaction: one read, never blocking.
pub fn plan_xreadgroup(ctx: &Ctx<'_>, in_tx: bool) -> Result<Plan> {
    let parsed: ReadArgs = parse_read(ctx, true)?;
    let Some((group, consumer)) = parsed.group.clone() else {
        return Err(Reply::err("Missing GROUP option for XREADGROUP"));
    };
    let streams = read_group_streams(ctx, &parsed, &group, !in_tx)?;
    let key = streams.first().map(|s| s.0.clone()).unwrap_or_default();
    let op = GroupTx::Read {
        db: ctx.conn.db,
        group: group.clone(),
        consumer,
        streams,
        count: parsed.count as u64,
        noack: parsed.noack,
    };
    Ok(Plan::op(
        ctx,
        TxOp::Group(op),
        move |answer, protocol| match answer {
            Ok(TxAnswer::Streams(served)) => served_reply(protocol, served),
            Ok(other) => super::unexpected(other),
            Err(e) => engine_error(&e, "xreadgroup", &key, &group),
        },
    ))
}

pub async fn xreadgroup(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let parsed: ReadArgs = parse_read(ctx, true)?;
    let Some((group, consumer)) = parsed.group.clone() else {
        return Err(Reply::err("Missing GROUP option for XREADGROUP"));
    };
    let db = ctx.conn.db;
    let streams = read_group_streams(ctx, &parsed, &group, true)?;
    let history = streams.iter().any(|(_, f)| *f != ReadFrom::New);
    let deadline = parsed
        .block
        .filter(|ms| *ms > 0)
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let topics: Vec<TopicKey> = parsed.keys.iter().map(|k| (db, k.clone())).collect();
    let client = ctx.client()?.clone();
    let mut count = parsed.count as u64;
    // Blocked readers read in the order they blocked (Redis serves them FIFO per stream): each
    // waits for its turn, reads, and passes the turn on as it returns or waits again.
    let mut order: Option<u64> = None;
    let mut turn: Option<Turn> = None;
    let mut position;
    loop {
        let worth_reading = match &turn {
            None => {
                position = ctx.shared.engine.applied_index();
                history || parsed.block.is_none() || has_new(&client, db, &streams, &group)
            }
            // Woken in line: read only as the first in line, and not before a reader ahead
            // that an entry just applied is about to wake (it joins the line ahead of this
            // one). Checked in this order, the line's change awaited from before the checks,
            // so neither an entry nor a reader slips between them.
            Some(t) => loop {
                let changed = t.changed();
                let applied = ctx.shared.engine.applied_index();
                if !has_new(&client, db, &streams, &group) {
                    position = applied;
                    break false;
                }
                if ctx.shared.engine.earlier_waiting(t) || !t.is_first() {
                    // The line's change is awaited, but never past the BLOCK and never long
                    // without looking again: a wake-up lost in the line must not hold this
                    // reader (CI once saw three readers wait for good past BLOCK 1000, when a
                    // reader woken as it found its missed entry got two turns on one place).
                    let Some(left) = super::read::remaining(deadline) else {
                        return Ok(Reply::NilArray);
                    };
                    let _ = tokio::time::timeout(left.min(LINE_RECHECK), changed).await;
                    continue;
                }
                position = applied;
                break true;
            },
        };
        if worth_reading {
            let read = client.read_group(
                db,
                group.clone(),
                consumer.clone(),
                streams.clone(),
                count,
                parsed.noack,
            );
            // The next reader's turn comes once this read is applied: it then sees what this
            // one took, and does not log a read that would find nothing.
            let served = read.await.map_err(|e| {
                let key = streams.first().map(|s| s.0.clone()).unwrap_or_default();
                ctx.engine_error(&e, &key, &group)
            })?;
            if !served.is_empty() {
                return Ok(served_reply(ctx.conn.protocol, served));
            }
        }
        if parsed.block.is_none() || history {
            return Ok(Reply::NilArray);
        }
        let Some(remaining) = super::read::remaining(deadline) else {
            return Ok(Reply::NilArray);
        };
        if count == 0 {
            count = super::read::BLOCKED_DEFAULT_COUNT as u64;
        }
        let order = *order.get_or_insert_with(|| ctx.shared.engine.wait_order());
        let woke = {
            let _blocked = Blocked::new(ctx);
            client
                .wait_in_turn(&topics, position, remaining, order, turn.take())
                .await
        };
        match woke {
            Ok((Wake::Timeout, _)) if deadline.is_some() => return Ok(Reply::NilArray),
            Ok((_, t)) => turn = t,
            Err(e) => return Err(ctx.engine_error(&e, b"", &group)),
        }
        // The stream or the group may have gone while this client waited (Redis 7.0 answers
        // these when it unblocks the client).
        for (key, _) in &streams {
            match stream_and_group(ctx, key, &group)? {
                (false, _) => {
                    return Err(Reply::Error(
                        "UNBLOCKED the stream key no longer exists".into(),
                    ));
                }
                (true, false) => {
                    return Err(Reply::Error(
                        "NOGROUP the consumer group this client was blocked on no longer exists"
                            .into(),
                    ));
                }
                (true, true) => {}
            }
        }
    }
}

/// Whether any `>` stream has entries after its group's last delivered ID.
fn has_new(client: &Client, db: u8, streams: &[(Bytes, ReadFrom)], group: &[u8]) -> bool {
    streams
        .iter()
        .any(|(key, _)| client.group_has_new(db, key, group))
}

/// XACK key group id [id ...]: a missing key or group answers 0 before the IDs are read.
pub fn plan_xack(ctx: &Ctx<'_>, in_tx: bool) -> Result<Plan> {
    let (key, group) = (ctx.args[1].clone(), ctx.args[2].clone());
    if !in_tx && !stream_and_group(ctx, &key, &group)?.1 {
        return Ok(Plan::Answered(Reply::Int(0)));
    }
    let ids = ctx.args[3..]
        .iter()
        .map(|a| args::stream_id(a, IdForm::Strict, 0))
        .collect::<Result<Vec<_>>>()?;
    let op = GroupTx::Ack {
        db: ctx.conn.db,
        key: key.clone(),
        group: group.clone(),
        ids,
    };
    Ok(Plan::op(
        ctx,
        TxOp::Group(op),
        move |answer, _| match answer {
            Ok(TxAnswer::Count(n)) => Reply::Int(n as i64),
            Ok(other) => super::unexpected(other),
            Err(e) => engine_error(&e, "xack", &key, &group),
        },
    ))
}

/// XPENDING key group [[IDLE min-idle] start end count [consumer]].
pub fn xpending(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let a = &ctx.args;
    if a.len() != 3 && !(6..=9).contains(&a.len()) {
        return Err(args::syntax_error());
    }
    let (key, group) = (a[1].clone(), a[2].clone());
    let mut query = None;
    if a.len() >= 6 {
        let mut at = 3;
        let mut min_idle = None;
        if is(&a[3], "idle") {
            let idle = args::int(&a[4])?;
            if a.len() < 8 {
                return Err(args::syntax_error());
            }
            min_idle = Some(idle.max(0) as u64);
            at = 5;
        }
        let count = args::int(&a[at + 2])?.max(0) as u64;
        let (start, start_ex) = args::range_bound(&a[at], 0)?;
        let start = if start_ex {
            args::next_id(start).ok_or_else(|| Reply::err("invalid start ID for the interval"))?
        } else {
            start
        };
        let (end, end_ex) = args::range_bound(&a[at + 1], u64::MAX)?;
        let end = if end_ex {
            args::prev_id(end).ok_or_else(|| Reply::err("invalid end ID for the interval"))?
        } else {
            end
        };
        query = Some(PendingQuery {
            start,
            end,
            count,
            consumer: a.get(at + 3).cloned(),
            min_idle_ms: min_idle,
        });
    }
    if !stream_and_group(ctx, &key, &group)?.1 {
        return Err(no_key_or_group(&key, &group));
    }
    let client = ctx.client()?;
    let db = ctx.conn.db;
    match query {
        None => {
            let s = client
                .pending_summary(db, &key, &group)
                .map_err(|e| ctx.engine_error(&e, &key, &group))?;
            let (first, last) = match s.range {
                Some((a, b)) => (id_bulk(a), id_bulk(b)),
                None => (Reply::Nil, Reply::Nil),
            };
            let consumers = if s.consumers.is_empty() {
                Reply::NilArray
            } else {
                Reply::Array(
                    s.consumers
                        .into_iter()
                        .map(|(name, n)| {
                            Reply::Array(vec![Reply::Bulk(name), Reply::bulk(n.to_string())])
                        })
                        .collect(),
                )
            };
            Ok(Reply::Array(vec![
                Reply::Int(s.count as i64),
                first,
                last,
                consumers,
            ]))
        }
        Some(q) => {
            if q.count == 0 {
                return Ok(Reply::Array(Vec::new()));
            }
            let list = client
                .pending(db, &key, &group, &q)
                .map_err(|e| ctx.engine_error(&e, &key, &group))?;
            Ok(Reply::Array(
                list.into_iter()
                    .map(|p| {
                        Reply::Array(vec![
                            id_bulk(p.id),
                            Reply::Bulk(p.consumer),
                            Reply::Int(p.idle_ms as i64),
                            Reply::Int(p.count as i64),
                        ])
                    })
                    .collect(),
            ))
        }
    }
}

/// XCLAIM key group consumer min-idle-time id [id ...] [IDLE ms] [TIME ms] [RETRYCOUNT n]
/// [FORCE] [JUSTID] [LASTID id].
pub fn plan_xclaim(ctx: &Ctx<'_>, in_tx: bool) -> Result<Plan> {
    let a = ctx.args.clone();
    let (key, group) = (a[1].clone(), a[2].clone());
    if !in_tx && !stream_and_group(ctx, &key, &group)?.1 {
        return Err(no_key_or_group(&key, &group));
    }
    let min_idle = args::parse_i64(&a[4])
        .ok_or_else(|| Reply::err("Invalid min-idle-time argument for XCLAIM"))?
        .max(0) as u64;
    let mut ids = Vec::new();
    let mut i = 5;
    while i < a.len() {
        match args::stream_id(&a[i], IdForm::Strict, 0) {
            Ok(id) => ids.push(id),
            Err(_) => break,
        }
        i += 1;
    }
    let mut claim = Claim {
        consumer: a[3].clone(),
        min_idle_ms: min_idle,
        ids,
        delivered: None,
        retry_count: None,
        force: false,
        justid: false,
        last_id: None,
    };
    let unrecognized = |t: &[u8]| {
        Reply::err(format!(
            "Unrecognized XCLAIM option '{}'",
            crate::command::shown(t)
        ))
    };
    while i < a.len() {
        let more = a.len() - i - 1;
        let opt = &a[i];
        if is(opt, "force") {
            claim.force = true;
        } else if is(opt, "justid") {
            claim.justid = true;
        } else if is(opt, "idle") && more > 0 {
            i += 1;
            let v = args::parse_i64(&a[i])
                .ok_or_else(|| Reply::err("Invalid IDLE option argument for XCLAIM"))?;
            claim.delivered = Some(ClaimTime::Idle(v.max(0) as u64));
        } else if is(opt, "time") && more > 0 {
            i += 1;
            let v = args::parse_i64(&a[i])
                .ok_or_else(|| Reply::err("Invalid TIME option argument for XCLAIM"))?;
            claim.delivered = Some(if v < 0 {
                ClaimTime::Idle(0)
            } else {
                ClaimTime::At(v as u64)
            });
        } else if is(opt, "retrycount") && more > 0 {
            i += 1;
            let v = args::parse_i64(&a[i])
                .ok_or_else(|| Reply::err("Invalid RETRYCOUNT option argument for XCLAIM"))?;
            claim.retry_count = (v >= 0).then_some(v as u64);
        } else if is(opt, "lastid") && more > 0 {
            i += 1;
            claim.last_id = Some(args::stream_id(&a[i], IdForm::Strict, 0)?);
        } else {
            return Err(unrecognized(opt));
        }
        i += 1;
    }
    let justid = claim.justid;
    let op = GroupTx::Claim {
        db: ctx.conn.db,
        key: key.clone(),
        group: group.clone(),
        claim,
    };
    Ok(Plan::op(
        ctx,
        TxOp::Group(op),
        move |answer, _| match answer {
            Ok(TxAnswer::Entries(claimed)) => claimed_reply(&claimed, justid),
            Ok(other) => super::unexpected(other),
            Err(e) => engine_error(&e, "xclaim", &key, &group),
        },
    ))
}

/// XAUTOCLAIM key group consumer min-idle-time start [COUNT n] [JUSTID].
pub fn plan_xautoclaim(ctx: &Ctx<'_>, in_tx: bool) -> Result<Plan> {
    let a = ctx.args.clone();
    let (key, group) = (a[1].clone(), a[2].clone());
    let min_idle = args::parse_i64(&a[4])
        .ok_or_else(|| Reply::err("Invalid min-idle-time argument for XAUTOCLAIM"))?
        .max(0) as u64;
    let (start, start_ex) = args::range_bound(&a[5], 0)?;
    let start = if start_ex {
        args::next_id(start).ok_or_else(|| Reply::err("invalid start ID for the interval"))?
    } else {
        start
    };
    let mut count = 100u64;
    let mut justid = false;
    let mut i = 6;
    while i < a.len() {
        if is(&a[i], "count") && i + 1 < a.len() {
            count = args::parse_i64(&a[i + 1])
                .filter(|n| *n >= 1 && (*n as u64) <= MAX_AUTOCLAIM_COUNT)
                .ok_or_else(|| Reply::err("COUNT must be > 0"))? as u64;
            i += 2;
        } else if is(&a[i], "justid") {
            justid = true;
            i += 1;
        } else {
            return Err(args::syntax_error());
        }
    }
    if !in_tx && !stream_and_group(ctx, &key, &group)?.1 {
        return Err(no_key_or_group(&key, &group));
    }
    let op = GroupTx::AutoClaim {
        db: ctx.conn.db,
        key: key.clone(),
        group: group.clone(),
        consumer: a[3].clone(),
        min_idle_ms: min_idle,
        start,
        count,
        justid,
    };
    Ok(Plan::op(
        ctx,
        TxOp::Group(op),
        move |answer, _| match answer {
            Ok(TxAnswer::AutoClaimed(got)) => Reply::Array(vec![
                id_bulk(got.next),
                claimed_reply(&got.entries, justid),
                Reply::Array(got.deleted.into_iter().map(id_bulk).collect()),
            ]),
            Ok(other) => super::unexpected(other),
            Err(e) => engine_error(&e, "xautoclaim", &key, &group),
        },
    ))
}

fn nil_or_int(v: Option<u64>) -> Reply {
    v.map_or(Reply::Nil, |n| Reply::Int(n as i64))
}

pub fn xinfo_groups(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let key = &ctx.args[2];
    let groups = ctx
        .client()?
        .groups_info(ctx.conn.db, key)
        .map_err(|e| ctx.engine_error(&e, key, b""))?
        .ok_or_else(|| Reply::err("no such key"))?;
    Ok(Reply::Array(
        groups
            .into_iter()
            .map(|g| {
                Reply::Map(vec![
                    Reply::field("name", Reply::Bulk(g.name)),
                    Reply::field("consumers", Reply::Int(g.consumers as i64)),
                    Reply::field("pending", Reply::Int(g.pending as i64)),
                    Reply::field("last-delivered-id", id_bulk(g.last_delivered_id)),
                    Reply::field("entries-read", nil_or_int(g.entries_read)),
                    Reply::field("lag", g.lag.map_or(Reply::Nil, Reply::Int)),
                ])
            })
            .collect(),
    ))
}

pub fn xinfo_consumers(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let (key, group) = (&ctx.args[2], &ctx.args[3]);
    let consumers = ctx
        .client()?
        .consumers_info(ctx.conn.db, key, group)
        .map_err(|e| ctx.engine_error(&e, key, group))?;
    let Some(consumers) = consumers else {
        let (exists, _) = stream_and_group(ctx, key, group)?;
        return Err(if exists {
            no_group_for_key(key, group)
        } else {
            Reply::err("no such key")
        });
    };
    Ok(Reply::Array(
        consumers
            .into_iter()
            .map(|c| {
                Reply::Map(vec![
                    Reply::field("name", Reply::Bulk(c.name)),
                    Reply::field("pending", Reply::Int(c.pending as i64)),
                    Reply::field("idle", Reply::Int(c.idle_ms as i64)),
                ])
            })
            .collect(),
    ))
}

/// The `groups` part of XINFO STREAM FULL: each group with its pending entries and consumers,
/// at most `count` pending entries each (0: all). Delivery and seen times are absolute (ms).
pub fn full_groups(ctx: &Ctx<'_>, key: &[u8], count: u64) -> Result<Reply> {
    let client = ctx.client()?;
    let db = ctx.conn.db;
    let now = crate::server::now_ms();
    let groups = client
        .groups_info(db, key)
        .map_err(|e| ctx.engine_error(&e, key, b""))?
        .unwrap_or_default();
    let limit = if count == 0 { u64::MAX } else { count };
    let mut out = Vec::new();
    for g in groups {
        let all = |consumer: Option<Bytes>| PendingQuery {
            start: StreamId::new(0, 0),
            end: StreamId::new(u64::MAX, u64::MAX),
            count: limit,
            consumer,
            min_idle_ms: None,
        };
        let pending = client
            .pending(db, key, &g.name, &all(None))
            .map_err(|e| ctx.engine_error(&e, key, &g.name))?;
        let consumers = client
            .consumers_info(db, key, &g.name)
            .map_err(|e| ctx.engine_error(&e, key, &g.name))?
            .unwrap_or_default();
        let mut consumer_replies = Vec::new();
        for c in consumers {
            let own = client
                .pending(db, key, &g.name, &all(Some(c.name.clone())))
                .map_err(|e| ctx.engine_error(&e, key, &g.name))?;
            consumer_replies.push(Reply::Map(vec![
                Reply::field("name", Reply::Bulk(c.name)),
                Reply::field(
                    "seen-time",
                    Reply::Int(now.saturating_sub(c.idle_ms) as i64),
                ),
                Reply::field("pel-count", Reply::Int(c.pending as i64)),
                Reply::field(
                    "pending",
                    Reply::Array(
                        own.into_iter()
                            .map(|p| {
                                Reply::Array(vec![
                                    id_bulk(p.id),
                                    Reply::Int(now.saturating_sub(p.idle_ms) as i64),
                                    Reply::Int(p.count as i64),
                                ])
                            })
                            .collect(),
                    ),
                ),
            ]));
        }
        out.push(Reply::Map(vec![
            Reply::field("name", Reply::Bulk(g.name)),
            Reply::field("last-delivered-id", id_bulk(g.last_delivered_id)),
            Reply::field("entries-read", nil_or_int(g.entries_read)),
            Reply::field("lag", g.lag.map_or(Reply::Nil, Reply::Int)),
            Reply::field("pel-count", Reply::Int(g.pending as i64)),
            Reply::field(
                "pending",
                Reply::Array(
                    pending
                        .into_iter()
                        .map(|p| {
                            Reply::Array(vec![
                                id_bulk(p.id),
                                Reply::Bulk(p.consumer),
                                Reply::Int(now.saturating_sub(p.idle_ms) as i64),
                                Reply::Int(p.count as i64),
                            ])
                        })
                        .collect(),
                ),
            ),
            Reply::field("consumers", Reply::Array(consumer_replies)),
        ]));
    }
    Ok(Reply::Array(out))
}
