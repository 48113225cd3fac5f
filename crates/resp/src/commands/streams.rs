//! Stream commands that write or read one stream: XADD, XRANGE/XREVRANGE, XLEN, XDEL, XTRIM
//! and XINFO STREAM, with Redis 7.0's argument rules (`streamParseAddOrTrimArgsOrReply`),
//! reply shapes and error texts.

use std::ops::Bound;

use bytes::Bytes;
use manifold_core::engine::{
    APPROX_TRIM_LIMIT, AppendRequest, IdSpec, Message, Result as EngineResult, Trim, TrimTo,
    TxAnswer, TxOp,
};
use manifold_core::store::StreamId;

use super::connection::help;
use super::{Ctx, Plan};
use crate::args::{self, AddId, IdForm, id_bulk, is};
use crate::command;
use crate::connection::Conn;
use crate::reply::Reply;

type Result<T> = std::result::Result<T, Reply>;

/// One entry as Redis replies it: `[id, [field, value, ...]]`.
pub fn entry_reply(m: &Message) -> Reply {
    Reply::Array(vec![
        id_bulk(m.id),
        Reply::Array(
            m.fields
                .iter()
                .flat_map(|(f, v)| [Reply::Bulk(f.clone()), Reply::Bulk(v.clone())])
                .collect(),
        ),
    ])
}

/// What XADD and XTRIM share: the trim options, NOMKSTREAM (XADD) and, for XADD, where its ID
/// argument is.
struct AddOrTrim {
    trim: Option<Trim>,
    nomkstream: bool,
    /// XADD: the ID and the index of its argument.
    id: Option<(AddId, usize)>,
}

/// `streamParseAddOrTrimArgsOrReply`: options from argument 2 on; for XADD the first
/// argument that is no option is the ID. `default_limit`: the LIMIT of a `~` without one.
fn parse_add_or_trim(a: &[Bytes], xadd: bool, default_limit: u64) -> Result<AddOrTrim> {
    let mut max_len: Option<u64> = None;
    let mut min_id: Option<StreamId> = None;
    let mut approx = false;
    let mut limit: Option<u64> = None;
    let mut nomkstream = false;
    let mut id = None;
    let mut i = 2;
    while i < a.len() {
        let more = a.len() - 1 - i;
        let opt = &a[i];
        if xadd && opt.as_ref() == b"*" {
            id = Some((AddId::Auto, i));
            break;
        } else if (is(opt, "maxlen") || is(opt, "minid")) && more > 0 {
            if max_len.is_some() || min_id.is_some() {
                return Err(Reply::err(
                    "syntax error, MAXLEN and MINID options at the same time are not compatible",
                ));
            }
            approx = false;
            let next = &a[i + 1];
            if more >= 2 && next.as_ref() == b"~" {
                approx = true;
                i += 1;
            } else if more >= 2 && next.as_ref() == b"=" {
                i += 1;
            }
            if is(opt, "maxlen") {
                let n = args::int(&a[i + 1])?;
                if n < 0 {
                    return Err(Reply::err("The MAXLEN argument must be >= 0."));
                }
                max_len = Some(n as u64);
            } else {
                min_id = Some(args::stream_id(&a[i + 1], IdForm::Strict, 0)?);
            }
            i += 1;
        } else if is(opt, "limit") && more > 0 {
            let n = args::int(&a[i + 1])?;
            if n < 0 {
                return Err(Reply::err("The LIMIT argument must be >= 0."));
            }
            limit = Some(n as u64);
            i += 1;
        } else if xadd && is(opt, "nomkstream") {
            nomkstream = true;
        } else if xadd {
            id = Some((args::add_id(opt)?, i));
            break;
        } else {
            return Err(args::syntax_error());
        }
        i += 1;
    }
    let strategy = match (max_len, min_id) {
        (Some(n), _) => Some(TrimTo::MaxLen(n)),
        (_, Some(id)) => Some(TrimTo::MinId(id)),
        _ => None,
    };
    if limit.is_some_and(|l| l > 0) && strategy.is_none() {
        return Err(Reply::err(
            "syntax error, LIMIT cannot be used without specifying a trimming strategy",
        ));
    }
    if !xadd && strategy.is_none() {
        return Err(Reply::err(
            "syntax error, XTRIM must be called with a trimming strategy",
        ));
    }
    if limit.is_some() && !approx {
        return Err(Reply::err(
            "syntax error, LIMIT cannot be used without the special ~ option",
        ));
    }
    // `~` without LIMIT: at most 100 × stream-node-max-entries per call; `=`: no limit.
    let limit = match (approx, limit) {
        (true, Some(l)) => l,
        (true, None) => default_limit,
        (false, _) => 0,
    };
    Ok(AddOrTrim {
        trim: strategy.map(|to| Trim { to, limit, approx }),
        nomkstream,
        id,
    })
}

