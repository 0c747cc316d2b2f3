//! `HumanDuration`: a duration written as a human string (`250ms`, `30s`, `10m`).

use std::time::Duration;

use serde::Deserialize;

/// A duration written as a human string: `250ms`, `30s`, `10m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a duration ({e}); write e.g. 250ms, 30s, 10m"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_yaml::{error_for, MINIMAL};

    #[test]
    fn bad_duration_names_the_key() {
        let e = error_for(&MINIMAL.replace("url:", "timeout: 5parsecs\n  url:"));
        assert_eq!(e.key, "auth_origin.timeout");
        assert!(e.message.contains("5parsecs"), "{e}");
    }
}
