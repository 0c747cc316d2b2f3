//! The verified-token cache: tokens verified before, keyed by their SHA-256, bounded in
//! entries, each used only before its token's `exp`.
//!
//! It sits on every repeat request, so it is built to touch little memory: a lookup hashes
//! the token (no memory), takes one shard's read lock and reads one table slot. Nothing in
//! the table is written; only the lock and the shared ids' reference counts are. A
//! general-purpose cache also compares the stored key (here the whole token, hundreds of
//! bytes) and updates its recency and frequency bookkeeping on every read; with thousands
//! of tokens in rotation those touches miss the CPU caches (measurements:
//! docs/performance-notes.md).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, PoisonError, RwLock};

use aws_lc_rs::digest;

use crate::request::verify::VerifiedToken;
use crate::revocation::epoch_cache::LastRecord;

/// Shards of the table: enough that workers seldom meet on one lock.
const MAX_SHARDS: usize = 64;

/// A token's SHA-256. Two tokens share an entry only if they share a SHA-256, which no one
/// can bring about; the tokens themselves are neither kept nor compared.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    pub fn of(token: &str) -> TokenKey {
        let mut key = [0; 32];
        key.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        TokenKey(key)
    }

    /// Eight bytes of the digest as a number (a SHA-256 is already evenly spread).
    fn word(&self, at: usize) -> u64 {
        let mut word = [0; 8];
        word.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(word)
    }
}

impl Hash for TokenKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.word(0));
    }
}

/// Passes a [`TokenKey`]'s own bits through as the table hash: hashing a digest again would
/// spread nothing further.
#[derive(Default)]
struct TokenKeyHasher(u64);

impl Hasher for TokenKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is reached from `TokenKey`; anything else is still mixed in.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
}

/// What the cache keeps for a token.
#[derive(Clone)]
pub struct Remembered {
    pub token: VerifiedToken,
    /// The key set generation the token was verified against.
    pub key_generation: u64,
    /// The revocation record the token was last judged by.
    pub last_record: Arc<LastRecord>,
}

/// Tokens that passed every check, for the verifier (see the module doc).
pub struct VerifiedCache {
    shards: Box<[Shard]>,
    entries_per_shard: usize,
}

/// One lock per cache line, so workers on different shards do not slow each other down.
#[repr(align(64))]
struct Shard(RwLock<Entries>);

struct Entries {
    by_key: HashMap<TokenKey, Remembered, BuildHasherDefault<TokenKeyHasher>>,
    /// The earliest `exp` among `by_key` (Unix seconds): from then on, a write sweeps.
    next_expiry: u64,
}

impl VerifiedCache {
    /// A cache for at most `entries` tokens (rounded up to a multiple of the shard count).
    pub fn new(entries: u64) -> VerifiedCache {
        let entries = usize::try_from(entries).unwrap_or(usize::MAX).max(1);
        let shard_count = entries.min(MAX_SHARDS);
        let entries_per_shard = entries.div_ceil(shard_count);
        let shards = (0..shard_count)
            .map(|_| {
                Shard(RwLock::new(Entries {
                    by_key: HashMap::default(),
                    next_expiry: u64::MAX,
                }))
            })
            .collect();
        VerifiedCache {
            shards,
            entries_per_shard,
        }
    }

    /// The most entries the cache holds.
    pub fn capacity(&self) -> usize {
        self.shards.len() * self.entries_per_shard
    }

    /// The entry for a token, unless its `exp` (Unix seconds) is not after `now`.
    pub fn get(&self, key: &TokenKey, now: u64) -> Option<Remembered> {
        let entries = self
            .shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        entries
            .by_key
            .get(key)
            .filter(|remembered| now < remembered.token.expires_at)
            .cloned()
    }

    /// Remembers a token, replacing what was kept for it. A shard drops its expired entries
    /// on the first write after the earliest `exp`; one still full then drops a sixteenth of
    /// the others.
    pub fn insert(&self, key: TokenKey, remembered: Remembered, now: u64) {
        let mut entries = self
            .shard(&key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Before `next_expiry` (a lower bound on every entry's `exp`) nothing has expired.
        if now >= entries.next_expiry {
            entries.drop_expired(now);
        }
        if entries.by_key.len() >= self.entries_per_shard && !entries.by_key.contains_key(&key) {
            entries.drop_some(self.entries_per_shard.div_ceil(16));
        }
        entries.next_expiry = entries.next_expiry.min(remembered.token.expires_at);
        entries.by_key.insert(key, remembered);
    }

    /// Entries held now, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .0
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .by_key
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &TokenKey) -> &RwLock<Entries> {
        // Other bytes than the table hash's, so a shard's table still gets evenly spread keys.
        &self.shards[(key.word(8) % self.shards.len() as u64) as usize].0
    }
}

impl Entries {
    fn drop_expired(&mut self, now: u64) {
        self.by_key
            .retain(|_, remembered| now < remembered.token.expires_at);
        self.next_expiry = self
            .by_key
            .values()
            .map(|remembered| remembered.token.expires_at)
            .min()
            .unwrap_or(u64::MAX);
    }

