//! Keyspace commands over streams (the only type this server stores): DBSIZE, DEL/UNLINK,
//! EXISTS, TYPE, KEYS, SCAN, FLUSHDB/FLUSHALL. A key is a stream of the SELECTed database.

use manifold_core::engine::{TxAnswer, TxOp};

use super::{Ctx, Plan};
use crate::args::{self, is};
use crate::reply::Reply;

type Result<T> = std::result::Result<T, Reply>;

pub fn dbsize(ctx: &mut Ctx<'_>) -> Result<Reply> {
    Ok(Reply::Int(
        ctx.shared.engine.topics(ctx.conn.db, b"*").len() as i64,
    ))
}

pub fn plan_del(ctx: &Ctx<'_>) -> Result<Plan> {
    let op = TxOp::Drop {
        db: ctx.conn.db,
        keys: ctx.args[1..].to_vec(),
    };
    Ok(Plan::op(ctx, op, |a, _| match a {
        Ok(TxAnswer::Count(n)) => Reply::Int(n as i64),
        Ok(other) => super::unexpected(other),
        Err(e) => crate::errors::engine_error(&e, "del", b"", b""),
    }))
}

pub fn exists(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let client = ctx.client()?;
    let mut n = 0;
    for key in &ctx.args[1..] {
        if client
            .exists(ctx.conn.db, key)
            .map_err(|e| ctx.engine_error(&e, key, b""))?
        {
            n += 1;
        }
    }
    Ok(Reply::Int(n))
}

pub fn key_type(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let key = &ctx.args[1];
    let exists = ctx
        .client()?
        .exists(ctx.conn.db, key)
        .map_err(|e| ctx.engine_error(&e, key, b""))?;
    Ok(Reply::simple(if exists { "stream" } else { "none" }))
}

pub fn keys(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let keys = ctx.client()?.topics(ctx.conn.db, &ctx.args[1]);
    Ok(Reply::Array(keys.into_iter().map(Reply::Bulk).collect()))
}

/// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]. The cursor is a topic id (plus
/// one), not Redis's reverse-binary hash-table cursor; the guarantees are Redis's.
pub fn scan(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let cursor = scan_cursor(&ctx.args[1]).ok_or_else(|| Reply::err("invalid cursor"))?;
    let mut pattern: &[u8] = b"*";
    let mut count = 10usize;
    let mut streams = true;
    let mut i = 2;
    while i < ctx.args.len() {
        let Some(value) = ctx.args.get(i + 1) else {
            return Err(args::syntax_error());
        };
        if is(&ctx.args[i], "match") {
            pattern = value;
        } else if is(&ctx.args[i], "count") {
            let n = args::int(value)?;
            if n < 1 {
                return Err(args::syntax_error());
            }
            count = usize::try_from(n).unwrap_or(usize::MAX);
        } else if is(&ctx.args[i], "type") {
            streams = is(value, "stream");
        } else {
            return Err(args::syntax_error());
        }
        i += 2;
    }
    let (next, keys) = ctx.client()?.scan(ctx.conn.db, cursor, count, pattern);
    let keys = if streams { keys } else { Vec::new() };
    Ok(Reply::Array(vec![
        Reply::bulk(next.to_string()),
        Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
    ]))
}

/// FLUSHDB / FLUSHALL [ASYNC|SYNC]'s one option.
fn flush_args(ctx: &Ctx<'_>) -> Result<()> {
    match ctx.args.len() {
        1 => Ok(()),
        2 if is(&ctx.args[1], "async") || is(&ctx.args[1], "sync") => Ok(()),
        _ => Err(args::syntax_error()),
    }
}

/// FLUSHDB / FLUSHALL inside a transaction: every stream there at that point.
pub fn plan_flush(ctx: &Ctx<'_>) -> Result<Plan> {
    flush_args(ctx)?;
    let db = (ctx.spec.name == "flushdb").then_some(ctx.conn.db);
    Ok(Plan::op(ctx, TxOp::Flush { db }, |a, _| match a {
        Ok(_) => Reply::Ok,
        Err(e) => crate::errors::engine_error(&e, "flushdb", b"", b""),
    }))
}

/// FLUSHDB / FLUSHALL [ASYNC|SYNC]: every stream of the database (of all of them) dropped, one
/// log entry per database.
pub async fn flush(ctx: &mut Ctx<'_>) -> Result<Reply> {
    flush_args(ctx)?;
    let dbs = if ctx.spec.name == "flushall" {
        0..16
    } else {
        ctx.conn.db..ctx.conn.db + 1
    };
    let client = ctx.client()?;
    for db in dbs {
        let keys = ctx.shared.engine.topics(db, b"*");
        if !keys.is_empty() {
            client
                .drop_topics(db, keys)
                .await
                .map_err(|e| ctx.engine_error(&e, b"", b""))?;
        }
    }
    Ok(Reply::Ok)
}

/// A SCAN cursor as `strtoul` reads it for Redis: empty is 0, an optional sign, digits, no
/// whitespace or trailing bytes; a `-` negates (wrapping), as C does.
fn scan_cursor(arg: &[u8]) -> Option<u64> {
    if arg.is_empty() {
        return Some(0);
    }
    let (negative, digits) = match arg.split_first() {
        Some((b'-', d)) => (true, d),
        Some((b'+', d)) => (false, d),
        _ => (false, arg),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(if negative { v.wrapping_neg() } else { v })
}
