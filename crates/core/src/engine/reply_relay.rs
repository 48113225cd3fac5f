//! The reply relay: a busy apply batch's replies, sent from a task on the proposers' runtime.
//!
//! Each reply the applier sends wakes the task that waits for it. Woken from the applier's
//! thread, a task goes through the runtime's shared queue and, when a worker sleeps, a
//! futex wake — a system call per reply, and the woken worker often takes the applier's
//! CPU. Under load (hundreds of replies per batch) that was the applier's largest cost. The
//! relay is one task on the first multi-thread runtime that proposes (the binary has one):
//! the applier hands it a batch's replies in one message, and the relay sends them there,
//! where a wake is a push onto a worker's own queue. A batch with few replies (a quiet
//! engine, where a reply's latency counts) is answered directly, one hop sooner.
//!
//! What it owns: the channel to that task and the count of batches it still holds. What it
//! must never do: reorder replies — a batch is answered directly only when the relay holds
//! none (one caller's replies arrive in log order, as MQTT's acknowledgements must); lose a
//! reply — when the relay's runtime drops its task, the task sends what it still holds as it
//! goes, and a batch it can no longer take is answered directly once those are out.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::{Applied, Result};

/// A batch with at least this many replies goes through the relay.
const RELAY_FROM: usize = 32;

/// One reply to send.
pub(super) enum Reply {
    One(oneshot::Sender<Result<Applied>>, Result<Applied>),
    Many(oneshot::Sender<Result<Vec<Applied>>>, Result<Vec<Applied>>),
}