    /// Drops `count` entries (at least one while any are left). A table's order is the order
    /// of its keys' hashes, SHA-256 bits here, so the first entries are a random choice.
    fn drop_some(&mut self, count: usize) {
        let victims: Vec<TokenKey> = self.by_key.keys().take(count.max(1)).copied().collect();
        for key in &victims {
            self.by_key.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn remembered(account: &str, expires_at: u64) -> Remembered {
        Remembered {
            token: VerifiedToken {
                account: account.into(),
                device: "tv".into(),
                session_time: NOW - 60,
                expires_at,
            },
            key_generation: 1,
            last_record: Arc::new(LastRecord::default()),
        }
    }

    #[test]
    fn a_remembered_token_is_found_by_the_same_token() {
        let cache = VerifiedCache::new(100);
        cache.insert(TokenKey::of("token-a"), remembered("alice", NOW + 60), NOW);
        let hit = cache.get(&TokenKey::of("token-a"), NOW);
        assert_eq!(hit.map(|r| r.token.account), Some("alice".into()));
    }

    #[test]
    fn another_token_never_hits_an_entry() {
        let cache = VerifiedCache::new(100);
        cache.insert(TokenKey::of("token-a"), remembered("alice", NOW + 60), NOW);
        assert!(cache.get(&TokenKey::of("token-b"), NOW).is_none());
        assert!(cache.get(&TokenKey::of("token-a "), NOW).is_none());
    }

    #[test]
    fn an_entry_is_not_used_from_its_tokens_exp_on() {
        let cache = VerifiedCache::new(100);
        cache.insert(TokenKey::of("token-a"), remembered("alice", NOW + 60), NOW);
        assert!(cache.get(&TokenKey::of("token-a"), NOW + 59).is_some());
        assert!(cache.get(&TokenKey::of("token-a"), NOW + 60).is_none());
    }

    #[test]
    fn expired_entries_are_dropped_by_the_next_write_to_their_shard() {
        // Room for ten entries per shard: the write below finds the shard far from full.
        let cache = VerifiedCache::new(640);
        cache.insert(TokenKey::of("old"), remembered("alice", NOW + 10), NOW);
        cache.insert(TokenKey::of("new"), remembered("bob", NOW + 600), NOW + 5);
        assert_eq!(cache.len(), 2);
        // Another write to the shard that held "old", after its exp.
        let old = TokenKey::of("old");
        let same_shard = (0..)
            .map(|i| format!("other-{i}"))
            .find(|t| std::ptr::eq(cache.shard(&TokenKey::of(t)), cache.shard(&old)))
            .expect("some token lands in the same shard");
        cache.insert(
            TokenKey::of(&same_shard),
            remembered("carol", NOW + 600),
            NOW + 10,
        );
        assert!(
            !cache.shard(&old).read().unwrap().by_key.contains_key(&old),
            "an expired entry outlived a write to its shard"
        );
        assert!(cache.get(&TokenKey::of("new"), NOW + 10).is_some());
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let cache = VerifiedCache::new(1000);
        for i in 0..20_000 {
            cache.insert(
                TokenKey::of(&format!("token-{i}")),
                remembered("alice", NOW + 60),
                NOW,
            );
            assert!(cache.len() <= cache.capacity());
        }
        assert!(cache.capacity() < 1000 + MAX_SHARDS);
        assert!(
            cache.len() > cache.capacity() / 2,
            "eviction dropped far more than needed"
        );
    }

    #[test]
    fn replacing_an_entry_keeps_one_entry() {
        let cache = VerifiedCache::new(100);
        cache.insert(TokenKey::of("token-a"), remembered("alice", NOW + 60), NOW);
        cache.insert(TokenKey::of("token-a"), remembered("alice", NOW + 60), NOW);
        assert_eq!(cache.len(), 1);
    }
}
