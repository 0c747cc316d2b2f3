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
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_string(),
                    history: 1,
                    max_age,
                    description: "epochgate revocation records".to_string(),
                    ..Default::default()
                })
                .await
                .map_err(|e| bucket_error(&e))?,
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

    pub fn store(&self) -> &kv::Store {
        &self.store
    }
}
