//! The Raft core's rules, one at a time, by the actions it emits: elections with pre-vote,
//! the vote rules (the last entry's own term decides, one vote per term, stickiness),
//! check-quorum, conflict truncation and fast back-off, acknowledgement after fsync, the
//! current-term commit rule (Figure 8), commit pushes, leadership transfer, storage failure.

use bytes::Bytes;
use manifold_core::raft::{
    Action, AppendHeader, AppendReply, ConfigAt, Entry, Event, HardState, LogTerms, Member,
    MemberRole, Membership, MembershipChange, Message, NodeId, Raft, RaftConfig, Role, VoteReply,
    VoteRequest,
};

const VOTERS: [NodeId; 3] = [1, 2, 3];

/// A log whose entries `1..` have these terms.
fn log_of(terms: &[u64]) -> LogTerms {
    let mut l = LogTerms::new(0, 0);
    for t in terms {
        assert!(l.append(*t, 1));
    }
    l
}

fn node(id: NodeId, term: u64, terms: &[u64]) -> Raft {
    node_in(id, &VOTERS, term, terms)
}

/// Node `id` of `voters`; a non-empty log's first entry is the founding configuration that
/// pinned every voter to incarnation 1 (an empty log is a group not founded yet).
fn node_in(id: NodeId, voters: &[NodeId], term: u64, terms: &[u64]) -> Raft {
    let cfg = RaftConfig::new(id, voters.to_vec());
    let hard = HardState { term, voted_for: 0 };
    let mut r = Raft::new(cfg, hard, log_of(terms), 0, 0);
    if let Some(first) = terms.first() {
        r.restore_configs(vec![ConfigAt {
            index: 1,
            term: *first,
            members: pinned(voters),
        }]);
    }
    r
}

fn entries(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .map(|t| Entry {
            term: *t,
            data: Bytes::from_static(b"x"),
        })
        .collect()
}

/// Steps `event` at `now` and returns the actions.
fn step(r: &mut Raft, now: u64, event: Event) -> Vec<Action> {
    r.step(now, event);
    r.take_actions()
}

fn msg(r: &mut Raft, now: u64, from: NodeId, m: Message) -> Vec<Action> {
    step(
        r,
        now,
        Event::Message {
            from,
            incarnation: 1,
            msg: m,
        },
    )
}

