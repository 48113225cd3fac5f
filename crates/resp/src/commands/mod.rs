//! Running one command: the checks Redis makes before any command (known, authenticated,
//! number of arguments), then the command's own module, which parses its arguments, calls the
//! engine through the connection's `Client` and builds the reply.
//!
//! Owns dispatch and the per-command counters. It must never write to the socket or let a
//! command skip the checks.

mod connection;
mod groups;
mod keyspace;
mod read;
mod server;
mod streams;
mod transaction;

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use manifold_core::engine::{
    AppendRequest, Client, EngineError, Result as EngineResult, TxAnswer, TxOp,
};

use crate::command::{self, Spec};
use crate::connection::Conn;
use crate::errors::engine_error;
use crate::reply::{Protocol, Reply};
use crate::server::Shared;

/// What a command module gets: the shared server, the connection and the arguments (the
/// command name first).
pub struct Ctx<'a> {
    /// The server.
    pub shared: &'a Shared,
    /// The connection.
    pub conn: &'a mut Conn,
    /// The arguments, the command name first.
    pub args: Vec<Bytes>,
    /// The command (or subcommand) being run.
    pub spec: &'static Spec,
}

impl Ctx<'_> {
    /// The engine as the connection's principal sees it (present: execute checked).
    pub fn client(&self) -> Result<&Client, Reply> {
        self.conn.client.as_ref().ok_or_else(noauth)
    }

    /// An engine error as this command's Redis error.
    pub fn engine_error(&self, e: &EngineError, key: &[u8], group: &[u8]) -> Reply {
        let cmd = self.spec.name.split('|').next().unwrap_or(self.spec.name);
        engine_error(e, cmd, key, group)
    }
}

/// `-NOAUTH Authentication required.`
pub fn noauth() -> Reply {
    Reply::Error("NOAUTH Authentication required.".into())
}

/// Runs `args` on the connection and returns its reply.
pub async fn execute(shared: &Shared, conn: &mut Conn, args: Vec<Bytes>) -> Reply {
    let started = Instant::now();
    let spec = match checked(shared, conn, &args) {
        Ok(spec) => spec,
        Err(reply) => {
            // A command refused while queuing fails the whole transaction (EXECABORT).
            if let Some(multi) = &mut conn.multi {
                multi.dirty = true;
            }
            return reply;
        }
    };
    if let Some(multi) = &mut conn.multi
        && !transaction::runs_now(spec.name)
    {
        // The queue holds what the client sent: bounded as its query buffer is.
        let size: usize = args.iter().map(|a| a.len() + 16).sum();
        let limit = shared.config.limits.max_query_buffer;
        if multi.bytes.saturating_add(size) > limit {
            multi.dirty = true;
            return Reply::err(format!(
                "transaction queue exceeds the query buffer limit ({limit} bytes)"
            ));
        }
        multi.bytes += size;
        multi.queued.push((spec, args));
        conn.entry
            .multi
            .store(multi.queued.len() as i64, Ordering::Relaxed);
        return Reply::simple("QUEUED");
    }
    run_checked(shared, conn, spec, args, started).await
}

/// The checks Redis makes before any command: known, known subcommand, number of arguments,
/// authenticated. The command's table entry, or the refusal (counted).
fn checked(shared: &Shared, conn: &Conn, args: &[Bytes]) -> Result<&'static Spec, Reply> {
    let name = args.first().ok_or_else(|| Reply::err("empty command"))?;
    let Some(mut spec) = command::lookup(name) else {
        let reply = command::unknown_command(args);
        shared.count_error(error_text(&reply));
        return Err(reply);
    };
    if !spec.subcommands.is_empty() && args.len() >= 2 {
        match command::lookup_sub(spec, &args[1]) {
            Some(sub) => spec = sub,
            None => {
                return Err(refuse(
                    shared,
                    spec,
                    command::unknown_subcommand(spec.name, &args[1]),
                ));
            }
        }
    }
    if !command::arity_ok(spec.arity, args.len()) {
        return Err(refuse(shared, spec, command::wrong_arity(spec.name)));
    }
    if conn.client.is_none() && !spec.flags.contains(&"no_auth") {
        return Err(refuse(shared, spec, noauth()));
    }
    Ok(spec)
}

/// Runs a command that passed the checks, and counts it.
async fn run_checked(
    shared: &Shared,
    conn: &mut Conn,
    spec: &'static Spec,
    args: Vec<Bytes>,
    started: Instant,
) -> Reply {
    *conn
        .entry
        .last_cmd
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = spec.name;
    let mut ctx = Ctx {
        shared,
        conn,
        args,
        spec,
    };
    let reply = run(&mut ctx).await;
    let usec = started.elapsed().as_micros() as u64;
    shared.count_command(spec.name, usec, false, error_of(&reply));
    reply
}

/// A write command as one engine operation, and how the operation's answer becomes the
/// command's reply: how a write runs on its own and inside EXEC alike.
pub struct Planned {
    /// The command (for the statistics).
    pub name: &'static str,
    /// The operation.
    pub op: TxOp,
    /// The reply, from the operation's answer.
    pub render: Render,
}

