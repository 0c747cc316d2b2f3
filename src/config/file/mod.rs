//! What the YAML file looks like: the serde structs of each section (`deny_unknown_fields`,
//! human durations, defaults), before any validation.

mod origin;
mod proxy;
mod requests;
mod token;

use serde::Deserialize;

use crate::request::route::Mode;

pub(crate) use origin::{AuthOriginFile, CacheFile};
pub(crate) use proxy::ProxyFile;
pub(crate) use requests::{AccessLogFile, BudgetFile, ForwardFile, LimitsFile, RouteFile};
pub(crate) use token::{KeysFile, SourceFile, TokenFile};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// Pingora's own `ServerConf` keys; checked against that struct's field list.
    #[serde(default)]
    pub(crate) server: Option<serde_norway::Mapping>,
    pub(crate) proxy: ProxyFile,
    #[serde(default)]
    pub(crate) admin: AdminFile,
    pub(crate) auth_origin: AuthOriginFile,
    pub(crate) token: TokenFile,
    #[serde(default)]
    pub(crate) cache: CacheFile,
    #[serde(default)]
    pub(crate) forward: ForwardFile,
    #[serde(default)]
    pub(crate) limits: LimitsFile,
    /// `enforce` or `observe`: the mode of a path no route matches.
    #[serde(default)]
    pub(crate) mode: Mode,
    #[serde(default)]
    pub(crate) routes: Vec<RouteFile>,
    #[serde(default)]
    pub(crate) access_log: AccessLogFile,
    /// The fleet replica (see `crate::revocation::replica`).
    #[serde(default)]
    pub(crate) replica: Option<crate::config::ReplicaFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminFile {
    #[serde(default = "default_admin_listen")]
    pub(crate) listen: String,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            listen: default_admin_listen(),
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".to_string()
}

fn default_true() -> bool {
    true
}
