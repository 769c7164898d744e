//! Route paths written in another syntax than Django's `path()` (phase:
//! startup and reload): taken literally, such a route would match nothing
//! Django routes, and every request meant for it would go unchecked (found
//! by an attack session), so [`PathPattern::parse`](super::pattern::PathPattern::parse)
//! refuses it, naming the `path()` form to write.

/// Why `pattern` is in another syntax than `path()`'s (a `re_path` regex,
/// a glob, an Express-style `:name` segment, a URL with its host or query): a
/// route so written is taken literally and matches nothing Django routes,
/// so every request it was meant for would go unchecked (found by an
/// attack session). Looked for outside `<…>` and `{…}`.
pub(super) fn foreign_syntax(pattern: &str) -> Option<&'static str> {
    let mut outside = String::new();
    let mut depth = 0u32;
    for c in pattern.chars() {
        match c {
            '<' | '{' => depth += 1,
            '>' | '}' => depth = depth.saturating_sub(1),
            _ if depth == 0 => outside.push(c),
            _ => {}
        }
    }
    if pattern.starts_with('^')
        || pattern.ends_with('$')
        || outside.contains(['\\', '(', ')', '[', '|'])
    {
        Some("looks like a re_path regex")
    } else if outside.contains("://") {
        Some("is a URL; give its path only")
    } else if outside.contains(['?', '#']) {
        Some("holds a query or fragment, which no request path has")
    } else if outside.contains('*') {
        Some("holds a glob '*'")
    } else if pattern.split('/').any(|segment| segment.starts_with(':')) {
        Some("names a parameter as :name")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::pattern::PathPattern;

    #[test]
    fn other_syntaxes_are_refused_with_the_path_form_to_write() {
        for pattern in [
            r"^chat/session/(?P<session_id>\d+)/send/$",
            "chat/session/*/send/",
            "chat/session/:id/send/",
            "https://app.example/chat/session/<int:id>/send/",
            "chat/session/<int:id>/send/?x=1",
        ] {
            let error = PathPattern::parse(pattern).expect_err(pattern);
            assert!(error.contains("path()"), "{error}");
        }
        for pattern in [
            "chat/session/<int:id>/send/",
            "/files/{*rest}",
            "a:b/c",
            "v1/models/<str:model>:generate/",
        ] {
            assert!(PathPattern::parse(pattern).is_ok(), "{pattern}");
        }
    }
}
