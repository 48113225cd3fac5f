//! Model-based test of consumer groups: random sequences of appends, XDEL, trims, group reads
//! (new and history, NOACK), acks, claims (FORCE, JUSTID, RETRYCOUNT), autoclaims, SETID and
//! DELCONSUMER against a small in-memory model of Redis 7.0's rules, across clean restarts and
//! power cuts. Every reply is compared, and after every step the pending list (ID, owner,
//! delivery count), the consumers and the group's last ID.
//!
//! Claims use a min-idle of 0, so the model needs no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use manifold_core::engine::{
    AppendRequest, Claim, Engine, EngineConfig, EngineError, GroupStart, IdSpec, PendingQuery,
    ReadFrom, RetainEffect, Trim,
};
use manifold_core::store::{CqConfig, CrashMode, LogConfig, SimDisk, StoreConfig, StreamId};
use proptest::prelude::*;

const CONSUMERS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    Add(u8),
    Del(u8),
    TrimTo(u8),
    ReadNew {
        c: u8,
        count: u8,
        noack: bool,
    },
    ReadHistory {
        c: u8,
        after: u8,
        count: u8,
    },
    Ack(Vec<u8>),
    Claim {
        c: u8,
        ids: Vec<u8>,
        force: bool,
        justid: bool,
        retry: Option<u8>,
    },
    AutoClaim {
        c: u8,
        start: u8,
        count: u8,
        justid: bool,
    },
    SetId(u8),
    DelConsumer(u8),
    Restart,
    PowerCut,
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0u8..3;
    let ids = proptest::collection::vec(any::<u8>(), 0..4);
    prop_oneof![
        5 => (1u8..5).prop_map(Op::Add),
        1 => any::<u8>().prop_map(Op::Del),
        1 => (0u8..8).prop_map(Op::TrimTo),
        5 => (c.clone(), 0u8..4, proptest::bool::weighted(0.15))
            .prop_map(|(c, count, noack)| Op::ReadNew { c, count, noack }),
        2 => (c.clone(), any::<u8>(), 0u8..4).prop_map(|(c, after, count)| Op::ReadHistory { c, after, count }),
        2 => ids.clone().prop_map(Op::Ack),
        2 => (c.clone(), ids, any::<bool>(), any::<bool>(), proptest::option::of(0u8..5))
            .prop_map(|(c, ids, force, justid, retry)| Op::Claim { c, ids, force, justid, retry }),
        2 => (c.clone(), any::<u8>(), 1u8..4, any::<bool>())
            .prop_map(|(c, start, count, justid)| Op::AutoClaim { c, start, count, justid }),
        1 => any::<u8>().prop_map(Op::SetId),
        1 => c.prop_map(Op::DelConsumer),
        1 => Just(Op::Restart),
        1 => Just(Op::PowerCut),
    ]
}

/// Redis 7.0 as far as this test drives it: one stream, one group.
#[derive(Debug, Default)]
struct Model {
    /// Every ID ever added, with whether it is still in the stream.
    added: Vec<(StreamId, bool)>,
    last_id: StreamId,
    pel: BTreeMap<StreamId, (String, u64)>,
    consumers: BTreeSet<String>,
}

impl Model {
    fn live(&self, id: StreamId) -> bool {
        self.added.iter().any(|(i, l)| *i == id && *l)
    }

    /// The `n`-th ID ever added (wrapping), or one never added.
    fn pick(&self, n: u8) -> StreamId {
        if self.added.is_empty() || n % 8 == 7 {
            return StreamId::new(1000 + u64::from(n), 0);
        }
        self.added[usize::from(n) % self.added.len()].0
    }

    fn give(&mut self, id: StreamId, c: &str, count: u64) {
        self.pel.insert(id, (c.to_string(), count));
        self.consumers.insert(c.to_string());
    }

    fn read_new(&mut self, c: &str, count: u8, noack: bool) -> Option<Vec<StreamId>> {
        let limit = if count == 0 {
            usize::MAX
        } else {
            usize::from(count)
        };
        let out: Vec<StreamId> = self
            .added
            .iter()
            .filter(|(id, live)| *live && *id > self.last_id)
            .map(|(id, _)| *id)
            .take(limit)
            .collect();
        if out.is_empty() {
            return None;
        }
        self.consumers.insert(c.to_string());
        for id in &out {
            self.last_id = *id;
            if !noack {
                self.give(*id, c, 1);
            }
        }
        Some(out)
    }

