//! Finding the device token in a request (header, query parameter, cookie) and removing it.

use std::borrow::Cow;

use http::{HeaderMap, Uri};

use crate::config::TokenSource;

/// Longest token the gate will look at; anything longer is rejected without parsing.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// What the first source with a value found. The token borrows from the request where it can:
/// this runs on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<'a> {
    /// A token, and the index of the source it came from.
    Token { token: Cow<'a, str>, source: usize },
    /// The source had a value but it cannot be a token.
    Unusable { source: usize, why: Unusable },
}

/// Why a value found in a source cannot be a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    TooLong,
    /// Empty, or not text.
    Malformed,
}

/// Tries each configured source in order; the first one that has a value wins.
pub fn find_token<'a>(
    sources: &[TokenSource],
    headers: &'a HeaderMap,
    uri: &'a Uri,
) -> Option<Found<'a>> {
    sources.iter().enumerate().find_map(|(index, source)| {
        let raw = match source {
            TokenSource::Header { name, prefix } => header_value(headers, name, prefix.as_deref()),
            TokenSource::Query { name } => query_value(uri, name),
            TokenSource::Cookie { name } => cookie_value(headers, name),
        }?;
        let unusable = |why| Found::Unusable { source: index, why };
        Some(match raw {
            None => unusable(Unusable::TooLong),
            Some(token) if token.len() > MAX_TOKEN_BYTES => unusable(Unusable::TooLong),
            Some(token) if token.is_empty() => unusable(Unusable::Malformed),
            Some(token) => Found::Token {
                token,
                source: index,
            },
        })
    })
}

/// `None`: the source has no value. `Some(None)`: it has one too long to look at.
fn header_value<'a>(
    headers: &'a HeaderMap,
    name: &http::HeaderName,
    prefix: Option<&str>,
) -> Option<Option<Cow<'a, str>>> {
    let value = headers.get(name)?;
    if value.len() > MAX_TOKEN_BYTES + prefix.map_or(0, str::len) + 64 {
        return Some(None);
    }
    // Not visible ASCII: cannot be a JWT; an empty value says so downstream as malformed.
    let text = value.to_str().map(str::trim).unwrap_or("");
    match prefix {
        None => Some(Some(Cow::Borrowed(text))),
        Some(prefix) => {
            let scheme = prefix.trim_end();
            // `Bearer <jwt>`: the scheme is case-insensitive and any run of spaces may follow it.
            // A value with another scheme (`Basic ...`) is not ours: it counts as no value.
            let head = text.get(..scheme.len())?;
            if !head.eq_ignore_ascii_case(scheme) {
                return None;
            }
            let rest = &text[scheme.len()..];
            if prefix.len() > scheme.len() && !rest.starts_with([' ', '\t']) {
                return None;
            }
            Some(Some(Cow::Borrowed(rest.trim_start())))
        }
    }
}

fn query_value<'a>(uri: &'a Uri, name: &str) -> Option<Option<Cow<'a, str>>> {
    let query = uri.query()?;
    if query.len() > 4 * MAX_TOKEN_BYTES && !query.contains(name) {
        return None;
    }
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| Some(v))
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<Option<Cow<'a, str>>> {
    for header in headers.get_all(http::header::COOKIE) {
        let Ok(text) = header.to_str() else {
            continue;
        };
        for pair in text.split(';') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k.trim() == name {
                return Some(Some(Cow::Borrowed(v.trim().trim_matches('"'))));
            }
        }
    }
    None
}

/// The request target with every `name=` query parameter removed; other parameters keep
/// their original encoding and order.
pub fn uri_without_query_param(uri: &Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            form_urlencoded::parse(key.as_bytes())
                .next()
                .map_or(key != name, |(k, _)| k != name)
        })
        .collect();
    if kept.len() == query.split('&').count() {
        return None;
    }
    let path = uri.path();
    Some(if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    })
}

/// A `Cookie` header value with the named cookie removed; `None` when nothing is left.
pub fn cookie_header_without(value: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k).trim() != name)
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn sources() -> Vec<TokenSource> {
        vec![
            TokenSource::Header {
                name: http::header::AUTHORIZATION,
                prefix: Some("Bearer ".into()),
            },
            TokenSource::Query {
                name: "token".into(),
            },
            TokenSource::Cookie {
                name: "device_token".into(),
            },
        ]
    }

    fn find(headers: &[(&str, &str)], uri: &str) -> Option<Found<'static>> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let uri: Uri = uri.parse().unwrap();
        match find_token(&sources(), &map, &uri)? {
            Found::Token { token, source } => Some(Found::Token {
                token: Cow::Owned(token.into_owned()),
                source,
            }),
            Found::Unusable { source, why } => Some(Found::Unusable { source, why }),
        }
    }

    fn token(t: &str, source: usize) -> Option<Found<'_>> {
        Some(Found::Token {
            token: Cow::Borrowed(t),
            source,
        })
    }

    #[test]
    fn bearer_prefix_is_case_insensitive_and_tolerates_spaces() {
        assert_eq!(
            find(&[("authorization", "bEaReR   abc ")], "/"),
            token("abc", 0)
        );
    }

    #[test]
    fn basic_authorization_counts_as_no_value() {
        assert_eq!(find(&[("authorization", "Basic dXNlcjpwdw==")], "/"), None);
        assert_eq!(
            find(&[("authorization", "Basic dXNlcjpwdw==")], "/s.ts?token=q"),
            token("q", 1)
        );
    }

    #[test]
    fn bearer_without_separator_is_not_a_bearer_token() {
        assert_eq!(find(&[("authorization", "Bearerabc")], "/"), None);
    }

    #[test]
    fn query_parameter_is_decoded() {
        assert_eq!(find(&[], "/a.m3u8?x=1&token=a%2Eb.c"), token("a.b.c", 1));
    }

    #[test]
    fn cookie_is_found_among_others() {
        assert_eq!(
            find(&[("cookie", "theme=dark; device_token=t1; x=y")], "/"),
            token("t1", 2)
        );
    }

    #[test]
    fn header_wins_over_query_and_cookie() {
        assert_eq!(
            find(
                &[("authorization", "Bearer h"), ("cookie", "device_token=c")],
                "/?token=q"
            ),
            token("h", 0)
        );
    }

    #[test]
    fn over_long_token_is_unusable() {
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            find(&[], &format!("/?token={long}")),
            Some(Found::Unusable {
                source: 1,
                why: Unusable::TooLong
            })
        );
    }

    #[test]
    fn empty_query_token_is_malformed() {
        assert_eq!(
            find(&[], "/?token="),
            Some(Found::Unusable {
                source: 1,
                why: Unusable::Malformed
            })
        );
    }

    #[test]
    fn query_param_is_stripped_keeping_the_rest() {
        let uri: Uri = "/seg/1.ts?a=1&token=x.y.z&b=%20".parse().unwrap();
        assert_eq!(
            uri_without_query_param(&uri, "token").as_deref(),
            Some("/seg/1.ts?a=1&b=%20")
        );
        let only: Uri = "/x?token=t".parse().unwrap();
        assert_eq!(
            uri_without_query_param(&only, "token").as_deref(),
            Some("/x")
        );
        let none: Uri = "/x?a=b".parse().unwrap();
        assert_eq!(uri_without_query_param(&none, "token"), None);
    }

    #[test]
    fn only_the_token_cookie_is_stripped() {
        assert_eq!(
            cookie_header_without("a=1; device_token=t; b=2", "device_token").as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(
            cookie_header_without("device_token=t", "device_token"),
            None
        );
    }
}
