//! Transactions (MULTI/EXEC) through the engine's public API: one log entry, operations in
//! order each seeing the ones before it, per-operation errors without rollback, reads that
//! stop apply between parts, WATCH, and the state after restarts and power cuts.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use manifold_core::engine::{
    AppendRequest, Engine, EngineError, GroupTx, IdSpec, ReadFrom, Step, TxAnswer, TxOp,
};
use manifold_core::store::{CrashMode, SimDisk, StreamId};
use support::{open, runtime, small_config as config};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn xadd(key: &str, id: IdSpec, value: &str) -> TxOp {
    let mut r = AppendRequest::new(0, b(key), vec![(b("f"), b(value))]);
    r.id = id;
    TxOp::Append(r)
}

/// Runs a transaction to the end; at each read, `at_read` is called with the engine.
async fn run(
    engine: &Engine,
    ops: Vec<TxOp>,
    mut at_read: impl FnMut(&Engine),
) -> Result<Option<Vec<Result<TxAnswer, EngineError>>>, EngineError> {
    let Some(mut exec) = engine.exec(ops, &[], None)? else {
        return Ok(None);
    };
    loop {
        match exec.next().await? {
            Step::Read(resume) => {
                at_read(engine);
                drop(resume);
            }
            Step::Done(answers) => return Ok(Some(answers)),
        }
    }
}

fn id_of(a: &Result<TxAnswer, EngineError>) -> StreamId {
    match a {
        Ok(TxAnswer::Id(Some(id))) => *id,
        other => panic!("expected an ID, got {other:?}"),
    }
}

#[test]
fn a_transaction_is_one_entry_and_each_op_sees_the_ones_before() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk, config())?;
    runtime().block_on(async {
        let before = engine.applied_index();
        let answers = run(
            &engine,
            vec![
                xadd("s", IdSpec::Explicit(StreamId::new(5, 0)), "a"),
                // Resolved against the first, which nothing has applied yet.
                xadd("s", IdSpec::Auto, "b"),
                xadd("s", IdSpec::Explicit(StreamId::new(5, 0)), "refused"),
                TxOp::Delete {
                    db: 0,
                    key: b("s"),
                    ids: vec![StreamId::new(5, 0)],
                },
            ],
            |_| {},
        )
        .await?
        .expect("no watch");
        assert_eq!(engine.applied_index(), before + 1, "one log entry");
        assert_eq!(id_of(&answers[0]), StreamId::new(5, 0));
        assert!(id_of(&answers[1]) > StreamId::new(5, 0));
        // The third fails in its own slot; nothing is rolled back.
        assert!(matches!(answers[2], Err(EngineError::IdTooSmall { .. })));
        assert_eq!(answers[3].as_ref().ok(), Some(&TxAnswer::Count(1)));
        assert_eq!(engine.len(0, b"s"), 1);
        Ok(())
    })
}

#[test]
fn reads_see_the_writes_before_them_and_none_after() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk, config())?;
    runtime().block_on(async {
        let mut seen = Vec::new();
        run(
            &engine,
            vec![
                TxOp::Read,
                xadd("s", IdSpec::Auto, "a"),
                TxOp::Read,
                xadd("s", IdSpec::Auto, "b"),
                TxOp::Drop {
                    db: 0,
                    keys: vec![b("other")],
                },
                TxOp::Read,
            ],
            |e| seen.push(e.len(0, b"s")),
        )
        .await?;
        assert_eq!(seen, vec![0, 1, 2]);
        Ok(())
    })
}

#[test]
fn group_commands_in_a_transaction_see_the_appends_before_them() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk, config())?;
    runtime().block_on(async {
        let group = |op: GroupTx| TxOp::Group(op);
        let answers = run(
            &engine,
            vec![
                group(GroupTx::Create {
                    db: 0,
                    key: b("s"),
                    group: b("g"),
                    start: manifold_core::engine::GroupStart::Last,
                    mkstream: true,
                    entries_read: None,
                }),
                xadd("s", IdSpec::Auto, "a"),
                group(GroupTx::Read {
                    db: 0,
                    group: b("g"),
                    consumer: b("c"),
                    streams: vec![(b("s"), ReadFrom::New)],
                    count: 0,
                    noack: false,
                }),
                // DEL drops the stream with its groups; the XADD after it makes a new one.
                TxOp::Drop {
                    db: 0,
                    keys: vec![b("s")],
                },
                xadd("s", IdSpec::Auto, "b"),
                group(GroupTx::Ack {
                    db: 0,
                    key: b("s"),
                    group: b("g"),
                    ids: vec![StreamId::new(1, 0)],
                }),
            ],
            |_| {},
        )
        .await?
        .expect("no watch");
        assert_eq!(answers[0].as_ref().ok(), Some(&TxAnswer::Done));
        let added = id_of(&answers[1]);
        match &answers[2] {
            Ok(TxAnswer::Streams(s)) => {
                assert_eq!(s.len(), 1);
                assert_eq!(s[0].1.len(), 1);
                assert_eq!(s[0].1[0].id, added);
            }
            other => panic!("XREADGROUP answered {other:?}"),
        }
        assert_eq!(answers[3].as_ref().ok(), Some(&TxAnswer::Count(1)));
        assert_eq!(answers[5].as_ref().ok(), Some(&TxAnswer::Count(0)));
        assert_eq!(engine.len(0, b"s"), 1);
        assert_eq!(engine.groups_info(0, b"s")?, Some(Vec::new()));
        Ok(())
    })
}