    fn read_history(&mut self, c: &str, after: StreamId, count: u8) -> Vec<(StreamId, bool)> {
        self.consumers.insert(c.to_string());
        let limit = if count == 0 {
            usize::MAX
        } else {
            usize::from(count)
        };
        let mine: Vec<StreamId> = self
            .pel
            .iter()
            .filter(|(id, (owner, _))| owner == c && **id > after)
            .map(|(id, _)| *id)
            .take(limit)
            .collect();
        mine.into_iter()
            .map(|id| {
                let live = self.live(id);
                if live && let Some(p) = self.pel.get_mut(&id) {
                    p.1 += 1;
                }
                (id, live)
            })
            .collect()
    }

    fn claim(
        &mut self,
        c: &str,
        ids: &[StreamId],
        force: bool,
        justid: bool,
        retry: Option<u64>,
    ) -> Vec<StreamId> {
        let mut out = Vec::new();
        for id in ids {
            if !self.live(*id) {
                self.pel.remove(id);
                continue;
            }
            let base = match self.pel.get(id) {
                Some((_, n)) => *n,
                None if force => 1,
                None => continue,
            };
            let count = retry.unwrap_or(if justid { base } else { base + 1 });
            self.give(*id, c, count);
            out.push(*id);
        }
        out
    }

    fn autoclaim(
        &mut self,
        c: &str,
        start: StreamId,
        count: u64,
        justid: bool,
    ) -> (StreamId, Vec<StreamId>, Vec<StreamId>) {
        let mut attempts = count * 10;
        let mut left = count;
        let (mut claimed, mut deleted) = (Vec::new(), Vec::new());
        let scan: Vec<StreamId> = self.pel.range(start..).map(|(id, _)| *id).collect();
        for id in scan {
            if attempts == 0 || left == 0 {
                return (id, claimed, deleted);
            }
            attempts -= 1;
            left -= 1;
            if !self.live(id) {
                self.pel.remove(&id);
                deleted.push(id);
                continue;
            }
            let n = self.pel.get(&id).map_or(0, |p| p.1);
            self.give(id, c, if justid { n } else { n + 1 });
            claimed.push(id);
        }
        (StreamId::default(), claimed, deleted)
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        store: StoreConfig {
            log: LogConfig {
                segment_size: 64 * 1024,
                index_records_per_file: 256,
                ..LogConfig::default()
            },
            queues: CqConfig {
                arena_file_slots: 64,
                ..CqConfig::default()
            },
            // A snapshot and checkpoint after every batch: restarts load snapshots mid-run.
            dispatch_checkpoint_interval_ms: 0,
            ..StoreConfig::default()
        },
        ..EngineConfig::default()
    }
}

