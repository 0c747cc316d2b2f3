//! Which gate mode applies to a request: the top-level `mode` and the `routes` by path prefix.
//!
//! A route matches the request's path, never its query. The path is matched both as sent and
//! percent-decoded, each with `.` and `..` segments resolved and repeated slashes collapsed,
//! and the stricter of the two modes applies (`enforce` over `observe` over `off`): whichever
//! way the upstream reads `/public/..%2flive/x` or `/public/%2e%2e/live/x`, a path that reaches
//! a gated prefix is never let through as `/public/`. The upstream receives the original path.

use std::borrow::Cow;

use serde::Deserialize;

/// What the gate does with a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Decide, and reject what the gate rejects.
    #[default]
    Enforce,
    /// Decide and count, but forward every request, with the decision in a header.
    Observe,
    /// Not gated: no token needed, no decision made or counted.
    Off,
}

impl Mode {
    /// The value of the `mode` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Observe => "observe",
            Mode::Off => "off",
        }
    }

    fn strictness(self) -> u8 {
        match self {
            Mode::Off => 0,
            Mode::Observe => 1,
            Mode::Enforce => 2,
        }
    }
}

/// One `routes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub mode: Mode,
}

/// The routes, in order (first match wins), and the mode of a path none of them matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    pub default: Mode,
    pub routes: Vec<Route>,
}

impl Routes {
    /// The mode for a request path (without its query).
    pub fn mode_for(&self, path: &str) -> Mode {
        if self.routes.is_empty() {
            return self.default;
        }
        let as_sent = self.first_match(&normalize(path));
        if !path.contains('%') {
            return as_sent;
        }
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        let as_decoded = self.first_match(&normalize(&decoded));
        if as_decoded.strictness() > as_sent.strictness() {
            as_decoded
        } else {
            as_sent
        }
    }

    fn first_match(&self, path: &str) -> Mode {
        self.routes
            .iter()
            .find(|route| path.starts_with(&route.prefix))
            .map_or(self.default, |route| route.mode)
    }
}

/// The path with `.` and `..` segments resolved (never above the root) and repeated slashes
/// collapsed; a trailing slash is kept, so `/public/.` is `/public/`.
pub fn normalize(path: &str) -> Cow<'_, str> {
    let clean = path.starts_with('/')
        && !path.contains("//")
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..");
    if clean {
        return Cow::Borrowed(path);
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/') {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        Routes {
            default: Mode::Enforce,
            routes: vec![
                Route {
                    prefix: "/public/".into(),
                    mode: Mode::Off,
                },
                Route {
                    prefix: "/vod/".into(),
                    mode: Mode::Observe,
                },
            ],
        }
    }

    #[test]
    fn first_matching_prefix_decides_and_no_match_takes_the_default() {
        let r = routes();
        assert_eq!(r.mode_for("/public/logo.png"), Mode::Off);
        assert_eq!(r.mode_for("/vod/a/seg1.ts"), Mode::Observe);
        assert_eq!(r.mode_for("/live/seg1.ts"), Mode::Enforce);
        assert_eq!(r.mode_for("/publicity"), Mode::Enforce);
    }

    #[test]
    fn dot_segments_cannot_leave_a_gated_prefix_for_an_ungated_one() {
        let r = routes();
        assert_eq!(r.mode_for("/public/../live/seg1.ts"), Mode::Enforce);
        assert_eq!(r.mode_for("/public/%2e%2e/live/seg1.ts"), Mode::Enforce);
        assert_eq!(r.mode_for("/public/..%2flive/seg1.ts"), Mode::Enforce);
        // An upstream that does not decode %2F reads this as a file under /live/.
        assert_eq!(r.mode_for("/live/..%2fpublic/x"), Mode::Enforce);
        assert_eq!(r.mode_for("//public//x"), Mode::Off);
        assert_eq!(r.mode_for("/live/../public/x"), Mode::Off);
    }

    #[test]
    fn percent_encoded_path_takes_the_stricter_of_its_two_readings() {
        assert_eq!(routes().mode_for("/vod/%41"), Mode::Observe);
        assert_eq!(routes().mode_for("/public/%41"), Mode::Off);
        // Ungated only when both readings say so.
        assert_eq!(routes().mode_for("/%70ublic/x"), Mode::Enforce);
    }

    #[test]
    fn normalize_keeps_the_trailing_slash_and_the_root() {
        assert_eq!(normalize("/a/./b/../c/"), "/a/c/");
        assert_eq!(normalize("/a/.."), "/");
        assert_eq!(normalize("/../../x"), "/x");
        assert_eq!(normalize("/public/."), "/public/");
        assert_eq!(normalize("/plain/path"), "/plain/path");
    }
}