/// The messages among `actions`, with their destination.
fn sends(actions: &[Action]) -> Vec<(NodeId, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

fn vote_replies(actions: &[Action]) -> Vec<(NodeId, VoteReply)> {
    sends(actions)
        .into_iter()
        .filter_map(|(to, m)| match m {
            Message::VoteReply(r) => Some((to, r)),
            _ => None,
        })
        .collect()
}

fn append_replies(actions: &[Action]) -> Vec<AppendReply> {
    sends(actions)
        .into_iter()
        .filter_map(|(_, m)| match m {
            Message::AppendReply(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// The `(prev_index, last)` of each `SendEntries` to `to`.
fn entries_sent(actions: &[Action], to: NodeId) -> Vec<(u64, u64)> {
    actions
        .iter()
        .filter_map(|x| match x {
            Action::SendEntries {
                to: t,
                header,
                last,
            } if *t == to => Some((header.prev_index, *last)),
            _ => None,
        })
        .collect()
}

fn commits(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Commit(i) => Some(*i),
            _ => None,
        })
        .collect()
}

/// Where a new leader asks for the first entry of `term`: a no-op, or — a group still on its
/// bootstrap configuration — the founding configuration that pins its voters.
fn first_entry(actions: &[Action], term: u64) -> Option<usize> {
    actions.iter().position(|x| match x {
        Action::AppendNoop { term: t } => *t == term,
        Action::AppendConfig { term: t, .. } => *t == term,
        _ => false,
    })
}

/// Ticks `r` at its deadline until its role is `role` (bounded).
fn tick_until(r: &mut Raft, role: Role) -> (u64, Vec<Action>) {
    let mut all = Vec::new();
    for _ in 0..10 {
        let now = r.next_deadline();
        all.extend(step(r, now, Event::Tick));
        if r.role() == role {
            return (now, all);
        }
    }
    panic!("never became {role:?}: {all:?}");
}

fn pre_vote(term: u64, last_index: u64, last_term: u64) -> Message {
    Message::Vote(VoteRequest {
        term,
        pre: true,
        last_index,
        last_term,
        transfer: false,
    })
}

fn vote(term: u64, last_index: u64, last_term: u64) -> Message {
    Message::Vote(VoteRequest {
        term,
        pre: false,
        last_index,
        last_term,
        transfer: false,
    })
}

fn granted(term: u64, pre: bool) -> Message {
    Message::VoteReply(VoteReply {
        term,
        pre,
        granted: true,
    })
}

/// Node 1 of three elected in `term + 1` with votes from 2; returns it and the time.
fn leader(term: u64, terms: &[u64]) -> (Raft, u64) {
    let mut r = node(1, term, terms);
    let (now, _) = tick_until(&mut r, Role::PreCandidate);
    msg(&mut r, now, 2, granted(term + 1, true));
    msg(&mut r, now, 2, granted(term + 1, false));
    assert_eq!(r.role(), Role::Leader);
    (r, now)
}

#[test]
fn a_group_of_one_elects_itself_at_once_and_commits_its_noop_after_fsync() {
    let mut r = node_in(7, &[7], 3, &[1, 3]);
    assert_eq!(r.next_deadline(), 0, "no election timeout to wait for");
    let a = step(&mut r, 0, Event::Tick);
    assert_eq!(r.role(), Role::Leader);
    assert_eq!(r.term(), 4);
    let save = a
        .iter()
        .position(|x| {
            *x == Action::SaveHardState(HardState {
                term: 4,
                voted_for: 7,
            })
        })
        .expect("the term and the vote are saved");
    let noop = first_entry(&a, 4).expect("a first entry in the new term");
    assert!(save < noop);
    assert_eq!(r.can_propose(), Some(4));
    // Appended is not committed: only the leader's own fsync counts it.
    assert!(
        commits(&step(
            &mut r,
            1,
            Event::Appended {
                last_index: 3,
                term: 4
            }
        ))
        .is_empty()
    );
    let a = step(&mut r, 2, Event::Persisted { index: 3, term: 4 });
    assert_eq!(commits(&a), vec![3]);
}

#[test]
fn an_election_asks_pre_votes_without_a_new_term_then_saves_its_vote_before_asking() {
    let mut r = node(1, 5, &[1, 5]);
    let (now, a) = tick_until(&mut r, Role::PreCandidate);
    assert!(
        (300..600).contains(&now),
        "random timeout in 300..600: {now}"
    );
    assert_eq!(r.term(), 5, "a pre-vote changes no term");
    assert!(!a.iter().any(|x| matches!(x, Action::SaveHardState(_))));
    let asked = sends(&a);
    assert_eq!(asked.len(), 2);
    for (_, m) in &asked {
        assert_eq!(*m, pre_vote(6, 2, 5));
    }
    // One pre-vote besides its own is a majority of three: a real election in term 6.
    let a = msg(&mut r, now, 3, granted(6, true));
    assert_eq!(r.role(), Role::Candidate);
    assert_eq!(r.term(), 6);
    let save = a
        .iter()
        .position(|x| {
            *x == Action::SaveHardState(HardState {
                term: 6,
                voted_for: 1,
            })
        })
        .expect("term and self-vote saved");
    let first_vote = a
        .iter()
        .position(|x| {
            matches!(
                x,
                Action::Send {
                    msg: Message::Vote(_),
                    ..
                }
            )
        })
        .expect("votes asked");
    assert!(
        save < first_vote,
        "the vote is durable before anyone hears of it"
    );
    let a = msg(&mut r, now + 1, 2, granted(6, false));
    assert_eq!(r.role(), Role::Leader);
    assert_eq!(r.leader(), Some(1));
    assert!(first_entry(&a, 6).is_some());
    let beats = sends(&a)
        .into_iter()
        .filter(|(_, m)| matches!(m, Message::Heartbeat { term: 6, .. }))
        .count();
    assert_eq!(beats, 2, "heartbeats at once");
}

#[test]
fn a_vote_goes_to_the_log_with_the_newer_last_entry_term_not_the_higher_current_term() {
    // rocketmq#2178: a lagging node with an inflated current term must not win.
    let mut r = node(2, 3, &[1, 2, 3]);
    let a = msg(&mut r, 0, 1, vote(9, 10, 2));
    assert_eq!(r.term(), 9, "the higher term is adopted");
    assert!(
        !vote_replies(&a)[0].1.granted,
        "older last entry term: refused"
    );
    assert_eq!(r.hard_state().voted_for, 0);
    // Same last term, shorter log: refused. Same last term, as long: granted.
    let mut r = node(2, 3, &[1, 2, 3]);
    assert!(!vote_replies(&msg(&mut r, 0, 1, vote(4, 2, 3)))[0].1.granted);
    let a = msg(&mut r, 0, 3, vote(4, 3, 3));
    assert!(vote_replies(&a)[0].1.granted);
    assert!(a.contains(&Action::SaveHardState(HardState {
        term: 4,
        voted_for: 3
    })));
    // One vote per term; asking again is answered the same.
    assert!(!vote_replies(&msg(&mut r, 1, 1, vote(4, 9, 4)))[0].1.granted);
    assert!(vote_replies(&msg(&mut r, 1, 3, vote(4, 3, 3)))[0].1.granted);
}

#[test]
fn a_follower_hearing_its_leader_ignores_candidates_unless_the_leader_hands_over() {
    let mut r = node(2, 4, &[4]);
    msg(&mut r, 100, 1, Message::Heartbeat { term: 4, commit: 0 });
    assert_eq!(r.leader(), Some(1));
    // Pre-vote refused, real vote of a higher term ignored outright: no term change.
    let a = msg(&mut r, 200, 3, pre_vote(5, 1, 4));
    assert!(!vote_replies(&a)[0].1.granted);
    let a = msg(&mut r, 200, 3, vote(5, 1, 4));
    assert!(a.is_empty(), "{a:?}");
    assert_eq!(r.term(), 4);
    // After the stickiness window, the same pre-vote is granted (in its term, 5).
    let a = msg(&mut r, 401, 3, pre_vote(5, 1, 4));
    assert_eq!(
        vote_replies(&a)[0].1,
        VoteReply {
            term: 5,
            pre: true,
            granted: true
        }
    );
    assert_eq!(r.term(), 4);
    // A transfer's vote is granted inside the window.
    let mut r = node(2, 4, &[4]);
    msg(&mut r, 100, 1, Message::Heartbeat { term: 4, commit: 0 });
    let a = msg(
        &mut r,
        150,
        3,
        Message::Vote(VoteRequest {
            term: 5,
            pre: false,
            last_index: 1,
            last_term: 4,
            transfer: true,
        }),
    );
    assert!(vote_replies(&a)[0].1.granted);
}

#[test]
fn a_partitioned_node_keeps_its_term_however_often_it_times_out() {
    let mut r = node(3, 2, &[2]);
    for _ in 0..20 {
        let now = r.next_deadline();
        step(&mut r, now, Event::Tick);
    }
    assert_eq!(r.term(), 2, "pre-votes never answered: no term bumped");
    assert_eq!(r.role(), Role::PreCandidate);
    // Rejoining: its pre-vote is refused by nodes with a leader; the group is undisturbed.
    let mut f = node(1, 2, &[2, 2]);
    msg(&mut f, 1000, 2, Message::Heartbeat { term: 2, commit: 0 });
    let a = msg(&mut f, 1001, 3, pre_vote(3, 1, 2));
    assert!(!vote_replies(&a)[0].1.granted);
    assert_eq!(f.term(), 2);
}

#[test]
fn a_leader_that_hears_from_no_majority_steps_down_within_an_election_timeout() {
    let (mut r, t0) = leader(1, &[1]);
    step(
        &mut r,
        t0,
        Event::Appended {
            last_index: 2,
            term: 2,
        },
    );
    // Node 2 answers heartbeats for a while, then everything goes quiet.
    let mut now = t0;
    while now < t0 + 600 {
        now = r.next_deadline();
        step(&mut r, now, Event::Tick);
        msg(
            &mut r,
            now,
            2,
            Message::HeartbeatReply {
                term: 2,
                healthy: true,
            },
        );
        assert_eq!(r.role(), Role::Leader);
    }
    let mut stepped_down_at = None;
    for _ in 0..100 {
        now = r.next_deadline();
        let a = step(&mut r, now, Event::Tick);
        if r.role() != Role::Leader {
            assert!(a.contains(&Action::RoleChanged {
                role: Role::Follower,
                term: 2,
                leader: None
            }));
            stepped_down_at = Some(now);
            break;
        }
    }
    let at = stepped_down_at.expect("the leader steps down");
    assert!(at <= now && at - t0 <= 600 + 2 * 300, "{at}");
    assert_eq!(r.can_propose(), None);
}

#[test]
fn a_follower_truncates_a_conflicting_uncommitted_suffix_after_fast_back_off() {
    // Follower: 1 1 2 2 2 (term 2 never committed). Leader of term 3: 1 1 3 3.
    let mut f = node(2, 2, &[1, 1, 2, 2, 2]);
    let h = |prev_index, prev_term| AppendHeader {
        term: 3,
        prev_index,
        prev_term,
        commit: 2,
    };
    // Probe at the leader's end (4, term 3): the follower holds term 2 there since index 3.
    let a = msg(
        &mut f,
        0,
        1,
        Message::Append {
            header: h(4, 3),
            entries: vec![],
        },
    );
    let r = append_replies(&a)[0];
    assert!(!r.success);
    assert_eq!((r.index, r.hint_index, r.hint_term), (4, 3, 2));
    // The leader holds no term 2: it goes straight to index 3 (prev 2).
    let a = msg(
        &mut f,
        1,
        1,
        Message::Append {
            header: h(2, 1),
            entries: entries(&[3, 3]),
        },
    );
    let persist = a
        .iter()
        .find_map(|x| match x {
            Action::Persist {
                truncate_after,
                first_index,
                entries,
            } => Some((*truncate_after, *first_index, entries.len())),
            _ => None,
        })
        .expect("written");
    assert_eq!(persist, (Some(2), 3, 2));
    assert_eq!(f.last_index(), 4);
    assert_eq!(f.log_terms().term_at(3), Some(3));
    // The leader's commit (2) is below the matched, durable prefix: applied at once. The new
    // entries are not acknowledged before their fsync.
    assert_eq!(commits(&a), vec![2]);
    assert!(append_replies(&a).is_empty());
    let a = step(&mut f, 2, Event::Persisted { index: 4, term: 3 });
    let r = append_replies(&a)[0];
    assert!(r.success);
    assert_eq!(r.index, 4);
}

#[test]
fn a_shorter_follower_points_the_leader_at_its_end() {
    let mut f = node(2, 1, &[1]);
    let a = msg(
        &mut f,
        0,
        1,
        Message::Append {
            header: AppendHeader {
                term: 1,
                prev_index: 9,
                prev_term: 1,
                commit: 0,
            },
            entries: vec![],
        },
    );
    let r = append_replies(&a)[0];
    assert_eq!(
        (r.success, r.index, r.hint_index, r.hint_term),
        (false, 9, 2, 0)
    );
}

/// A follower told a commit past its log's end lost entries it acknowledged (`--flush async`,
/// a power cut): besides the heartbeat answer it says where its log ends, as a follower back
/// with less does, so the leader sends them again even when no append is coming.
#[test]
fn a_follower_that_lost_acknowledged_entries_points_the_leader_at_its_end_on_a_heartbeat() {
    let mut f = node(2, 1, &[1, 1]);
    let heartbeat = |commit| Message::Heartbeat { term: 1, commit };
    let a = msg(&mut f, 0, 1, heartbeat(5));
    let r = append_replies(&a);
    assert_eq!(r.len(), 1, "{a:?}");
    assert_eq!(
        (r[0].success, r[0].index, r[0].hint_index, r[0].hint_term),
        (false, 5, 3, 0)
    );
    assert!(
        sends(&a)
            .iter()
            .any(|(to, m)| *to == 1 && matches!(m, Message::HeartbeatReply { .. }))
    );
    // A commit it holds: the heartbeat answer only.
    let a = msg(&mut f, 1, 1, heartbeat(2));
    assert!(append_replies(&a).is_empty(), "{a:?}");
}

#[test]
fn the_leader_backs_off_by_term_and_never_past_what_was_refused() {
    // Leader of term 5 with 1 1 3 3 5: follower reports term 3 from index 2 at index 4 ... the
    // leader holds term 3 up to 4, so it tries 5 (prev 4) — no lower than needed.
    let (mut r, now) = leader(4, &[1, 3, 3, 4]);
    step(
        &mut r,
        now,
        Event::Appended {
            last_index: 5,
            term: 5,
        },
    );
    let a = msg(
        &mut r,
        now,
        2,
        Message::AppendReply(AppendReply {
            term: 5,
            success: false,
            index: 4,
            hint_index: 2,
            hint_term: 3,
        }),
    );
    let next = *entries_sent(&a, 2).first().expect("a new probe");
    assert_eq!(
        next,
        (3, 5),
        "after our last term-3 entry is 4; never past prev 4"
    );
    // A follower that holds a term we don't: skip its whole run.
    let a = msg(
        &mut r,
        now,
        3,
        Message::AppendReply(AppendReply {
            term: 5,
            success: false,
            index: 4,
            hint_index: 2,
            hint_term: 2,
        }),
    );
    let next = a
        .iter()
        .find_map(|x| match x {
            Action::SendEntries { to: 3, header, .. } => Some(header.prev_index),
            _ => None,
        })
        .expect("a new probe");
    assert_eq!(next, 1);
}

#[test]
fn an_old_term_entry_on_a_majority_commits_only_under_an_entry_of_the_current_term() {
    // Figure 8: the leader of term 4 holds entry 2 of term 2, replicated to node 2 as well.
    let (mut r, now) = leader(3, &[1, 2]);
    assert_eq!(r.term(), 4);
    step(&mut r, now, Event::Persisted { index: 2, term: 2 });
    let ok = |index| {
        Message::AppendReply(AppendReply {
            term: 4,
            success: true,
            index,
            hint_index: 0,
            hint_term: 0,
        })
    };
    let a = msg(&mut r, now, 2, ok(2));
    assert!(commits(&a).is_empty(), "a majority holds 2, but of term 2");
    assert_eq!(r.commit_index(), 0);
    // The no-op of term 4 at 3, durable here and on node 2: 3 commits, and 2 with it.
    step(
        &mut r,
        now,
        Event::Appended {
            last_index: 3,
            term: 4,
        },
    );
    assert!(commits(&step(&mut r, now, Event::Persisted { index: 3, term: 4 })).is_empty());
    let a = msg(&mut r, now + 1, 2, ok(3));
    assert_eq!(commits(&a), vec![3]);
}

#[test]
fn a_new_commit_index_reaches_followers_within_the_push_delay() {
    let (mut r, now) = leader(0, &[]);
    appended_durably(&mut r, now, 1, 1);
    let a = msg(
        &mut r,
        now + 1,
        2,
        Message::AppendReply(AppendReply {
            term: 1,
            success: true,
            index: 1,
            hint_index: 0,
            hint_term: 0,
        }),
    );
    assert_eq!(commits(&a), vec![1]);
    assert_eq!(r.next_deadline(), now + 2, "pushed 1 ms later");
    let a = step(&mut r, now + 2, Event::Tick);
    // Each follower hears the commit as far as the leader knows it holds the entries: node 3,
    // known to hold none, is told nothing (it hears once it acknowledges them).
    let pushed: Vec<(NodeId, u64)> = sends(&a)
        .into_iter()
        .filter_map(|(to, m)| match m {
            Message::Heartbeat { term: 1, commit } => Some((to, commit)),
            _ => None,
        })
        .collect();
    assert_eq!(pushed, vec![(2, 1)]);
    // Nothing new: no more pushes until the heartbeat.
    assert!(r.next_deadline() >= now + 50);
}

#[test]
fn a_stale_leader_learns_the_new_term_from_any_answer_and_steps_down() {
    let (mut r, now) = leader(1, &[1]);
    let a = msg(
        &mut r,
        now,
        3,
        Message::HeartbeatReply {
            term: 7,
            healthy: true,
        },
    );
    assert_eq!(r.role(), Role::Follower);
    assert_eq!(r.term(), 7);
    assert!(a.contains(&Action::SaveHardState(HardState {
        term: 7,
        voted_for: 0
    })));
    // And a node of a newer term answers a stale leader's append with its term.
    let mut f = node(2, 7, &[1]);
    let a = msg(
        &mut f,
        0,
        1,
        Message::Append {
            header: AppendHeader {
                term: 2,
                prev_index: 1,
                prev_term: 1,
                commit: 0,
            },
            entries: entries(&[2]),
        },
    );
    assert_eq!(append_replies(&a)[0].term, 7);
    assert_eq!(f.last_index(), 1, "nothing written");
}

#[test]
fn a_transfer_stops_proposals_waits_for_catch_up_then_sends_timeout_now() {
    let (mut r, now) = leader(1, &[1]);
    step(
        &mut r,
        now,
        Event::Appended {
            last_index: 2,
            term: 2,
        },
    );
    let a = step(&mut r, now, Event::TransferLeader { to: 3 });
    assert_eq!(r.can_propose(), None, "no proposals while handing over");
    assert!(a.contains(&Action::PauseProposals), "{a:?}");
    assert!(
        sends(&a).is_empty(),
        "nothing sent before proposals stopped"
    );
    // An entry appended while the pause was on its way: the log's true end is 3.
    step(
        &mut r,
        now,
        Event::ProposalsPaused {
            last_index: 3,
            term: 2,
        },
    );
    let ok = |index| {
        Message::AppendReply(AppendReply {
            term: 2,
            success: true,
            index,
            hint_index: 0,
            hint_term: 0,
        })
    };
    let a = msg(&mut r, now + 1, 3, ok(1));
    assert!(
        !sends(&a)
            .iter()
            .any(|(_, m)| matches!(m, Message::TimeoutNow { .. }))
    );
    let a = msg(&mut r, now + 2, 3, ok(2));
    assert!(
        !sends(&a)
            .iter()
            .any(|(_, m)| matches!(m, Message::TimeoutNow { .. })),
        "entry 3 is still missing on node 3"
    );
    let a = msg(&mut r, now + 2, 3, ok(3));
    assert!(sends(&a).contains(&(3, Message::TimeoutNow { term: 2 })));
    // The transferee campaigns at once, without pre-vote, marked as a transfer.
    let mut t = node(3, 2, &[1, 2]);
    msg(&mut t, now, 1, Message::Heartbeat { term: 2, commit: 0 });
    let a = msg(&mut t, now + 3, 1, Message::TimeoutNow { term: 2 });
    assert_eq!(t.role(), Role::Candidate);
    assert_eq!(t.term(), 3);
    assert!(sends(&a).iter().all(|(_, m)| matches!(
        m,
        Message::Vote(VoteRequest {
            pre: false,
            transfer: true,
            term: 3,
            ..
        })
    )));
    // Not caught up within an election timeout: the transfer is abandoned.
    let (mut r, now) = leader(1, &[1]);
    step(&mut r, now, Event::TransferLeader { to: 2 });
    let mut at = now;
    let mut resumed = false;
    while at < now + 400 {
        at = r.next_deadline();
        resumed |= step(&mut r, at, Event::Tick).contains(&Action::ResumeProposals);
        msg(
            &mut r,
            at,
            3,
            Message::HeartbeatReply {
                term: 2,
                healthy: true,
            },
        );
    }
    assert!(resumed, "proposals are taken again");
    assert_eq!(r.role(), Role::Leader);
    assert_eq!(r.can_propose(), Some(2));
}

#[test]
fn a_follower_passes_a_transfer_request_to_its_leader_which_starts_the_transfer() {
    // A follower that knows its leader forwards the request; one that knows none drops it.
    let mut f = node(2, 2, &[1, 2]);
    msg(&mut f, 5, 1, Message::Heartbeat { term: 2, commit: 0 });
    let a = step(&mut f, 6, Event::TransferLeader { to: 3 });
    assert_eq!(
        sends(&a),
        vec![(1, Message::TransferRequest { term: 2, to: 3 })]
    );
    let mut lost = node(2, 2, &[1, 2]);
    assert!(sends(&step(&mut lost, 6, Event::TransferLeader { to: 3 })).is_empty());
    // The leader, on hearing it, hands over: proposals stop, the transferee is caught up.
    let (mut r, now) = leader(1, &[1]);
    assert_eq!(r.can_propose(), Some(2));
    let a = msg(
        &mut r,
        now + 1,
        2,
        Message::TransferRequest { term: 2, to: 3 },
    );
    assert_eq!(r.can_propose(), None, "handing over");
    assert!(a.contains(&Action::PauseProposals));
    let a = step(
        &mut r,
        now + 1,
        Event::ProposalsPaused {
            last_index: 2,
            term: 2,
        },
    );
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::SendEntries { to: 3, .. })),
        "node 3 is brought up to date: {a:?}"
    );
    assert_eq!(r.transferring_to(), Some(3));
}

