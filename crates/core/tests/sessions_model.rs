//! Model-based test of MQTT persistent sessions: random opens (clean or not), subscribes
//! (overlapping filters), unsubscribes, publishes, deliveries with packet ids, completions,
//! disconnects and expiry-0 closes, across clean restarts and power cuts, against a small
//! model counting publishes. After every step the session (existence, subscriptions, cursor,
//! packets in flight) and what it still has to receive (topics, payloads, QoS) are compared.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use manifold_core::engine::{
    AppendRequest, Engine, EngineConfig, EngineError, InFlightNew, SubscribeOptions, topic_filter,
};
use manifold_core::store::{CrashMode, SimDisk};
use proptest::prelude::*;

const TOPICS: [&str; 3] = ["a/1", "a/2", "b/1"];
const FILTERS: [&str; 4] = ["a/+", "a/1", "#", "b/#"];
const CLIENT: &[u8] = b"dev";

#[derive(Debug, Clone)]
enum Op {
    Open { clean: bool },
    Subscribe { filter: u8, qos: u8 },
    Unsubscribe { filter: u8 },
    Publish { topic: u8 },
    Deliver,
    Complete { nth: u8 },
    Close { end: bool },
    Restart,
    PowerCut,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => any::<bool>().prop_map(|clean| Op::Open { clean }),
        2 => (0u8..4, 0u8..3).prop_map(|(filter, qos)| Op::Subscribe { filter, qos }),
        1 => (0u8..4).prop_map(|filter| Op::Unsubscribe { filter }),
        4 => (0u8..3).prop_map(|topic| Op::Publish { topic }),
        2 => Just(Op::Deliver),
        1 => any::<u8>().prop_map(|nth| Op::Complete { nth }),
        1 => proptest::bool::weighted(0.2).prop_map(|end| Op::Close { end }),
        1 => Just(Op::Restart),
        1 => Just(Op::PowerCut),
    ]
}

/// The session as the model sees it; positions are counts of publishes.
#[derive(Debug, Default, Clone)]
struct Model {
    /// Topic of every publish, in order (publish k is `published[k - 1]`).
    published: Vec<&'static str>,
    session: Option<ModelSession>,
}

#[derive(Debug, Default, Clone)]
struct ModelSession {
    /// filter → (qos, publishes before the subscription).
    subs: BTreeMap<&'static str, (u8, usize)>,
    /// Publishes handed out.
    cursor: usize,
    /// packet id → publish number.
    inflight: BTreeMap<u16, usize>,
    next_packet: u16,
}

impl Model {
    /// `(publish number, topic, qos)` still to receive.
    fn pending(&self) -> Vec<(usize, &'static str, u8)> {
        let Some(s) = &self.session else {
            return Vec::new();
        };
        (s.cursor + 1..=self.published.len())
            .filter_map(|k| {
                let topic = self.published[k - 1];
                s.subs
                    .iter()
                    .filter(|(f, (_, since))| {
                        *since < k && topic_filter::filter_matches(f.as_bytes(), topic.as_bytes())
                    })
                    .map(|(_, (q, _))| *q)
                    .max()
                    .map(|q| (k, topic, q))
            })
            .collect()
    }
}

fn config() -> EngineConfig {
    support::small_config()
}

