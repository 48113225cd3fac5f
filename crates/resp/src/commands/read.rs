//! XREAD (and the option parsing XREADGROUP shares): reading several streams after given IDs, waiting for new entries with BLOCK, as
//! Redis 7.0's `xreadCommand` parses and answers it. The wait is the engine's: a commit wakes
//! exactly the readers of the streams it touched.

use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use manifold_core::engine::TopicKey;
use manifold_core::engine::Wake;
use manifold_core::store::StreamId;

use super::Ctx;
use super::streams::entry_reply;
use crate::args::{self, IdForm, is};
use crate::reply::{Protocol, Reply};

type Result<T> = std::result::Result<T, Reply>;

/// What a blocked XREAD without COUNT returns at most per stream once woken
/// (`XREAD_BLOCKED_DEFAULT_COUNT`).
pub(super) const BLOCKED_DEFAULT_COUNT: usize = 1000;

/// The options of XREAD and XREADGROUP.
pub(super) struct ReadArgs {
    /// COUNT: at most this many entries per stream (0: no limit).
    pub count: usize,
    /// BLOCK in milliseconds (0: forever); `None`: do not block.
    pub block: Option<u64>,
    /// The stream keys.
    pub keys: Vec<Bytes>,
    /// The ID argument of each key.
    pub ids: Vec<Bytes>,
    /// XREADGROUP: GROUP group consumer.
    pub group: Option<(Bytes, Bytes)>,
    /// XREADGROUP: NOACK.
    pub noack: bool,
}

/// `xreadCommand`'s option loop, for XREAD or (`group_read`) XREADGROUP.
pub(super) fn parse_read(ctx: &Ctx<'_>, group_read: bool) -> Result<ReadArgs> {
    let a = &ctx.args;
    let mut count = 0usize;
    let mut block = None;
    let mut streams = None;
    let mut group = None;
    let mut noack = false;
    let mut i = 1;
    while i < a.len() {
        let more = a.len() - i - 1;
        let opt = &a[i];
        if is(opt, "block") && more > 0 {
            let t = args::parse_i64(&a[i + 1])
                .ok_or_else(|| Reply::err("timeout is not an integer or out of range"))?;
            if t < 0 {
                return Err(Reply::err("timeout is negative"));
            }
            block = Some(t as u64);
            i += 2;
        } else if is(opt, "count") && more > 0 {
            count = usize::try_from(args::int(&a[i + 1])?.max(0)).unwrap_or(usize::MAX);
            i += 2;
        } else if is(opt, "streams") && more > 0 {
            let n = a.len() - (i + 1);
            if !n.is_multiple_of(2) {
                return Err(Reply::err(
                    "Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified.",
                ));
            }
            streams = Some(i + 1);
            break;
        } else if is(opt, "group") && more >= 2 {
            if !group_read {
                return Err(Reply::err(
                    "The GROUP option is only supported by XREADGROUP. You called XREAD instead.",
                ));
            }
            group = Some((a[i + 1].clone(), a[i + 2].clone()));
            i += 3;
        } else if is(opt, "noack") {
            if !group_read {
                return Err(Reply::err(
                    "The NOACK option is only supported by XREADGROUP. You called XREAD instead.",
                ));
            }
            noack = true;
            i += 1;
        } else {
            return Err(args::syntax_error());
        }
    }
    let Some(at) = streams else {
        return Err(args::syntax_error());
    };
    if group_read && group.is_none() {
        return Err(Reply::err("Missing GROUP option for XREADGROUP"));
    }
    let n = (a.len() - at) / 2;
    Ok(ReadArgs {
        count,
        // Inside MULTI/EXEC nothing blocks (Redis answers as if no BLOCK was given).
        block: block.filter(|_| !ctx.conn.in_exec),
        keys: a[at..at + n].to_vec(),
        ids: a[at + n..].to_vec(),
        group,
        noack,
    })
}

