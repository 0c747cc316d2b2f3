//! Keeping the replica current: the watch of every key (resumed from the last applied
//! revision after any interruption, and from the start of a bucket created again) and the
//! periodic round trip that keeps "last contact" fresh while the bucket is quiet.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use futures::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::entry::{self, Entry};
use super::nats::{bucket_replaced, connect_options, open_bucket, server_addrs};
pub use super::nats::{check_at_start, ReplicaError};
use super::Replica;

/// How often the connection is confirmed when no entry arrives.
const ROUND_TRIP_EVERY: Duration = Duration::from_secs(1);
/// How long a round trip may take before it does not count as contact.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(1);
/// How often records older than every acceptable token are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// The wait after a first failed attempt to (re)open the watch; it doubles with each
/// further failure in a row.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between attempts to (re)open the watch.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// How long an attempt to open the watch may take at first. A cluster electing a new leader
/// after losing a node leaves requests unanswered for seconds: short attempts retry soon
/// after it is done. See [`open_timeout`].
const MIN_OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest an attempt to open the watch may take.
const MAX_OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Failed attempts in a row after which the time allowed doubles, so a server that is slow
/// rather than electing still gets the time it needs.
const ATTEMPTS_PER_TIMEOUT: u32 = 5;
/// How often the watch checks that its bucket is still the one it reads: one deleted and
/// created again numbers its revisions from 1, below where the watch would resume.
const BUCKET_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Where the watch resumes after an interruption.
struct Position {
    /// The bucket's stream, by its creation time (nanoseconds): a bucket deleted and created
    /// again numbers its revisions from 1 again.
    created: Option<i128>,
    /// The next revision to apply.
    next_revision: u64,
}

/// How long to wait after `failures` + 1 failed attempts in a row.
fn retry_after(failures: u32) -> Duration {
    (FIRST_RETRY * (1 << failures.min(6))).min(MAX_RETRY)
}

/// How long an attempt to open the watch may take after `failures` failed ones in a row.
fn open_timeout(failures: u32) -> Duration {
    let doublings = (failures / ATTEMPTS_PER_TIMEOUT).min(4);
    (MIN_OPEN_TIMEOUT * (1 << doublings)).min(MAX_OPEN_TIMEOUT)
}

/// Logs the connection's events, and counts its connections: the receiver sees the count
/// change on every (re)connection, so the watch can reopen at once from its position. (The
/// client's ordered consumer would recreate itself too, but backs off to 10 s between tries
/// while a cluster elects a new leader, which delays sign-outs.)
fn count_connections(
    options: async_nats::ConnectOptions,
) -> (
    async_nats::ConnectOptions,
    tokio::sync::watch::Receiver<u64>,
) {
    let (connected_tx, connections) = tokio::sync::watch::channel(0u64);
    let options = options.event_callback(move |event| {
        match event {
            async_nats::Event::Connected => {
                log::info!("replica: connected to NATS");
                connected_tx.send_modify(|n| *n += 1);
            }
            other => log::warn!("replica: NATS connection: {other}"),
        }
        async {}
    });
    (options, connections)
}

/// The announcements of a new leader for the bucket's stream: the watch's consumer may have
/// gone with the old one, which the client notices only after 10 s without its heartbeat.
/// `None` where the subscription fails (that remains the way it is noticed then; credentials
/// that do not allow the subject show as the server's permissions violation instead).
async fn leader_changes(
    client: &async_nats::Client,
    bucket: &str,
) -> Option<async_nats::Subscriber> {
    let subject = format!("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.KV_{bucket}");
    match client.subscribe(subject).await {
        Ok(subscriber) => Some(subscriber),
        Err(e) => {
            log::warn!("replica: cannot follow the bucket's leader changes: {e}");
            None
        }
    }
}

/// The next message of an advisory subscription; never, without one.
async fn next_advisory(
    subscriber: &mut Option<async_nats::Subscriber>,
) -> Option<async_nats::Message> {
    match subscriber {
        Some(subscriber) => subscriber.next().await,
        None => std::future::pending().await,
    }
}

