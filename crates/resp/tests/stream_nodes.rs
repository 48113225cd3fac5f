//! Approximate trims (`~`) and XINFO's `radix-tree-keys` against a real `redis-server`: both
//! servers set to small stream nodes (8 entries, 256 bytes), random XADDs of fields and values
//! of many sizes (integers too, which Redis packs smaller), XDELs, XTRIM and XADD with MAXLEN /
//! MINID, `=` and `~`, with and without LIMIT. Every reply must be the same, so Manifold packs
//! the stream into the nodes Redis does and cuts the same whole nodes.

mod support;

use manifold_core::engine::EngineConfig;
use manifold_core::store::{NodeLimits, StoreConfig};
use proptest::prelude::*;
use support::{Manifold, Raw, Redis, Resp, show};

const NODE_ENTRIES: u32 = 8;
const NODE_BYTES: u32 = 256;

#[derive(Debug, Clone)]
enum Op {
    /// XADD with the `fields`-th field names, values of the `size`-th kind, the ID moved on by
    /// `step` (0: same ms, next sequence; else that many ms, sequence `seq`).
    Add {
        fields: u8,
        size: u8,
        step: u8,
        seq: u8,
        cap: Option<(u8, bool)>,
    },
    /// XDEL of the `nth` ID added so far.
    Del { nth: u8 },
    /// XTRIM MAXLEN (`Some`) or MINID (the `nth` ID added), `~` or `=`, maybe with a LIMIT.
    Trim {
        maxlen: Option<u8>,
        nth: u8,
        approx: bool,
        limit: Option<u8>,
    },
    /// XINFO STREAM's length, radix-tree-keys, first and last entry; XRANGE.
    Look,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0u8..5, 0u8..8, 0u8..4, 0u8..4, proptest::option::weighted(0.1, (0u8..40, any::<bool>())))
            .prop_map(|(fields, size, step, seq, cap)| Op::Add { fields, size, step, seq, cap }),
        3 => any::<u8>().prop_map(|nth| Op::Del { nth }),
        2 => (proptest::option::of(0u8..40), any::<u8>(), any::<bool>(), proptest::option::of(0u8..30))
            .prop_map(|(maxlen, nth, approx, limit)| Op::Trim { maxlen, nth, approx, limit }),
        1 => Just(Op::Look),
    ]
}

/// Field names: the same set often (Redis then leaves the names out of the node), others now
/// and then, one that is an integer.
fn field_names(kind: u8) -> &'static [&'static str] {
    match kind {
        0 | 1 => &["f"],
        2 => &["f", "g"],
        3 => &["1", "b"],
        _ => &["payload"],
    }
}

/// A value of the `kind`-th size: empty, one byte, integers (packed small), and strings whose
/// lengths cross the listpack's size classes (64 bytes; an element over 127 bytes).
fn value(kind: u8, n: usize) -> String {
    match kind {
        0 => String::new(),
        1 => "v".into(),
        2 => (n % 100).to_string(),
        3 => format!("-{}", 5000 + n),
        4 => "x".repeat(20),
        5 => "y".repeat(63 + n % 3),
        6 => "z".repeat(120 + n % 20),
        _ => "w".repeat(240),
    }
}

fn xinfo_fields(reply: &[u8]) -> Vec<(String, String)> {
    let (r, _) = Resp::parse(reply);
    let Resp::Many(_, Some(items)) = r else {
        return vec![("reply".into(), show(reply))];
    };
    let mut out = Vec::new();
    for pair in items.chunks(2) {
        if let [Resp::Bulk(_, Some(name)), value] = pair {
            let name = String::from_utf8_lossy(name).into_owned();
            if ["length", "radix-tree-keys", "first-entry", "last-entry"].contains(&name.as_str()) {
                out.push((name, format!("{value:?}")));
            }
        }
    }
    out
}