/// Makes a write command's reply from its operation's answer.
pub type Render = Box<dyn FnOnce(EngineResult<TxAnswer>, Protocol) -> Reply + Send>;

/// A write command, parsed.
pub enum Plan {
    /// An operation to run.
    Op(Planned),
    /// Answered without the engine (as Redis answers some commands on a missing key).
    Answered(Reply),
}

impl Plan {
    /// An operation of command `ctx.spec`.
    fn op(
        ctx: &Ctx<'_>,
        op: TxOp,
        render: impl FnOnce(EngineResult<TxAnswer>, Protocol) -> Reply + Send + 'static,
    ) -> Plan {
        Plan::Op(Planned {
            name: ctx.spec.name,
            op,
            render: Box::new(render),
        })
    }
}

/// A render for an answer of unexpected shape (a bug, answered as an error, never a panic).
fn unexpected(answer: TxAnswer) -> Reply {
    Reply::err(format!("unexpected engine answer {answer:?}"))
}

/// The write commands as engine operations (`None`: not a write command; it runs as it is).
/// `in_tx`: inside EXEC, where the state a check would read is not yet what the command will
/// see, so checks Redis makes on the key before the arguments are left to the engine.
pub fn plan(ctx: &Ctx<'_>, in_tx: bool) -> Option<Result<Plan, Reply>> {
    Some(match ctx.spec.name {
        "xadd" => streams::plan_xadd(ctx),
        "manifold.xadd" => streams::plan_manifold_xadd(ctx),
        "xdel" => streams::plan_xdel(ctx, in_tx),
        "xtrim" => streams::plan_xtrim(ctx, in_tx),
        "xsetid" => streams::plan_xsetid(ctx, in_tx),
        "del" | "unlink" => keyspace::plan_del(ctx),
        "flushdb" | "flushall" => keyspace::plan_flush(ctx),
        "xgroup|create"
        | "xgroup|setid"
        | "xgroup|destroy"
        | "xgroup|createconsumer"
        | "xgroup|delconsumer" => groups::plan_xgroup(ctx, in_tx),
        "xack" => groups::plan_xack(ctx, in_tx),
        "xclaim" => groups::plan_xclaim(ctx, in_tx),
        "xautoclaim" => groups::plan_xautoclaim(ctx, in_tx),
        "xreadgroup" => groups::plan_xreadgroup(ctx, in_tx),
        _ => return None,
    })
}

/// Runs a write command's plan on its own.
async fn run_plan(ctx: &Ctx<'_>, plan: Result<Plan, Reply>) -> Result<Reply, Reply> {
    match plan? {
        Plan::Answered(reply) => Ok(reply),
        Plan::Op(p) => {
            let answer = ctx.client()?.run(p.op).await;
            Ok((p.render)(answer, ctx.conn.protocol))
        }
    }
}

/// Adds `args` to `appends` when it is an append that can be proposed at once, with the
/// XADDs next to it, because that cannot change what any command sent after it sees: an XADD
/// (outside MULTI) that passes the checks and parses, whose effect the engine decides in log
/// order when it is proposed (against every entry before it, applied or not). `false` for any
/// other command or an XADD that would be refused: the ordinary path answers it. The append
/// takes its key and fields out of `args` (which the caller then only recycles); `args` is
/// untouched when `false`.
pub fn defer(conn: &mut Conn, args: &mut [Bytes], appends: &mut Vec<AppendRequest>) -> bool {
    deferred(conn, args).map(|req| appends.push(req)).is_some()
}

fn deferred(conn: &mut Conn, args: &mut [Bytes]) -> Option<AppendRequest> {
    let is_xadd = args
        .first()
        .is_some_and(|n| n.eq_ignore_ascii_case(b"xadd"));
    if !is_xadd || conn.multi.is_some() || conn.client.is_none() {
        return None;
    }
    static XADD: std::sync::OnceLock<Option<&'static Spec>> = std::sync::OnceLock::new();
    let spec = (*XADD.get_or_init(|| command::lookup(b"xadd")))?;
    if !command::arity_ok(spec.arity, args.len()) {
        return None;
    }
    let req = streams::xadd_request_owned(args, conn.db, streams::approx_limit(conn)).ok()?;
    *conn
        .entry
        .last_cmd
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = spec.name;
    Some(req)
}