/// The background service that keeps the replica current.
pub struct ReplicaWatch {
    replica: Arc<Replica>,
}

impl ReplicaWatch {
    pub fn new(replica: Arc<Replica>) -> ReplicaWatch {
        ReplicaWatch { replica }
    }

    /// Opens the bucket and reads its stream from `revision` on: every key's value, then
    /// every update.
    ///
    /// The consumer has no subject filter: a bucket's stream holds only its keys, and
    /// nats-server 2.9 takes seconds per million messages to start a consumer filtered on
    /// `$KV.<bucket>.>` (longer than a client waits, at ten million) but none without one.
    /// From revision 1 on, that is every key's latest value (a bucket keeps one per key,
    /// or a few with history, which merge to the same record) and its deletions, in order.
    ///
    /// A bucket created again since the last open is read from its start: the records held
    /// stay (epochs only go forward) until they expire.
    async fn open(
        &self,
        js: &jetstream::Context,
        position: &mut Position,
    ) -> Result<consumer::push::Ordered, ReplicaError> {
        let settings = self.replica.settings();
        let bucket_error = |e: &dyn std::fmt::Display| ReplicaError::Bucket {
            bucket: settings.bucket.clone(),
            message: e.to_string(),
        };
        let stream = open_bucket(js, settings).await?;
        let created = stream.cached_info().created.unix_timestamp_nanos();
        if position.created.is_some_and(|known| known != created) {
            log::warn!(
                "replica: bucket `{}` was created again; reading it from its start",
                settings.bucket
            );
            position.next_revision = 1;
        }
        position.created = Some(created);
        let consumer = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: js.client().new_inbox(),
                description: Some("epochgate replica".to_string()),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: position.next_revision,
                },
                replay_policy: consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| bucket_error(&e))?;
        // Nothing to read (an empty bucket, or nothing new since the last revision): the
        // last initial value never comes, so the replica is complete as it is.
        let pending = consumer.cached_info().num_pending;
        let messages = consumer.messages().await.map_err(|e| bucket_error(&e))?;
        self.replica.reached();
        if pending == 0 {
            self.replica.set_complete();
        }
        Ok(messages)
    }

    /// Confirms the connection every second, and drops expired records every minute.
    async fn keep_in_touch(replica: Arc<Replica>, client: async_nats::Client) {
        let mut last_sweep = Instant::now();
        loop {
            tokio::time::sleep(ROUND_TRIP_EVERY).await;
            let up = client.connection_state() == async_nats::connection::State::Connected
                && tokio::time::timeout(ROUND_TRIP_TIMEOUT, client.flush())
                    .await
                    .is_ok_and(|r| r.is_ok())
                && client.connection_state() == async_nats::connection::State::Connected;
            if up {
                replica.reached();
            } else {
                replica.lost_contact();
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                let before = replica
                    .clock
                    .unix_secs()
                    .saturating_sub(replica.settings.max_lifetime.as_secs());
                let forgotten = replica.store.forget_older_than(before);
                if forgotten > 0 {
                    log::info!(
                        "replica: dropped {forgotten} record(s) older than token.max_lifetime"
                    );
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ReplicaWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let settings = self.replica.settings().clone();
        let options = match connect_options(&settings, true).await {
            Ok(options) => options,
            Err(e) => {
                log::error!("replica: {e}");
                return;
            }
        };
        let (options, mut connections) = count_connections(options);
        let client = match options.connect(server_addrs(&settings)).await {
            Ok(client) => client,
            Err(e) => {
                log::error!("replica: {}", ReplicaError::Connect(e.to_string()));
                return;
            }
        };
        let pinger = tokio::spawn(ReplicaWatch::keep_in_touch(
            self.replica.clone(),
            client.clone(),
        ));
        let mut leader_changes = leader_changes(&client, &settings.bucket).await;
        let js = jetstream::new(client);
        // The next revision to apply: after an interruption the watch resumes here, so
        // nothing published meanwhile is missed.
        let mut position = Position {
            created: None,
            next_revision: 1,
        };
        let mut failures = 0;
        let mut last_error = String::new();
        'outer: loop {
            connections.borrow_and_update();
            let attempt =
                tokio::time::timeout(open_timeout(failures), self.open(&js, &mut position));
            let opened = tokio::select! {
                opened = attempt => opened.unwrap_or_else(|_| Err(ReplicaError::Bucket {
                    bucket: settings.bucket.clone(),
                    message: "no answer in time".to_string(),
                })),
                _ = shutdown.changed() => break,
            };
            let mut watch = match opened {
                Ok(watch) => watch,
                Err(e) => {
                    let message = e.to_string();
                    if message != last_error {
                        log::warn!("replica: {message}; retrying");
                        last_error = message;
                    }
                    self.replica.set_watching(false);
                    tokio::select! {
                        _ = tokio::time::sleep(retry_after(failures)) => {}
                        Ok(()) = connections.changed() => {}
                        _ = shutdown.changed() => break,
                    }
                    failures += 1;
                    continue;
                }
            };
            if !last_error.is_empty() {
                log::info!(
                    "replica: watching bucket `{}` again from revision {}",
                    settings.bucket,
                    position.next_revision
                );
            }
            last_error.clear();
            failures = 0;
            self.replica.set_watching(true);
            let mut bucket_check = tokio::time::interval_at(
                tokio::time::Instant::now() + BUCKET_CHECK_EVERY,
                BUCKET_CHECK_EVERY,
            );
            loop {
                let entry = tokio::select! {
                    entry = watch.next() => entry,
                    _ = bucket_check.tick() => {
                        if bucket_replaced(&js, &settings.bucket, position.created).await {
                            log::warn!(
                                "replica: bucket `{}` was deleted or created again; reopening",
                                settings.bucket
                            );
                            break;
                        }
                        continue;
                    }
                    Ok(()) = connections.changed() => {
                        if *connections.borrow_and_update() == 1 {
                            // The first connection, made while the watch was opening.
                            continue;
                        }
                        log::info!(
                            "replica: reconnected; resuming the watch from revision {}",
                            position.next_revision
                        );
                        break;
                    }
                    Some(_) = next_advisory(&mut leader_changes) => {
                        log::info!(
                            "replica: the bucket's stream has a new leader; resuming the watch from revision {}",
                            position.next_revision
                        );
                        break;
                    }
                    _ = shutdown.changed() => break 'outer,
                };
                match entry {
                    Some(Ok(message)) => {
                        self.replica.reached();
                        match Entry::from_message(&message) {
                            Ok(entry) => {
                                entry::apply(&self.replica, &entry);
                                position.next_revision = entry.revision + 1;
                                if entry.pending == 0 {
                                    self.replica.set_complete();
                                }
                            }
                            Err(e) => {
                                log::warn!("replica: skipped a message: {e}");
                                self.replica.count_malformed();
                            }
                        }
                    }
                    Some(Err(e)) => {
                        log::warn!(
                            "replica: the watch was interrupted ({e}); resuming from revision {}",
                            position.next_revision
                        );
                        break;
                    }
                    None => {
                        log::warn!(
                            "replica: the watch ended; resuming from revision {}",
                            position.next_revision
                        );
                        break;
                    }
                }
            }
            self.replica.set_watching(false);
        }
        pinger.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_the_first_wait_up_to_the_longest() {
        assert_eq!(retry_after(0), FIRST_RETRY);
        assert_eq!(retry_after(1), FIRST_RETRY * 2);
        assert_eq!(retry_after(5), FIRST_RETRY * 32);
        assert_eq!(retry_after(6), MAX_RETRY);
        assert_eq!(retry_after(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn open_attempts_are_short_at_first_and_longer_after_repeated_failures() {
        assert_eq!(open_timeout(0), MIN_OPEN_TIMEOUT);
        assert_eq!(open_timeout(ATTEMPTS_PER_TIMEOUT - 1), MIN_OPEN_TIMEOUT);
        assert_eq!(open_timeout(ATTEMPTS_PER_TIMEOUT), MIN_OPEN_TIMEOUT * 2);
        assert_eq!(open_timeout(1_000), MAX_OPEN_TIMEOUT);
    }
}