fn open(disk: &SimDisk) -> Result<Engine, EngineError> {
    Engine::open(Arc::new(disk.clone()), &PathBuf::from("/data"), config())
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn fail(e: EngineError) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut disk = SimDisk::new();
    let mut engine = open(&disk).map_err(fail)?;
    let mut m = Model::default();
    let mut next_ms = 1u64;
    rt.block_on(engine.group_create(
        0,
        b("s"),
        b("g"),
        GroupStart::Id(StreamId::default()),
        true,
        None,
    ))
    .map_err(fail)?;
    for op in ops {
        match op.clone() {
            Op::Add(n) => {
                for _ in 0..n {
                    let id = StreamId::new(next_ms, 0);
                    next_ms += 1;
                    let r = AppendRequest {
                        db: 0,
                        key: b("s"),
                        id: IdSpec::Explicit(id),
                        fields: vec![(b("f"), b(&id.to_string()))],
                        properties: Vec::new(),
                        message_key: Bytes::new(),
                        nomkstream: false,
                        trim: None,
                        retain: RetainEffect::None,
                        producer: None,
                    };
                    rt.block_on(engine.append(r)).map_err(fail)?;
                    m.added.push((id, true));
                }
            }
            Op::Del(n) => {
                let id = m.pick(n);
                let existed = rt
                    .block_on(engine.delete(0, b("s"), vec![id]))
                    .map_err(fail)?;
                let was = m.live(id);
                prop_assert_eq!(existed, u64::from(was), "XDEL {}", id);
                m.added
                    .iter_mut()
                    .filter(|(i, _)| *i == id)
                    .for_each(|e| e.1 = false);
            }
            Op::TrimTo(keep) => {
                rt.block_on(engine.trim(0, b("s"), Trim::max_len(u64::from(keep))))
                    .map_err(fail)?;
                let mut excess = m
                    .added
                    .iter()
                    .filter(|(_, l)| *l)
                    .count()
                    .saturating_sub(usize::from(keep));
                for e in m.added.iter_mut() {
                    if excess == 0 {
                        break;
                    }
                    if e.1 {
                        e.1 = false;
                        excess -= 1;
                    }
                }
            }
            Op::ReadNew { c, count, noack } => {
                let name = CONSUMERS[usize::from(c)];
                let served = rt
                    .block_on(engine.read_group(
                        0,
                        b("g"),
                        b(name),
                        vec![(b("s"), ReadFrom::New)],
                        u64::from(count),
                        noack,
                    ))
                    .map_err(fail)?;
                let got = served
                    .first()
                    .map(|(_, e)| e.iter().map(|e| e.id).collect::<Vec<_>>());
                let want = m.read_new(name, count, noack);
                prop_assert_eq!(got, want, "XREADGROUP >");
                for (_, entries) in &served {
                    for e in entries {
                        let msg = e.message.as_ref().ok_or_else(|| {
                            TestCaseError::fail("a new entry without its message")
                        })?;
                        prop_assert_eq!(&msg.fields[0].1, &b(&e.id.to_string()));
                    }
                }
            }
            Op::ReadHistory { c, after, count } => {
                let name = CONSUMERS[usize::from(c)];
                let after = if after % 4 == 0 {
                    StreamId::default()
                } else {
                    m.pick(after)
                };
                let served = rt
                    .block_on(engine.read_group(
                        0,
                        b("g"),
                        b(name),
                        vec![(b("s"), ReadFrom::Pending(after))],
                        u64::from(count),
                        false,
                    ))
                    .map_err(fail)?;
                let got: Vec<(StreamId, bool)> = served
                    .first()
                    .map(|(_, e)| e.iter().map(|e| (e.id, e.message.is_some())).collect())
                    .unwrap_or_default();
                prop_assert_eq!(
                    got,
                    m.read_history(name, after, count),
                    "XREADGROUP history"
                );
            }
            Op::Ack(ns) => {
                let ids: Vec<StreamId> = ns.iter().map(|n| m.pick(*n)).collect();
                let acked = rt
                    .block_on(engine.ack(0, b("s"), b("g"), ids.clone()))
                    .map_err(fail)?;
                let want = ids
                    .iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|id| m.pel.remove(id).is_some())
                    .count();
                prop_assert_eq!(acked, want as u64, "XACK");
            }
            Op::Claim {
                c,
                ids,
                force,
                justid,
                retry,
            } => {
                let name = CONSUMERS[usize::from(c)];
                let ids: Vec<StreamId> = ids.iter().map(|n| m.pick(*n)).collect();
                let claim = Claim {
                    consumer: b(name),
                    min_idle_ms: 0,
                    ids: ids.clone(),
                    delivered: None,
                    retry_count: retry.map(u64::from),
                    force,
                    justid,
                    last_id: None,
                };
                let got: Vec<StreamId> = rt
                    .block_on(engine.claim(0, b("s"), b("g"), claim))
                    .map_err(fail)?
                    .iter()
                    .map(|e| e.id)
                    .collect();
                prop_assert_eq!(
                    got,
                    m.claim(name, &ids, force, justid, retry.map(u64::from)),
                    "XCLAIM"
                );
            }
            Op::AutoClaim {
                c,
                start,
                count,
                justid,
            } => {
                let name = CONSUMERS[usize::from(c)];
                let start = if start % 3 == 0 {
                    StreamId::default()
                } else {
                    m.pick(start)
                };
                let got = rt
                    .block_on(engine.autoclaim(
                        0,
                        b("s"),
                        b("g"),
                        b(name),
                        0,
                        start,
                        u64::from(count),
                        justid,
                    ))
                    .map_err(fail)?;
                let (next, claimed, deleted) = m.autoclaim(name, start, u64::from(count), justid);
                prop_assert_eq!(got.next, next, "XAUTOCLAIM cursor");
                prop_assert_eq!(
                    got.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
                    claimed,
                    "XAUTOCLAIM claimed"
                );
                prop_assert_eq!(got.deleted, deleted, "XAUTOCLAIM deleted");
            }
            Op::SetId(n) => {
                let id = if n % 5 == 0 {
                    StreamId::default()
                } else {
                    m.pick(n)
                };
                rt.block_on(engine.group_set_id(0, b("s"), b("g"), GroupStart::Id(id), None))
                    .map_err(fail)?;
                m.last_id = id;
            }
            Op::DelConsumer(c) => {
                let name = CONSUMERS[usize::from(c)];
                let had = rt
                    .block_on(engine.consumer_delete(0, b("s"), b("g"), b(name)))
                    .map_err(fail)?;
                let before = m.pel.len();
                m.pel.retain(|_, (owner, _)| owner != name);
                m.consumers.remove(name);
                prop_assert_eq!(had, (before - m.pel.len()) as u64, "DELCONSUMER");
            }
            Op::Restart => {
                let digest = engine.state_digest();
                engine.close().map_err(fail)?;
                engine = open(&disk).map_err(fail)?;
                prop_assert_eq!(engine.state_digest(), digest, "state after a clean restart");
            }
            Op::PowerCut => {
                let digest = engine.state_digest();
                let after = disk.crash(CrashMode::DropUnsynced);
                drop(engine);
                disk = after;
                engine = open(&disk).map_err(fail)?;
                prop_assert_eq!(engine.state_digest(), digest, "state after a power cut");
            }
        }
        // The stream as the engine holds it, step by step.
        let ids: Vec<StreamId> = engine
            .read_range(0, b"s", Bound::Unbounded, Bound::Unbounded, None, false)
            .map_err(fail)?
            .iter()
            .map(|msg| msg.id)
            .collect();
        let live: Vec<StreamId> = m
            .added
            .iter()
            .filter(|(_, l)| *l)
            .map(|(i, _)| *i)
            .collect();
        prop_assert_eq!(&ids, &live, "stream after {:?}", op);
        prop_assert_eq!(
            engine.len(0, b"s"),
            live.len() as u64,
            "XLEN after {:?}",
            op
        );
        // The group as the engine holds it, step by step.
        let all = PendingQuery {
            start: StreamId::default(),
            end: StreamId::new(u64::MAX, u64::MAX),
            count: u64::MAX,
            consumer: None,
            min_idle_ms: None,
        };
        let pel: BTreeMap<StreamId, (String, u64)> = engine
            .pending(0, b"s", b"g", &all)
            .map_err(fail)?
            .into_iter()
            .map(|p| {
                (
                    p.id,
                    (String::from_utf8_lossy(&p.consumer).into_owned(), p.count),
                )
            })
            .collect();
        prop_assert_eq!(&pel, &m.pel, "pending list after {:?}", op);
        let consumers: BTreeSet<String> = engine
            .consumers_info(0, b"s", b"g")
            .map_err(fail)?
            .unwrap_or_default()
            .iter()
            .map(|c| String::from_utf8_lossy(&c.name).into_owned())
            .collect();
        prop_assert_eq!(&consumers, &m.consumers, "consumers after {:?}", op);
        let info = engine
            .groups_info(0, b"s")
            .map_err(fail)?
            .unwrap_or_default();
        prop_assert_eq!(
            info.first().map(|g| g.last_delivered_id),
            Some(m.last_id),
            "last ID after {:?}",
            op
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn groups_match_a_model_of_redis_across_restarts_and_power_cuts(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        run(ops)?;
    }
}