#[test]
fn a_leader_hands_over_to_the_preferred_voter_once_it_is_live_and_caught_up() {
    let mut cfg = RaftConfig::new(1, VOTERS.to_vec());
    cfg.preferred_leader = Some(3);
    let mut r = Raft::new(
        cfg,
        HardState {
            term: 1,
            voted_for: 0,
        },
        log_of(&[1]),
        0,
        0,
    );
    let (now, _) = tick_until(&mut r, Role::PreCandidate);
    msg(&mut r, now, 2, granted(2, true));
    msg(&mut r, now, 2, granted(2, false));
    assert_eq!(r.role(), Role::Leader);
    appended_durably(&mut r, now, 2, 2);
    let ok = |index| {
        Message::AppendReply(AppendReply {
            term: 2,
            success: true,
            index,
            hint_index: 0,
            hint_term: 0,
        })
    };
    // Node 2 acknowledges, node 3 is silent: the leader keeps leading past the settling time.
    msg(&mut r, now + 1, 2, ok(2));
    let mut at = now;
    while at < now + 700 {
        at = r.next_deadline();
        step(&mut r, at, Event::Tick);
        msg(
            &mut r,
            at,
            2,
            Message::HeartbeatReply {
                term: 2,
                healthy: true,
            },
        );
        assert_eq!(r.transferring_to(), None, "node 3 is not live");
    }
    // Node 3 answers with everything committed: at the next heartbeat the transfer starts,
    // and once proposals are paused it gets TimeoutNow.
    msg(&mut r, at, 3, ok(2));
    let mut paused = false;
    for _ in 0..3 {
        at = r.next_deadline();
        paused |= step(&mut r, at, Event::Tick).contains(&Action::PauseProposals);
        msg(
            &mut r,
            at,
            3,
            Message::HeartbeatReply {
                term: 2,
                healthy: true,
            },
        );
    }
    assert!(paused);
    let a = step(
        &mut r,
        at,
        Event::ProposalsPaused {
            last_index: 2,
            term: 2,
        },
    );
    assert!(sends(&a).contains(&(3, Message::TimeoutNow { term: 2 })));
    assert_eq!(r.transferring_to(), Some(3));
}