#[test]
fn watch_refuses_exec_after_a_change_and_logs_nothing() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk, config())?;
    runtime().block_on(async {
        run(&engine, vec![xadd("s", IdSpec::Auto, "a")], |_| {}).await?;
        let w = engine.watch(0, b("s"));
        let unrelated = engine.watch(0, b("missing"));
        // A group command or a failed write leaves the key as WATCH saw it (as in Redis).
        run(
            &engine,
            vec![TxOp::Group(GroupTx::Create {
                db: 0,
                key: b("s"),
                group: b("g"),
                start: manifold_core::engine::GroupStart::Last,
                mkstream: false,
                entries_read: None,
            })],
            |_| {},
        )
        .await?;
        let exec = engine.exec(
            vec![xadd("s", IdSpec::Auto, "b")],
            &[w.clone(), unrelated.clone()],
            None,
        )?;
        let mut exec = exec.expect("unchanged keys: EXEC runs");
        while !matches!(exec.next().await?, Step::Done(_)) {}
        // Now `s` changed since `w` was taken.
        let before = engine.applied_index();
        assert!(
            engine
                .exec(vec![xadd("s", IdSpec::Auto, "c")], &[w], None)?
                .is_none()
        );
        assert_eq!(engine.applied_index(), before, "nothing logged");
        assert_eq!(engine.len(0, b"s"), 2);
        // A key that did not exist and was created since.
        run(&engine, vec![xadd("missing", IdSpec::Auto, "x")], |_| {}).await?;
        assert!(engine.exec(vec![TxOp::Read], &[unrelated], None)?.is_none());
        Ok(())
    })
}

#[test]
fn transactions_survive_restarts_and_power_cuts() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    // Checkpoints all the time: transactions are journaled while snapshots are written.
    let config = config();
    let engine = open(&disk, config.clone())?;
    let rt = runtime();
    rt.block_on(async {
        run(
            &engine,
            vec![TxOp::Group(GroupTx::Create {
                db: 0,
                key: b("s"),
                group: b("g"),
                start: manifold_core::engine::GroupStart::Id(StreamId::default()),
                mkstream: true,
                entries_read: None,
            })],
            |_| {},
        )
        .await?;
        for round in 0..200u64 {
            let consumer = b(&format!("c{}", round % 3));
            run(
                &engine,
                vec![
                    xadd("s", IdSpec::Auto, "a"),
                    xadd("t", IdSpec::Auto, "b"),
                    TxOp::Group(GroupTx::Read {
                        db: 0,
                        group: b("g"),
                        consumer,
                        streams: vec![(b("s"), ReadFrom::New)],
                        count: 1,
                        noack: false,
                    }),
                    TxOp::Trim {
                        db: 0,
                        key: b("t"),
                        trim: manifold_core::engine::Trim::max_len(10),
                    },
                ],
                |_| {},
            )
            .await?;
        }
        Ok::<_, EngineError>(())
    })?;
    let digest = engine.state_digest();
    let pending = engine.pending_summary(0, b"s", b"g")?;
    assert_eq!(pending.count, 200);
    let after = disk.crash(CrashMode::DropUnsynced);
    drop(engine);
    let engine = open(&after, config)?;
    assert_eq!(engine.state_digest(), digest);
    assert_eq!(engine.pending_summary(0, b"s", b"g")?, pending);
    assert_eq!(engine.len(0, b"s"), 200);
    assert_eq!(engine.len(0, b"t"), 10);
    Ok(())
}

/// Pipelined appends (`append_many`), single appends and transactions from many tasks at
/// once: every one is answered, in its own order, and the log is applied in order (a
/// proposal handed to the applier out of log order stops the engine).
#[test]
fn concurrent_pipelines_appends_and_transactions_all_apply() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = Arc::new(open(&disk, config())?);
    let rt = runtime();
    rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let key = format!("s{}", t % 3);
                    for round in 0..40 {
                        let reqs = (0..5)
                            .map(|_| AppendRequest::new(0, b(&key), vec![(b("f"), b("v"))]))
                            .collect();
                        for answer in engine.append_many(reqs).await {
                            answer?.expect("an ID");
                        }
                        engine
                            .append(AppendRequest::new(0, b(&key), vec![(b("f"), b("w"))]))
                            .await?
                            .expect("an ID");
                        if round % 10 == 0 {
                            run(&engine, vec![xadd(&key, IdSpec::Auto, "t")], |_| {}).await?;
                        }
                    }
                    Ok::<_, EngineError>(())
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task")?;
        }
        Ok::<_, EngineError>(())
    })?;
    let total: u64 = (0..3)
        .map(|k| engine.len(0, format!("s{k}").as_bytes()))
        .sum();
    assert_eq!(total, 8 * 40 * 6 + 8 * 4);
    Ok(())
}
