//! The engine's filter-group operations (MQTT shared subscriptions with wildcards): join,
//! read, acknowledge, claim, leave, as FilterGroup commands through the log. A read finds the
//! messages after the group's cursor with `read_filters` (off the applier) and proposes their
//! positions; apply accepts those still new. This module builds commands and shapes replies;
//! `filter_groups.rs` decides.

use bytes::Bytes;

use super::filter_groups::{
    self, FilterGroup, FilterGroupCommand, FilterGroupOp, FilterGroupOutcome, Position,
};
use super::groups::GroupError;
use super::{CommandTag, Engine, EngineError, Message, Result, topic_filter};
use crate::store::StoreError;

/// A message a filter group handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterDelivery {
    /// Its position: what the consumer acknowledges.
    pub position: Position,
    /// The topic it was published to.
    pub topic: Bytes,
    /// The message (`None` if retention removed it since).
    pub message: Option<Message>,
}

impl Engine {
    async fn filter_group_command(
        &self,
        group: Bytes,
        filter: Bytes,
        op: FilterGroupOp,
    ) -> Result<FilterGroupOutcome> {
        let command = FilterGroupCommand { group, filter, op };
        let applied = self
            .run_command(CommandTag::FilterGroup, |out| {
                filter_groups::encode_command(&command, out)
            })
            .await?;
        match applied.filter_group {
            Some(FilterGroupOutcome::NoGroup) => Err(GroupError::NoGroup.into()),
            Some(FilterGroupOutcome::PendingLimit) => Err(GroupError::PendingLimit.into()),
            Some(o) => Ok(o),
            None => Err(EngineError::Store(StoreError::Failed(
                "a filter-group command was applied without an answer".into(),
            ))),
        }
    }

    /// Joins (creating if needed) the group `group` on MQTT filter `filter`; whether it was
    /// created. A new group receives messages published after this.
    pub async fn filter_group_join(&self, group: Bytes, filter: Bytes) -> Result<bool> {
        topic_filter::check_filter(&filter).map_err(EngineError::BadTopic)?;
        match self
            .filter_group_command(group, filter, FilterGroupOp::Join)
            .await?
        {
            FilterGroupOutcome::Bool(b) => Ok(b),
            _ => Ok(false),
        }
    }

    /// Removes the group; whether it existed.
    pub async fn filter_group_destroy(&self, group: Bytes, filter: Bytes) -> Result<bool> {
        match self
            .filter_group_command(group, filter, FilterGroupOp::Destroy)
            .await?
        {
            FilterGroupOutcome::Bool(b) => Ok(b),
            _ => Ok(false),
        }
    }

    /// Up to `count` messages new to the group, for `consumer` (pending until acknowledged,
    /// unless `noack`). Empty when nothing is new — or when another reader took them first.
    pub async fn filter_group_read(
        &self,
        group: Bytes,
        filter: Bytes,
        consumer: Bytes,
        count: usize,
        noack: bool,
    ) -> Result<Vec<FilterDelivery>> {
        let cursor = self
            .filter_group(&group, &filter)
            .ok_or(GroupError::NoGroup)?
            .cursor;
        // From the cursor's own entry (a partly handed-out entry), keeping what is after it.
        let found: Vec<_> = self
            .read_filters(
                &[filter.as_ref()],
                cursor.0.saturating_sub(1),
                count.saturating_add(1),
            )?
            .into_iter()
            .filter(|m| (m.message.log_index, m.message.sub) > cursor)
            .take(count)
            .collect();
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let positions = found
            .iter()
            .map(|m| ((m.message.log_index, m.message.sub), m.topic.clone()))
            .collect();
        let op = FilterGroupOp::Deliver {
            consumer,
            positions,
            noack,
        };
        let accepted = match self.filter_group_command(group, filter, op).await? {
            FilterGroupOutcome::Delivered(d) => d,
            _ => Vec::new(),
        };
        Ok(found
            .into_iter()
            .filter(|m| {
                let p = (m.message.log_index, m.message.sub);
                accepted.iter().any(|(a, _)| *a == p)
            })
            .map(|m| FilterDelivery {
                position: (m.message.log_index, m.message.sub),
                topic: m.topic,
                message: Some(m.message),
            })
            .collect())
    }

    /// Acknowledges delivered positions; how many were pending.
    pub async fn filter_group_ack(
        &self,
        group: Bytes,
        filter: Bytes,
        positions: Vec<Position>,
    ) -> Result<u64> {
        match self
            .filter_group_command(group, filter, FilterGroupOp::Ack(positions))
            .await?
        {
            FilterGroupOutcome::Count(n) => Ok(n),
            _ => Ok(0),
        }
    }

    /// Takes up to `count` pending messages idle at least `min_idle_ms` (or released by a
    /// consumer that left) for `consumer`: MQTT redelivery to another shared subscriber.
    pub async fn filter_group_claim(
        &self,
        group: Bytes,
        filter: Bytes,
        consumer: Bytes,
        min_idle_ms: u64,
        count: u64,
    ) -> Result<Vec<FilterDelivery>> {
        let op = FilterGroupOp::Claim {
            consumer,
            min_idle_ms,
            count,
        };
        let claimed = match self.filter_group_command(group, filter, op).await? {
            FilterGroupOutcome::Delivered(d) => d,
            _ => Vec::new(),
        };
        claimed
            .into_iter()
            .map(|((index, sub), topic)| {
                let message = self.message_at_position(index, sub)?.map(|m| m.message);
                Ok(FilterDelivery {
                    position: (index, sub),
                    topic,
                    message,
                })
            })
            .collect()
    }

    /// The consumer left (MQTT: disconnected): its pending messages are released for others;
    /// how many.
    pub async fn filter_group_leave(
        &self,
        group: Bytes,
        filter: Bytes,
        consumer: Bytes,
    ) -> Result<u64> {
        match self
            .filter_group_command(group, filter, FilterGroupOp::Leave(consumer))
            .await?
        {
            FilterGroupOutcome::Count(n) => Ok(n),
            _ => Ok(0),
        }
    }

    /// The group as applied.
    pub fn filter_group(&self, group: &[u8], filter: &[u8]) -> Option<FilterGroup> {
        self.inner
            .lock_state()
            .filter_groups
            .by_key
            .get(&(
                Bytes::copy_from_slice(group),
                Bytes::copy_from_slice(filter),
            ))
            .cloned()
    }
}