#[test]
fn a_node_whose_disk_failed_steps_down_and_neither_campaigns_nor_votes() {
    let (mut r, now) = leader(1, &[1]);
    step(&mut r, now, Event::StorageFailed);
    assert_eq!(r.role(), Role::Follower);
    for _ in 0..5 {
        let at = r.next_deadline();
        step(&mut r, at, Event::Tick);
    }
    assert_eq!(r.role(), Role::Follower, "no campaign");
    let a = msg(&mut r, 10_000, 2, vote(3, 9, 2));
    assert!(!vote_replies(&a)[0].1.granted);
    step(&mut r, 10_001, Event::StorageRecovered);
    let (_, _) = tick_until(&mut r, Role::PreCandidate);
}

#[test]
fn follower_acknowledgements_wait_for_fsync_and_stale_fsync_reports_are_ignored() {
    let mut f = node(2, 1, &[]);
    let h = AppendHeader {
        term: 1,
        prev_index: 0,
        prev_term: 0,
        commit: 0,
    };
    let a = msg(
        &mut f,
        0,
        1,
        Message::Append {
            header: h,
            entries: entries(&[1, 1, 1]),
        },
    );
    assert!(append_replies(&a).is_empty());
    // A report for an entry of another term at that index (since truncated) counts for nothing.
    assert!(step(&mut f, 1, Event::Persisted { index: 3, term: 9 }).is_empty());
    let a = step(&mut f, 1, Event::Persisted { index: 2, term: 1 });
    assert_eq!(append_replies(&a)[0].index, 2);
    let a = step(&mut f, 2, Event::Persisted { index: 3, term: 1 });
    assert_eq!(append_replies(&a)[0].index, 3);
    // A duplicate of the append (already durable) is answered at once.
    let a = msg(
        &mut f,
        3,
        1,
        Message::Append {
            header: h,
            entries: entries(&[1, 1, 1]),
        },
    );
    assert!(!a.iter().any(|x| matches!(x, Action::Persist { .. })));
    assert_eq!(append_replies(&a)[0].index, 3);
}

fn msg_as(r: &mut Raft, now: u64, from: NodeId, incarnation: u64, m: Message) -> Vec<Action> {
    step(
        r,
        now,
        Event::Message {
            from,
            incarnation,
            msg: m,
        },
    )
}

