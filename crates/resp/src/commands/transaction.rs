//! MULTI / EXEC / DISCARD / WATCH / UNWATCH with Redis 7.0's semantics: commands queue after
//! MULTI (`+QUEUED`) once they pass the checks every command gets; a refusal while queuing
//! makes EXEC answer `EXECABORT`. EXEC is **one engine transaction** (one log entry): every
//! write command becomes an operation of it, applied in order with its own error in its own
//! slot and nothing rolled back; every other command runs where it stands in the transaction,
//! with apply held there, so it sees the writes before it and none after. WATCH makes EXEC
//! answer nil when a watched key changed.
//!
//! Owns the connection's transaction state and the EXEC loop; what each command does stays in
//! its own module (`plan` there), and nothing here touches the engine's state directly.

use std::sync::atomic::Ordering;

use manifold_core::engine::{Step, TxOp};

use super::{Ctx, Plan, Planned, run_checked};
use crate::connection::Multi;
use crate::reply::Reply;

type Result<T> = std::result::Result<T, Reply>;

/// Commands that run at once even inside MULTI (Redis's exceptions).
pub fn runs_now(name: &str) -> bool {
    matches!(
        name,
        "exec" | "discard" | "multi" | "watch" | "quit" | "reset"
    )
}

pub fn multi(ctx: &mut Ctx<'_>) -> Result<Reply> {
    if ctx.conn.multi.is_some() {
        return Err(Reply::err("MULTI calls can not be nested"));
    }
    ctx.conn.multi = Some(Multi::default());
    ctx.conn.entry.multi.store(0, Ordering::Relaxed);
    Ok(Reply::Ok)
}

pub fn discard(ctx: &mut Ctx<'_>) -> Result<Reply> {
    if ctx.conn.multi.take().is_none() {
        return Err(Reply::err("DISCARD without MULTI"));
    }
    ctx.conn.entry.multi.store(-1, Ordering::Relaxed);
    ctx.conn.watches.clear();
    Ok(Reply::Ok)
}

pub fn watch(ctx: &mut Ctx<'_>) -> Result<Reply> {
    if ctx.conn.multi.is_some() {
        return Err(Reply::err("WATCH inside MULTI is not allowed"));
    }
    let client = ctx.client()?.clone();
    for key in &ctx.args[1..] {
        let w = client.watch(ctx.conn.db, key.clone());
        // A key watched twice keeps its first version (Redis keeps one entry per key).
        if !ctx
            .conn
            .watches
            .iter()
            .any(|o| o.db() == w.db() && o.key() == w.key())
        {
            ctx.conn.watches.push(w);
        }
    }
    Ok(Reply::Ok)
}

pub fn unwatch(ctx: &mut Ctx<'_>) -> Result<Reply> {
    ctx.conn.watches.clear();
    Ok(Reply::Ok)
}

/// How one queued command is answered.
enum Slot {
    /// Answered while planning (a syntax error, or nothing to do).
    Answered(Reply),
    /// An operation of the transaction: how its answer becomes the reply.
    Op(Planned),
    /// Runs at its read step.
    Run(&'static crate::command::Spec, Vec<bytes::Bytes>),
}

pub async fn exec(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let Some(multi) = ctx.conn.multi.take() else {
        return Err(Reply::err("EXEC without MULTI"));
    };
    ctx.conn.entry.multi.store(-1, Ordering::Relaxed);
    let watches = std::mem::take(&mut ctx.conn.watches);
    if multi.dirty {
        return Err(Reply::Error(
            "EXECABORT Transaction discarded because of previous errors.".into(),
        ));
    }
    let client = ctx.client()?.clone();
    // Plan every command in order: writes become operations, everything else a read step.
    // SELECT changes the database of the commands after it, as it will when it runs.
    let mut ops = Vec::with_capacity(multi.queued.len());
    let mut slots = Vec::with_capacity(multi.queued.len());
    let db = ctx.conn.db;
    for (spec, args) in multi.queued {
        let mut sub = Ctx {
            shared: ctx.shared,
            conn: &mut *ctx.conn,
            args,
            spec,
        };
        match super::plan(&sub, true) {
            Some(Ok(Plan::Op(mut planned))) => {
                ops.push(std::mem::replace(&mut planned.op, TxOp::Read));
                slots.push(Slot::Op(planned));
            }
            Some(Ok(Plan::Answered(reply))) | Some(Err(reply)) => {
                slots.push(Slot::Answered(reply));
            }
            None => {
                if spec.name == "select"
                    && let Some(n) = crate::args::parse_i64(&sub.args[1])
                    && (0..16).contains(&n)
                {
                    sub.conn.db = n as u8;
                }
                ops.push(TxOp::Read);
                slots.push(Slot::Run(spec, std::mem::take(&mut sub.args)));
            }
        }
    }
    ctx.conn.db = db;
    let exec = client
        .exec(ops, &watches)
        .map_err(|e| ctx.engine_error(&e, b"", b""))?;
    let Some(mut exec) = exec else {
        return Ok(Reply::NilArray); // a watched key changed
    };
    let mut replies: Vec<Option<Reply>> = slots
        .iter_mut()
        .map(|s| match s {
            Slot::Answered(r) => Some(std::mem::replace(r, Reply::Nil)),
            _ => None,
        })
        .collect();
    let mut runs = slots
        .iter_mut()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Slot::Run(spec, args) => Some((i, *spec, std::mem::take(args))),
            _ => None,
        })
        .collect::<Vec<_>>()
        .into_iter();
    ctx.conn.in_exec = true;
    let done = loop {
        let step = match exec.next().await {
            Ok(step) => step,
            Err(e) => {
                ctx.conn.in_exec = false;
                return Err(ctx.engine_error(&e, b"", b""));
            }
        };
        match step {
            Step::Read(resume) => {
                if let Some((i, spec, args)) = runs.next() {
                    let started = std::time::Instant::now();
                    // Boxed: a queued command never is EXEC, but the types cannot know it.
                    let run = Box::pin(run_checked(ctx.shared, ctx.conn, spec, args, started));
                    replies[i] = Some(run.await);
                }
                drop(resume);
            }
            Step::Done(answers) => break answers,
        }
    };
    ctx.conn.in_exec = false;
    let protocol = ctx.conn.protocol;
    // One answer per operation, in order; a read step's says only that it ran.
    let mut answers = done.into_iter();
    for (slot, reply) in slots.into_iter().zip(replies.iter_mut()) {
        match slot {
            Slot::Op(planned) => {
                let answer = answers
                    .next()
                    .unwrap_or(Err(manifold_core::engine::EngineError::ShuttingDown));
                let started = std::time::Instant::now();
                let r = (planned.render)(answer, protocol);
                ctx.shared.count_command(
                    planned.name,
                    started.elapsed().as_micros() as u64,
                    false,
                    super::error_of(&r),
                );
                *reply = Some(r);
            }
            Slot::Run(..) => {
                answers.next();
            }
            Slot::Answered(_) => {}
        }
    }
    Ok(Reply::Array(
        replies
            .into_iter()
            .map(|r| r.unwrap_or(Reply::Nil))
            .collect(),
    ))
}
