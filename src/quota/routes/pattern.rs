//! Route patterns in Django's `path()` syntax (phase: classify).
//!
//! A pattern is what `urls.py` says, e.g.
//! `chat/session/<int:session_id>/send/` (a leading `/` is optional: it is
//! the root resolver's `^/`), or the older `{name}` form, which is
//! `<str:name>`. It is turned into the regular expression Django builds
//! (`django/urls/resolvers.py`, `_route_to_regex`: escaped literals, one
//! `(?P<name>regex)` per converter, `\Z` at the end) and matched against
//! the decoded path ([`super::backend_path`]) with the root `/` cut, as
//! `RoutePattern.match` does (`regex.search` of a `^…\Z` pattern, i.e. the
//! whole path).
//!
//! The converters are Django's (`django/urls/converters.py`):
//!
//! | converter | regex | canonical value |
//! |---|---|---|
//! | `int` | `[0-9]+` | `int(value)` in decimal: `0017` → `17` |
//! | `str` | `[^/]+` | as matched |
//! | `slug` | `[-a-zA-Z0-9_]+` | as matched |
//! | `uuid` | `[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}` | as matched (Django's regex takes lower case only) |
//! | `path` | `.+` | as matched |
//!
//! The `regex` crate reads these the way Python's `re` does here: `[0-9]`
//! and the slug class are ASCII, `.` stops at `\n` and `[^/]` does not, and
//! its leftmost-first captures are the ones a backtracking engine finds,
//! so `<path:a>/<int:b>/` splits a path where Django does. It matches in
//! time linear in the path, whatever the pattern, which a hand-written
//! backtracking matcher would not on client-chosen paths.
//!
//! Django's `int()` fails above 4300 digits (Python's default
//! `sys.get_int_max_str_digits()`), and the resolver then treats the path as
//! not matching (404). Here such a path still matches (fail closed): the
//! request is checked and counted like any other, and released when nothing
//! is saved.

use regex::Regex;

/// A path converter of Django's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Converter {
    /// `<int:…>`: `[0-9]+`, canonical decimal.
    Int,
    /// `<str:…>` (and `<name>`, `{name}`): one segment, `[^/]+`.
    Str,
    /// `<slug:…>`: `[-a-zA-Z0-9_]+`.
    Slug,
    /// `<uuid:…>`: the lower-case canonical form.
    Uuid,
    /// `<path:…>`: `.+`, slashes included.
    Path,
}

impl Converter {
    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "int" => Self::Int,
            "str" => Self::Str,
            "slug" => Self::Slug,
            "uuid" => Self::Uuid,
            "path" => Self::Path,
            _ => return None,
        })
    }

    fn regex(self) -> &'static str {
        match self {
            Self::Int => "[0-9]+",
            Self::Str => "[^/]+",
            Self::Slug => "[-a-zA-Z0-9_]+",
            Self::Uuid => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            Self::Path => ".+",
        }
    }

    /// The canonical form of `value`, which this converter's regex matched:
    /// what the view receives, written back as text.
    pub fn canonical(self, value: &str) -> String {
        match self {
            Self::Int => {
                let digits = value.trim_start_matches('0');
                if digits.is_empty() { "0" } else { digits }.to_owned()
            }
            Self::Str | Self::Slug | Self::Uuid | Self::Path => value.to_owned(),
        }
    }
}

/// One piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Param { name: String, converter: Converter },
}

/// A parsed route pattern, ready to match decoded paths.
#[derive(Debug, Clone)]
pub struct PathPattern {
    pieces: Vec<Piece>,
    regex: Regex,
    /// Every parameter is an `int`, `str` or `slug` that ends where its
    /// segment does (the pattern's end or a literal starting with `/`), as
    /// in every route of the app: then no class can take a `/`, so a
    /// parameter is exactly the rest of its segment and the path is
    /// matched a segment at a time ([`Self::match_segments`], the same
    /// answer as the regex, property-tested) without the regex's captures.
    by_segments: bool,
}

