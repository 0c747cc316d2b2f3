//! The `token` section as written: where tokens are carried, how they are verified, which
//! claims they hold.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::HumanDuration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenFile {
    #[serde(default = "default_sources")]
    pub(crate) sources: Vec<SourceFile>,
    pub(crate) algorithms: Vec<String>,
    #[serde(default)]
    pub(crate) issuer: Option<String>,
    #[serde(default)]
    pub(crate) audience: Option<String>,
    #[serde(default = "default_leeway")]
    pub(crate) leeway: HumanDuration,
    #[serde(default = "default_account_claim")]
    pub(crate) account_claim: String,
    #[serde(default = "default_device_claim")]
    pub(crate) device_claim: String,
    #[serde(default = "default_time_claim")]
    pub(crate) time_claim: String,
    #[serde(default)]
    pub(crate) keys: KeysFile,
    /// Tokens remembered as verified (0 turns the verified-token cache off).
    #[serde(default = "default_verified_cache_entries")]
    pub(crate) verified_cache_entries: u64,
    /// Longest `exp` minus session time accepted; absent or null: no bound.
    #[serde(default)]
    pub(crate) max_lifetime: Option<HumanDuration>,
}

fn default_verified_cache_entries() -> u64 {
    100_000
}

fn default_sources() -> Vec<SourceFile> {
    vec![
        SourceFile {
            header: Some("authorization".into()),
            prefix: Some("Bearer ".into()),
            ..SourceFile::default()
        },
        SourceFile {
            query: Some("token".into()),
            ..SourceFile::default()
        },
        SourceFile {
            cookie: Some("device_token".into()),
            ..SourceFile::default()
        },
    ]
}

fn default_leeway() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_account_claim() -> String {
    "sub".into()
}
fn default_device_claim() -> String {
    "did".into()
}
fn default_time_claim() -> String {
    "iat".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceFile {
    #[serde(default)]
    pub(crate) header: Option<String>,
    #[serde(default)]
    pub(crate) prefix: Option<String>,
    #[serde(default)]
    pub(crate) query: Option<String>,
    #[serde(default)]
    pub(crate) cookie: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysFile {
    #[serde(default)]
    pub(crate) jwks: Option<bool>,
    #[serde(default)]
    pub(crate) pem_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) hmac_secret_env: Option<String>,
}
