//! From the parsed file to [`Settings`]: each section in turn, then the checks that span
//! sections.

mod listen;
mod origin;
mod proxy;
mod requests;
mod token;

pub use origin::MAX_CONCURRENT_LOOKUPS;

use super::file::FileConfig;
use super::server::server_conf;
use super::{ConfigError, HumanDuration, Settings};
use listen::{check_listeners_distinct, parse_listen};
use requests::validate_routes;

impl FileConfig {
    pub(super) fn validate(self) -> Result<Settings, ConfigError> {
        let server = server_conf(self.server)?;
        let proxy = self.proxy.validate()?;
        let admin_listen = parse_listen("admin.listen", &self.admin.listen)?;
        let auth_origin = self.auth_origin.validate()?;
        let token = self.token.validate()?;
        let cache = self.cache.validate()?;
        let forward = self.forward.validate()?;
        let limits = self.limits.validate()?;
        if forward.account_header == forward.device_header {
            return Err(ConfigError::new(
                "forward.device_header",
                "must differ from forward.account_header",
            ));
        }
        check_listeners_distinct(&proxy.listen, admin_listen)?;
        let routes = validate_routes(self.mode, self.routes)?;
        let access_log = self.access_log.validate()?;
        let replica = match self.replica {
            Some(replica) => {
                Some(replica.validate(token.max_lifetime, cache.max_devices_per_account)?)
            }
            None => None,
        };
        Ok(Settings {
            server,
            proxy,
            admin_listen,
            auth_origin,
            token,
            cache,
            forward,
            limits,
            routes,
            access_log,
            replica,
        })
    }
}

fn positive(key: &str, d: HumanDuration) -> Result<(), ConfigError> {
    if d.0.is_zero() {
        Err(ConfigError::new(key, "must be greater than zero"))
    } else {
        Ok(())
    }
}