/// The leader's own entries through `index` (of `term`) appended and durable.
fn appended_durably(r: &mut Raft, now: u64, index: u64, term: u64) {
    step(
        r,
        now,
        Event::Appended {
            last_index: index,
            term,
        },
    );
    step(r, now, Event::Persisted { index, term });
}

/// The leader's Config entry of `members` appended at `index` (of `term`) and durable.
fn config_appended_durably(r: &mut Raft, now: u64, index: u64, term: u64, members: Membership) {
    step(
        r,
        now,
        Event::ConfigAppended {
            index,
            term,
            members,
        },
    );
    step(r, now, Event::Persisted { index, term });
}

/// Voters 1, 2, 3 pinned to incarnation 1 (what a leader of the bootstrap group wrote).
fn pinned(ids: &[NodeId]) -> Membership {
    Membership::new(
        ids.iter()
            .map(|id| Member {
                id: *id,
                incarnation: 1,
                role: MemberRole::Voter,
                addr: format!("127.0.0.1:{}", 7000 + id),
            })
            .collect(),
    )
}

/// Node `id` whose log's first entry (of `terms[0]`) is the Config entry of `members`.
fn node_with(id: NodeId, members: Membership, term: u64, terms: &[u64]) -> Raft {
    node_as(id, 1, members, term, terms)
}

fn node_as(id: NodeId, incarnation: u64, members: Membership, term: u64, terms: &[u64]) -> Raft {
    let cfg = RaftConfig {
        members: members.clone(),
        incarnation,
        ..RaftConfig::new(id, Vec::new())
    };
    let mut r = Raft::new(cfg, HardState { term, voted_for: 0 }, log_of(terms), 0, 0);
    r.restore_configs(vec![ConfigAt {
        index: 1,
        term: terms[0],
        members,
    }]);
    r
}

fn ack(term: u64, index: u64) -> Message {
    Message::AppendReply(AppendReply {
        term,
        success: true,
        index,
        hint_index: 0,
        hint_term: 0,
    })
}

fn config_asked(actions: &[Action]) -> Option<Membership> {
    actions.iter().find_map(|a| match a {
        Action::AppendConfig { members, .. } => Some(members.clone()),
        _ => None,
    })
}

/// Node 1 leading `pinned(VOTERS)` in term 2 with its no-op (index `last`) committed by
/// node 2's acknowledgement.
fn pinned_leader(terms: &[u64]) -> (Raft, u64) {
    let mut r = node_with(1, pinned(&VOTERS), 1, terms);
    let (now, _) = tick_until(&mut r, Role::PreCandidate);
    msg(&mut r, now, 2, granted(2, true));
    msg(&mut r, now, 2, granted(2, false));
    assert_eq!(r.role(), Role::Leader);
    let last = terms.len() as u64 + 1;
    step(
        &mut r,
        now,
        Event::Appended {
            last_index: last,
            term: 2,
        },
    );
    step(
        &mut r,
        now,
        Event::Persisted {
            index: last,
            term: 2,
        },
    );
    let a = msg(&mut r, now + 1, 2, ack(2, last));
    assert_eq!(commits(&a), vec![last]);
    assert_eq!(config_asked(&a), None, "nothing to change: {a:?}");
    (r, now + 1)
}

#[test]
fn a_wiped_voter_counts_for_nothing_until_a_committed_change_names_its_new_directory() {
    let (mut r, now) = pinned_leader(&[1, 1]);
    // Node 3 came back from a lost disk (incarnation 9): its acknowledgement of the next
    // entry does not commit it; node 2's does.
    appended_durably(&mut r, now, 4, 2);
    let a = msg_as(&mut r, now + 1, 3, 9, ack(2, 4));
    assert!(commits(&a).is_empty(), "a wiped directory counted: {a:?}");
    // It holds every committed entry (3): the leader gives it its place back.
    let asked = config_asked(&a).expect("a change naming the new directory");
    assert_eq!(asked.get(3).map(|m| m.incarnation), Some(9));
    assert!(asked.is_voter(3));
    let a = msg(&mut r, now + 2, 2, ack(2, 4));
    assert_eq!(commits(&a), vec![4]);
    // In force once appended (index 5): now node 3's answers count, node 2's alone do not.
    config_appended_durably(&mut r, now + 3, 5, 2, asked);
    let a = msg_as(&mut r, now + 4, 3, 9, ack(2, 5));
    assert_eq!(commits(&a), vec![5]);

    // A candidate with the old configuration does not count the wiped directory's vote.
    let mut c = node_with(1, pinned(&VOTERS), 3, &[1, 1]);
    let (at, _) = tick_until(&mut c, Role::PreCandidate);
    msg_as(&mut c, at, 3, 9, granted(4, true));
    assert_eq!(
        c.role(),
        Role::PreCandidate,
        "a wiped directory's pre-vote counted"
    );
    msg_as(&mut c, at, 3, 1, granted(4, true));
    assert_eq!(c.role(), Role::Candidate);
}

#[test]
fn a_wiped_directory_does_not_campaign_once_its_log_names_another_incarnation() {
    // Node 3's directory is incarnation 9; the configuration it caught up to holds its place
    // for incarnation 1.
    let mut w = node_as(3, 9, pinned(&VOTERS), 2, &[1, 2]);
    assert!(!w.is_voter());
    for t in [1000, 2000, 3000] {
        step(&mut w, t, Event::Tick);
        assert_eq!(w.role(), Role::Follower, "it campaigned");
    }
    // It still answers votes (a candidate may already hold the change that names it); the
    // candidate's configuration decides whether the answer counts.
    let a = msg(&mut w, 4000, 1, vote(3, 2, 2));
    assert!(vote_replies(&a)[0].1.granted);
}

#[test]
fn a_founding_leader_pins_every_voter_that_answers_its_first_heartbeats() {
    // A group from nothing: node 1 elected by node 2 (its directory 5). It founds the group
    // once node 3 answers too: the first entry pins all three.
    let mut r = node(1, 0, &[]);
    let (now, _) = tick_until(&mut r, Role::PreCandidate);
    msg_as(&mut r, now, 2, 5, granted(1, true));
    let a = msg_as(&mut r, now, 2, 5, granted(1, false));
    assert_eq!(r.role(), Role::Leader);
    assert_eq!(first_entry(&a, 1), None, "founding waits for node 3");
    assert_eq!(r.can_propose(), None);
    let beat = Message::HeartbeatReply {
        term: 1,
        healthy: true,
    };
    let a = msg_as(&mut r, now + 1, 3, 7, beat);
    let founding = config_asked(&a).expect("the first entry founds the group");
    assert!(!a.iter().any(|x| matches!(x, Action::AppendNoop { .. })));
    for (id, inc) in [(1, 1), (2, 5), (3, 7)] {
        assert_eq!(founding.get(id).map(|m| m.incarnation), Some(inc));
    }
    assert_eq!(r.can_propose(), Some(1));
}

