//! Raft timing and batching settings, with the defaults that give sub-second failover on a
//! LAN: heartbeats every 50 ms, an election after 300–600 ms without a leader.

use super::membership::Membership;
use super::message::NodeId;

/// Settings of one node's Raft core.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This node.
    pub id: NodeId,
    /// The bootstrap configuration (`--peers`): what is in force until the log holds a Config
    /// entry.
    pub members: Membership,
    /// This node's data directory (its `identity`): what its votes and acknowledgements
    /// count for (see `membership.rs`).
    pub incarnation: u64,
    /// Leader heartbeat interval (default 50 ms).
    pub heartbeat_ms: u64,
    /// A follower campaigns after a random time in `election_min_ms..election_max_ms` without
    /// hearing from a leader (default 300..600 ms). It is also the leader-stickiness window:
    /// a node that heard from a leader within `election_min_ms` refuses (pre-)votes, and the
    /// check-quorum period: a leader that heard from no majority within it steps down.
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Entries per append request the core asks for (default 1024; the driver also bounds
    /// each request in bytes).
    pub max_append_entries: u64,
    /// Append requests in flight per follower while it keeps up (default 64).
    pub max_inflight: usize,
    /// A follower that acknowledged nothing for this long while behind is probed again from
    /// its match index (a lost append; default 250 ms).
    pub resend_ms: u64,
    /// A commit index that advanced is pushed to followers that did not get it with an append
    /// within this delay (default 1 ms): readers on followers wake promptly, and a burst of
    /// commits costs one heartbeat.
    pub commit_push_ms: u64,
    /// A voter that should lead whenever it is up and caught up: another leader hands over
    /// to it (default none).
    pub preferred_leader: Option<NodeId>,
    /// Seed of the election-timeout randomness (mixed with `id`).
    pub seed: u64,
    /// A follower behind the retained log is offered an image (and probed, in case it
    /// installed one) at most this often (default 1000 ms).
    pub image_retry_ms: u64,
}

impl RaftConfig {
    /// Defaults for node `id` in a group bootstrapped with `voters` (no addresses: the
    /// driver's transport knows them), its directory's incarnation 1.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> RaftConfig {
        let members = Membership::bootstrap(
            &voters
                .iter()
                .map(|v| (*v, String::new()))
                .collect::<Vec<_>>(),
        );
        RaftConfig {
            id,
            members,
            incarnation: 1,
            heartbeat_ms: 50,
            election_min_ms: 300,
            election_max_ms: 600,
            max_append_entries: 1024,
            max_inflight: 64,
            resend_ms: 250,
            commit_push_ms: 1,
            preferred_leader: None,
            seed: 0x6d61_6e69_666f_6c64,
            image_retry_ms: 1000,
        }
    }
}

/// A small deterministic generator (SplitMix64): election timeouts replay exactly from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `lo..hi` (`lo` when the range is empty).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }
}
