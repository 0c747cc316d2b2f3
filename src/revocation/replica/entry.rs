//! One bucket entry: read from a message of the bucket's stream, and applied to the replica
//! (a record merged, an account forgotten, a heartbeat noted, or a bad value counted).

use std::collections::HashMap;

use async_nats::jetstream;
use bytes::Bytes;
use serde::Deserialize;

use super::key::{self, KeyError};
use super::Replica;
use crate::revocation::RevocationRecord;

/// The key of the publisher's heartbeat. No account id encodes to it (an account's key has
/// no `.`, or starts with `b64.`).
pub const HEARTBEAT_KEY: &str = "epochgate.heartbeat";

/// What a message does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Put,
    /// Deleted or purged (or, on newer servers, removed by a marker): the key has no value.
    Delete,
}

/// A bucket entry as the stream delivers it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The key, still encoded.
    pub key: String,
    pub operation: Operation,
    pub value: Bytes,
    /// The stream sequence: the bucket's revision.
    pub revision: u64,
    /// Messages still to come after this one, as the server counted when sending it.
    pub pending: u64,
}

/// Why a message is not a bucket entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("the message has no JetStream metadata ({0})")]
    Metadata(String),
    #[error("the subject is not a key-value subject")]
    Subject,
    #[error("unknown KV-Operation `{0}`")]
    Operation(String),
}

impl Entry {
    /// Reads a message of the bucket's stream. Its subject is `$KV.<bucket>.<key>`; the
    /// bucket part is not compared, so a mirror's messages (which keep the subject of the
    /// bucket they mirror) read the same.
    pub fn from_message(message: &jetstream::Message) -> Result<Entry, EntryError> {
        let info = message
            .info()
            .map_err(|e| EntryError::Metadata(e.to_string()))?;
        let key = message
            .subject
            .strip_prefix("$KV.")
            .and_then(|rest| rest.split_once('.'))
            .map(|(_bucket, key)| key)
            .filter(|key| !key.is_empty())
            .ok_or(EntryError::Subject)?;
        Ok(Entry {
            key: key.to_string(),
            operation: operation(message.headers.as_ref())?,
            value: message.payload.clone(),
            revision: info.stream_sequence,
            pending: info.pending,
        })
    }
}

fn operation(headers: Option<&async_nats::HeaderMap>) -> Result<Operation, EntryError> {
    let Some(headers) = headers else {
        return Ok(Operation::Put);
    };
    if let Some(op) = headers.get("KV-Operation") {
        return match op.as_str() {
            "PUT" => Ok(Operation::Put),
            "DEL" | "PURGE" => Ok(Operation::Delete),
            other => Err(EntryError::Operation(other.to_string())),
        };
    }
    // Servers from 2.11 on mark keys removed by a per-message TTL or a purge this way.
    match headers.get("Nats-Marker-Reason").map(|r| r.as_str()) {
        Some("MaxAge" | "Purge" | "Remove") => Ok(Operation::Delete),
        Some(other) => Err(EntryError::Operation(other.to_string())),
        None => Ok(Operation::Put),
    }
}

/// A bucket value: the record `GET /v1/revocations/{account}` answers.
#[derive(Deserialize)]
struct Value {
    account_id: String,
    epoch: u64,
    #[serde(default)]
    devices: HashMap<String, u64>,
    #[serde(default)]
    changed_at_ms: Option<u64>,
}

/// The heartbeat's value.
#[derive(Deserialize)]
struct Heartbeat {
    at_ms: u64,
}

/// Applies one entry to the replica.
pub fn apply(replica: &Replica, entry: &Entry) {
    if entry.key == HEARTBEAT_KEY {
        apply_heartbeat(replica, entry);
        return;
    }
    let account = match key::decode(&entry.key) {
        Ok(account) => account,
        Err(KeyError::NotCanonical { account }) => {
            log::warn!("replica: a key not in the canonical encoding of its account id; that account is unusable until a valid value arrives");
            replica.count_malformed();
            replica.store.mark_unusable(&account);
            return;
        }
        Err(e) => {
            log::warn!("replica: skipped a key: {e}");
            replica.count_malformed();
            return;
        }
    };
    if entry.operation == Operation::Delete {
        replica.store.remove(&account);
        replica.count_applied(None, false);
        return;
    }
    let unusable = |why: &str| {
        log::warn!("replica: {why}; that account is unusable until a valid value arrives");
        replica.count_malformed();
        replica.store.mark_unusable(&account);
    };
    match serde_json::from_slice::<Value>(&entry.value) {
        Ok(value) if value.account_id != account => {
            unusable("a value whose account_id does not match its key")
        }
        Ok(value) if value.devices.len() > replica.settings.max_devices_per_account => {
            unusable(&format!(
                "a value naming {} devices, more than cache.max_devices_per_account ({})",
                value.devices.len(),
                replica.settings.max_devices_per_account
            ))
        }
        Ok(value) => {
            replica.store.merge(
                &account,
                &RevocationRecord {
                    epoch: value.epoch,
                    devices: value.devices,
                },
            );
            replica.count_applied(value.changed_at_ms, replica.loaded());
        }
        Err(e) => unusable(&format!("a value that is not a revocation record ({e})")),
    }
}

fn apply_heartbeat(replica: &Replica, entry: &Entry) {
    if entry.operation == Operation::Delete {
        return;
    }
    match serde_json::from_slice::<Heartbeat>(&entry.value) {
        Ok(heartbeat) => replica.heartbeat(heartbeat.at_ms),
        Err(e) => {
            log::warn!("replica: a heartbeat value that is not {{\"at_ms\": ...}} ({e})");
            replica.count_malformed();
        }
    }
}