impl PathPattern {
    /// Parses `pattern` (Django's `path()` syntax or `{name}`); the error
    /// says what to change.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if let Some(why) = super::syntax::foreign_syntax(pattern) {
            return Err(format!(
                "{pattern:?} {why}; write the path as in Django's path(), e.g. \
                 \"chat/session/<int:session_id>/send/\" (it would match nothing Django routes)"
            ));
        }
        let body = pattern.strip_prefix('/').unwrap_or(pattern);
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = body;
        while let Some(at) = rest.find(['<', '{', '>', '}']) {
            literal.push_str(&rest[..at]);
            let open = rest.as_bytes()[at];
            let close = match open {
                b'<' => '>',
                b'{' => '}',
                _ => {
                    return Err(format!(
                        "{pattern:?} has an unmatched '{}'",
                        char::from(open)
                    ));
                }
            };
            let after = &rest[at + 1..];
            let Some(end) = after.find(close) else {
                return Err(format!(
                    "{pattern:?} has an unmatched '{}'",
                    char::from(open)
                ));
            };
            let inside = &after[..end];
            let (converter, name) = match (open, inside.split_once(':')) {
                (b'<', Some((converter, name))) => (
                    Converter::named(converter).ok_or_else(|| {
                        format!(
                            "{pattern:?} uses the converter {converter:?}; \
                             expected int, str, slug, uuid or path"
                        )
                    })?,
                    name,
                ),
                (b'{', None) if inside.starts_with('*') => (Converter::Path, &inside[1..]),
                (_, None) => (Converter::Str, inside),
                (_, Some(_)) => {
                    return Err(format!(
                        "{pattern:?}: write {{{inside}}} as <converter:name>, e.g. <int:id>"
                    ));
                }
            };
            if !is_identifier(name) {
                return Err(format!(
                    "{pattern:?}: parameter name {name:?} is not a Python identifier"
                ));
            }
            let repeated = pieces
                .iter()
                .any(|p| matches!(p, Piece::Param { name: n, .. } if n == name));
            if repeated {
                return Err(format!("{pattern:?} names the parameter {name:?} twice"));
            }
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Param {
                name: name.to_owned(),
                converter,
            });
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        let mut regex = String::from("^");
        for piece in &pieces {
            match piece {
                Piece::Literal(text) => regex.push_str(&regex::escape(text)),
                Piece::Param { name, converter } => {
                    regex.push_str(&format!("(?P<{name}>{})", converter.regex()));
                }
            }
        }
        regex.push_str(r"\z");
        let regex = Regex::new(&regex).map_err(|e| format!("{pattern:?}: {e}"))?;
        let by_segments = pieces.iter().enumerate().all(|(i, piece)| match piece {
            Piece::Literal(_) => true,
            Piece::Param { converter, .. } => {
                matches!(converter, Converter::Int | Converter::Str | Converter::Slug)
                    && match pieces.get(i + 1) {
                        None => true,
                        Some(Piece::Literal(next)) => next.starts_with('/'),
                        Some(Piece::Param { .. }) => false,
                    }
            }
        });
        Ok(Self {
            pieces,
            regex,
            by_segments,
        })
    }

    /// The canonical parameters of `path` (a decoded path, with its leading
    /// `/`), in pattern order, or `None` when it is not this route.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        // The root URLconf's `^/`: one slash, then the patterns.
        let path = path.strip_prefix('/')?;
        if self.by_segments {
            return self.match_segments(path);
        }
        self.match_regex(path)
    }

    /// [`Self::matches`] for a pattern whose parameters each end their
    /// segment (`by_segments`), on the path without its root `/`.
    fn match_segments(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut rest = path;
        let mut params = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => rest = rest.strip_prefix(text.as_str())?,
                Piece::Param { name, converter } => {
                    let end = rest.find('/').unwrap_or(rest.len());
                    let value = &rest[..end];
                    let admitted = match converter {
                        Converter::Int => value.bytes().all(|b| b.is_ascii_digit()),
                        Converter::Slug => value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                        _ => true,
                    };
                    if value.is_empty() || !admitted {
                        return None;
                    }
                    params.push((name.clone(), converter.canonical(value)));
                    rest = &rest[end..];
                }
            }
        }
        rest.is_empty().then_some(params)
    }

    /// [`Self::matches`] by the regex Django builds, on the path without
    /// its root `/`.
    fn match_regex(&self, path: &str) -> Option<Vec<(String, String)>> {
        let captures = self.regex.captures(path)?;
        Some(
            self.params()
                .map(|(name, converter)| {
                    let value = captures.name(name).map_or("", |m| m.as_str());
                    (name.to_owned(), converter.canonical(value))
                })
                .collect(),
        )
    }

    /// The parameters' names and converters, in order.
    pub fn params(&self) -> impl Iterator<Item = (&str, Converter)> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Param { name, converter } => Some((name.as_str(), *converter)),
            Piece::Literal(_) => None,
        })
    }

    /// The path this pattern names with `values` (canonical values by
    /// parameter name), percent-encoded for a request target, with a
    /// leading `/`. A parameter without a value is left empty.
    pub fn render(&self, values: &[(String, String)]) -> String {
        // Sized for the usual path, where nothing needs percent-encoding:
        // one allocation, no growing.
        let literals: usize = self
            .pieces
            .iter()
            .map(|piece| match piece {
                Piece::Literal(text) => text.len(),
                Piece::Param { .. } => 0,
            })
            .sum();
        let params: usize = values.iter().map(|(_, value)| value.len()).sum();
        let mut out = String::with_capacity(1 + literals + params);
        out.push('/');
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => {
                    out.extend(percent_encoding::utf8_percent_encode(text, TARGET_UNSAFE))
                }
                Piece::Param { name, .. } => {
                    if let Some((_, value)) = values.iter().find(|(n, _)| n == name) {
                        out.extend(percent_encoding::utf8_percent_encode(value, TARGET_UNSAFE));
                    }
                }
            }
        }
        out
    }

    /// True when two patterns match exactly the same paths because they are
    /// written the same way (names aside).
    pub fn same_as(&self, other: &Self) -> bool {
        self.regex_without_names() == other.regex_without_names()
    }

    fn regex_without_names(&self) -> Vec<Result<&str, Converter>> {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Literal(text) => Ok(text.as_str()),
                Piece::Param { converter, .. } => Err(*converter),
            })
            .collect()
    }
}