impl Reply {
    fn send(self) {
        match self {
            Reply::One(tx, r) => {
                let _ = tx.send(r);
            }
            Reply::Many(tx, r) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// The applier's side of the relay.
#[derive(Debug, Default)]
pub(super) struct ReplyRelay {
    /// Set once a relay task was started, cleared when it is found gone (a relayed send
    /// fails): checked by proposers without the lock.
    live: AtomicBool,
    tx: Mutex<Option<mpsc::UnboundedSender<Vec<Reply>>>>,
    /// Batches handed to the relay and not yet all sent.
    held: Arc<AtomicU64>,
}

impl ReplyRelay {
    /// Starts the relay on the caller's runtime if none runs (a proposer calls this): only a
    /// multi-thread runtime, whose workers run the relay whether or not anyone blocks on it.
    pub(super) fn ensure(&self) {
        if self.live.load(Ordering::Acquire) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        let mut slot = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|tx| !tx.is_closed()) {
            self.live.store(true, Ordering::Release);
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel::<Vec<Reply>>();
        let mut relay = Relay {
            rx,
            held: self.held.clone(),
        };
        handle.spawn(async move {
            while let Some(batch) = relay.rx.recv().await {
                relay.deliver(batch);
            }
        });
        *slot = Some(tx);
        self.live.store(true, Ordering::Release);
    }

    /// Sends a batch's replies: through the relay when it is large or the relay still holds
    /// earlier ones, else here.
    pub(super) fn send(&self, replies: Vec<Reply>) {
        if replies.is_empty() {
            return;
        }
        let relay = self.live.load(Ordering::Acquire)
            && (replies.len() >= RELAY_FROM || self.held.load(Ordering::Acquire) > 0);
        let replies = if relay {
            let slot = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some(tx) => {
                    self.held.fetch_add(1, Ordering::AcqRel);
                    match tx.send(replies) {
                        Ok(()) => return,
                        Err(mpsc::error::SendError(back)) => {
                            // The relay's runtime dropped it: it sends what it held as it
                            // goes (`Relay::drop`); this batch goes here, after those.
                            self.held.fetch_sub(1, Ordering::AcqRel);
                            self.live.store(false, Ordering::Release);
                            while self.held.load(Ordering::Acquire) > 0 {
                                std::thread::yield_now();
                            }
                            back
                        }
                    }
                }
                None => replies,
            }
        } else {
            replies
        };
        for reply in replies {
            reply.send();
        }
    }
}

/// The relay task's side: what it receives, and the count it takes each batch off.
struct Relay {
    rx: mpsc::UnboundedReceiver<Vec<Reply>>,
    held: Arc<AtomicU64>,
}

impl Relay {
    fn deliver(&self, batch: Vec<Reply>) {
        for reply in batch {
            reply.send();
        }
        self.held.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Relay {
    /// The runtime is dropping the task (shutting down): nothing more comes in, and what
    /// came is sent from here rather than dropped with the channel.
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(batch) = self.rx.try_recv() {
            self.deliver(batch);
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies(n: usize) -> (Vec<Reply>, Vec<oneshot::Receiver<Result<Applied>>>) {
        (0..n)
            .map(|_| {
                let (tx, rx) = oneshot::channel();
                (Reply::One(tx, Ok(Applied::default())), rx)
            })
            .unzip()
    }

    fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .build()
            .expect("runtime")
    }

    /// A relay on a runtime whose only worker is kept busy (the relay cannot run) until the
    /// sender returned is dropped.
    fn relay_on_a_busy_runtime() -> (
        tokio::runtime::Runtime,
        ReplyRelay,
        std::sync::mpsc::Sender<()>,
    ) {
        let rt = multi_thread(1);
        let relay = ReplyRelay::default();
        {
            let _in = rt.enter();
            relay.ensure();
        }
        let (hold, release) = std::sync::mpsc::channel::<()>();
        let (busy_tx, busy) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _ = busy_tx.send(());
            let _ = release.recv();
        });
        busy.recv().expect("worker busy");
        (rt, relay, hold)
    }

    #[test]
    fn a_small_batch_waits_behind_the_batches_the_relay_holds() {
        let (_rt, relay, hold) = relay_on_a_busy_runtime();

        let (big, mut big_rx) = replies(RELAY_FROM);
        relay.send(big);
        let (small, mut small_rx) = replies(1);
        relay.send(small);
        // Neither is answered: the small one is behind the big one, in the relay.
        assert!(big_rx.iter_mut().all(|rx| rx.try_recv().is_err()));
        assert!(
            small_rx[0].try_recv().is_err(),
            "answered ahead of the batch before it"
        );

        drop(hold);
        for rx in big_rx.into_iter().chain(small_rx) {
            assert!(rx.blocking_recv().expect("answered").is_ok());
        }
        // The relay holds nothing now: a small batch is answered at once, here.
        while relay.held.load(Ordering::Acquire) > 0 {
            std::thread::yield_now();
        }
        let (small, mut small_rx) = replies(1);
        relay.send(small);
        assert!(
            small_rx[0].try_recv().is_ok(),
            "a quiet batch goes directly"
        );
    }

    #[test]
    fn what_the_relay_holds_is_sent_when_its_runtime_drops_it() {
        let (rt, relay, hold) = relay_on_a_busy_runtime();
        let (big, big_rx) = replies(RELAY_FROM);
        relay.send(big);
        // The runtime goes while the relay holds the batch: sent by a last poll or as the
        // task is dropped (the test below drops one unpolled).
        rt.shutdown_background();
        drop(hold);
        for rx in big_rx {
            assert!(rx.blocking_recv().expect("not dropped").is_ok());
        }
        assert_eq!(relay.held.load(Ordering::Acquire), 0);
        // The relay is gone: the next batch goes here.
        let (big, big_rx) = replies(RELAY_FROM);
        relay.send(big);
        for mut rx in big_rx {
            assert!(rx.try_recv().expect("answered here").is_ok());
        }
    }

    #[test]
    fn a_relay_dropped_unpolled_sends_what_it_holds() {
        // What a runtime shutting down does to the relay's task: drops it, whatever its
        // channel holds.
        let (tx, rx) = mpsc::unbounded_channel();
        let held = Arc::new(AtomicU64::new(2));
        let relay = Relay {
            rx,
            held: held.clone(),
        };
        let (first, first_rx) = replies(3);
        let (second, second_rx) = replies(1);
        assert!(tx.send(first).is_ok() && tx.send(second).is_ok());
        drop(relay);
        for mut rx in first_rx.into_iter().chain(second_rx) {
            assert!(rx.try_recv().expect("sent, not dropped").is_ok());
        }
        assert_eq!(held.load(Ordering::Acquire), 0);
        assert!(
            tx.send(Vec::new()).is_err(),
            "a dropped relay takes nothing more"
        );
    }

    #[test]
    fn replies_are_sent_here_once_the_relays_runtime_is_gone() {
        let rt = multi_thread(1);
        let relay = ReplyRelay::default();
        {
            let _in = rt.enter();
            relay.ensure();
        }
        drop(rt);
        let (big, big_rx) = replies(RELAY_FROM * 2);
        relay.send(big);
        for mut rx in big_rx {
            assert!(rx.try_recv().expect("answered here").is_ok());
        }
        // A runtime of one thread does not take the relay (nothing runs it unless someone
        // blocks on that runtime): replies keep going directly.
        let single = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        {
            let _in = single.enter();
            relay.ensure();
        }
        let (big, big_rx) = replies(RELAY_FROM);
        relay.send(big);
        for mut rx in big_rx {
            assert!(rx.try_recv().expect("answered here").is_ok());
        }
    }
}
