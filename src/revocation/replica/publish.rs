//! The writing side of the bucket contract, for an auth service written in Rust (the
//! reference auth origin uses it): create the bucket if missing, put an account's merged
//! record under its key.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use super::key;
use crate::revocation::RevocationRecord;

/// Why a publisher could not start or put.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("bucket `{bucket}`: {message}")]
    Bucket { bucket: String, message: String },
    #[error("put of an account's record failed: {0}")]
    Put(String),
}

/// The stream behind a revocation bucket: one value per key (history 1), values kept
/// `max_age` (0: for ever), on `replicas` servers. A site's mirror of the bucket is this
/// without `subjects`, with `mirror` set.
pub fn bucket_stream_config(
    bucket: &str,
    max_age: Duration,
    replicas: usize,
) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("epochgate revocation records".to_string()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_bytes: -1,
        max_messages: -1,
        max_message_size: -1,
        max_age,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: replicas.max(1),
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// Creates a revocation bucket ([`bucket_stream_config`]).
///
/// The stream behind the bucket is created directly, with the settings a key-value bucket
/// has, rather than through the client's own bucket creation: that asks the server for
/// account details that nats-server 2.9 does not send in the form the client expects.
pub async fn create_bucket(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<(), jetstream::context::CreateStreamError> {
    js.create_stream(bucket_stream_config(bucket, max_age, replicas))
        .await
        .map(|_| ())
}

/// A bucket of revocation records, opened for writing.
#[derive(Clone)]
pub struct Publisher {
    store: kv::Store,
}

impl Publisher {
    /// Connects to `url` (one or several comma-separated servers) and opens `bucket`,
    /// creating it (history 1, values kept for `max_age`) when it does not exist.
    pub async fn connect(
        url: &str,
        bucket: &str,
        max_age: Duration,
    ) -> Result<Publisher, PublishError> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| PublishError::Connect(e.to_string()))?;
        Publisher::open(jetstream::new(client), bucket, max_age).await
    }

    /// Opens (or creates) the bucket on an existing JetStream context.
    pub async fn open(
        js: jetstream::Context,
        bucket: &str,
        max_age: Duration,
    ) -> Result<Publisher, PublishError> {
        let bucket_error = |e: &dyn std::fmt::Display| PublishError::Bucket {
            bucket: bucket.to_string(),
            message: e.to_string(),
        };
        let store = match js.get_key_value(bucket).await {
            Ok(store) => store,
            Err(_) => {
                create_bucket(&js, bucket, max_age, 1)
                    .await
                    .map_err(|e| bucket_error(&e))?;
                js.get_key_value(bucket)
                    .await
                    .map_err(|e| bucket_error(&e))?
            }
        };
        Ok(Publisher { store })
    }

    /// Puts the account's whole (merged) record, with the time of the change.
    pub async fn put(
        &self,
        account: &str,
        record: &RevocationRecord,
        changed_at_ms: u64,
    ) -> Result<u64, PublishError> {
        let value = serde_json::json!({
            "account_id": account,
            "epoch": record.epoch,
            "devices": record.devices,
            "changed_at_ms": changed_at_ms,
        });
        self.store
            .put(key::encode(account), value.to_string().into())
            .await
            .map_err(|e| PublishError::Put(e.to_string()))
    }

    /// Puts the heartbeat stamped `at_ms` (Unix milliseconds). Stamp it only once every
    /// earlier put is acknowledged: an edge that holds this heartbeat holds them too.
    pub async fn heartbeat(&self, at_ms: u64) -> Result<u64, PublishError> {
        let value = serde_json::json!({ "at_ms": at_ms });
        self.store
            .put(super::entry::HEARTBEAT_KEY, value.to_string().into())
            .await
            .map_err(|e| PublishError::Put(e.to_string()))
    }

    pub fn store(&self) -> &kv::Store {
        &self.store
    }
}
