//! Shaping the request the upstream receives: the edge's header namespace and the identity
//! headers cleaned of client-sent copies, every copy of the token removed, the verified
//! identity and (on `observe` routes) the decision added. Embedders call
//! [`prepare_upstream_request`] from their `upstream_request_filter`.

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::Result;

use crate::config::{ForwardSettings, TokenSource};
use crate::edge::admission::Admitted;
use crate::request::route::Mode;
use crate::request::token_source;

/// The name, after `forward.header_prefix`, of the header an upstream receives the decision
/// in, for requests on `observe` routes (`x-epochgate-decision` by default): `allowed`,
/// `allowed_origin_unavailable` or the rejection's error code. A client-sent one is always
/// removed.
pub const DECISION_HEADER_SUFFIX: &str = "decision";

/// The forwarding settings, with the identity and decision header names prebuilt once in the
/// form Pingora's header map takes them, so no name is copied from an `http::HeaderName` and
/// compared again on every request.
#[derive(Debug, Clone)]
pub struct Forwarding {
    settings: ForwardSettings,
    account_header: Bytes,
    device_header: Bytes,
    decision_header: Bytes,
}

impl Forwarding {
    pub fn new(settings: ForwardSettings) -> Forwarding {
        Forwarding {
            account_header: Bytes::copy_from_slice(settings.account_header.as_str().as_bytes()),
            device_header: Bytes::copy_from_slice(settings.device_header.as_str().as_bytes()),
            // Under the edge's namespace, so a client-sent copy is removed with the rest.
            decision_header: Bytes::from(format!(
                "{}{DECISION_HEADER_SUFFIX}",
                settings.header_prefix
            )),
            settings,
        }
    }

    /// Whether a client-sent header of this name must not reach the upstream whatever the
    /// verdict: the edge's namespace and the identity headers (which may lie outside it).
    fn owned_by_the_edge(&self, name: &http::HeaderName) -> bool {
        let forward = &self.settings;
        // Header names are lower case, and so is the configured prefix.
        name.as_str().starts_with(forward.header_prefix.as_str())
            || *name == forward.account_header
            || *name == forward.device_header
    }
}

/// Removes client-sent headers in the edge's namespace (the decision header among them) and
/// the identity headers (always, on every route: a client can never spoof them), removes every
/// value of every token source when configured to (not only the one the token was read from),
/// adds the verified identity of an allowed request and, on an `observe` route, the decision
/// header.
pub fn prepare_upstream_request(
    forwarding: &Forwarding,
    sources: &[TokenSource],
    admitted: Option<&Admitted>,
    upstream: &mut RequestHeader,
) -> Result<()> {
    remove_edge_headers(forwarding, upstream);
    let Some(Admitted {
        mode,
        verdict: Some(verdict),
    }) = admitted
    else {
        return Ok(());
    };
    // The token goes first: the header map then has a free slot for the identity headers
    // instead of growing (a reallocation per request), and a token header that shares a
    // name with an identity header can never take the identity with it.
    if forwarding.settings.strip_token {
        for source in sources {
            strip_token(source, upstream)?;
        }
    }
    if let Some((account, device)) = verdict.decision.identity() {
        upstream.insert_header(forwarding.account_header.clone(), account)?;
        upstream.insert_header(forwarding.device_header.clone(), device)?;
    }
    if *mode == Mode::Observe {
        upstream.insert_header(
            forwarding.decision_header.clone(),
            verdict.decision.label().as_str(),
        )?;
    }
    Ok(())
}

/// One pass over the header names; nothing is allocated unless a client sent one.
fn remove_edge_headers(forwarding: &Forwarding, upstream: &mut RequestHeader) {
    let mut owned: Vec<http::HeaderName> = Vec::new();
    for name in upstream.headers.keys() {
        if forwarding.owned_by_the_edge(name) {
            owned.push(name.clone());
        }
    }
    for name in &owned {
        // `remove_header` takes every value of the name (and its original-case spelling).
        upstream.remove_header(name);
    }
}

/// Removes every value the source could carry a token in: every header value of the
/// configured scheme, every query parameter of the name, every cookie of the name.
fn strip_token(source: &TokenSource, upstream: &mut RequestHeader) -> Result<()> {
    match source {
        TokenSource::Header { name, prefix } => {
            let scheme = prefix.as_deref().map(str::trim_end).unwrap_or("");
            let carries = |value: &http::HeaderValue| {
                token_source::header_value_has_scheme(value.as_bytes(), scheme)
            };
            let values = upstream.headers.get_all(name);
            let matching = values.iter().filter(|v| carries(v)).count();
            if matching == 0 {
                return Ok(());
            }
            let kept: Vec<http::HeaderValue> = if matching == values.iter().count() {
                Vec::new()
            } else {
                values.iter().filter(|v| !carries(v)).cloned().collect()
            };
            upstream.remove_header(name);
            for value in kept {
                upstream.append_header(name.clone(), value)?;
            }
        }
        TokenSource::Query { name } => {
            // The raw target is what goes on the wire (the URI may be a lossy rendering of it,
            // or only the path of an absolute-form target).
            if let Some(target) =
                token_source::target_without_query_param(upstream.raw_path(), name)
            {
                // A target that no longer parses must not go out with the token in it.
                upstream.set_raw_path(&target)?;
            }
        }
        TokenSource::Cookie { name } => {
            let values = upstream.headers.get_all(http::header::COOKIE);
            let carries =
                |v: &http::HeaderValue| token_source::cookie_header_names(v.as_bytes(), name);
            if !values.iter().any(carries) {
                return Ok(());
            }
            let kept: Vec<http::HeaderValue> = values
                .iter()
                .filter_map(|v| {
                    if !carries(v) {
                        return Some(v.clone());
                    }
                    token_source::cookie_bytes_without(v.as_bytes(), name)
                        .and_then(|rest| http::HeaderValue::from_bytes(&rest).ok())
                })
                .collect();
            upstream.remove_header(&http::header::COOKIE);
            for value in kept {
                upstream.append_header(http::header::COOKIE, value)?;
            }
        }
    }
    Ok(())
}