/// Proposes consecutive appends together (one engine call, one reply for all: a pipeline of
/// XADDs shares the proposer's lock, the applier's hand-off and the wake-up, and its fsyncs)
/// and writes each answer to `out`, in order: an ID straight into the buffer, anything else
/// through its [`Reply`].
pub async fn append_all(
    shared: &Shared,
    conn: &Conn,
    reqs: Vec<AppendRequest>,
    out: &mut BytesMut,
) {
    let started = Instant::now();
    // The keys stay for the error texts; the requests move into the engine.
    let keys: Vec<Bytes> = reqs.iter().map(|r| r.key.clone()).collect();
    let answers = match &conn.client {
        Some(client) => client.append_many(reqs).await,
        None => keys
            .iter()
            .map(|_| Err(EngineError::ShuttingDown))
            .collect(),
    };
    let n = keys.len() as u64;
    let usec = started.elapsed().as_micros() as u64;
    let mut failed = 0;
    for (key, answer) in keys.iter().zip(answers) {
        match answer {
            Ok(Some(id)) => crate::args::put_id_bulk(id, out),
            answer => {
                let reply = streams::xadd_reply(answer, key);
                if let Some(e) = error_of(&reply) {
                    failed += 1;
                    shared.count_error(e);
                }
                reply.encode(conn.protocol, out);
            }
        }
    }
    shared.count_commands("xadd", n, usec, failed);
}

/// Whether `args` is a command that may wait (XREAD or XREADGROUP with BLOCK): the replies
/// before it are written first.
pub fn may_block(args: &[Bytes]) -> bool {
    args.first()
        .is_some_and(|n| n.eq_ignore_ascii_case(b"xread") || n.eq_ignore_ascii_case(b"xreadgroup"))
        && args.iter().any(|a| a.eq_ignore_ascii_case(b"block"))
}

/// A command refused before running: counted as rejected.
fn refuse(shared: &Shared, spec: &'static Spec, reply: Reply) -> Reply {
    shared.count_command(spec.name, 0, true, error_of(&reply));
    reply
}

pub(super) fn error_of(reply: &Reply) -> Option<&str> {
    match reply {
        Reply::Error(e) => Some(e),
        _ => None,
    }
}

fn error_text(reply: &Reply) -> &str {
    error_of(reply).unwrap_or("ERR")
}

async fn run(ctx: &mut Ctx<'_>) -> Reply {
    let result = match ctx.spec.name {
        "ping" => connection::ping(ctx),
        "echo" => Ok(Reply::Bulk(ctx.args[1].clone())),
        "hello" => connection::hello(ctx),
        "auth" => connection::auth(ctx),
        "select" => connection::select(ctx),
        "quit" => {
            ctx.conn.closing = true;
            Ok(Reply::Ok)
        }
        "reset" => connection::reset(ctx),
        "client|id" | "client|setname" | "client|getname" | "client|list" | "client|info"
        | "client|setinfo" | "client|kill" | "client|help" => connection::client(ctx),
        "command" | "command|count" | "command|docs" | "command|info" | "command|list"
        | "command|help" => server::command(ctx),
        "config|get" | "config|set" | "config|resetstat" | "config|help" => server::config(ctx),
        "info" => server::info(ctx),
        "dbsize" => keyspace::dbsize(ctx),
        "del" | "unlink" => run_plan(ctx, keyspace::plan_del(ctx)).await,
        "exists" => keyspace::exists(ctx),
        "type" => keyspace::key_type(ctx),
        "keys" => keyspace::keys(ctx),
        "scan" => keyspace::scan(ctx),
        "flushdb" | "flushall" => keyspace::flush(ctx).await,
        "xadd" => streams::xadd(ctx).await,
        "xrange" => streams::xrange(ctx, false),
        "xrevrange" => streams::xrange(ctx, true),
        "xlen" => streams::xlen(ctx),
        "xdel" => run_plan(ctx, streams::plan_xdel(ctx, false)).await,
        "xtrim" => run_plan(ctx, streams::plan_xtrim(ctx, false)).await,
        "xsetid" => run_plan(ctx, streams::plan_xsetid(ctx, false)).await,
        "xinfo|stream" => streams::xinfo_stream(ctx),
        "xinfo|groups" => groups::xinfo_groups(ctx),
        "xinfo|consumers" => groups::xinfo_consumers(ctx),
        "xinfo|help" => Ok(streams::xinfo_help()),
        "xread" => read::xread(ctx).await,
        "xreadgroup" => groups::xreadgroup(ctx).await,
        "xgroup|help" => Ok(groups::xgroup_help()),
        "xgroup|create"
        | "xgroup|setid"
        | "xgroup|destroy"
        | "xgroup|createconsumer"
        | "xgroup|delconsumer" => run_plan(ctx, groups::plan_xgroup(ctx, false)).await,
        "manifold.xadd" => streams::manifold_xadd(ctx).await,
        "manifold.find" => streams::manifold_find(ctx),
        "multi" => transaction::multi(ctx),
        "exec" => transaction::exec(ctx).await,
        "discard" => transaction::discard(ctx),
        "watch" => transaction::watch(ctx),
        "unwatch" => transaction::unwatch(ctx),
        "xack" => run_plan(ctx, groups::plan_xack(ctx, false)).await,
        "xpending" => groups::xpending(ctx),
        "xclaim" => run_plan(ctx, groups::plan_xclaim(ctx, false)).await,
        "xautoclaim" => run_plan(ctx, groups::plan_xautoclaim(ctx, false)).await,
        other => Err(Reply::err(format!(
            "unknown command '{other}' in the command table"
        ))),
    };
    result.unwrap_or_else(|e| e)
}
