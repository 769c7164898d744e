//! Header values with parameters (phase: classify), split as Django splits
//! them: `django.utils.http.parse_header_parameters` (Django 5.2), which
//! hands anything with a `;` to Python's `email.message.Message.get_params`
//! (`Lib/email/message.py` `_parseparam`, `Lib/email/utils.py`
//! `decode_params`, `unquote`, `quote`; CPython 3.11). It is used for the
//! request's `Content-Type` and for each line of a multipart part's headers.
//!
//! What it does, in that code's order:
//! - no `;`: the whole value, stripped (Python `str.strip`, Unicode
//!   whitespace) and lowercased, no parameters;
//! - else split on `;` outside double quotes (a quote preceded by `\` does
//!   not count), each piece stripped; a piece with `=` has its name stripped
//!   and lowercased; the first piece is the main value (lowercased);
//! - values are unquoted (`"…"` loses its quotes, `\\` and `\"` unescape;
//!   `<…>` loses its angle brackets), and of repeated names the last wins;
//! - names without text are dropped.
//!
//! RFC 2231 parameters (`boundary*=`, `name*0=`…) go through charset
//! lookups and a sort that can raise; they are not decoded here: their
//! names are listed in [`HeaderValue::rfc2231`] and the caller decides
//! (Django appends them after the plain ones, so one overrides a plain
//! parameter of its name, or the whole parse raises).

/// A parsed header value: the lowercased main value and the parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct HeaderValue {
    /// The main value, stripped and lowercased.
    pub(super) key: String,
    params: Vec<(String, String)>,
    /// The names (before `*`) of RFC 2231 parameters, not decoded.
    pub(super) rfc2231: Vec<String>,
}

impl HeaderValue {
    /// The parameter `name` (lowercase), as Python's `pdict.get(name)`.
    pub(super) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Python's `str.isspace`: Unicode `White_Space` plus the four information
/// separators U+001C..U+001F.
pub(super) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub(super) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// `parse_header_parameters(line)`.
pub(super) fn parse(line: &str) -> HeaderValue {
    if line.is_empty() {
        return HeaderValue::default();
    }
    if !line.contains(';') {
        return HeaderValue {
            key: py_strip(line).to_lowercase(),
            ..HeaderValue::default()
        };
    }
    let mut pieces = parse_params(line)
        .into_iter()
        .map(|p| match p.split_once('=') {
            Some((name, value)) => (py_strip(name).to_owned(), py_strip(value).to_owned()),
            None => (py_strip(&p).to_owned(), String::new()),
        });
    // `params[0]` is kept as it is by `decode_params`; its name is the key.
    let key = pieces.next().map(|(name, _)| name).unwrap_or_default();
    let mut params: Vec<(String, String)> = Vec::new();
    let mut rfc2231 = Vec::new();
    for (name, value) in pieces {
        if is_rfc2231(&name) {
            rfc2231.push(name.split('*').next().unwrap_or("").to_owned());
            continue;
        }
        // `decode_params`: '"%s"' % quote(unquote(value)); then
        // `get_params`: unquote of that.
        let value = unquote(&format!("\"{}\"", quote(&unquote(&value))));
        if name.is_empty() {
            continue;
        }
        match params.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => params.push((name, value)),
        }
    }
    HeaderValue {
        key: key.to_lowercase(),
        params,
        rfc2231,
    }
}

/// `rfc2231_continuation` (`^\w+\*([0-9]+\*?)?$`), widened to any name
/// ending in `*` or holding `*` followed by digits: such a name is never
/// judged.
fn is_rfc2231(name: &str) -> bool {
    name.ends_with('*')
        || name.split_once('*').is_some_and(|(head, tail)| {
            !head.is_empty()
                && !tail.is_empty()
                && tail
                    .trim_end_matches('*')
                    .bytes()
                    .all(|b| b.is_ascii_digit())
        })
}

