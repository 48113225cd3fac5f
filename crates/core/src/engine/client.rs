//! A client of the engine: one principal's view of it, the handle every front end uses for a
//! connection or request. Each operation first asks the principal (`access.rs`) whether it may
//! publish to or subscribe to each key it touches, then calls the engine; listings show only
//! what the principal may subscribe to. A refused operation changes nothing.
//!
//! This module only checks and forwards; it holds no state of its own beyond the principal.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::access::Principal;
use super::filter_group_api::FilterDelivery;
use super::filter_groups::Position;
use super::filter_read::TopicMessage;
use super::group_api::{AutoClaimed, GroupEntry, PendingQuery};
use super::group_command::{Claim, GroupStart, ReadFrom};
use super::groups::{ConsumerInfo, GroupInfo, PendingEntry, PendingSummary};
use super::session_api::{Opened, SessionRead, SessionRef};
use super::session_command::{InFlightNew, Owner, SubscribeOptions, Will};
use super::sessions::Session;
use super::state::Retained;
use super::transaction::{Exec, TxAnswer, TxOp, Watch};
use super::{AppendRequest, Engine, Message, Result, StreamInfo, TopicKey, Trim, Turn, Wake};
use crate::store::{LogIndex, StreamId};

/// The engine as one principal may use it.
#[derive(Debug, Clone)]
pub struct Client {
    engine: Arc<Engine>,
    principal: Arc<Principal>,
    /// The epoch of the MQTT session this client's connection holds: its session commands
    /// carry it (refused once another connection took the session).
    session_epoch: Option<LogIndex>,
}

impl Engine {
    /// The principal `name` with secret `secret` (`BadCredentials` otherwise).
    pub fn authenticate(&self, name: &[u8], secret: &[u8]) -> Result<Arc<Principal>> {
        self.inner.acl.authenticate(name, secret)
    }

    /// Whether a principal `name` exists (CLIENT KILL USER).
    pub fn has_principal(&self, name: &[u8]) -> bool {
        self.inner.acl.has(name)
    }

    /// What an unauthenticated connection is (`BadCredentials` when the `default` principal
    /// needs a secret or does not exist).
    pub fn anonymous(&self) -> Result<Arc<Principal>> {
        self.inner.acl.anonymous()
    }
}

impl Client {
    /// `principal`'s view of `engine`.
    pub fn new(engine: Arc<Engine>, principal: Arc<Principal>) -> Self {
        Client {
            engine,
            principal,
            session_epoch: None,
        }
    }

    /// The principal.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The engine (for what needs no permission: applied index, metrics).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// [`Engine::append`], if it may publish to the key.
    pub async fn append(&self, req: AppendRequest) -> Result<Option<StreamId>> {
        self.principal.check_publish(&req.key)?;
        self.engine.append(req).await
    }

    /// [`Engine::append_many`]; a request to a key it may not publish to is that request's
    /// `NoPermission` (the others go on).
    pub async fn append_many(&self, reqs: Vec<AppendRequest>) -> Vec<Result<Option<StreamId>>> {
        if reqs
            .iter()
            .all(|r| self.principal.check_publish(&r.key).is_ok())
        {
            return self.engine.append_many(reqs).await;
        }
        let mut refused = Vec::with_capacity(reqs.len());
        let mut allowed = Vec::with_capacity(reqs.len());
        for r in reqs {
            match self.principal.check_publish(&r.key) {
                Ok(()) => {
                    refused.push(None);
                    allowed.push(r);
                }
                Err(e) => refused.push(Some(e)),
            }
        }
        let mut answers = self.engine.append_many(allowed).await.into_iter();
        refused
            .into_iter()
            .map(|r| match r {
                Some(e) => Err(e),
                None => answers
                    .next()
                    .unwrap_or(Err(super::EngineError::ShuttingDown)),
            })
            .collect()
    }

    /// [`Engine::delete`], if it may publish to the key.
    pub async fn delete(&self, db: u8, key: Bytes, ids: Vec<StreamId>) -> Result<u64> {
        self.principal.check_publish(&key)?;
        self.engine.delete(db, key, ids).await
    }

