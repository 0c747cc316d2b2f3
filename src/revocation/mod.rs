//! Where an account's revocation epoch comes from and how it is held: the record and its
//! rules, the seam for record sources, the bounded epoch cache, the auth-origin client and the
//! pushed revocation feed.

pub mod coverage;
pub mod epoch_cache;
pub mod feed;
pub mod origin;
pub mod record;
pub mod record_source;
pub mod replica;
pub mod sse;

pub use record::{RevocationRecord, Standing};