#[test]
fn a_voter_not_heard_at_founding_counts_once_a_later_change_pins_it() {
    let mut r = node(1, 0, &[]);
    let (now, _) = tick_until(&mut r, Role::PreCandidate);
    msg_as(&mut r, now, 2, 5, granted(1, true));
    msg_as(&mut r, now, 2, 5, granted(1, false));
    // Node 3 is silent for an election timeout (node 2 answers, so the leader keeps its
    // quorum): the group is founded without it.
    let beat = Message::HeartbeatReply {
        term: 1,
        healthy: true,
    };
    let a = msg_as(&mut r, now + 100, 2, 5, beat);
    assert_eq!(config_asked(&a), None, "still waiting for node 3");
    let a = step(&mut r, now + 300, Event::Tick);
    let founding = config_asked(&a).expect("founded at the deadline");
    assert_eq!(founding.get(3).map(|m| m.incarnation), Some(0));
    config_appended_durably(&mut r, now + 300, 1, 1, founding);
    // Node 3 answers first: a place not pinned counts for nothing once the group is founded.
    let a = msg_as(&mut r, now + 301, 3, 7, ack(1, 1));
    assert!(commits(&a).is_empty(), "{a:?}");
    let a = msg_as(&mut r, now + 302, 2, 5, ack(1, 1));
    assert_eq!(commits(&a), vec![1]);
    // Committed: node 3 is pinned to the directory it answered from.
    let asked = config_asked(&a).expect("node 3 pinned next");
    assert_eq!(asked.get(3).map(|m| m.incarnation), Some(7));
    // One change at a time: nothing more until this one is in the log and committed.
    let a = msg_as(&mut r, now + 303, 3, 7, ack(1, 1));
    assert_eq!(config_asked(&a), None);
    config_appended_durably(&mut r, now + 303, 2, 1, asked);
    let a = msg_as(&mut r, now + 304, 3, 7, ack(1, 2));
    assert_eq!(commits(&a), vec![2], "node 3 counts once pinned");
}

#[test]
fn an_added_node_learns_then_is_promoted_once_caught_up_and_a_removed_leader_hands_over() {
    let (mut r, now) = pinned_leader(&[1]);
    let a = step(
        &mut r,
        now,
        Event::ChangeMembership(MembershipChange::Add {
            id: 4,
            addr: "127.0.0.1:7004".into(),
            learner: false,
        }),
    );
    let asked = config_asked(&a).expect("the learner is added");
    assert_eq!(
        asked.get(4).map(|m| m.role),
        Some(MemberRole::Learner { promote: true })
    );
    assert_eq!(asked.voters().count(), 3);
    step(
        &mut r,
        now + 1,
        Event::ConfigAppended {
            index: 3,
            term: 2,
            members: asked,
        },
    );
    assert!(r.peer_ids().contains(&4), "the learner is replicated to");
    step(&mut r, now + 1, Event::Persisted { index: 3, term: 2 });
    // The learner's acknowledgement does not commit anything; node 2's does.
    let a = msg_as(&mut r, now + 2, 4, 44, ack(2, 3));
    assert!(commits(&a).is_empty());
    let a = msg(&mut r, now + 3, 2, ack(2, 3));
    assert_eq!(commits(&a), vec![3]);
    let asked = config_asked(&a).expect("caught up: promoted");
    assert!(asked.is_voter(4) && asked.get(4).is_some_and(|m| m.incarnation == 44));
    config_appended_durably(&mut r, now + 4, 4, 2, asked);
    // Four voters: a majority is three.
    let a = msg(&mut r, now + 5, 2, ack(2, 4));
    assert!(commits(&a).is_empty());
    let a = msg_as(&mut r, now + 6, 4, 44, ack(2, 4));
    assert_eq!(commits(&a), vec![4]);

    // The leader removes itself: it keeps leading (without counting itself) until the change
    // commits, then tells a caught-up voter to campaign and steps down.
    let a = step(
        &mut r,
        now + 7,
        Event::ChangeMembership(MembershipChange::Remove { id: 1 }),
    );
    let asked = config_asked(&a).expect("the leader's removal");
    config_appended_durably(&mut r, now + 8, 5, 2, asked);
    let a = msg(&mut r, now + 9, 2, ack(2, 5));
    assert!(commits(&a).is_empty(), "the leader counted itself");
    assert_eq!(r.role(), Role::Leader);
    let a = msg_as(&mut r, now + 10, 4, 44, ack(2, 5));
    assert_eq!(commits(&a), vec![5]);
    assert_eq!(r.role(), Role::Follower);
    assert!(
        sends(&a)
            .iter()
            .any(|(to, m)| matches!(m, Message::TimeoutNow { .. }) && [2, 4].contains(to)),
        "{a:?}"
    );
    assert!(!r.is_voter());
    let t = r.next_deadline();
    step(&mut r, t, Event::Tick);
    assert_eq!(r.role(), Role::Follower, "a removed node campaigned");
}

#[test]
fn a_follower_saves_the_configurations_it_receives_or_loses_before_the_entries() {
    let mut f = node_with(2, pinned(&VOTERS), 2, &[1]);
    let mut more = pinned(&VOTERS);
    more.put(Member {
        id: 4,
        incarnation: 0,
        role: MemberRole::Learner { promote: true },
        addr: "127.0.0.1:7004".into(),
    });
    let mut record = Vec::new();
    manifold_core::store::entry::encode_entry(
        &mut record,
        &manifold_core::raft::membership::config_entry(2, 0, &more),
        2,
    );
    let a = msg(
        &mut f,
        1,
        1,
        Message::Append {
            header: AppendHeader {
                term: 2,
                prev_index: 1,
                prev_term: 1,
                commit: 1,
            },
            entries: vec![Entry {
                term: 2,
                data: Bytes::from(record),
            }],
        },
    );
    let save = a
        .iter()
        .position(|x| matches!(x, Action::SaveMembers(c) if c.last().is_some_and(|c| c.index == 2 && c.members == more)))
        .expect("saved");
    let persist = a
        .iter()
        .position(|x| matches!(x, Action::Persist { .. }))
        .expect("persisted");
    assert!(save < persist);
    assert_eq!(f.membership(), &more, "in force once appended");
    // A new leader replaces the uncommitted entry: the configuration goes with it.
    let a = msg(
        &mut f,
        2,
        3,
        Message::Append {
            header: AppendHeader {
                term: 3,
                prev_index: 1,
                prev_term: 1,
                commit: 1,
            },
            entries: entries(&[3]),
        },
    );
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::SaveMembers(c) if c.len() == 1)),
        "{a:?}"
    );
    assert_eq!(f.membership(), &pinned(&VOTERS));
}

#[test]
fn leadership_is_not_handed_to_a_voter_whose_disk_is_unhealthy() {
    let (mut r, now) = leader(1, &[1]);
    msg(
        &mut r,
        now + 1,
        3,
        Message::HeartbeatReply {
            term: 2,
            healthy: false,
        },
    );
    let a = step(&mut r, now + 2, Event::TransferLeader { to: 3 });
    assert!(!a.contains(&Action::PauseProposals), "{a:?}");
    assert_eq!(r.transferring_to(), None);
    assert_eq!(r.can_propose(), Some(2));
    // Healthy again: the transfer goes ahead.
    msg(
        &mut r,
        now + 3,
        3,
        Message::HeartbeatReply {
            term: 2,
            healthy: true,
        },
    );
    let a = step(&mut r, now + 4, Event::TransferLeader { to: 3 });
    assert!(a.contains(&Action::PauseProposals));
    // A follower whose disk failed says so in its heartbeat answers.
    let mut f = node(2, 2, &[1, 2]);
    step(&mut f, 5, Event::StorageFailed);
    let a = msg(&mut f, 6, 1, Message::Heartbeat { term: 2, commit: 0 });
    assert!(sends(&a).contains(&(
        1,
        Message::HeartbeatReply {
            term: 2,
            healthy: false
        }
    )));
}

