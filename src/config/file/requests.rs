//! The per-request sections as written: `access_log`, `routes`, `forward` and `limits`.

use std::path::PathBuf;

use serde::Deserialize;

use super::default_true;
use crate::request::route::Mode;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessLogFile {
    #[serde(default)]
    pub(crate) enabled: bool,
    /// A file to append to; absent or null: stdout.
    #[serde(default)]
    pub(crate) path: Option<PathBuf>,
    #[serde(default = "default_sample_allowed")]
    pub(crate) sample_allowed: f64,
}

impl Default for AccessLogFile {
    fn default() -> Self {
        AccessLogFile {
            enabled: false,
            path: None,
            sample_allowed: default_sample_allowed(),
        }
    }
}

fn default_sample_allowed() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFile {
    pub(crate) prefix: String,
    pub(crate) mode: Mode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForwardFile {
    #[serde(default = "default_account_header")]
    pub(crate) account_header: String,
    #[serde(default = "default_device_header")]
    pub(crate) device_header: String,
    #[serde(default = "default_true")]
    pub(crate) strip_token: bool,
    /// Header names the edge owns: client-sent headers under it never reach the upstream.
    #[serde(default = "default_header_prefix")]
    pub(crate) header_prefix: String,
}

impl Default for ForwardFile {
    fn default() -> Self {
        ForwardFile {
            account_header: default_account_header(),
            device_header: default_device_header(),
            strip_token: true,
            header_prefix: default_header_prefix(),
        }
    }
}

fn default_header_prefix() -> String {
    "x-epochgate-".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    #[serde(default)]
    pub(crate) invalid_tokens_per_client: BudgetFile,
}

/// `{per_second: N, burst: M}`, or `off` / `null` for no budget.
#[derive(Debug)]
pub(crate) enum BudgetFile {
    Off,
    On(BudgetRatesFile),
}

impl Default for BudgetFile {
    fn default() -> Self {
        BudgetFile::On(BudgetRatesFile {
            per_second: 20,
            burst: 100,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BudgetRatesFile {
    pub(crate) per_second: u32,
    pub(crate) burst: u32,
}

impl<'de> Deserialize<'de> for BudgetFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BudgetVisitor;
        impl<'de> serde::de::Visitor<'de> for BudgetVisitor {
            type Value = BudgetFile;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("{per_second: N, burst: M}, or off (null) for no budget")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<BudgetFile, E> {
                Ok(BudgetFile::Off)
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<BudgetFile, E> {
                Ok(BudgetFile::Off)
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<BudgetFile, E> {
                match text {
                    "off" => Ok(BudgetFile::Off),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<BudgetFile, A::Error> {
                BudgetRatesFile::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(BudgetFile::On)
            }
        }
        d.deserialize_any(BudgetVisitor)
    }
}

fn default_account_header() -> String {
    "x-epochgate-account".into()
}
fn default_device_header() -> String {
    "x-epochgate-device".into()
}
