//! A connection's move to and from its filter's hub (`broker::hub`): a clean session with one
//! plain QoS 0 subscription over TCP, at the head, lets the hub write its messages; it comes
//! back to reading by cursor from where the hub stopped when the hub lets go of it, when the
//! client subscribes or unsubscribes, and when the connection ends. Never attaches a session
//! whose deliveries need anything per subscriber (packet ids, aliases, subscription ids, No
//! Local, Retain As Published, `$SYS` values, shared groups, a committed cursor).

use bytes::Bytes;
use manifold_core::engine::{Client, topic_filter};

use super::Conn;

impl Conn {
    /// The one filter this connection's session could be served by a hub with, if it could.
    fn live_filter(&self, client: &Client) -> Option<Bytes> {
        if self.wr.outbox().is_none()
            || self.sharing
            || !self.sys_filters.is_empty()
            || !self.unsendable.is_empty()
            || (self.v5() && self.peer_alias_max > 0)
        {
            return None;
        }
        let session = client.session(&self.id)?;
        if session.expiry_s != 0 || !session.inflight.is_empty() || session.subscriptions.len() != 1
        {
            return None;
        }
        let (filter, sub) = session.subscriptions.iter().next()?;
        let o = &sub.options;
        let plain = o.qos == 0 && !o.no_local && !o.retain_as_published && o.subscription_id == 0;
        (plain && topic_filter::shared_subscription(filter).is_none() && !filter.starts_with(b"$"))
            .then(|| filter.clone())
    }

    /// Attaches to the hub of the session's filter when it can be served by one: the
    /// connection has delivered every message up to `position`.
    pub(super) fn attach_live(&mut self, client: &Client, position: u64) {
        if self.hub.is_some() {
            return;
        }
        let Some(filter) = self.live_filter(client) else {
            return;
        };
        let Some(outbox) = self.wr.outbox() else {
            return;
        };
        self.hub = self.shared.hubs.attach(
            &filter,
            outbox,
            self.protocol,
            self.peer_max_packet,
            position.max(self.cursor),
        );
    }

    /// Leaves the hub, if attached: the cursor moves to where the hub stopped, and the next
    /// round reads from there.
    pub(super) fn detach_live(&mut self) {
        if let Some(attached) = self.hub.take() {
            let position = attached.detach();
            if position > self.cursor {
                self.cursor = position;
                self.cursor_dirty = true;
            }
            self.settled = None;
        }
    }
}
