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
//!
//! Django 5.1 (the chat app pins 5.1.2) split the value itself and reads
//! some values otherwise (angle brackets kept, RFC 2231 decoded in place):
//! [`read_otherwise_by_django_5_1`] tells a caller when the two differ on
//! what it reads, and such a header is not judged.

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
    split_params(line)
        .into_iter()
        .map(|f| {
            let piece = match f.find('=') {
                Some(i) => format!(
                    "{}={}",
                    py_strip(&f[..i]).to_lowercase(),
                    py_strip(&f[i + 1..])
                ),
                None => f.to_owned(),
            };
            py_strip(&piece).to_owned()
        })
        .collect()
}

/// The pieces `_parseparam` splits `line` into, as they are: at each `;`
/// outside a quoted string (Django 5.2's `email.message._parseparam` and
/// Django 5.1's own `_parseparam` split alike, and differ in what they do
/// with each piece).
fn split_params(line: &str) -> Vec<&str> {
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
        // `s.count('"', 0, end) - s.count('\\"', 0, end)`: never negative.
        let odd = |end: usize| {
            let head = &s[..end];
            (head.matches('"').count() - head.matches("\\\"").count()) % 2 == 1
        };
        let mut end = s.find(';');
        while let Some(e) = end {
            if e > 0 && odd(e) {
                end = s[e + 1..].find(';').map(|n| n + e + 1);
            } else {
                break;
            }
        }
        let end = end.unwrap_or(s.len());
        out.push(&s[..end]);
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

/// True when Django 5.1 reads `line` otherwise than [`parse`] (Django 5.2)
/// did into `parsed`: another main value, or another value of one of the
/// parameters `names` (or one it decodes as RFC 2231). Django 5.1 splits
/// the value itself (`django/utils/http.py` `_parseparam`, 5.1.x; the chat
/// app pins 5.1.2): it keeps angle brackets (`boundary=<b>` is `<b>`, `b`
/// to 5.2's `email.utils.unquote`), unquotes only a value quoted at both
/// ends, and decodes an RFC 2231 `name*=` in its place, where 5.2 appends
/// it after the plain parameters. Which of the two the backend runs is not
/// known here: a header they tell apart is one the proxy cannot read
/// (`tests/it/attack_app_stack.rs`).
pub(super) fn read_otherwise_by_django_5_1(
    line: &str,
    parsed: &HeaderValue,
    names: &[&str],
) -> bool {
    // Without a `;` (`application/json`, the app's own requests) both read
    // the same main value (the line stripped and lowercased) and no
    // parameter: nothing to compare (`a_line_without_parameters_...`).
    line.contains(';') && differs_in_django_5_1(line, parsed, names)
}

/// [`read_otherwise_by_django_5_1`], comparing every line.
fn differs_in_django_5_1(line: &str, parsed: &HeaderValue, names: &[&str]) -> bool {
    let (key, params) = parse_django_5_1(line);
    if key != parsed.key {
        return true;
    }
    names.iter().any(|name| {
        // 5.2's value of an RFC 2231 parameter is not read here either.
        if parsed.rfc2231.iter().any(|n| n == name) {
            return true;
        }
        // `pdict[name] = value`: the last one wins.
        match params.iter().rev().find(|(n, _)| n == name) {
            Some((_, None)) => true,
            Some((_, Some(value))) => parsed.param(name) != Some(value.as_str()),
            None => parsed.param(name).is_some(),
        }
    })
}

/// Django 5.1's `parse_header_parameters(line)`: the lowercased main value
/// and the parameters in order, `None` for one decoded as RFC 2231 (not
/// read here).
fn parse_django_5_1(line: &str) -> (String, Vec<(String, Option<String>)>) {
    let mut pieces = parse_params_django_5_1(line).into_iter();
    let key = pieces.next().unwrap_or_default().to_lowercase();
    let mut params = Vec::new();
    for piece in pieces {
        let Some((name, value)) = piece.split_once('=') else {
            continue;
        };
        let mut name = py_strip(name).to_lowercase();
        let mut encoded = false;
        if let Some(stripped) = name.strip_suffix('*') {
            name = stripped.to_owned();
            encoded = piece.matches('\'').count() == 2;
        }
        let mut value = py_strip(value).to_owned();
        if value.chars().count() >= 2 && value.starts_with('"') && value.ends_with('"') {
            value = value[1..value.len() - 1]
                .replace("\\\\", "\\")
                .replace("\\\"", "\"");
        }
        params.push((name, (!encoded).then_some(value)));
    }
    (key, params)
}

/// Django 5.1's `_parseparam(";" + line)`, each piece stripped.
fn parse_params_django_5_1(line: &str) -> Vec<String> {
    split_params(line)
        .into_iter()
        .map(|f| py_strip(f).to_owned())
        .collect()
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

    proptest::proptest! {
        /// The shortcut of [`read_otherwise_by_django_5_1`] is sound: a line
        /// without a `;` is read alike by both.
        #[test]
        fn a_line_without_parameters_is_read_alike_by_django_5_1_and_5_2(
            line in "[^;]{0,40}",
        ) {
            let names = ["boundary", "charset"];
            proptest::prop_assert!(!differs_in_django_5_1(&line, &parse(&line), &names));
        }
    }

    /// Pinned against Django 5.1.2 and 5.2.19 on CPython 3.11: a line, and
    /// whether the two read its main value or the parameters that matter
    /// (`boundary`, `charset`, `name`, `filename`) differently.
    #[test]
    fn tells_where_django_5_1_reads_otherwise() {
        let names = ["boundary", "charset", "name", "filename"];
        let cases: &[(&str, bool)] = &[
            (
                "multipart/form-data; boundary=----WebKitFormBoundaryAbC123",
                false,
            ),
            ("multipart/form-data; boundary=<qpX>", true),
            ("multipart/form-data; boundary=\"<qpX>\"", false),
            ("multipart/form-data; boundary=\"a;b\"", false),
            ("multipart/form-data; boundary=\"a\\\"b\"", false),
            ("multipart/form-data; boundary=a; boundary=b", false),
            ("multipart/form-data; boundary*=utf-8''x; boundary=y", true),
            ("multipart/form-data; charset=<utf-8>; boundary=x", true),
            ("application/json; charset=utf-8", false),
            ("application/json", false),
            ("Multipart/Form-Data; Boundary=X", false),
            ("multipart/form-data; boundary=\"abc", false),
            ("multipart/form-data; boundary=abc\"", false),
            ("multipart/form-data; boundary=\"\"", false),
            (
                "content-disposition: form-data; name=\"generate_image\"",
                false,
            ),
            (
                "content-disposition: form-data; name=<generate_image>",
                true,
            ),
            (
                "content-disposition: form-data; name=\"message\"; filename=\"a.png\"",
                false,
            ),
            ("content-disposition: form-data; name=\"a\\\\b\"", false),
            (
                "content-disposition: form-data; name=\"x\"; filename=<f>",
                true,
            ),
            // Both decode it to `generate_image`; an RFC 2231 value is not
            // read here, so it counts as read otherwise (fail closed).
            (
                "content-disposition: form-data; name*=utf-8''generate_image",
                true,
            ),
            ("content-type: image/png", false),
            ("content-transfer-encoding: base64", false),
            ("a; b=\"x;y\"z;w\"; c=d", false),
        ];
        for (line, otherwise) in cases {
            assert_eq!(
                read_otherwise_by_django_5_1(line, &parse(line), &names),
                *otherwise,
                "{line:?}"
            );
        }
    }

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
