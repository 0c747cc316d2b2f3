//! The `token` section: token sources, algorithms, keys (read from files and the
//! environment here), claims and lifetime.

use std::str::FromStr;

use jsonwebtoken::{Algorithm, AlgorithmFamily};

use super::positive;
use crate::config::file::{KeysFile, SourceFile, TokenFile};
use crate::config::{ConfigError, KeySource, TokenSettings, TokenSource};

impl TokenFile {
    pub(super) fn validate(self) -> Result<TokenSettings, ConfigError> {
        let sources = validate_sources(self.sources)?;
        if self.algorithms.is_empty() {
            return Err(ConfigError::new(
                "token.algorithms",
                "needs at least one algorithm",
            ));
        }
        let mut algorithms = Vec::new();
        for (i, name) in self.algorithms.iter().enumerate() {
            let alg = Algorithm::from_str(name).map_err(|_| {
                ConfigError::new(
                    format!("token.algorithms[{i}]"),
                    format!(
                        "unknown algorithm `{name}` (one of ES256, ES384, RS256, RS384, RS512, \
                         PS256, PS384, PS512, EdDSA, HS256, HS384, HS512)"
                    ),
                )
            })?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        let keys = self.keys.validate()?;
        check_algorithms_fit_keys(&algorithms, &keys)?;
        for (key, value) in [
            ("token.account_claim", &self.account_claim),
            ("token.device_claim", &self.device_claim),
            ("token.time_claim", &self.time_claim),
        ] {
            if value.is_empty() {
                return Err(ConfigError::new(key, "must not be empty"));
            }
        }
        if let Some(max_lifetime) = self.max_lifetime {
            positive("token.max_lifetime", max_lifetime)?;
        }
        Ok(TokenSettings {
            sources,
            algorithms,
            issuer: self.issuer.filter(|s| !s.is_empty()),
            audience: self.audience.filter(|s| !s.is_empty()),
            leeway: self.leeway.0,
            account_claim: self.account_claim,
            device_claim: self.device_claim,
            time_claim: self.time_claim,
            keys,
            verified_cache_entries: self.verified_cache_entries,
            max_lifetime: self.max_lifetime.map(|d| d.0),
        })
    }
}

fn validate_sources(files: Vec<SourceFile>) -> Result<Vec<TokenSource>, ConfigError> {
    if files.is_empty() {
        return Err(ConfigError::new(
            "token.sources",
            "needs at least one source",
        ));
    }
    let mut sources = Vec::new();
    for (i, file) in files.into_iter().enumerate() {
        let key = format!("token.sources[{i}]");
        let kinds = [&file.header, &file.query, &file.cookie]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if kinds != 1 {
            return Err(ConfigError::new(
                key,
                "each source is exactly one of {header: NAME, prefix: ...}, {query: NAME}, {cookie: NAME}",
            ));
        }
        if file.prefix.is_some() && file.header.is_none() {
            return Err(ConfigError::new(
                format!("{key}.prefix"),
                "prefix only applies to a header source",
            ));
        }
        let source = if let Some(name) = file.header {
            let name = http::HeaderName::from_str(name.trim()).map_err(|_| {
                ConfigError::new(
                    format!("{key}.header"),
                    format!("`{name}` is not a header name"),
                )
            })?;
            TokenSource::Header {
                name,
                prefix: file.prefix.filter(|p| !p.is_empty()),
            }
        } else if let Some(name) = file.query {
            non_empty(&format!("{key}.query"), &name)?;
            TokenSource::Query { name }
        } else if let Some(name) = file.cookie {
            non_empty(&format!("{key}.cookie"), &name)?;
            TokenSource::Cookie { name }
        } else {
            unreachable!("exactly one kind was checked above")
        };
        sources.push(source);
    }
    Ok(sources)
}

fn non_empty(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        Err(ConfigError::new(key, "must not be empty"))
    } else {
        Ok(())
    }
}