/// `email.message._parseparam`.
fn parse_params(line: &str) -> Vec<String> {
    let mut s: &str = line;
    let mut out = Vec::new();
    // `s = ';' + s; while s[:1] == ';': s = s[1:]`: the first round takes
    // `line` itself.
    let mut first = true;
    loop {
        if !first {
            match s.strip_prefix(';') {
                Some(rest) => s = rest,
                None => break,
            }
        }
        first = false;
        let quotes_before = |end: usize| {
            let head = &s[..end];
            head.matches('"').count() as isize - head.matches("\\\"").count() as isize
        };
        let mut end = s.find(';');
        while let Some(e) = end {
            if e > 0 && quotes_before(e) % 2 != 0 {
                end = s[e + 1..].find(';').map(|n| n + e + 1);
            } else {
                break;
            }
        }
        let end = end.unwrap_or(s.len());
        let f = &s[..end];
        let piece = match f.find('=') {
            Some(i) => format!(
                "{}={}",
                py_strip(&f[..i]).to_lowercase(),
                py_strip(&f[i + 1..])
            ),
            None => f.to_owned(),
        };
        out.push(py_strip(&piece).to_owned());
        s = &s[end..];
    }
    out
}

/// `email.utils.unquote`.
fn unquote(s: &str) -> String {
    if s.chars().count() > 1 {
        if s.starts_with('"') && s.ends_with('"') {
            return s[1..s.len() - 1]
                .replace("\\\\", "\\")
                .replace("\\\"", "\"");
        }
        if s.starts_with('<') && s.ends_with('>') {
            return s[1..s.len() - 1].to_owned();
        }
    }
    s.to_owned()
}

/// `email.utils.quote`.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned against Django 5.2 on CPython 3.11
    /// (`parse_header_parameters(line)`).
    /// A line, its key and its parameters.
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

    #[test]
    fn splits_as_django() {
        let cases: &[Case<'_>] = &[
            ("Multipart/Form-Data", "multipart/form-data", &[]),
            (" text/plain ", "text/plain", &[]),
            (
                "multipart/form-data; boundary=a; boundary=b",
                "multipart/form-data",
                &[("boundary", "b")],
            ),
            (
                "multipart/form-data; BOUNDARY = \"x;y\"",
                "multipart/form-data",
                &[("boundary", "x;y")],
            ),
            (
                "form-data; name=\"a\\\"b\"; filename=\"\"",
                "form-data",
                &[("name", "a\"b"), ("filename", "")],
            ),
            ("a; =x; b", "a", &[("b", "")]),
            ("a; b=<c>", "a", &[("b", "c")]),
            (
                "content-disposition: form-data; name=x",
                "content-disposition: form-data",
                &[("name", "x")],
            ),
            // Quotes and angle brackets at an edge (CPython 3.11's
            // `Message.get_params`, which Django 5.2 calls): a `;` inside
            // quotes with more pieces after it, an escaped quote before it,
            // a quote or bracket that opens or closes nothing.
            ("a; b=\"x;y\"; c=d", "a", &[("b", "x;y"), ("c", "d")]),
            (
                "a; b=\"x;;y;\"; c=\"1;2\"; d=3",
                "a",
                &[("b", "x;;y;"), ("c", "1;2"), ("d", "3")],
            ),
            (
                "a;b=\"1;2\";c=\"3;4\";d=5",
                "a",
                &[("b", "1;2"), ("c", "3;4"), ("d", "5")],
            ),
            ("a; b=\"x\\\";y\"; c=d", "a", &[("b", "x\";y"), ("c", "d")]),
            (
                "a; b=\"x;y\"z;w\"; c=d",
                "a",
                &[("b", "\"x;y\"z"), ("w\"; c", "d")],
            ),
            ("a; b=\"", "a", &[("b", "\"")]),
            ("a; b=\"abc", "a", &[("b", "\"abc")]),
            ("a; b=abc\"", "a", &[("b", "abc\"")]),
            ("a; b=<", "a", &[("b", "<")]),
            ("a; b=<c", "a", &[("b", "<c")]),
            ("a; b=c>", "a", &[("b", "c>")]),
            // Not RFC 2231 (`^\w+\*([0-9]+\*?)?$`): plain parameters.
            ("x; a*b=1", "x", &[("a*b", "1")]),
            ("x; *0=1", "x", &[("*0", "1")]),
        ];
        for (line, key, params) in cases {
            let parsed = parse(line);
            assert!(parsed.rfc2231.is_empty());
            assert_eq!(parsed.key, *key, "{line:?}");
            let got: Vec<(&str, &str)> = parsed
                .params
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            assert_eq!(got, *params, "{line:?}");
        }
        assert_eq!(
            parse("multipart/form-data; boundary*=utf-8''x").rfc2231,
            ["boundary"]
        );
        assert_eq!(parse("form-data; name*0=a; x=1").rfc2231, ["name"]);
    }
}
