//! The replica's records in memory: a sharded, read-mostly map from a keyed 128-bit hash of
//! the account id to a packed epoch, with device epochs in a side map for the few accounts
//! that have them.
//!
//! An account costs one 24-byte slot (plus hashbrown's control byte and free slots): the
//! account id itself is not kept. The hash is SipHash-1-3-128 under a per-process random
//! key, so nobody can choose ids that collide, and two ids sharing a slot by chance would
//! need about 2^64 accounts.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::revocation::{RevocationRecord, Standing};

/// Shards, each behind its own lock: writers (the watch) rarely meet readers of the same shard.
const SHARDS: usize = 64;

/// Set in a packed value: the account's last value was unusable (the policy applies to it).
const UNUSABLE: u64 = 1 << 63;
/// Set in a packed value: the account has device epochs (in the side map).
const HAS_DEVICES: u64 = 1 << 62;
const EPOCH_MASK: u64 = HAS_DEVICES - 1;

/// An account id's 128-bit keyed hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountKey(u64, u64);

impl Hash for AccountKey {
    // The map's hasher passes this through: the key is already a keyed hash.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// Passes a `u64` through (the key is already uniformly distributed).
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by AccountKey; folded in anyway so that any key type still works.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default, Clone, Copy)]
pub struct BuildIdentity;

impl BuildHasher for BuildIdentity {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher::default()
    }
}

type Shard = hashbrown::HashMap<AccountKey, u64, BuildIdentity>;
type Devices = HashMap<AccountKey, HashMap<String, u64>>;

/// What the replica holds for an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// No record: nobody ever signed the account out (or its record expired).
    Absent,
    /// The last value for it could not be used; the policy applies until a valid one comes.
    Unusable,
    /// A record: decide by it.
    Record(Standing),
}

/// The sharded map.
pub struct ReplicaStore {
    hash_key: [u8; 16],
    shards: Box<[RwLock<Shard>]>,
    /// Device epochs above the account epoch, for the accounts that have any.
    devices: RwLock<Devices>,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ReplicaStore {
    /// An empty store keyed with `hash_key` (random per process: see [`ReplicaStore::new`]).
    pub fn with_hash_key(hash_key: [u8; 16]) -> ReplicaStore {
        ReplicaStore {
            hash_key,
            shards: (0..SHARDS)
                .map(|_| RwLock::new(Shard::with_hasher(BuildIdentity)))
                .collect(),
            devices: RwLock::new(HashMap::new()),
        }
    }

    /// An empty store with a random hash key.
    pub fn new() -> ReplicaStore {
        let mut hash_key = [0u8; 16];
        if aws_lc_rs::rand::fill(&mut hash_key).is_err() {
            // No system randomness: still different per process and per start.
            let seed = fastrand::u128(..) ^ u128::from(std::process::id());
            hash_key = seed.to_le_bytes();
        }
        ReplicaStore::with_hash_key(hash_key)
    }

    fn key(&self, account: &str) -> AccountKey {
        let mut hasher = SipHasher13::new_with_key(&self.hash_key);
        hasher.write(account.as_bytes());
        let h = hasher.finish128();
        AccountKey(h.h1, h.h2)
    }

    fn shard(&self, key: AccountKey) -> &RwLock<Shard> {
        // The other half of the hash than the map's own, so shards fill evenly.
        &self.shards[(key.1 % SHARDS as u64) as usize]
    }

    /// How a token of `device` with this session time stands, by what the store holds.
    pub fn standing(&self, account: &str, device: &str, session_time: u64) -> Held {
        let key = self.key(account);
        let Some(packed) = read(self.shard(key)).get(&key).copied() else {
            return Held::Absent;
        };
        if packed & UNUSABLE != 0 {
            return Held::Unusable;
        }
        let device_epoch = if packed & HAS_DEVICES != 0 {
            read(&self.devices)
                .get(&key)
                .and_then(|d| d.get(device).copied())
        } else {
            None
        };
        Held::Record(RevocationRecord::standing_of(
            packed & EPOCH_MASK,
            device_epoch,
            session_time,
        ))
    }

    /// Merges a record into the account's (field-wise maximum; a record after an unusable
    /// value makes the account usable again).
    pub fn merge(&self, account: &str, record: &RevocationRecord) {
        let key = self.key(account);
        let mut shard = write(self.shard(key));
        let old = shard.get(&key).copied().unwrap_or(0);
        let epoch = (old & EPOCH_MASK).max(record.epoch.min(EPOCH_MASK));
        if old & HAS_DEVICES == 0 && record.devices.is_empty() {
            // The common case: no device epochs before or now, so the shared side map is
            // not locked.
            shard.insert(key, epoch);
            return;
        }
        let mut devices = write(&self.devices);
        let has_devices = {
            let mut kept = devices.remove(&key).unwrap_or_default();
            for (device, &device_epoch) in &record.devices {
                let slot = kept.entry(device.clone()).or_insert(0);
                *slot = (*slot).max(device_epoch);
            }
            // Device epochs at or below the account epoch revoke nothing more.
            kept.retain(|_, device_epoch| *device_epoch > epoch);
            let any = !kept.is_empty();
            if any {
                kept.shrink_to_fit();
                devices.insert(key, kept);
            }
            any
        };
        shard.insert(key, epoch | if has_devices { HAS_DEVICES } else { 0 });
    }

    /// Marks the account's record unusable (its latest value could not be read). Its epochs
    /// are kept, so a valid value later still merges with them.
    pub fn mark_unusable(&self, account: &str) {
        let key = self.key(account);
        let mut shard = write(self.shard(key));
        let old = shard.get(&key).copied().unwrap_or(0);
        shard.insert(key, old | UNUSABLE);
    }

    /// Forgets the account (its key was deleted or purged from the bucket).
    pub fn remove(&self, account: &str) {
        let key = self.key(account);
        let removed = write(self.shard(key)).remove(&key);
        if removed.is_some_and(|packed| packed & HAS_DEVICES != 0) {
            write(&self.devices).remove(&key);
        }
    }

    /// Forgets every record whose epochs are all before `before` (Unix seconds): with
    /// `before` = now − `token.max_lifetime`, such a record revokes only tokens that have
    /// expired anyway. The bucket expires such values without telling watchers.
    pub fn forget_older_than(&self, before: u64) -> usize {
        let mut forgotten = 0;
        for shard in self.shards.iter() {
            let mut shard = write(shard);
            let mut dropped_with_devices = Vec::new();
            shard.retain(|key, packed| {
                let keep = *packed & UNUSABLE != 0 || *packed & EPOCH_MASK >= before || {
                    *packed & HAS_DEVICES != 0
                        && read(&self.devices)
                            .get(key)
                            .is_some_and(|d| d.values().any(|&e| e >= before))
                };
                if !keep {
                    forgotten += 1;
                    if *packed & HAS_DEVICES != 0 {
                        dropped_with_devices.push(*key);
                    }
                }
                keep
            });
            if !dropped_with_devices.is_empty() {
                let mut devices = write(&self.devices);
                for key in dropped_with_devices {
                    devices.remove(&key);
                }
            }
        }
        forgotten
    }

    /// Accounts held (usable or not).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Accounts the shards have room for before they grow (hashbrown: 7/8 of their slots).
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| read(s).capacity()).sum()
    }

    /// Accounts with device epochs.
    pub fn accounts_with_devices(&self) -> usize {
        read(&self.devices).len()
    }

    /// Reserves room for `additional` more accounts, spread over the shards.
    pub fn reserve(&self, additional: usize) {
        let per_shard = additional.div_ceil(SHARDS);
        for shard in self.shards.iter() {
            write(shard).reserve(per_shard);
        }
    }
}