pub async fn xread(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let parsed = parse_read(ctx, false)?;
    let db = ctx.conn.db;
    let client = ctx.client()?.clone();
    // The ID each read starts after: `$` is the stream's last ID now (0-0 if it is missing).
    let mut after = Vec::with_capacity(parsed.keys.len());
    for (key, id) in parsed.keys.iter().zip(&parsed.ids) {
        if id.as_ref() == b"$" {
            let last = client
                .stream_info(db, key)
                .map_err(|e| ctx.engine_error(&e, key, b""))?
                .map_or(StreamId::new(0, 0), |i| i.last_generated_id);
            after.push(last);
        } else if id.as_ref() == b">" {
            return Err(Reply::err(
                "The > ID can be specified only when calling XREADGROUP using the GROUP <group> <consumer> option.",
            ));
        } else {
            after.push(args::stream_id(id, IdForm::Strict, 0)?);
        }
    }
    let deadline = parsed
        .block
        .filter(|ms| *ms > 0)
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let topics: Vec<TopicKey> = parsed.keys.iter().map(|k| (db, k.clone())).collect();
    let mut count = parsed.count;
    loop {
        let position = ctx.shared.engine.applied_index();
        let mut found = Vec::new();
        for (key, gt) in parsed.keys.iter().zip(&after) {
            let Some(start) = args::next_id(*gt) else {
                continue;
            };
            let messages = client
                .read_range(
                    db,
                    key,
                    Bound::Included(start),
                    Bound::Unbounded,
                    (count > 0).then_some(count),
                    false,
                )
                .map_err(|e| ctx.engine_error(&e, key, b""))?;
            if !messages.is_empty() {
                found.push((key.clone(), messages));
            }
        }
        if !found.is_empty() {
            let found = found
                .into_iter()
                .map(|(k, m)| (k, Reply::Array(m.iter().map(entry_reply).collect())))
                .collect();
            return Ok(per_stream(ctx.conn.protocol, found));
        }
        if parsed.block.is_none() {
            return Ok(Reply::NilArray);
        }
        let Some(remaining) = remaining(deadline) else {
            return Ok(Reply::NilArray);
        };
        // Served after a wait without COUNT: at most 1000 entries per stream, as Redis.
        if count == 0 {
            count = BLOCKED_DEFAULT_COUNT;
        }
        let woke = {
            let _blocked = Blocked::new(ctx);
            client.wait(&topics, position, remaining).await
        };
        match woke {
            Ok(Wake::Timeout) if deadline.is_some() => return Ok(Reply::NilArray),
            Ok(_) => {}
            Err(e) => return Err(ctx.engine_error(&e, b"", b"")),
        }
    }
}

/// How long a blocked read may still wait: until `deadline` (`None`: BLOCK 0, for ever, in
/// waits of a day), `None` once it has passed.
pub(super) fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    match deadline {
        Some(d) => d
            .checked_duration_since(Instant::now())
            .filter(|r| !r.is_zero()),
        None => Some(Duration::from_secs(24 * 3600)),
    }
}

/// Streams with their entries (each already a reply): RESP2 an array of `[key, entries]`,
/// RESP3 a map — XREAD's and XREADGROUP's shape.
pub fn per_stream(protocol: Protocol, streams: Vec<(Bytes, Reply)>) -> Reply {
    match protocol {
        Protocol::Resp3 => Reply::Map(
            streams
                .into_iter()
                .map(|(k, e)| (Reply::Bulk(k), e))
                .collect(),
        ),
        Protocol::Resp2 => Reply::Array(
            streams
                .into_iter()
                .map(|(k, e)| Reply::Array(vec![Reply::Bulk(k), e]))
                .collect(),
        ),
    }
}

/// A client counted as blocked (INFO `blocked_clients`, CLIENT LIST flag `b`) while this
/// lives, even if the wait is cut short by the client leaving.
pub(super) struct Blocked<'a> {
    entry: std::sync::Arc<crate::server::ClientEntry>,
    shared: &'a crate::server::Shared,
}

impl<'a> Blocked<'a> {
    pub(super) fn new(ctx: &Ctx<'a>) -> Self {
        ctx.conn.entry.blocked.store(true, Ordering::Relaxed);
        ctx.shared
            .stats
            .blocked_clients
            .fetch_add(1, Ordering::Relaxed);
        Blocked {
            entry: ctx.conn.entry.clone(),
            shared: ctx.shared,
        }
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.entry.blocked.store(false, Ordering::Relaxed);
        self.shared
            .stats
            .blocked_clients
            .fetch_sub(1, Ordering::Relaxed);
    }
}