    /// [`Engine::trim`], if it may publish to the key.
    pub async fn trim(&self, db: u8, key: Bytes, trim: Trim) -> Result<u64> {
        self.principal.check_publish(&key)?;
        self.engine.trim(db, key, trim).await
    }

    /// [`Engine::drop_topic`], if it may publish to the key.
    pub async fn drop_topic(&self, db: u8, key: Bytes) -> Result<bool> {
        self.principal.check_publish(&key)?;
        self.engine.drop_topic(db, key).await
    }

    /// [`Engine::drop_topics`], if it may publish to every key.
    pub async fn drop_topics(&self, db: u8, keys: Vec<Bytes>) -> Result<u64> {
        for key in &keys {
            self.principal.check_publish(key)?;
        }
        self.engine.drop_topics(db, keys).await
    }

    /// [`Engine::set_id`], if it may publish to the key.
    pub async fn set_id(
        &self,
        db: u8,
        key: Bytes,
        id: StreamId,
        entries_added: Option<u64>,
        max_deleted: Option<StreamId>,
    ) -> Result<()> {
        self.principal.check_publish(&key)?;
        self.engine
            .set_id(db, key, id, entries_added, max_deleted)
            .await
    }

    /// [`Engine::run`], if it may: publish to what it writes, subscribe to what its group
    /// command reads.
    pub async fn run(&self, op: TxOp) -> Result<TxAnswer> {
        let engine = &self.engine;
        super::transaction::check(&self.principal, &op, &|db| engine.topics(db, b"*"))?;
        self.engine.run(op).await
    }