#[test]
fn a_follower_whose_log_is_gone_is_caught_up_from_its_empty_log() {
    // Node 3 acknowledged everything, then lost its disk: its rejection says its log is
    // empty. The leader must send from the first entry, not from what it once matched (it
    // used to keep probing there forever: found by the simulation with lost disks).
    let (mut r, now) = leader(1, &[1]);
    step(
        &mut r,
        now,
        Event::Appended {
            last_index: 3,
            term: 2,
        },
    );
    let ok = Message::AppendReply(AppendReply {
        term: 2,
        success: true,
        index: 3,
        hint_index: 0,
        hint_term: 0,
    });
    msg(&mut r, now + 1, 3, ok);
    assert_eq!(r.match_index(3), Some(3));
    let lost = Message::AppendReply(AppendReply {
        term: 2,
        success: false,
        index: 3,
        hint_index: 1,
        hint_term: 0,
    });
    let a = msg(&mut r, now + 2, 3, lost);
    assert_eq!(r.match_index(3), Some(0));
    assert!(
        a.iter().any(|x| matches!(
            x,
            Action::SendEntries {
                to: 3,
                header: AppendHeader { prev_index: 0, .. },
                ..
            }
        )),
        "{a:?}"
    );
}

#[test]
fn a_node_removed_by_a_change_not_known_committed_still_campaigns_and_votes_go_by_the_candidate() {
    // Node 3's log ends with the change that removed it (index 2), not known committed: it
    // may hold the newest log the others need, so it campaigns, counting by that change.
    let mut r = node_with(3, pinned(&VOTERS), 1, &[1, 1]);
    r.restore_configs(vec![
        ConfigAt {
            index: 1,
            term: 1,
            members: pinned(&VOTERS),
        },
        ConfigAt {
            index: 2,
            term: 1,
            members: pinned(&[1, 2]),
        },
    ]);
    let (now, _) = tick_until(&mut r, Role::PreCandidate);
    msg(&mut r, now, 1, granted(2, true));
    assert_eq!(r.role(), Role::PreCandidate, "its own vote does not count");
    msg(&mut r, now, 2, granted(2, true));
    assert_eq!(r.role(), Role::Candidate);
    // A learner still grants votes: a candidate may hold the change that promotes it.
    let mut learner = node_with(3, pinned(&[1, 2]), 1, &[1]);
    assert!(!learner.is_voter());
    let a = msg(&mut learner, 5000, 1, vote(2, 1, 1));
    assert!(vote_replies(&a)[0].1.granted);
}