impl KeysFile {
    fn validate(self) -> Result<KeySource, ConfigError> {
        let chosen = [
            self.jwks == Some(true),
            self.pem_file.is_some(),
            self.hmac_secret_env.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if chosen > 1 {
            return Err(ConfigError::new(
                "token.keys",
                "choose one of jwks: true, pem_file: PATH, hmac_secret_env: NAME",
            ));
        }
        if let Some(path) = self.pem_file {
            let pem = std::fs::read(&path).map_err(|e| {
                ConfigError::new(
                    "token.keys.pem_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            return Ok(KeySource::Pem(pem));
        }
        if let Some(var) = self.hmac_secret_env {
            let secret = std::env::var_os(&var).ok_or_else(|| {
                ConfigError::new(
                    "token.keys.hmac_secret_env",
                    format!("environment variable `{var}` is not set"),
                )
            })?;
            let secret = secret.into_encoded_bytes();
            if secret.len() < 32 {
                return Err(ConfigError::new(
                    "token.keys.hmac_secret_env",
                    format!("the secret in `{var}` is shorter than 32 bytes"),
                ));
            }
            return Ok(KeySource::HmacSecret(secret));
        }
        if self.jwks == Some(false) {
            return Err(ConfigError::new(
                "token.keys",
                "jwks: false needs pem_file or hmac_secret_env instead",
            ));
        }
        Ok(KeySource::Jwks)
    }
}

/// An algorithm that no configured key can verify would reject every token: say so at load.
fn check_algorithms_fit_keys(algs: &[Algorithm], keys: &KeySource) -> Result<(), ConfigError> {
    for (i, alg) in algs.iter().enumerate() {
        let hmac = alg.family() == AlgorithmFamily::Hmac;
        let ok = match keys {
            KeySource::HmacSecret(_) => hmac,
            // Symmetric keys are never taken from a JWKS or a public PEM file: anybody
            // holding the public material could then mint tokens.
            KeySource::Jwks | KeySource::Pem(_) => !hmac,
        };
        if !ok {
            return Err(ConfigError::new(
                format!("token.algorithms[{i}]"),
                format!("{alg:?} does not fit the configured token.keys ({keys:?})"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_yaml::{error_for, MINIMAL};
    use crate::config::Settings;

    #[test]
    fn unknown_algorithm_names_its_position() {
        let e = error_for(&MINIMAL.replace("[ES256]", "[ES256, XS256]"));
        assert_eq!(e.key, "token.algorithms[1]");
    }

    #[test]
    fn hmac_algorithm_with_jwks_is_rejected() {
        let e = error_for(&MINIMAL.replace("[ES256]", "[HS256]"));
        assert_eq!(e.key, "token.algorithms[0]");
    }

    #[test]
    fn source_with_two_kinds_is_rejected() {
        let e = error_for(&MINIMAL.replace(
            "  algorithms",
            "  sources: [{header: x-token, query: token}]\n  algorithms",
        ));
        assert_eq!(e.key, "token.sources[0]");
    }

    #[test]
    fn missing_hmac_env_names_the_variable_not_a_value() {
        let e = error_for(&MINIMAL.replace(
            "[ES256]",
            "[HS256]\n  keys: { hmac_secret_env: EPOCHGATE_TEST_UNSET_VAR }",
        ));
        assert_eq!(e.key, "token.keys.hmac_secret_env");
        assert!(e.message.contains("EPOCHGATE_TEST_UNSET_VAR"));
    }

    #[test]
    fn max_lifetime_is_off_by_default_and_read_as_a_duration() {
        assert_eq!(
            Settings::from_yaml(MINIMAL).unwrap().token.max_lifetime,
            None
        );
        let s = Settings::from_yaml(&MINIMAL.replace("[ES256]", "[ES256]\n  max_lifetime: 30d"))
            .unwrap();
        assert_eq!(s.token.max_lifetime, Some(Duration::from_secs(30 * 86_400)));
    }

    #[test]
    fn zero_max_lifetime_is_rejected() {
        let e = error_for(&MINIMAL.replace("[ES256]", "[ES256]\n  max_lifetime: 0s"));
        assert_eq!(e.key, "token.max_lifetime");
    }
}