fn open(disk: &SimDisk) -> Result<Engine, EngineError> {
    Engine::open(Arc::new(disk.clone()), &PathBuf::from("/data"), config())
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
    // Log index of every publish, in order.
    let mut index_of: Vec<u64> = Vec::new();
    let client = Bytes::from_static(CLIENT);
    for op in ops {
        match op.clone() {
            Op::Open { clean } => {
                let present = rt
                    .block_on(engine.session_open(client.clone(), clean, 3600, None))
                    .map_err(fail)?;
                if clean {
                    m.session = None;
                }
                prop_assert_eq!(present, m.session.is_some(), "session present");
                if m.session.is_none() {
                    m.session = Some(ModelSession {
                        cursor: m.published.len(),
                        next_packet: 1,
                        ..ModelSession::default()
                    });
                }
            }
            Op::Subscribe { filter, qos } => {
                let f = FILTERS[usize::from(filter)];
                let options = SubscribeOptions {
                    qos,
                    ..SubscribeOptions::default()
                };
                let r = rt.block_on(engine.session_subscribe(
                    client.clone(),
                    vec![(Bytes::from_static(f.as_bytes()), options)],
                ));
                match &mut m.session {
                    Some(s) => {
                        r.map_err(fail)?;
                        // A re-subscribe replaces the QoS and keeps matching from where the
                        // subscription did (MQTT 3.8.4: the flow is not interrupted).
                        let since = s.subs.get(f).map_or(m.published.len(), |(_, since)| *since);
                        s.subs.insert(f, (qos, since));
                    }
                    None => prop_assert!(r.is_err(), "subscribe without a session"),
                }
            }
            Op::Unsubscribe { filter } => {
                let f = FILTERS[usize::from(filter)];
                let r =
                    rt.block_on(engine.session_unsubscribe(
                        client.clone(),
                        vec![Bytes::from_static(f.as_bytes())],
                    ));
                match &mut m.session {
                    Some(s) => {
                        let was = s.subs.remove(f).is_some();
                        prop_assert_eq!(r.map_err(fail)?, vec![was]);
                    }
                    None => prop_assert!(r.is_err()),
                }
            }
            Op::Publish { topic } => {
                let t = TOPICS[usize::from(topic)];
                let k = m.published.len() + 1;
                let req = AppendRequest::new(
                    0,
                    Bytes::from_static(t.as_bytes()),
                    vec![(Bytes::from_static(b"payload"), Bytes::from(k.to_string()))],
                );
                let id = rt.block_on(engine.append(req)).map_err(fail)?.expect("id");
                let msg = engine
                    .read_range(
                        0,
                        t.as_bytes(),
                        Bound::Included(id),
                        Bound::Included(id),
                        Some(1),
                        false,
                    )
                    .map_err(fail)?;
                index_of.push(msg[0].log_index);
                m.published.push(t);
            }
            Op::Deliver => {
                let Some(s) = &mut m.session else { continue };
                let read = engine.session_pending(CLIENT, 1000).map_err(fail)?;
                let mut inflight = Vec::new();
                for msg in &read.messages {
                    if msg.qos > 0 {
                        let k: usize = String::from_utf8_lossy(&msg.message.fields[0].1)
                            .parse()
                            .map_err(|_| TestCaseError::fail("payload"))?;
                        let pid = s.next_packet;
                        s.next_packet = s.next_packet.wrapping_add(1).max(1);
                        inflight.push(InFlightNew {
                            packet_id: pid,
                            log_index: msg.message.log_index,
                            sub: msg.message.sub,
                            qos: msg.qos,
                            shared: None,
                        });
                        s.inflight.insert(pid, k);
                    }
                }
                rt.block_on(engine.session_deliver(client.clone(), read.upto, inflight))
                    .map_err(fail)?;
                s.cursor = index_of
                    .iter()
                    .filter(|i| **i <= read.upto)
                    .count()
                    .max(s.cursor);
            }
            Op::Complete { nth } => {
                let Some(s) = &mut m.session else { continue };
                let Some(pid) = s
                    .inflight
                    .keys()
                    .nth(usize::from(nth) % s.inflight.len().max(1))
                    .copied()
                else {
                    continue;
                };
                rt.block_on(engine.session_complete(client.clone(), pid))
                    .map_err(fail)?;
                s.inflight.remove(&pid);
            }
            Op::Close { end } => {
                let r = rt.block_on(engine.session_close(client.clone(), end.then_some(0), false));
                match m.session {
                    Some(_) => r.map_err(fail)?,
                    None => prop_assert!(r.is_err()),
                }
                if end {
                    m.session = None;
                }
            }
            Op::Restart => {
                let digest = engine.state_digest();
                engine.close().map_err(fail)?;
                engine = open(&disk).map_err(fail)?;
                prop_assert_eq!(engine.state_digest(), digest);
            }
            Op::PowerCut => {
                let digest = engine.state_digest();
                let after = disk.crash(CrashMode::DropUnsynced);
                drop(engine);
                disk = after;
                engine = open(&disk).map_err(fail)?;
                prop_assert_eq!(engine.state_digest(), digest);
            }
        }
        // The session as the engine holds it.
        let got = engine.session(CLIENT);
        prop_assert_eq!(got.is_some(), m.session.is_some(), "exists after {:?}", op);
        if let (Some(g), Some(s)) = (got, &m.session) {
            let subs: BTreeMap<String, u8> = g
                .subscriptions
                .iter()
                .map(|(f, sub)| (String::from_utf8_lossy(f).into_owned(), sub.options.qos))
                .collect();
            let want: BTreeMap<String, u8> = s
                .subs
                .iter()
                .map(|(f, (q, _))| (f.to_string(), *q))
                .collect();
            prop_assert_eq!(subs, want, "subscriptions after {:?}", op);
            let cursor = index_of.iter().filter(|i| **i <= g.cursor).count();
            prop_assert_eq!(cursor, s.cursor, "cursor after {:?}", op);
            let pids: BTreeSet<u16> = g.inflight.keys().copied().collect();
            prop_assert_eq!(pids, s.inflight.keys().copied().collect::<BTreeSet<_>>());
            let pending: Vec<(usize, String, u8)> = engine
                .session_pending(CLIENT, 1000)
                .map_err(fail)?
                .messages
                .iter()
                .map(|msg| {
                    (
                        String::from_utf8_lossy(&msg.message.fields[0].1)
                            .parse()
                            .unwrap_or(0),
                        String::from_utf8_lossy(&msg.topic).into_owned(),
                        msg.qos,
                    )
                })
                .collect();
            let want: Vec<(usize, String, u8)> = m
                .pending()
                .into_iter()
                .map(|(k, t, q)| (k, t.to_string(), q))
                .collect();
            prop_assert_eq!(pending, want, "pending after {:?}", op);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn sessions_match_a_model_across_restarts_and_power_cuts(ops in proptest::collection::vec(op(), 1..50)) {
        run(ops)?;
    }
}