#[test]
fn a_removal_that_would_leave_too_few_pinned_voters_is_not_made() {
    // Five voters, two never heard (not pinned): removing a pinned one would leave two of
    // four that count — no majority ever again.
    let mut members = pinned(&[1, 2, 3, 4, 5]);
    for id in [4, 5] {
        if let Some(m) = members.get_mut(id) {
            m.incarnation = 0;
        }
    }
    let mut r = node_with(1, members, 1, &[1]);
    let (now, _) = tick_until(&mut r, Role::PreCandidate);
    for v in [2, 3] {
        msg(&mut r, now, v, granted(2, true));
    }
    for v in [2, 3] {
        msg(&mut r, now, v, granted(2, false));
    }
    assert_eq!(r.role(), Role::Leader);
    appended_durably(&mut r, now, 2, 2);
    msg(&mut r, now + 1, 2, ack(2, 2));
    let a = msg(&mut r, now + 1, 3, ack(2, 2));
    assert_eq!(r.commit_index(), 2, "{a:?}");
    let a = step(
        &mut r,
        now + 2,
        Event::ChangeMembership(MembershipChange::Remove { id: 3 }),
    );
    assert_eq!(config_asked(&a), None, "{a:?}");
    // Removing a voter never heard from is fine: three of the four left are pinned.
    let a = step(
        &mut r,
        now + 3,
        Event::ChangeMembership(MembershipChange::Remove { id: 5 }),
    );
    let asked = config_asked(&a).expect("the silent voter goes");
    assert_eq!(asked.voters().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
}

#[test]
fn a_follower_behind_the_retained_log_is_reported_as_needing_a_snapshot() {
    // The leader's log starts after index 10 (retention cut the rest).
    let mut log = LogTerms::new(10, 1);
    assert!(log.append(1, 2));
    let cfg = RaftConfig {
        members: pinned(&VOTERS),
        ..RaftConfig::new(1, Vec::new())
    };
    let mut r = Raft::new(
        cfg,
        HardState {
            term: 1,
            voted_for: 0,
        },
        log,
        10,
        0,
    );
    r.restore_configs(vec![ConfigAt {
        index: 5,
        term: 1,
        members: pinned(&VOTERS),
    }]);
    let (now, _) = tick_until(&mut r, Role::PreCandidate);
    msg(&mut r, now, 2, granted(2, true));
    msg(&mut r, now, 2, granted(2, false));
    assert_eq!(r.role(), Role::Leader);
    step(
        &mut r,
        now,
        Event::Appended {
            last_index: 13,
            term: 2,
        },
    );
    assert_eq!(r.peer_needs_snapshot(3), Some(false));
    // Node 3's log ends at 3: what it needs next is gone from the leader's log.
    let a = msg(
        &mut r,
        now + 1,
        3,
        Message::AppendReply(AppendReply {
            term: 2,
            success: false,
            index: 12,
            hint_index: 4,
            hint_term: 0,
        }),
    );
    assert_eq!(r.peer_needs_snapshot(3), Some(true), "{a:?}");
    assert_eq!(r.peer_needs_snapshot(2), Some(false));
}

#[test]
fn a_follower_behind_the_leaders_retained_log_is_offered_an_image_and_probed_until_it_has_one() {
    let (mut r, now) = pinned_leader(&[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    // Entries 1..=11 committed (the no-op at 11); retention removes 1..=10 on the leader.
    step(&mut r, now, Event::LogCompacted { first_index: 11 });
    assert_eq!(r.log_terms().base_index(), 10);
    // Node 3 comes back with a log ending at 3: it refuses the probe the leader sent it on
    // election (prev 10).
    let behind = Message::AppendReply(AppendReply {
        term: 2,
        success: false,
        index: 10,
        hint_index: 4,
        hint_term: 0,
    });
    let a = msg(&mut r, now + 1, 3, behind.clone());
    assert_eq!(r.peer_needs_snapshot(3), Some(true));
    // It is offered an image at once, with one probe from the first entry held (prev 10);
    // nothing else goes to it from the log (it would be refused again and again).
    let offers = |a: &[Action]| {
        a.iter()
            .filter(|x| {
                matches!(
                    x,
                    Action::Send {
                        to: 3,
                        msg: Message::InstallImage { term: 2 }
                    }
                )
            })
            .count()
    };
    let probes = |a: &[Action]| entries_sent(a, 3);
    let mut all = a;
    all.extend(step(&mut r, now + 2, Event::Tick));
    assert_eq!(offers(&all), 1, "{all:?}");
    assert_eq!(probes(&all), vec![(10, 10)], "{all:?}");
    // Refused (it has no image yet): no more until the retry interval passed.
    let mut all = msg(&mut r, now + 3, 3, behind.clone());
    for t in [now + 300, now + 600, now + 900] {
        all.extend(step(&mut r, t, Event::Tick));
        all.extend(msg(
            &mut r,
            t,
            3,
            Message::HeartbeatReply {
                term: 2,
                healthy: true,
            },
        ));
    }
    assert_eq!((offers(&all), probes(&all).len()), (0, 0), "{all:?}");
    let mut all = step(&mut r, now + 1002, Event::Tick);
    all.extend(msg(
        &mut r,
        now + 1002,
        3,
        Message::HeartbeatReply {
            term: 2,
            healthy: true,
        },
    ));
    assert_eq!(offers(&all), 1, "{all:?}");
    assert_eq!(probes(&all), vec![(10, 10)], "{all:?}");
    // It installed one (its log now reaches 11): the probe is accepted and the rest follows
    // from the log.
    let a = msg(
        &mut r,
        now + 1003,
        3,
        Message::AppendReply(AppendReply {
            term: 2,
            success: true,
            index: 10,
            hint_index: 0,
            hint_term: 0,
        }),
    );
    assert_eq!(r.peer_needs_snapshot(3), Some(false));
    assert_eq!(probes(&a), vec![(10, 11)], "{a:?}");
}

#[test]
fn a_follower_offered_an_image_by_its_leader_fetches_it() {
    let mut f = node(2, 1, &[]);
    let a = msg(&mut f, 10, 1, Message::InstallImage { term: 3 });
    assert_eq!(f.role(), Role::Follower);
    assert_eq!(f.leader(), Some(1));
    assert!(
        a.contains(&Action::FetchImage {
            leader: 1,
            diverged: false
        }),
        "{a:?}"
    );
    // From a stale term: nothing.
    let a = msg(&mut f, 11, 3, Message::InstallImage { term: 2 });
    assert!(
        !a.iter().any(|x| matches!(x, Action::FetchImage { .. })),
        "{a:?}"
    );
}

#[test]
fn a_follower_whose_committed_entries_are_not_the_leaders_fetches_an_image_instead_of_truncating() {
    // Node 2 committed 1..=5 (all term 1); the leader of term 3 holds term 2 from index 3 on:
    // acknowledged writes were lost (async flushing, a majority down).
    let follower = || {
        let cfg = RaftConfig::new(2, VOTERS.to_vec());
        let hard = HardState {
            term: 3,
            voted_for: 0,
        };
        Raft::new(cfg, hard, log_of(&[1, 1, 1, 1, 1, 1]), 5, 0)
    };
    let append = |prev_index, prev_term, terms: &[u64]| Message::Append {
        header: AppendHeader {
            term: 3,
            prev_index,
            prev_term,
            commit: 8,
        },
        entries: entries(terms),
    };
    let fetched = |a: &[Action]| {
        a.contains(&Action::FetchImage {
            leader: 1,
            diverged: true,
        })
    };
    let refused = |a: &[Action]| {
        a.iter().any(
            |x| matches!(x, Action::Send { to: 1, msg: Message::AppendReply(r) } if !r.success),
        )
    };
    let persisted = |a: &[Action]| a.iter().any(|x| matches!(x, Action::Persist { .. }));
    // The entry before the append is a committed one of another term.
    let mut f = follower();
    let a = msg(&mut f, 10, 1, append(4, 2, &[]));
    assert!(fetched(&a) && refused(&a) && !persisted(&a), "{a:?}");
    // Committed entries the append carries differ.
    let mut f = follower();
    let a = msg(&mut f, 10, 1, append(2, 1, &[2, 2, 3]));
    assert!(fetched(&a) && refused(&a) && !persisted(&a), "{a:?}");
    // A conflict right after the commit: an ordinary truncation.
    let mut f = follower();
    let a = msg(&mut f, 10, 1, append(5, 1, &[3]));
    assert!(!fetched(&a) && persisted(&a), "{a:?}");
    // The same committed terms: accepted, the conflict past the commit truncated as usual.
    let mut f = follower();
    let a = msg(&mut f, 10, 1, append(2, 1, &[1, 1, 1, 3]));
    assert!(!fetched(&a) && persisted(&a), "{a:?}");
    assert_eq!(f.log_terms().term_at(6), Some(3));
}

#[test]
fn a_probe_at_a_followers_commit_below_its_cut_log_is_accepted() {
    // Node 2's log holds 10..=15 (its store's first entry, 10, is the base it knows the term
    // of), and it committed through 9 (an image's dispatch point, or a restart after retention
    // cut below it); the leader's log was cut at 9 and it probes from there.
    let cfg = RaftConfig::new(2, VOTERS.to_vec());
    let hard = HardState {
        term: 2,
        voted_for: 0,
    };
    let mut log = LogTerms::new(10, 1);
    assert!(log.append(1, 5));
    let mut f = Raft::new(cfg, hard, log, 9, 0);
    let probe = Message::Append {
        header: AppendHeader {
            term: 2,
            prev_index: 9,
            prev_term: 1,
            commit: 15,
        },
        entries: entries(&[1, 1, 1, 1, 1, 1]),
    };
    let a = msg(&mut f, 10, 1, probe);
    assert!(
        a.iter().any(|x| matches!(
            x,
            Action::Send {
                to: 1,
                msg: Message::AppendReply(AppendReply { success: true, .. })
            }
        )),
        "{a:?}"
    );
    assert!(!a.iter().any(|x| matches!(x, Action::FetchImage { .. })));
}

#[test]
fn a_slower_follower_hears_the_commit_as_soon_as_it_holds_the_entries() {
    // Entries 1..=3 committed with node 2; node 3 answers nothing yet.
    let (mut r, now) = pinned_leader(&[1, 1]);
    appended_durably(&mut r, now, 4, 2);
    let a = msg(&mut r, now + 1, 2, ack(2, 4));
    assert_eq!(commits(&a), vec![4]);
    let commit_to = |a: &[Action], to: NodeId| {
        a.iter()
            .filter_map(|x| match x {
                Action::Send {
                    to: t,
                    msg: Message::Heartbeat { commit, .. },
                } if *t == to => Some(*commit),
                _ => None,
            })
            .max()
    };
    let a = step(&mut r, now + 3, Event::Tick);
    assert_eq!(commit_to(&a, 3), None, "nothing it could apply: {a:?}");
    // Node 3 holds entry 4 durably now: it hears commit 4 within the push delay, not at the
    // next heartbeat 50 ms on.
    let mut a = msg(&mut r, now + 4, 3, ack(2, 4));
    a.extend(step(&mut r, now + 5, Event::Tick));
    assert_eq!(commit_to(&a, 3), Some(4), "{a:?}");
}

/// A follower refuses every append of a pipeline sent past its log's end, one answer each:
/// the first answer sends a probe; the others refuse appends other than the probe out and
/// send nothing (each would send the probe again, and its whole range with it); the answer
/// to the probe moves the leader on.
#[test]
fn while_probing_only_the_answer_to_the_probe_moves_the_leader() {
    let (mut r, now) = leader(1, &[1, 1, 1, 1]);
    step(
        &mut r,
        now,
        Event::Appended {
            last_index: 5,
            term: 2,
        },
    );
    let refuse = |index, hint_index| {
        Message::AppendReply(AppendReply {
            term: 2,
            success: false,
            index,
            hint_index,
            hint_term: 0,
        })
    };
    let probes = |a: &[Action]| entries_sent(a, 2);
    let a = msg(&mut r, now, 2, refuse(4, 2));
    assert_eq!(probes(&a), vec![(1, 5)]);
    for stale in [2, 3, 4, 2] {
        let a = msg(&mut r, now, 2, refuse(stale, 2));
        assert!(probes(&a).is_empty(), "refusal of prev {stale}: {a:?}");
    }
    let a = msg(&mut r, now, 2, refuse(1, 1));
    assert_eq!(probes(&a), vec![(0, 5)]);
}