    /// [`Engine::exec`], each operation checked as [`Client::run`] checks it (a refused one
    /// is its slot's `NoPermission`).
    pub fn exec(&self, ops: Vec<TxOp>, watches: &[Watch]) -> Result<Option<Exec<'_>>> {
        self.engine.exec(ops, watches, Some(&self.principal))
    }

    /// [`Engine::watch`].
    pub fn watch(&self, db: u8, key: Bytes) -> Watch {
        self.engine.watch(db, key)
    }

    /// [`Engine::exists`], if it may subscribe to the key.
    pub fn exists(&self, db: u8, key: &[u8]) -> Result<bool> {
        self.principal.check_subscribe(key)?;
        Ok(self.engine.exists(db, key))
    }

    /// [`Engine::read_range`], if it may subscribe to the key.
    pub fn read_range(
        &self,
        db: u8,
        key: &[u8],
        start: Bound<StreamId>,
        end: Bound<StreamId>,
        count: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<Message>> {
        self.principal.check_subscribe(key)?;
        self.engine.read_range(db, key, start, end, count, reverse)
    }

    /// [`Engine::approx_trim_limit`].
    pub fn approx_trim_limit(&self) -> u64 {
        self.engine.approx_trim_limit()
    }

    /// [`Engine::len`], if it may subscribe to the key.
    pub fn len(&self, db: u8, key: &[u8]) -> Result<u64> {
        self.principal.check_subscribe(key)?;
        Ok(self.engine.len(db, key))
    }

    /// [`Engine::stream_info`], if it may subscribe to the key.
    pub fn stream_info(&self, db: u8, key: &[u8]) -> Result<Option<StreamInfo>> {
        self.principal.check_subscribe(key)?;
        self.engine.stream_info(db, key)
    }

    /// [`Engine::topics`], only those it may subscribe to.
    pub fn topics(&self, db: u8, pattern: &[u8]) -> Vec<Bytes> {
        let mut t = self.engine.topics(db, pattern);
        t.retain(|k| self.principal.may_subscribe(k));
        t
    }

    /// [`Engine::scan`], only keys it may subscribe to.
    pub fn scan(&self, db: u8, cursor: u64, count: usize, pattern: &[u8]) -> (u64, Vec<Bytes>) {
        let (next, mut keys) = self.engine.scan(db, cursor, count, pattern);
        keys.retain(|k| self.principal.may_subscribe(k));
        (next, keys)
    }

    /// [`Engine::topics_matching`], only those it may subscribe to.
    pub fn topics_matching(&self, filter: &[u8]) -> Result<Vec<Bytes>> {
        let mut t = self.engine.topics_matching(filter)?;
        t.retain(|k| self.principal.may_subscribe(k));
        Ok(t)
    }

    /// [`Engine::retained`], only of topics it may subscribe to.
    pub fn retained(&self, filter: &[u8]) -> Result<Vec<(Bytes, Arc<Retained>)>> {
        let mut r = self.engine.retained(filter)?;
        r.retain(|(k, _)| self.principal.may_subscribe(k));
        Ok(r)
    }

    /// [`Engine::retained_of`], if it may subscribe to the key.
    pub fn retained_of(&self, db: u8, key: &[u8]) -> Result<Option<Arc<Retained>>> {
        self.principal.check_subscribe(key)?;
        Ok(self.engine.retained_of(db, key))
    }

    /// [`Engine::topic_head`], if it may subscribe to the key.
    pub fn topic_head(&self, db: u8, key: &[u8]) -> Result<Option<super::TopicHead>> {
        self.principal.check_subscribe(key)?;
        Ok(self.engine.topic_head(db, key))
    }

    /// [`Engine::find_by_key`], if it may subscribe to the topic.
    pub fn find_by_key(
        &self,
        db: u8,
        topic: &[u8],
        key: &[u8],
        from_ms: u64,
        to_ms: u64,
        max: usize,
    ) -> Result<Vec<Message>> {
        self.principal.check_subscribe(topic)?;
        self.engine.find_by_key(db, topic, key, from_ms, to_ms, max)
    }

    /// [`Engine::wait`], if it may subscribe to every topic.
    pub async fn wait(
        &self,
        topics: &[TopicKey],
        after: LogIndex,
        timeout: Duration,
    ) -> Result<Wake> {
        for (_, key) in topics {
            self.principal.check_subscribe(key)?;
        }
        Ok(self.engine.wait(topics, after, timeout).await)
    }

    /// [`Engine::wait_in_turn`], if it may subscribe to every topic.
    pub async fn wait_in_turn(
        &self,
        topics: &[TopicKey],
        after: LogIndex,
        timeout: Duration,
        order: u64,
        previous: Option<Turn>,
    ) -> Result<(Wake, Option<Turn>)> {
        for (_, key) in topics {
            self.principal.check_subscribe(key)?;
        }
        Ok(self
            .engine
            .wait_in_turn(topics, after, timeout, Some(order), previous)
            .await)
    }

    /// [`Engine::wait_filter`]: a wake says only that something matching arrived; reading it
    /// is checked per topic.
    pub async fn wait_filter(
        &self,
        filter: &[u8],
        after: LogIndex,
        timeout: Duration,
    ) -> Result<Wake> {
        self.engine.wait_filter(filter, after, timeout).await
    }

    /// [`Engine::wait_filters`]: the same, for several filters.
    pub async fn wait_filters(
        &self,
        filters: &[&[u8]],
        after: LogIndex,
        timeout: Duration,
    ) -> Result<Wake> {
        self.engine.wait_filters(filters, after, timeout).await
    }

    /// [`Engine::group_create`], if it may subscribe to the key (and publish to it with
    /// MKSTREAM, which creates the stream).
    pub async fn group_create(
        &self,
        db: u8,
        key: Bytes,
        group: Bytes,
        start: GroupStart,
        mkstream: bool,
        entries_read: Option<u64>,
    ) -> Result<()> {
        self.principal.check_subscribe(&key)?;
        if mkstream {
            self.principal.check_publish(&key)?;
        }
        self.engine
            .group_create(db, key, group, start, mkstream, entries_read)
            .await
    }

    /// [`Engine::group_destroy`], if it may subscribe to the key.
    pub async fn group_destroy(&self, db: u8, key: Bytes, group: Bytes) -> Result<bool> {
        self.principal.check_subscribe(&key)?;
        self.engine.group_destroy(db, key, group).await
    }

    /// [`Engine::group_set_id`], if it may subscribe to the key.
    pub async fn group_set_id(
        &self,
        db: u8,
        key: Bytes,
        group: Bytes,
        start: GroupStart,
        entries_read: Option<u64>,
    ) -> Result<()> {
        self.principal.check_subscribe(&key)?;
        self.engine
            .group_set_id(db, key, group, start, entries_read)
            .await
    }

    /// [`Engine::consumer_create`], if it may subscribe to the key.
    pub async fn consumer_create(
        &self,
        db: u8,
        key: Bytes,
        group: Bytes,
        consumer: Bytes,
    ) -> Result<bool> {
        self.principal.check_subscribe(&key)?;
        self.engine.consumer_create(db, key, group, consumer).await
    }

    /// [`Engine::consumer_delete`], if it may subscribe to the key.
    pub async fn consumer_delete(
        &self,
        db: u8,
        key: Bytes,
        group: Bytes,
        consumer: Bytes,
    ) -> Result<u64> {
        self.principal.check_subscribe(&key)?;
        self.engine.consumer_delete(db, key, group, consumer).await
    }

    /// [`Engine::read_group`], if it may subscribe to every key.
    pub async fn read_group(
        &self,
        db: u8,
        group: Bytes,
        consumer: Bytes,
        streams: Vec<(Bytes, ReadFrom)>,
        count: u64,
        noack: bool,
    ) -> Result<Vec<(Bytes, Vec<GroupEntry>)>> {
        for (key, _) in &streams {
            self.principal.check_subscribe(key)?;
        }
        self.engine
            .read_group(db, group, consumer, streams, count, noack)
            .await
    }

    /// [`Engine::ack`], if it may subscribe to the key.
    pub async fn ack(&self, db: u8, key: Bytes, group: Bytes, ids: Vec<StreamId>) -> Result<u64> {
        self.principal.check_subscribe(&key)?;
        self.engine.ack(db, key, group, ids).await
    }

    /// [`Engine::claim`], if it may subscribe to the key.
    pub async fn claim(
        &self,
        db: u8,
        key: Bytes,
        group: Bytes,
        claim: Claim,
    ) -> Result<Vec<GroupEntry>> {
        self.principal.check_subscribe(&key)?;
        self.engine.claim(db, key, group, claim).await
    }

    /// [`Engine::autoclaim`], if it may subscribe to the key.
    #[allow(clippy::too_many_arguments)]
    pub async fn autoclaim(
        &self,
        db: u8,
        key: Bytes,
        group: Bytes,
        consumer: Bytes,
        min_idle_ms: u64,
        start: StreamId,
        count: u64,
        justid: bool,
    ) -> Result<AutoClaimed> {
        self.principal.check_subscribe(&key)?;
        self.engine
            .autoclaim(db, key, group, consumer, min_idle_ms, start, count, justid)
            .await
    }

    /// [`Engine::pending_summary`], if it may subscribe to the key.
    pub fn pending_summary(&self, db: u8, key: &[u8], group: &[u8]) -> Result<PendingSummary> {
        self.principal.check_subscribe(key)?;
        self.engine.pending_summary(db, key, group)
    }

    /// [`Engine::pending`], if it may subscribe to the key.
    pub fn pending(
        &self,
        db: u8,
        key: &[u8],
        group: &[u8],
        query: &PendingQuery,
    ) -> Result<Vec<PendingEntry>> {
        self.principal.check_subscribe(key)?;
        self.engine.pending(db, key, group, query)
    }

    /// [`Engine::group_has_new`] (false if it may not subscribe to the key).
    pub fn group_has_new(&self, db: u8, key: &[u8], group: &[u8]) -> bool {
        self.principal.may_subscribe(key) && self.engine.group_has_new(db, key, group)
    }

    /// [`Engine::groups_info`], if it may subscribe to the key.
    pub fn groups_info(&self, db: u8, key: &[u8]) -> Result<Option<Vec<GroupInfo>>> {
        self.principal.check_subscribe(key)?;
        self.engine.groups_info(db, key)
    }

    /// [`Engine::consumers_info`], if it may subscribe to the key.
    pub fn consumers_info(
        &self,
        db: u8,
        key: &[u8],
        group: &[u8],
    ) -> Result<Option<Vec<ConsumerInfo>>> {
        self.principal.check_subscribe(key)?;
        self.engine.consumers_info(db, key, group)
    }

    /// [`Engine::read_filters`], only messages of topics it may subscribe to.
    pub fn read_filters(
        &self,
        filters: &[&[u8]],
        after: LogIndex,
        count: usize,
    ) -> Result<Vec<TopicMessage>> {
        let mut m = self.engine.read_filters(filters, after, count)?;
        m.retain(|m| self.principal.may_subscribe(&m.topic));
        Ok(m)
    }

    /// [`Engine::session_open`].
    pub async fn session_open(
        &self,
        client: Bytes,
        clean_start: bool,
        expiry_s: u32,
        will: Option<Will>,
    ) -> Result<bool> {
        self.session_open_by(client, clean_start, expiry_s, will, None)
            .await
            .map(|o| o.present)
    }

    /// [`Engine::session_open_by`]: then [`Client::with_session_epoch`] with the epoch
    /// answered fences this client's session commands.
    pub async fn session_open_by(
        &self,
        client: Bytes,
        clean_start: bool,
        expiry_s: u32,
        will: Option<Will>,
        owner: Option<Owner>,
    ) -> Result<Opened> {
        // A Will is a publish made later on the client's behalf.
        if let Some(w) = &will {
            self.principal.check_publish(&w.topic)?;
        }
        self.engine
            .session_open_by(client, clean_start, expiry_s, will, owner)
            .await
    }

    /// This client, its session commands carrying `epoch` (the one its connection's Open
    /// answered): once another connection opens the session they fail `TakenOver`.
    pub fn with_session_epoch(&self, epoch: LogIndex) -> Client {
        Client {
            session_epoch: Some(epoch),
            ..self.clone()
        }
    }

    /// `client`'s session, with this client's epoch.
    fn fenced(&self, client: Bytes) -> SessionRef {
        SessionRef {
            client,
            epoch: self.session_epoch,
        }
    }

    /// [`Engine::session_subscribe`]: a filter may be subscribed to; what it delivers is
    /// checked topic by topic ([`Client::session_pending`]).
    pub async fn session_subscribe(
        &self,
        client: Bytes,
        subs: Vec<(Bytes, SubscribeOptions)>,
    ) -> Result<()> {
        self.engine
            .session_subscribe(self.fenced(client), subs)
            .await
    }

    /// [`Engine::session_unsubscribe`].
    pub async fn session_unsubscribe(
        &self,
        client: Bytes,
        filters: Vec<Bytes>,
    ) -> Result<Vec<bool>> {
        self.engine
            .session_unsubscribe(self.fenced(client), filters)
            .await
    }

    /// [`Engine::session_deliver`].
    pub async fn session_deliver(
        &self,
        client: Bytes,
        upto: LogIndex,
        inflight: Vec<InFlightNew>,
    ) -> Result<()> {
        self.engine
            .session_deliver(self.fenced(client), upto, inflight)
            .await
    }

    /// [`Engine::session_complete`].
    pub async fn session_complete(&self, client: Bytes, packet_id: u16) -> Result<()> {
        self.engine
            .session_complete(self.fenced(client), packet_id)
            .await
    }

    /// [`Engine::session_complete_many`].
    pub async fn session_complete_many(&self, client: Bytes, packet_ids: Vec<u16>) -> Result<()> {
        self.engine
            .session_complete_many(self.fenced(client), packet_ids)
            .await
    }

    /// [`Engine::session_received`].
    pub async fn session_received(&self, client: Bytes, packet_id: u16) -> Result<()> {
        self.engine
            .session_received(self.fenced(client), packet_id)
            .await
    }

    /// [`Engine::session_released`].
    pub async fn session_released(&self, client: Bytes, packet_id: u16) -> Result<bool> {
        self.engine
            .session_released(self.fenced(client), packet_id)
            .await
    }

    /// [`Engine::session_close`].
    pub async fn session_close(
        &self,
        client: Bytes,
        expiry_s: Option<u32>,
        publish_will: bool,
    ) -> Result<()> {
        self.engine
            .session_close(self.fenced(client), expiry_s, publish_will)
            .await
    }

    /// [`Engine::session`].
    pub fn session(&self, client: &[u8]) -> Option<Session> {
        self.engine.session(client)
    }

    /// [`Engine::session_pending`], only messages of topics it may subscribe to (the cursor
    /// still moves past the others).
    pub fn session_pending(&self, client: &[u8], count: usize) -> Result<SessionRead> {
        self.session_pending_from(client, 0, count)
    }

    /// [`Engine::session_pending_from`], only messages of topics it may subscribe to.
    pub fn session_pending_from(
        &self,
        client: &[u8],
        from: crate::store::LogIndex,
        count: usize,
    ) -> Result<SessionRead> {
        let mut read = self.engine.session_pending_from(client, from, count)?;
        read.messages
            .retain(|m| self.principal.may_subscribe(&m.topic));
        Ok(read)
    }

    /// [`Engine::session_pending_at`], only messages of topics it may subscribe to.
    pub fn session_pending_at(
        &self,
        session: &super::Session,
        client: &[u8],
        index: crate::store::LogIndex,
    ) -> Option<SessionRead> {
        let mut read = self.engine.session_pending_at(session, client, index)?;
        read.messages
            .retain(|m| self.principal.may_subscribe(&m.topic));
        Some(read)
    }

    /// [`Engine::filter_group_join`].
    pub async fn filter_group_join(&self, group: Bytes, filter: Bytes) -> Result<bool> {
        self.engine.filter_group_join(group, filter).await
    }

    /// [`Engine::filter_group_read`], only messages of topics it may subscribe to: the others
    /// the group hands it are acknowledged at once, as a broker skips a subscriber that may
    /// not read them (a shared group's members are expected to share permissions).
    pub async fn filter_group_read(
        &self,
        group: Bytes,
        filter: Bytes,
        consumer: Bytes,
        count: usize,
        noack: bool,
    ) -> Result<Vec<FilterDelivery>> {
        let got = self
            .engine
            .filter_group_read(group.clone(), filter.clone(), consumer, count, noack)
            .await?;
        self.readable(group, filter, got, !noack).await
    }

    /// The deliveries it may read; the others are acknowledged for it (when `pending`: they
    /// were left pending), so they never stay with a member that cannot see them.
    async fn readable(
        &self,
        group: Bytes,
        filter: Bytes,
        got: Vec<FilterDelivery>,
        pending: bool,
    ) -> Result<Vec<FilterDelivery>> {
        let (allowed, denied): (Vec<_>, Vec<_>) = got
            .into_iter()
            .partition(|d| self.principal.may_subscribe(&d.topic));
        if pending && !denied.is_empty() {
            let positions = denied.iter().map(|d| d.position).collect();
            self.engine
                .filter_group_ack(group, filter, positions)
                .await?;
        }
        Ok(allowed)
    }

    /// [`Engine::filter_group_ack`].
    pub async fn filter_group_ack(
        &self,
        group: Bytes,
        filter: Bytes,
        positions: Vec<Position>,
    ) -> Result<u64> {
        self.engine.filter_group_ack(group, filter, positions).await
    }

    /// [`Engine::filter_group_claim`], with the same rule as `filter_group_read` for topics it
    /// may not read.
    pub async fn filter_group_claim(
        &self,
        group: Bytes,
        filter: Bytes,
        consumer: Bytes,
        min_idle_ms: u64,
        count: u64,
    ) -> Result<Vec<FilterDelivery>> {
        let got = self
            .engine
            .filter_group_claim(group.clone(), filter.clone(), consumer, min_idle_ms, count)
            .await?;
        self.readable(group, filter, got, true).await
    }

    /// [`Engine::filter_group_leave`].
    pub async fn filter_group_leave(
        &self,
        group: Bytes,
        filter: Bytes,
        consumer: Bytes,
    ) -> Result<u64> {
        self.engine
            .filter_group_leave(group, filter, consumer)
            .await
    }
}