/// What Pingora writes about a request in its error lines: method, path and host, never the
/// query string (HLS players carry the token there) nor any header value.
pub fn redacted_summary(request: &RequestHeader) -> String {
    let query = if request.uri.query().is_some() {
        "?<redacted>"
    } else {
        ""
    };
    let host = request
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-");
    format!(
        "{} {}{query}, Host: {host}",
        request.method,
        request.uri.path()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Verdict;
    use crate::request::decision::{Decision, Reason};

    fn forward() -> Forwarding {
        Forwarding::new(ForwardSettings {
            account_header: http::HeaderName::from_static("x-epochgate-account"),
            device_header: http::HeaderName::from_static("x-epochgate-device"),
            strip_token: true,
            header_prefix: "x-epochgate-".into(),
        })
    }

    fn allowed(source: usize) -> Admitted {
        admitted(
            Mode::Enforce,
            Decision::Allow {
                account: "alice".into(),
                device: "tv".into(),
            },
            source,
        )
    }

    fn admitted(mode: Mode, decision: Decision, source: usize) -> Admitted {
        Admitted {
            mode,
            verdict: Some(Verdict {
                decision,
                token_source: Some(source),
            }),
        }
    }

    fn bearer() -> [TokenSource; 1] {
        [TokenSource::Header {
            name: http::header::AUTHORIZATION,
            prefix: Some("Bearer ".into()),
        }]
    }

    #[test]
    fn observed_rejection_carries_the_decision_and_no_identity() {
        let mut upstream = request(&[
            ("Authorization", "Bearer t"),
            ("x-epochgate-account", "mallory"),
            ("x-epochgate-decision", "allowed"),
        ]);
        let observed = admitted(Mode::Observe, Decision::Reject(Reason::SignedOut), 0);
        prepare_upstream_request(&forward(), &bearer(), Some(&observed), &mut upstream).unwrap();
        assert_eq!(values(&upstream, "x-epochgate-decision"), ["signed_out"]);
        assert!(values(&upstream, "x-epochgate-account").is_empty());
        assert!(values(&upstream, "authorization").is_empty());
    }

    #[test]
    fn observed_allow_carries_the_decision_and_the_identity() {
        let mut upstream = request(&[("Authorization", "Bearer t")]);
        let observed = Admitted {
            mode: Mode::Observe,
            ..allowed(0)
        };
        prepare_upstream_request(&forward(), &bearer(), Some(&observed), &mut upstream).unwrap();
        assert_eq!(values(&upstream, "x-epochgate-decision"), ["allowed"]);
        assert_eq!(values(&upstream, "x-epochgate-account"), ["alice"]);
    }

    #[test]
    fn client_sent_decision_headers_never_reach_the_upstream() {
        let spoofed = [
            ("x-epochgate-decision", "allowed"),
            ("X-Epochgate-Decision", "allowed"),
        ];
        let mut enforced = request(&spoofed);
        prepare_upstream_request(&forward(), &bearer(), Some(&allowed(0)), &mut enforced).unwrap();
        assert!(values(&enforced, "x-epochgate-decision").is_empty());
        let mut ungated = request(&spoofed);
        let off = Admitted {
            mode: Mode::Off,
            verdict: None,
        };
        prepare_upstream_request(&forward(), &bearer(), Some(&off), &mut ungated).unwrap();
        assert!(values(&ungated, "x-epochgate-decision").is_empty());
    }

    fn request(headers: &[(&'static str, &'static str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/live/seg1.ts", None).unwrap();
        for (name, value) in headers {
            request.append_header(*name, *value).unwrap();
        }
        request
    }

    fn values(request: &RequestHeader, name: &str) -> Vec<String> {
        request
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn client_identity_headers_are_replaced_and_the_token_stripped() {
        let sources = [TokenSource::Header {
            name: http::header::AUTHORIZATION,
            prefix: Some("Bearer ".into()),
        }];
        let mut upstream = request(&[
            ("Authorization", "Bearer t"),
            ("X-Epochgate-Account", "mallory"),
            ("x-epochgate-account", "mallory"),
            ("x-epochgate-device", "laptop"),
        ]);
        prepare_upstream_request(&forward(), &sources, Some(&allowed(0)), &mut upstream).unwrap();
        assert_eq!(values(&upstream, "x-epochgate-account"), ["alice"]);
        assert_eq!(values(&upstream, "x-epochgate-device"), ["tv"]);
        assert!(values(&upstream, "authorization").is_empty());
    }

    #[test]
    fn token_header_named_like_an_identity_header_does_not_remove_the_identity() {
        let sources = [TokenSource::Header {
            name: http::HeaderName::from_static("x-epochgate-account"),
            prefix: None,
        }];
        let mut upstream = request(&[("x-epochgate-account", "t")]);
        prepare_upstream_request(&forward(), &sources, Some(&allowed(0)), &mut upstream).unwrap();
        assert_eq!(values(&upstream, "x-epochgate-account"), ["alice"]);
    }

    #[test]
    fn without_a_verdict_only_the_client_identity_headers_go() {
        let mut upstream = request(&[("Authorization", "Bearer t"), ("x-epochgate-device", "tv")]);
        prepare_upstream_request(&forward(), &[], None, &mut upstream).unwrap();
        assert!(values(&upstream, "x-epochgate-device").is_empty());
        assert_eq!(values(&upstream, "authorization"), ["Bearer t"]);
    }
}
