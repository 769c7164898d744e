//! Sentinel's `+switch-master`, followed (phases: admit and settle, in the
//! background).
//!
//! A failover Sentinel makes while the old master stays up (`SENTINEL
//! FAILOVER`, a network split) does not cut the proxy's connection to the
//! old master: it keeps answering, as a master, until Sentinel demotes it,
//! seconds later, and everything written there meanwhile is lost when it
//! resyncs from the new master. So each Redis store behind Sentinel
//! subscribes to `+switch-master` on the Sentinels; each announcement of
//! its master counts one more [`Switches`], and every connection made
//! before it is dropped on its next call, which asks Sentinel again.
//!
//! The bound: writes the old master acknowledged between the promotion of
//! the replica and this subscriber hearing of it (Sentinel announces the
//! switch once the promoted replica reports itself master; pub/sub delivers
//! in a round trip) can be lost, as can writes not yet replicated when the
//! old master failed. `docs/operations.md` says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

/// Pause before subscribing again after a Sentinel connection failed.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);

/// How many switches of the master were announced since the store was made.
#[derive(Debug, Default)]
pub(super) struct Switches(AtomicU64);

impl Switches {
    /// The count now.
    pub(super) fn seen(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// The subscriber task; stopped when the last store clone holding it drops.
#[derive(Debug)]
pub(super) struct Watch(tokio::task::AbortHandle);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts following `+switch-master` of `master` on the Sentinels at
/// `nodes` (each `redis://` or `rediss://`, with the Sentinels' password),
/// one at a time, moving to the next when one fails. Needs a tokio runtime;
/// without one, returns `None` (then only a lost connection or a `READONLY`
/// answer makes the store ask Sentinel again).
pub(super) fn watch(
    master: &str,
    nodes: &[String],
    root_cert: Option<&[u8]>,
    switches: Arc<Switches>,
) -> Option<Watch> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let clients: Vec<redis::Client> = nodes
        .iter()
        .filter_map(|url| {
            let opened = match root_cert {
                Some(root) if url.starts_with("rediss://") => redis::Client::build_with_tls(
                    url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root.to_vec()),
                    },
                ),
                _ => redis::Client::open(url.as_str()),
            };
            opened.ok()
        })
        .collect();
    if clients.is_empty() {
        return None;
    }
    let master = master.to_owned();
    let task = runtime.spawn(async move {
        for client in clients.iter().cycle() {
            if let Err(e) = follow(client, &master, &switches).await {
                tracing::debug!(error = %e, "no +switch-master subscription on this Sentinel");
            }
            tokio::time::sleep(RESUBSCRIBE_AFTER).await;
        }
    });
    Some(Watch(task.abort_handle()))
}

/// Subscribes on one Sentinel and counts the switches of `master` until
/// the connection ends.
async fn follow(
    client: &redis::Client,
    master: &str,
    switches: &Switches,
) -> redis::RedisResult<()> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe("+switch-master").await?;
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        // "<master name> <old ip> <old port> <new ip> <new port>"
        let payload: String = message.get_payload().unwrap_or_default();
        if payload.split(' ').next() == Some(master) {
            switches.0.fetch_add(1, Ordering::AcqRel);
            tracing::warn!(switch = %payload,
                "Sentinel switched the redis master; reconnecting to the new one");
        }
    }
    Ok(())
}
