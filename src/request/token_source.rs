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
    let target = uri.path_and_query()?.as_str();
    let stripped = target_without_query_param(target.as_bytes(), name)?;
    // Only whole `&`-separated pieces of a string were dropped: still UTF-8.
    String::from_utf8(stripped).ok()
}

/// Whether a query parameter's key (as written, possibly percent-encoded) decodes to `name`.
fn query_key_is(pair: &[u8], name: &str) -> bool {
    let key = pair.split(|&b| b == b'=').next().unwrap_or(pair);
    match form_urlencoded::parse(key).next() {
        Some((decoded, _)) => decoded == name,
        None => key == name.as_bytes(),
    }
}

/// A raw request target (as it goes on the wire) with every query parameter whose name
/// decodes to `name` removed, every other byte unchanged; `None` when there is none.
/// Allocates only when something is removed.
pub fn target_without_query_param(target: &[u8], name: &str) -> Option<Vec<u8>> {
    let start = target.iter().position(|&b| b == b'?')?;
    let (path, query) = (&target[..start], &target[start + 1..]);
    if !query
        .split(|&b| b == b'&')
        .any(|pair| query_key_is(pair, name))
    {
        return None;
    }
    let mut out = Vec::with_capacity(target.len());
    out.extend_from_slice(path);
    let mut first = true;
    for pair in query.split(|&b| b == b'&') {
        if query_key_is(pair, name) {
            continue;
        }
        out.push(if first { b'?' } else { b'&' });
        out.extend_from_slice(pair);
        first = false;
    }
    Some(out)
}

/// Whether a header value is of the scheme (`Bearer`, matched case-insensitively after any
/// leading whitespace). Anything that starts with the scheme counts, `Bearerxyz` too: what a
/// client glued to the scheme name may still be a token. An empty scheme matches every value.
pub fn header_value_has_scheme(value: &[u8], scheme: &str) -> bool {
    let value = value.trim_ascii_start();
    value
        .get(..scheme.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(scheme.as_bytes()))
}

/// The `name` of one `name=value` cookie pair, without surrounding whitespace.
fn cookie_name(pair: &[u8]) -> &[u8] {
    pair.split(|&b| b == b'=')
        .next()
        .unwrap_or(pair)
        .trim_ascii()
}

/// Whether a `Cookie` header value holds a cookie called `name`.
pub fn cookie_header_names(value: &[u8], name: &str) -> bool {
    value
        .split(|&b| b == b';')
        .any(|pair| cookie_name(pair) == name.as_bytes())
}

/// A `Cookie` header value (raw bytes) with every cookie called `name` removed, the other
/// pairs unchanged and joined by `; `; `None` when nothing is left.
pub fn cookie_bytes_without(value: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(value.len());
    for pair in value.split(|&b| b == b';') {
        let pair = pair.trim_ascii();
        if pair.is_empty() || cookie_name(pair) == name.as_bytes() {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair);
    }
    (!out.is_empty()).then_some(out)
}

/// A `Cookie` header value with the named cookie removed; `None` when nothing is left.
pub fn cookie_header_without(value: &str, name: &str) -> Option<String> {
    cookie_bytes_without(value.as_bytes(), name).and_then(|rest| String::from_utf8(rest).ok())
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
    fn every_query_param_of_the_name_is_stripped_byte_for_byte() {
        let strip = |t: &[u8]| target_without_query_param(t, "token");
        assert_eq!(
            strip(b"/s.ts?token=a&x=%2F+y&to%6Ben=b&token&&tok=en&token=").as_deref(),
            Some(&b"/s.ts?x=%2F+y&&tok=en"[..])
        );
        assert_eq!(
            strip(b"http://h/s.ts?token=a&q=\xff").as_deref(),
            Some(&b"http://h/s.ts?q=\xff"[..])
        );
        assert_eq!(strip(b"/s.ts?tokens=a&xtoken=b"), None);
        assert_eq!(strip(b"/s.ts"), None);
    }

    #[test]
    fn header_values_of_the_scheme_are_recognised_in_any_case() {
        for value in [
            "Bearer t",
            "bearer t",
            "  BEARER   t",
            "Bearer",
            "Bearerxyz",
        ] {
            assert!(
                header_value_has_scheme(value.as_bytes(), "Bearer"),
                "{value}"
            );
        }
        assert!(!header_value_has_scheme(b"Basic dXNlcjpwdw==", "Bearer"));
        assert!(!header_value_has_scheme(b"Bear", "Bearer"));
        assert!(header_value_has_scheme(b"anything", ""));
    }

    #[test]
    fn every_cookie_of_the_name_is_stripped_from_raw_bytes() {
        assert_eq!(
            cookie_bytes_without(
                b"a=1;device_token=x; b=\xff; device_token=\"y\"",
                "device_token"
            )
            .as_deref(),
            Some(&b"a=1; b=\xff"[..])
        );
        assert!(cookie_header_names(b"a=1; device_token =x", "device_token"));
        assert!(!cookie_header_names(
            b"a=1; device_token2=x",
            "device_token"
        ));
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
