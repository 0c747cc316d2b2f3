//! An account's revocation record and the two rules about it: what it revokes, and how
//! records merge (epochs only go forward).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// `{epoch, devices: {device_id: epoch}}`, epochs in Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    pub epoch: u64,
    #[serde(default)]
    pub devices: HashMap<String, u64>,
}

/// Whether a token issued at some time survives a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Valid,
    SignedOut,
    DeviceSignedOut,
}

impl RevocationRecord {
    /// A token is revoked when its session time is before the account's epoch or before its
    /// device's epoch. A token issued in the epoch's own second is valid: the auth origin
    /// sets the epoch to the second after the sign-out so that this holds.
    pub fn standing(&self, device: &str, session_time: u64) -> Standing {
        RevocationRecord::standing_of(self.epoch, self.devices.get(device).copied(), session_time)
    }

    /// The rule itself, for an account epoch and this device's epoch (if it has one).
    pub fn standing_of(epoch: u64, device_epoch: Option<u64>, session_time: u64) -> Standing {
        if session_time < epoch {
            Standing::SignedOut
        } else if device_epoch.is_some_and(|e| session_time < e) {
            Standing::DeviceSignedOut
        } else {
            Standing::Valid
        }
    }

    /// The field-wise maximum of two records: a lagging auth replica or an out-of-order
    /// event can never un-revoke anybody.
    pub fn merged(&self, newer: &RevocationRecord) -> RevocationRecord {
        let mut devices = self.devices.clone();
        for (device, &epoch) in &newer.devices {
            let slot = devices.entry(device.clone()).or_insert(0);
            *slot = (*slot).max(epoch);
        }
        RevocationRecord {
            epoch: self.epoch.max(newer.epoch),
            devices,
        }
    }

    /// The same record without the device epochs that revoke nothing the account epoch does
    /// not already revoke (at or below it): every decision stays the same, in less memory.
    pub fn without_redundant_devices(mut self) -> RevocationRecord {
        let epoch = self.epoch;
        self.devices.retain(|_, device_epoch| *device_epoch > epoch);
        self
    }
}

/// A record with these device epochs, for the tests of the modules that hold records.
#[cfg(test)]
impl RevocationRecord {
    pub(crate) fn of(epoch: u64, devices: &[(&str, u64)]) -> RevocationRecord {
        RevocationRecord {
            epoch,
            devices: devices.iter().map(|(d, e)| (d.to_string(), *e)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_before_account_epoch_is_signed_out() {
        assert_eq!(
            RevocationRecord::of(100, &[]).standing("tv", 99),
            Standing::SignedOut
        );
    }

    #[test]
    fn token_in_the_epoch_second_is_valid() {
        assert_eq!(
            RevocationRecord::of(100, &[]).standing("tv", 100),
            Standing::Valid
        );
    }

    #[test]
    fn device_epoch_only_affects_that_device() {
        let r = RevocationRecord::of(100, &[("tv", 200)]);
        assert_eq!(r.standing("tv", 150), Standing::DeviceSignedOut);
        assert_eq!(r.standing("phone", 150), Standing::Valid);
    }

    #[test]
    fn redundant_device_epochs_are_dropped_and_decisions_unchanged() {
        let r = RevocationRecord::of(100, &[("tv", 50), ("phone", 100), ("car", 150)]);
        let pruned = r.clone().without_redundant_devices();
        assert_eq!(pruned, RevocationRecord::of(100, &[("car", 150)]));
        for device in ["tv", "phone", "car", "laptop"] {
            for t in [40, 99, 100, 120, 149, 150, 200] {
                assert_eq!(
                    r.standing(device, t),
                    pruned.standing(device, t),
                    "{device} {t}"
                );
            }
        }
    }

    #[test]
    fn merge_never_goes_backwards() {
        let old = RevocationRecord::of(200, &[("tv", 300), ("phone", 50)]);
        let lagging = RevocationRecord::of(100, &[("tv", 10), ("phone", 60), ("car", 5)]);
        assert_eq!(
            old.merged(&lagging),
            RevocationRecord::of(200, &[("tv", 300), ("phone", 60), ("car", 5)])
        );
    }
}
