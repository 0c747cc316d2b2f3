//! Where revocation records come from: the seam between the epoch cache and whatever answers
//! "what is this account's record" (the auth origin today, a fake in tests).

use async_trait::async_trait;

use crate::revocation::origin::{OriginClient, OriginError};
use crate::revocation::RevocationRecord;

/// A source of revocation records, asked one account at a time. The epoch cache calls it
/// from a spawned task (at most one call per account at a time), so an implementation may
/// take its time; it must not lower an epoch it answered before (the cache keeps the maximum
/// anyway).
#[async_trait]
pub trait RecordSource: Send + Sync {
    /// The account's current record; an account without any sign-out has the empty record.
    async fn fetch_record(&self, account: &str) -> Result<RevocationRecord, OriginError>;
}

/// The auth origin's `GET /v1/revocations/{account_id}`.
#[async_trait]
impl RecordSource for OriginClient {
    async fn fetch_record(&self, account: &str) -> Result<RevocationRecord, OriginError> {
        OriginClient::fetch_record(self, account).await
    }
}