/// Bytes that cannot stand for themselves in a path: controls, space,
/// non-ASCII, and `" # % < > ? \ ^ ` { | }` (Django's `reverse()` quotes the
/// same way, keeping `/`).
const TARGET_UNSAFE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Python's `str.isidentifier()` for ASCII names (non-ASCII names, which
/// Python allows, are refused here; no `urls.py` of this app uses one).
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matched(pattern: &str, path: &str) -> Option<Vec<(String, String)>> {
        PathPattern::parse(pattern).expect("pattern").matches(path)
    }

    fn one(name: &str, value: &str) -> Option<Vec<(String, String)>> {
        Some(vec![(name.to_owned(), value.to_owned())])
    }

    #[test]
    fn int_is_canonical() {
        let p = "chat/session/<int:session_id>/send/";
        assert_eq!(
            matched(p, "/chat/session/17/send/"),
            one("session_id", "17")
        );
        assert_eq!(
            matched(p, "/chat/session/0017/send/"),
            one("session_id", "17")
        );
        assert_eq!(
            matched(p, "/chat/session/000/send/"),
            one("session_id", "0")
        );
        let padded = format!("/chat/session/{}17/send/", "0".repeat(4000));
        assert_eq!(matched(p, &padded), one("session_id", "17"));
        for no in [
            "/chat/session/-1/send/",
            "/chat/session/+1/send/",
            "/chat/session/1_7/send/",
            "/chat/session/ 17/send/",
            "/chat/session/١٧/send/",
            "/chat/session//send/",
            "/chat/session/17/send",
            "/chat/session/17/send/x",
            "/chat/session/17/send/\n",
            "chat/session/17/send/",
            "//chat/session/17/send/",
        ] {
            assert_eq!(matched(p, no), None, "{no:?}");
        }
    }

    #[test]
    fn leading_slash_and_braces_are_the_same_pattern() {
        for p in [
            "/chat/session/<int:session_id>/send/",
            "chat/session/<int:session_id>/send/",
        ] {
            assert_eq!(matched(p, "/chat/session/07/send/"), one("session_id", "7"));
        }
        let braces = "/chat/session/{session_id}/send/";
        assert_eq!(
            matched(braces, "/chat/session/07/send/"),
            one("session_id", "07")
        );
        assert_eq!(
            matched(braces, "/chat/session/a%2F/send/"),
            one("session_id", "a%2F")
        );
        assert_eq!(matched(braces, "/chat/session/a/b/send/"), None);
        assert_eq!(matched("<x>/", "/\n/"), one("x", "\n"));
    }

    #[test]
    fn slug_uuid_and_path() {
        assert_eq!(
            matched("a/<slug:s>/", "/a/Hello_w-1/"),
            one("s", "Hello_w-1")
        );
        assert_eq!(matched("a/<slug:s>/", "/a/héllo/"), None);
        let u = "0f3c8a2e-1b4d-4c5e-9f60-7a8b9c0d1e2f";
        assert_eq!(matched("a/<uuid:u>/", &format!("/a/{u}/")), one("u", u));
        assert_eq!(
            matched("a/<uuid:u>/", &format!("/a/{}/", u.to_uppercase())),
            None
        );
        assert_eq!(
            matched("a/<uuid:u>/", "/a/0f3c8a2e1b4d4c5e9f607a8b9c0d1e2f/"),
            None
        );
        assert_eq!(matched("f/<path:p>", "/f/a/b/c"), one("p", "a/b/c"));
        assert_eq!(matched("f/<path:p>", "/f/a\nb"), None);
        assert_eq!(matched("f/{*p}", "/f/a/b"), one("p", "a/b"));
        // Greedy, then backtracking, as Python's `re`.
        assert_eq!(
            matched("f/<path:a>/<int:b>/", "/f/x/1/2/"),
            Some(vec![
                ("a".to_owned(), "x/1".to_owned()),
                ("b".to_owned(), "2".to_owned())
            ])
        );
    }

    #[test]
    fn bad_patterns_say_why() {
        for (pattern, says) in [
            ("a/<float:x>/", "converter \"float\""),
            ("a/<int:1x>/", "not a Python identifier"),
            ("a/<int:x/", "unmatched '<'"),
            ("a/x>/", "unmatched '>'"),
            ("a/<x>/<int:x>/", "twice"),
            ("a/{int:x}/", "<converter:name>"),
        ] {
            let err = PathPattern::parse(pattern).expect_err(pattern);
            assert!(err.contains(says), "{pattern}: {err}");
        }
    }

    #[test]
    fn only_parameters_that_end_their_segment_match_by_segments() {
        let by_segments = |p: &str| PathPattern::parse(p).expect("pattern").by_segments;
        assert!(by_segments("chat/session/<int:session_id>/send/"));
        assert!(by_segments("a/<slug:s>"));
        assert!(!by_segments("a/<int:x>b/"));
        assert!(!by_segments("a/<int:x><str:y>/"));
        assert!(!by_segments("a/<uuid:u>/"));
        assert!(!by_segments("a/<path:p>"));
    }

    #[test]
    fn render_uses_canonical_values_and_encodes() {
        let p = PathPattern::parse("/chat/session/<int:session_id>/image-generation-access/")
            .expect("pattern");
        assert_eq!(
            p.render(&[("session_id".to_owned(), "17".to_owned())]),
            "/chat/session/17/image-generation-access/"
        );
        let s = PathPattern::parse("a/{x}/").expect("pattern");
        assert_eq!(
            s.render(&[("x".to_owned(), "a b?%".to_owned())]),
            "/a/a%20b%3F%25/"
        );
    }

    proptest! {
        #[test]
        fn int_values_are_canonical(zeros in 0usize..50, n in any::<u64>()) {
            let path = format!("/s/{}{n}/", "0".repeat(zeros));
            prop_assert_eq!(matched("s/<int:id>/", &path), one("id", &n.to_string()));
        }

        #[test]
        fn segments_match_as_the_regex_does(
            pieces in prop::collection::vec(
                prop_oneof![
                    prop::sample::select(vec!["/", "a", "a/", "/a/", "/a", "-", "s/x/"])
                        .prop_map(str::to_owned),
                    prop::sample::select(vec!["<int:p>", "<str:p>", "<slug:p>", "<p>"])
                        .prop_map(str::to_owned),
                ],
                1..6,
            ),
            path in "/[a01/_é\\-\nA9.%]{0,12}",
            values in prop::collection::vec("[a09_é\\-.]{0,3}", 6),
        ) {
            // Parameters numbered so that none is named twice, each ending
            // its segment: a `/` after it unless the next piece begins so.
            let mut pattern = String::new();
            for (i, piece) in pieces.iter().enumerate() {
                pattern.push_str(
                    &piece
                        .replace(":p>", &format!(":p{i}>"))
                        .replace("<p>", &format!("<p{i}>")),
                );
                let next_starts_segment = pieces.get(i + 1).is_none_or(|n| n.starts_with('/'));
                if piece.starts_with('<') && !next_starts_segment {
                    pattern.push('/');
                }
            }
            let parsed = PathPattern::parse(&pattern).expect("pattern");
            prop_assert!(parsed.by_segments, "{}", pattern);
            // A path of the pattern's own shape, parameters filled with
            // values that may or may not fit their converters; and any path.
            let mut values = values.iter();
            let shaped: String = parsed
                .pieces
                .iter()
                .map(|piece| match piece {
                    Piece::Literal(text) => text.as_str(),
                    Piece::Param { .. } => values.next().map_or("", String::as_str),
                })
                .collect();
            for rooted in [path.strip_prefix('/').expect("rooted"), shaped.as_str()] {
                prop_assert_eq!(
                    parsed.match_segments(rooted),
                    parsed.match_regex(rooted),
                    "{} on {:?}",
                    pattern,
                    rooted
                );
            }
        }

        #[test]
        fn rendered_paths_match_again(value in "[^/\n]{1,20}") {
            let p = PathPattern::parse("a/<str:x>/b/").expect("pattern");
            let target = p.render(&[("x".to_owned(), value.clone())]);
            let decoded = super::super::backend_path(&target);
            prop_assert_eq!(p.matches(&decoded), one("x", &value));
        }
    }
}