/// XADD's arguments as an append to database `db`; `default_limit`: the LIMIT of a `~` trim
/// without one ([`approx_limit`]).
pub fn xadd_request(a: &[Bytes], db: u8, default_limit: u64) -> Result<AppendRequest> {
    let (parsed, id, at) = xadd_parse(a, default_limit)?;
    let fields = a[at + 1..]
        .chunks_exact(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect();
    Ok(xadd_build(db, a[1].clone(), fields, id, parsed))
}

/// [`xadd_request`] taking the key and fields out of `a` (left with empty arguments in their
/// places) instead of copying their handles; on an error `a` is as it was.
pub fn xadd_request_owned(a: &mut [Bytes], db: u8, default_limit: u64) -> Result<AppendRequest> {
    let (parsed, id, at) = xadd_parse(a, default_limit)?;
    let key = std::mem::take(&mut a[1]);
    let fields = a[at + 1..]
        .chunks_exact_mut(2)
        .map(|p| (std::mem::take(&mut p[0]), std::mem::take(&mut p[1])))
        .collect();
    Ok(xadd_build(db, key, fields, id, parsed))
}

/// XADD's arguments checked: the options, the ID, and where the ID is (the fields follow it).
fn xadd_parse(a: &[Bytes], default_limit: u64) -> Result<(AddOrTrim, AddId, usize)> {
    let parsed = parse_add_or_trim(a, true, default_limit)?;
    // Ran out of arguments before the ID: no fields either.
    let Some((id, at)) = parsed.id else {
        return Err(command::wrong_arity("xadd"));
    };
    let fields = &a[at + 1..];
    if fields.len() < 2 || fields.len() % 2 == 1 {
        return Err(command::wrong_arity("xadd"));
    }
    if id == AddId::Explicit(StreamId::new(0, 0)) {
        return Err(Reply::err(
            "The ID specified in XADD must be greater than 0-0",
        ));
    }
    Ok((parsed, id, at))
}

fn xadd_build(
    db: u8,
    key: Bytes,
    fields: Vec<(Bytes, Bytes)>,
    id: AddId,
    parsed: AddOrTrim,
) -> AppendRequest {
    let mut req = AppendRequest::new(db, key, fields);
    req.id = match id {
        AddId::Auto => IdSpec::Auto,
        AddId::AutoSeq(ms) => IdSpec::AutoSeq(ms),
        AddId::Explicit(id) => IdSpec::Explicit(id),
    };
    req.nomkstream = parsed.nomkstream;
    req.trim = parsed.trim;
    req
}

/// The reply to an append: the new ID, nil for NOMKSTREAM on a missing stream, or the error.
pub fn xadd_reply(result: manifold_core::engine::Result<Option<StreamId>>, key: &[u8]) -> Reply {
    match result {
        Ok(Some(id)) => id_bulk(id),
        Ok(None) => Reply::Nil,
        Err(e) => crate::errors::engine_error(&e, "xadd", key, b""),
    }
}

/// The LIMIT of a `~` trim without one: 100 × the engine's `stream-node-max-entries`.
pub fn approx_limit(conn: &Conn) -> u64 {
    conn.client
        .as_ref()
        .map_or(APPROX_TRIM_LIMIT, |c| c.approx_trim_limit())
}

/// XADD inside a transaction.
pub fn plan_xadd(ctx: &Ctx<'_>) -> Result<Plan> {
    let req = xadd_request(&ctx.args, ctx.conn.db, approx_limit(ctx.conn))?;
    Ok(append_plan(ctx, req))
}

fn append_plan(ctx: &Ctx<'_>, req: AppendRequest) -> Plan {
    let key = req.key.clone();
    Plan::op(ctx, TxOp::Append(req), move |answer, _| {
        xadd_reply(
            answer.map(|a| match a {
                TxAnswer::Id(id) => id,
                _ => None,
            }),
            &key,
        )
    })
}

pub async fn xadd(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let req = xadd_request(&ctx.args, ctx.conn.db, approx_limit(ctx.conn))?;
    let key = req.key.clone();
    Ok(xadd_reply(ctx.client()?.append(req).await, &key))
}

/// MANIFOLD.XADD key message-key [XADD options] id field value ...: XADD that also gives the
/// message a key, which the IndexFile indexes (MANIFOLD.FIND; MQTT v5 user property `key` and
/// HTTP `X-Message-Key` set the same thing). Replies as XADD.
pub async fn manifold_xadd(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let req = manifold_xadd_request(ctx)?;
    let key = req.key.clone();
    Ok(xadd_reply(ctx.client()?.append(req).await, &key))
}

/// MANIFOLD.XADD inside a transaction.
pub fn plan_manifold_xadd(ctx: &Ctx<'_>) -> Result<Plan> {
    Ok(append_plan(ctx, manifold_xadd_request(ctx)?))
}

fn manifold_xadd_request(ctx: &Ctx<'_>) -> Result<AppendRequest> {
    let message_key = ctx.args[2].clone();
    let mut xadd: Vec<Bytes> = Vec::with_capacity(ctx.args.len() - 1);
    xadd.push(Bytes::from_static(b"XADD"));
    xadd.push(ctx.args[1].clone());
    xadd.extend(ctx.args[3..].iter().cloned());
    let mut req = xadd_request(&xadd, ctx.conn.db, approx_limit(ctx.conn))?;
    req.message_key = message_key;
    Ok(req)
}

/// MANIFOLD.FIND key message-key [FROM ms] [TO ms] [COUNT n]: the stream's messages with that
/// message key and a store time in `[FROM, TO]` (ms since the Unix epoch; default: all),
/// newest first, at most COUNT (default 100), as XRANGE entries. Found through the IndexFile,
/// never by scanning the stream.
pub fn manifold_find(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let (mut from, mut to, mut count) = (0u64, u64::MAX, 100usize);
    let mut i = 3;
    while i < ctx.args.len() {
        let Some(value) = ctx.args.get(i + 1) else {
            return Err(args::syntax_error());
        };
        let n = args::int(value)?;
        if n < 0 {
            return Err(args::not_an_integer());
        }
        if is(&ctx.args[i], "from") {
            from = n as u64;
        } else if is(&ctx.args[i], "to") {
            to = n as u64;
        } else if is(&ctx.args[i], "count") {
            count = usize::try_from(n).unwrap_or(usize::MAX);
        } else {
            return Err(args::syntax_error());
        }
        i += 2;
    }
    let (key, message_key) = (&ctx.args[1], &ctx.args[2]);
    let found = ctx
        .client()?
        .find_by_key(ctx.conn.db, key, message_key, from, to, count)
        .map_err(|e| ctx.engine_error(&e, key, b""))?;
    Ok(Reply::Array(found.iter().map(entry_reply).collect()))
}

/// XRANGE key start end [COUNT n] / XREVRANGE key end start [COUNT n].
pub fn xrange(ctx: &mut Ctx<'_>, reverse: bool) -> Result<Reply> {
    let (start_arg, end_arg) = if reverse {
        (&ctx.args[3], &ctx.args[2])
    } else {
        (&ctx.args[2], &ctx.args[3])
    };
    let (start, start_ex) = args::range_bound(start_arg, 0)?;
    let start = if start_ex {
        args::next_id(start).ok_or_else(|| Reply::err("invalid start ID for the interval"))?
    } else {
        start
    };
    let (end, end_ex) = args::range_bound(end_arg, u64::MAX)?;
    let end = if end_ex {
        args::prev_id(end).ok_or_else(|| Reply::err("invalid end ID for the interval"))?
    } else {
        end
    };
    let mut count: i64 = -1;
    let mut j = 4;
    while j < ctx.args.len() {
        if is(&ctx.args[j], "count") && j + 1 < ctx.args.len() {
            count = args::int(&ctx.args[j + 1])?.max(0);
            j += 2;
        } else {
            return Err(args::syntax_error());
        }
    }
    let key = &ctx.args[1];
    if !exists(ctx, key)? {
        return Ok(Reply::Array(Vec::new()));
    }
    let client = ctx.client()?;
    if count == 0 {
        return Ok(Reply::NilArray);
    }
    if start > end {
        return Ok(Reply::Array(Vec::new()));
    }
    let count = usize::try_from(count).ok().filter(|_| count > 0);
    let messages = client
        .read_range(
            ctx.conn.db,
            key,
            Bound::Included(start),
            Bound::Included(end),
            count,
            reverse,
        )
        .map_err(|e| ctx.engine_error(&e, key, b""))?;
    Ok(Reply::Array(messages.iter().map(entry_reply).collect()))
}

pub fn xlen(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let key = &ctx.args[1];
    ctx.client()?
        .len(ctx.conn.db, key)
        .map(|n| Reply::Int(n as i64))
        .map_err(|e| ctx.engine_error(&e, key, b""))
}

/// Whether the stream `key` of the connection's database exists (and may be read).
fn exists(ctx: &Ctx<'_>, key: &[u8]) -> Result<bool> {
    ctx.client()?
        .exists(ctx.conn.db, key)
        .map_err(|e| ctx.engine_error(&e, key, b""))
}

/// XDEL key id [id ...]: the key first (a missing one answers 0 whatever the IDs), then
/// every ID, all or nothing.
pub fn plan_xdel(ctx: &Ctx<'_>, in_tx: bool) -> Result<Plan> {
    let key = ctx.args[1].clone();
    if !in_tx && !exists(ctx, &key)? {
        return Ok(Plan::Answered(Reply::Int(0)));
    }
    let ids = ctx.args[2..]
        .iter()
        .map(|a| args::stream_id(a, IdForm::Strict, 0))
        .collect::<Result<Vec<_>>>()?;
    let op = TxOp::Delete {
        db: ctx.conn.db,
        key: key.clone(),
        ids,
    };
    Ok(Plan::op(ctx, op, move |a, _| count_reply(a, "xdel", &key)))
}

/// An operation's count as an integer reply.
fn count_reply(answer: EngineResult<TxAnswer>, cmd: &str, key: &[u8]) -> Reply {
    match answer {
        Ok(TxAnswer::Count(n)) => Reply::Int(n as i64),
        Ok(other) => super::unexpected(other),
        Err(e) => crate::errors::engine_error(&e, cmd, key, b""),
    }
}

pub fn plan_xtrim(ctx: &Ctx<'_>, in_tx: bool) -> Result<Plan> {
    let parsed = parse_add_or_trim(&ctx.args, false, approx_limit(ctx.conn))?;
    let Some(trim) = parsed.trim else {
        return Err(args::syntax_error());
    };
    let key = ctx.args[1].clone();
    if !in_tx && !exists(ctx, &key)? {
        return Ok(Plan::Answered(Reply::Int(0)));
    }
    let op = TxOp::Trim {
        db: ctx.conn.db,
        key: key.clone(),
        trim,
    };
    Ok(Plan::op(ctx, op, move |a, _| count_reply(a, "xtrim", &key)))
}

/// XSETID key last-id [ENTRIESADDED n] [MAXDELETEDID id]: arguments first (as Redis), then the
/// key; the engine checks the ID and counter against the stream when it applies.
pub fn plan_xsetid(ctx: &Ctx<'_>, in_tx: bool) -> Result<Plan> {
    let id = args::stream_id(&ctx.args[2], IdForm::Strict, 0)?;
    let (mut added, mut max_deleted) = (None, None);
    let mut i = 3;
    while i < ctx.args.len() {
        let Some(value) = ctx.args.get(i + 1) else {
            return Err(args::syntax_error());
        };
        if is(&ctx.args[i], "entriesadded") {
            let n = args::int(value)?;
            if n < 0 {
                return Err(Reply::err("entries_added must be positive"));
            }
            added = Some(n as u64);
        } else if is(&ctx.args[i], "maxdeletedid") {
            let m = args::stream_id(value, IdForm::Strict, 0)?;
            if id < m {
                return Err(Reply::err(
                    "The ID specified in XSETID is smaller than the provided max_deleted_entry_id",
                ));
            }
            max_deleted = Some(m);
        } else {
            return Err(args::syntax_error());
        }
        i += 2;
    }
    let key = ctx.args[1].clone();
    if !in_tx && !exists(ctx, &key)? {
        return Err(Reply::err("no such key"));
    }
    let op = TxOp::SetId {
        db: ctx.conn.db,
        key: key.clone(),
        id,
        entries_added: added,
        max_deleted,
    };
    Ok(Plan::op(ctx, op, move |a, _| match a {
        Ok(TxAnswer::Done) => Reply::Ok,
        Ok(other) => super::unexpected(other),
        Err(e) => crate::errors::engine_error(&e, "xsetid", &key, b""),
    }))
}

/// XINFO's `radix-tree-keys` and `radix-tree-nodes`: the keys are the stream's Redis nodes,
/// which the store models exactly; the radix tree's inner nodes depend on how the node IDs'
/// bytes share prefixes, which nothing here models: estimated as keys + 1 (what Redis shows
/// for up to one key; more keys give it about twice as many).
fn radix_tree(nodes: u64) -> (i64, i64) {
    let keys = nodes as i64;
    (keys, keys + 1)
}

/// XINFO STREAM key [FULL [COUNT n]].
pub fn xinfo_stream(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let a = &ctx.args;
    // The key first, as Redis looks it up before reading the options.
    if !exists(ctx, &a[2])? {
        return Err(Reply::err("no such key"));
    }
    // FULL, or FULL COUNT n; COUNT: negative is the default 10, 0 is everything.
    let full = match a.len() {
        3 => None,
        4 if is(&a[3], "full") => Some(10),
        6 if is(&a[3], "full") && is(&a[4], "count") => {
            let n = args::int(&a[5])?;
            Some(if n < 0 { 10 } else { n as u64 })
        }
        _ => {
            return Err(Reply::err(format!(
                "unknown subcommand or wrong number of arguments for '{}'. Try XINFO HELP.",
                command::shown(&a[1])
            )));
        }
    };
    let key = &ctx.args[2];
    let client = ctx.client()?;
    let info = client
        .stream_info(ctx.conn.db, key)
        .map_err(|e| ctx.engine_error(&e, key, b""))?
        .ok_or_else(|| Reply::err("no such key"))?;
    let (radix_keys, radix_nodes) = radix_tree(info.nodes);
    let first_id = info
        .first_entry
        .as_ref()
        .map_or(StreamId::new(0, 0), |m| m.id);
    let mut fields = vec![
        Reply::field("length", Reply::Int(info.length as i64)),
        Reply::field("radix-tree-keys", Reply::Int(radix_keys)),
        Reply::field("radix-tree-nodes", Reply::Int(radix_nodes)),
        Reply::field("last-generated-id", id_bulk(info.last_generated_id)),
        Reply::field("max-deleted-entry-id", id_bulk(info.max_deleted_entry_id)),
        Reply::field("entries-added", Reply::Int(info.entries_added as i64)),
        Reply::field("recorded-first-entry-id", id_bulk(first_id)),
    ];
    match full {
        None => {
            let groups = client
                .groups_info(ctx.conn.db, key)
                .map_err(|e| ctx.engine_error(&e, key, b""))?
                .map_or(0, |g| g.len());
            let entry = |m: &Option<Message>| m.as_ref().map_or(Reply::Nil, entry_reply);
            fields.push(Reply::field("groups", Reply::Int(groups as i64)));
            fields.push(Reply::field("first-entry", entry(&info.first_entry)));
            fields.push(Reply::field("last-entry", entry(&info.last_entry)));
        }
        Some(count) => {
            let limit = usize::try_from(count).ok().filter(|c| *c > 0);
            let entries = client
                .read_range(
                    ctx.conn.db,
                    key,
                    Bound::Unbounded,
                    Bound::Unbounded,
                    limit,
                    false,
                )
                .map_err(|e| ctx.engine_error(&e, key, b""))?;
            fields.push(Reply::field(
                "entries",
                Reply::Array(entries.iter().map(entry_reply).collect()),
            ));
            fields.push(Reply::field(
                "groups",
                super::groups::full_groups(ctx, key, count)?,
            ));
        }
    }
    Ok(Reply::Map(fields))
}

pub fn xinfo_help() -> Reply {
    help(&[
        "XINFO <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "CONSUMERS <key> <groupname>",
        "    Show consumers of <groupname>.",
        "GROUPS <key>",
        "    Show the stream consumer groups.",
        "STREAM <key> [FULL [COUNT <count>]",
        "    Show information about the stream.",
        "HELP",
        "    Prints this help.",
    ])
}