fn run(manifold: &Manifold, redis: &Redis, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut ours = Raw::connect(manifold.addr);
    let mut theirs = Raw::connect(redis.addr);
    ours.cmd(&["FLUSHALL"]);
    theirs.cmd(&["FLUSHALL"]);
    let mut ids: Vec<String> = Vec::new();
    let (mut ms, mut seq) = (1u64, 0u64);
    for (n, op) in ops.iter().enumerate() {
        let cmd: Vec<String> = match op {
            Op::Add {
                fields,
                size,
                step,
                seq: s,
                cap,
            } => {
                if *step == 0 {
                    seq += 1;
                } else {
                    ms += u64::from(*step) * 1000;
                    seq = u64::from(*s);
                }
                let id = format!("{ms}-{seq}");
                let mut v = vec!["XADD".to_string(), "s".into()];
                if let Some((len, approx)) = cap {
                    v.extend(["MAXLEN".into(), if *approx { "~" } else { "=" }.into()]);
                    v.push(len.to_string());
                }
                v.push(id.clone());
                for f in field_names(*fields) {
                    v.extend([f.to_string(), value(*size, n)]);
                }
                ids.push(id);
                v
            }
            Op::Del { nth } => {
                let Some(id) = ids.get(*nth as usize % ids.len().max(1)) else {
                    continue;
                };
                vec!["XDEL".into(), "s".into(), id.clone()]
            }
            Op::Trim {
                maxlen,
                nth,
                approx,
                limit,
            } => {
                let how = if *approx { "~" } else { "=" };
                let mut v = vec!["XTRIM".to_string(), "s".into()];
                match maxlen {
                    Some(len) => v.extend(["MAXLEN".into(), how.into(), len.to_string()]),
                    None => {
                        let id = ids
                            .get(*nth as usize % ids.len().max(1))
                            .cloned()
                            .unwrap_or_else(|| "0-1".into());
                        v.extend(["MINID".into(), how.into(), id]);
                    }
                }
                if let (Some(l), true) = (limit, approx) {
                    v.extend(["LIMIT".into(), l.to_string()]);
                }
                v
            }
            Op::Look => {
                let args = ["XINFO", "STREAM", "s"];
                let want = theirs.cmd(&args);
                let got = ours.cmd(&args);
                prop_assert_eq!(xinfo_fields(&got), xinfo_fields(&want), "XINFO STREAM");
                vec!["XRANGE".into(), "s".into(), "-".into(), "+".into()]
            }
        };
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let want = theirs.cmd(&args);
        let got = ours.cmd(&args);
        prop_assert_eq!(show(&got), show(&want), "reply to {:?}", cmd);
        let args = ["XINFO", "STREAM", "s"];
        let (want, got) = (theirs.cmd(&args), ours.cmd(&args));
        prop_assert_eq!(
            xinfo_fields(&got),
            xinfo_fields(&want),
            "XINFO STREAM after {:?}",
            cmd
        );
    }
    let args = ["XINFO", "STREAM", "s"];
    let (want, got) = (theirs.cmd(&args), ours.cmd(&args));
    prop_assert_eq!(
        xinfo_fields(&got),
        xinfo_fields(&want),
        "XINFO STREAM at the end"
    );
    Ok(())
}

/// Manifold and redis-server, both with nodes of `NODE_ENTRIES` entries and `NODE_BYTES` bytes.
fn servers() -> (Manifold, Redis) {
    let nodes = NodeLimits {
        max_entries: NODE_ENTRIES,
        max_bytes: NODE_BYTES,
    };
    let manifold = Manifold::start_with_config(EngineConfig {
        store: StoreConfig {
            stream_nodes: nodes,
            ..StoreConfig::default()
        },
        ..EngineConfig::default()
    });
    let redis = Redis::start_with(&[
        "--stream-node-max-entries",
        &NODE_ENTRIES.to_string(),
        "--stream-node-max-bytes",
        &NODE_BYTES.to_string(),
    ]);
    (manifold, redis)
}

#[test]
fn approximate_trims_cut_the_nodes_redis_cuts() {
    let (manifold, redis) = servers();
    // The settings as both servers report them.
    let mut ours = Raw::connect(manifold.addr);
    let mut theirs = Raw::connect(redis.addr);
    for name in ["stream-node-max-entries", "stream-node-max-bytes"] {
        let args = ["CONFIG", "GET", name];
        assert_eq!(show(&ours.cmd(&args)), show(&theirs.cmd(&args)));
    }
    let mut runner = support::runner(64, file!());
    let strategy = proptest::collection::vec(op(), 1..300);
    if let Err(e) = runner.run(&strategy, |ops| run(&manifold, &redis, ops)) {
        panic!("{e}");
    }
}

/// In a stream of hundreds of nodes, XDEL of the newest node (one large entry) and the next
/// entry goes into the node before it, which has room, as in Redis; then `~` trims agree.
#[test]
fn after_the_newest_node_goes_the_next_entry_joins_the_one_before_in_a_long_stream() {
    let (manifold, redis) = servers();
    let mut ours = Raw::connect(manifold.addr);
    let mut theirs = Raw::connect(redis.addr);
    let both = |ours: &mut Raw, theirs: &mut Raw, args: &[&str]| {
        let want = theirs.cmd(args);
        let got = ours.cmd(args);
        assert_eq!(show(&got), show(&want), "reply to {args:?}");
    };
    // 3,003 entries: 376 nodes of 8, the last with 3.
    for ms in 1..=3003 {
        both(
            &mut ours,
            &mut theirs,
            &["XADD", "s", &format!("{ms}-1"), "f", "v"],
        );
    }
    let large = "x".repeat(300);
    both(
        &mut ours,
        &mut theirs,
        &["XADD", "s", "3004-1", "f", &large],
    );
    both(&mut ours, &mut theirs, &["XDEL", "s", "3004-1"]);
    both(&mut ours, &mut theirs, &["XADD", "s", "3005-1", "f", "v"]);
    // radix-tree-nodes is not modelled: the fields that are.
    let args = ["XINFO", "STREAM", "s"];
    let (got, want) = (ours.cmd(&args), theirs.cmd(&args));
    assert_eq!(xinfo_fields(&got), xinfo_fields(&want));
    assert!(
        show(&got).contains("radix-tree-keys\\r\\n:376\\r\\n"),
        "{}",
        show(&got)
    );
    both(&mut ours, &mut theirs, &["XTRIM", "s", "MAXLEN", "~", "5"]);
    both(&mut ours, &mut theirs, &["XLEN", "s"]);
}