impl Default for ReplicaStore {
    fn default() -> Self {
        ReplicaStore::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_never_seen_is_absent() {
        let store = ReplicaStore::new();
        assert_eq!(store.standing("alice", "tv", 100), Held::Absent);
    }

    #[test]
    fn account_and_device_epochs_decide_like_the_record() {
        let store = ReplicaStore::new();
        store.merge(
            "alice",
            &RevocationRecord::of(100, &[("tv", 200), ("phone", 50)]),
        );
        assert_eq!(
            store.standing("alice", "tv", 99),
            Held::Record(Standing::SignedOut)
        );
        assert_eq!(
            store.standing("alice", "tv", 150),
            Held::Record(Standing::DeviceSignedOut)
        );
        assert_eq!(
            store.standing("alice", "phone", 150),
            Held::Record(Standing::Valid)
        );
        assert_eq!(store.standing("bob", "tv", 1), Held::Absent);
        // The redundant phone epoch is not kept; the tv one is.
        assert_eq!(store.accounts_with_devices(), 1);
    }

    #[test]
    fn merging_never_lowers_an_epoch() {
        let store = ReplicaStore::new();
        store.merge("alice", &RevocationRecord::of(200, &[("tv", 300)]));
        store.merge("alice", &RevocationRecord::of(100, &[("tv", 10)]));
        assert_eq!(
            store.standing("alice", "tv", 150),
            Held::Record(Standing::SignedOut)
        );
        assert_eq!(
            store.standing("alice", "tv", 250),
            Held::Record(Standing::DeviceSignedOut)
        );
    }

    #[test]
    fn an_unusable_account_becomes_usable_with_the_next_valid_record() {
        let store = ReplicaStore::new();
        store.merge("alice", &RevocationRecord::of(200, &[]));
        store.mark_unusable("alice");
        assert_eq!(store.standing("alice", "tv", 250), Held::Unusable);
        store.merge("alice", &RevocationRecord::of(100, &[]));
        // Usable again, and the earlier epoch still counts.
        assert_eq!(
            store.standing("alice", "tv", 150),
            Held::Record(Standing::SignedOut)
        );
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn removed_accounts_are_absent_with_their_devices() {
        let store = ReplicaStore::new();
        store.merge("alice", &RevocationRecord::of(100, &[("tv", 200)]));
        store.remove("alice");
        assert_eq!(store.standing("alice", "tv", 150), Held::Absent);
        assert_eq!(store.len(), 0);
        assert_eq!(store.accounts_with_devices(), 0);
    }

    #[test]
    fn records_older_than_every_token_are_forgotten() {
        let store = ReplicaStore::new();
        store.merge("old", &RevocationRecord::of(100, &[]));
        store.merge(
            "old-but-device",
            &RevocationRecord::of(100, &[("tv", 2_000)]),
        );
        store.merge("recent", &RevocationRecord::of(1_500, &[]));
        assert_eq!(store.forget_older_than(1_000), 1);
        assert_eq!(store.standing("old", "tv", 1), Held::Absent);
        assert_eq!(store.len(), 2);
    }
}
