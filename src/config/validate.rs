//! Config checks beyond what types alone ensure: ranges, references
//! between fields, and the machine the config runs on (phase: startup, and
//! every reload).
//!
//! [`Config::validate`] checks ranges and references itself and calls the
//! check of each section (in that section's module) and the passes below.
//! Two passes, both turning an impossible config into a [`ConfigError`]
//! naming the field, so every one of them exits with the same code (2) and
//! a reload that meets one answers 400:
//!
//! - [`Config::validate_rules`] (pure, part of `validate`): route methods
//!   are standard or listed in `extension_methods`; `on_store_error =
//!   "local"` has a Redis store to fall back from; inspected routes have a
//!   usage report source to count from; plan names do not collide
//!   under `identity.plan_case = "insensitive"`; one Redis secret source;
//!   the header names read from requests or sent upstream hold no `_`.
//! - [`Config::resolve_environment`] (I/O, part of `Config::load`): every
//!   secret source resolves (`admin.token_env` names a set variable,
//!   `admin.token_file` and `store.password_file` can be read,
//!   `store.url_env` holds a Redis URL) and the spool directory is
//!   writable. The Redis secrets are then written into the store's URLs,
//!   where the connection code reads them; [`masked`] hides them again
//!   wherever the config is shown.

use std::path::Path;

use super::{Config, ConfigError, IdentityKind, PlanCase, StoreErrorPolicy, StoreKind};

/// The methods of RFC 9110 §9 and PATCH (RFC 5789): a route with any other
/// method must be listed in `extension_methods`.
pub const STANDARD_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl Config {
    /// Checks what types alone cannot: references between fields and ranges.
    /// Builds nothing: route patterns and `strip_routing_headers` are
    /// checked where the quota layer builds its route table
    /// (`QuotaLayer::builder`, called by `serve`, `check-config` and every
    /// reload), with the same errors.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.body_budget_bytes.get() < self.max_body_bytes.get() {
            return Err(ConfigError::invalid(
                "body_budget_bytes",
                format!(
                    "{} is below max_body_bytes ({}): a body of the largest allowed size \
                     could never be held",
                    self.body_budget_bytes, self.max_body_bytes
                ),
            ));
        }
        // spool_dir is checked (a writable directory) with the machine, in
        // `resolve_environment`.
        if self.store.kind == StoreKind::Redis {
            self.store.validate_redis()?;
        }
        if self.store.breaker.failures == 0 {
            return Err(ConfigError::invalid(
                "store.breaker.failures",
                "must be at least 1",
            ));
        }
        for (field, n) in [
            ("store.settle_queue", self.store.settle_queue),
            ("store.local_max_users", self.store.local_max_users),
        ] {
            if n == 0 {
                return Err(ConfigError::invalid(field, "must be above 0"));
            }
        }
        if self.store.memory_max_users == 0 {
            return Err(ConfigError::invalid(
                "store.memory_max_users",
                "must be above 0",
            ));
        }
        if let Some(plan) = &self.identity.default_plan
            && !self.plans.contains_key(plan)
        {
            return Err(ConfigError::invalid(
                "identity.default_plan",
                format!(
                    "plan {plan:?} is not in [plans] (known: {})",
                    self.plan_names()
                ),
            ));
        }
        match self.identity.kind {
            IdentityKind::Header => {}
            IdentityKind::ForwardAuth => self.validate_forward_auth()?,
            IdentityKind::Jwt => self.validate_jwt()?,
        }
        if let Some(marker) = &self.usage.report_marker
            && (marker.start.is_empty() || marker.end.is_empty())
        {
            return Err(ConfigError::invalid(
                "usage.report_marker",
                "start and end must both be non-empty",
            ));
        }
        self.validate_report_token()?;
        self.status.validate()?;
        for (i, route) in self.routes.iter().enumerate() {
            if !(400..=599).contains(&route.deny_status) {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].deny_status"),
                    format!("expected a 4xx or 5xx status, got {}", route.deny_status),
                ));
            }
            if route.flag.is_empty() {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].flag"),
                    "must not be empty",
                ));
            }
        }
        self.validate_operations()?;
        self.validate_rules()?;
        Ok(())
    }

    fn plan_names(&self) -> String {
        if self.plans.is_empty() {
            return "none".to_owned();
        }
        self.plans.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// The header names the proxy reads from requests or sends upstream,
    /// with their fields: none may hold `_`, which gunicorn and nginx drop
    /// (and the proxy removes on inspected routes, `strip_underscore_names`),
    /// so a header so named never arrives, or is gone before it is read.
    fn request_header_fields(&self) -> Vec<(String, &str)> {
        let mut fields = vec![
            (
                "identity.user_header".to_owned(),
                self.identity.user_header.as_ref(),
            ),
            (
                "identity.plan_header".to_owned(),
                self.identity.plan_header.as_ref(),
            ),
            (
                "identity.jwt.header_name".to_owned(),
                self.identity.jwt.header_name.as_ref(),
            ),
        ];
        for (i, name) in self
            .identity
            .forward_auth
            .forward_headers
            .iter()
            .enumerate()
        {
            fields.push((
                format!("identity.forward_auth.forward_headers[{i}]"),
                name.as_ref(),
            ));
        }
        for (r, route) in self.routes.iter().enumerate() {
            for (i, name) in route
                .probe
                .iter()
                .flat_map(|p| &p.forward_headers)
                .enumerate()
            {
                fields.push((
                    format!("routes[{r}].probe.forward_headers[{i}]"),
                    name.as_ref(),
                ));
            }
        }
        for (field, header) in [
            ("usage.report_token_header", &self.usage.report_token_header),
            ("shadow_header", &self.shadow_header),
        ] {
            if let Some(name) = header.name() {
                fields.push((field.to_owned(), name.as_str()));
            }
        }
        fields
    }

    /// The cross-field rules that need no I/O (see the module docs).
    pub(super) fn validate_rules(&self) -> Result<(), ConfigError> {
        for (field, name) in self.request_header_fields() {
            if name.contains('_') {
                return Err(ConfigError::invalid(
                    field,
                    format!(
                        "{name:?} holds '_': gunicorn and nginx drop such headers, and the proxy \
                         removes them on inspected routes; write {:?}",
                        name.replace('_', "-")
                    ),
                ));
            }
        }
        for (i, name) in self.extension_methods.iter().enumerate() {
            if http::Method::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
                return Err(ConfigError::invalid(
                    format!("extension_methods[{i}]"),
                    format!("{name:?} is not an HTTP method token"),
                ));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let method = route.method.0.as_str();
            if !STANDARD_METHODS.contains(&method)
                && !self.extension_methods.iter().any(|m| m == method)
            {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].method"),
                    format!(
                        "{method:?} is not a standard HTTP method ({}); if the app really serves \
                         it, list it in extension_methods",
                        STANDARD_METHODS.join(", ")
                    ),
                ));
            }
        }
        if self.store.on_store_error == StoreErrorPolicy::Local
            && self.store.kind != StoreKind::Redis
        {
            return Err(ConfigError::invalid(
                "store.on_store_error",
                "\"local\" counts locally while Redis is down, but store.kind is \"memory\", \
                 which never fails over; set store.kind = \"redis\", or use \"allow\" or \"deny\"",
            ));
        }
        let usage = &self.usage;
        if !self.routes.is_empty()
            && usage.report_header.is_off()
            && usage.report_json_field.is_empty()
            && usage.report_marker.is_none()
            && usage.report_sse_event.is_empty()
        {
            return Err(ConfigError::invalid(
                "usage",
                "no report source is set (report_header, report_json_field, report_marker, \
                 report_sse_event), so no image could ever be counted; set at least one",
            ));
        }
        if self.identity.plan_case == PlanCase::Insensitive {
            let mut names: Vec<&String> = self.plans.keys().collect();
            names.sort_by_key(|n| n.to_lowercase());
            if let Some(pair) = names
                .windows(2)
                .find(|w| w[0].to_lowercase() == w[1].to_lowercase())
            {
                return Err(ConfigError::invalid(
                    "plans",
                    format!(
                        "{:?} and {:?} are the same plan under identity.plan_case = \
                         \"insensitive\"; keep one",
                        pair[0], pair[1]
                    ),
                ));
            }
        }
        let store = &self.store;
        if let Some(name) = &store.url_env {
            env_name("store.url_env", name)?;
            if !store.cluster.is_empty() || store.sentinel.is_some() {
                return Err(ConfigError::invalid(
                    "store.url_env",
                    "names the URL of one server; with store.cluster or store.sentinel use \
                     store.password_file for the password",
                ));
            }
        }
        if store.password_file.is_some()
            && let Some(sentinel) = &store.sentinel
            && sentinel.password.is_some()
        {
            return Err(ConfigError::invalid(
                "store.password_file",
                "store.sentinel.password is set too; keep the password in the file only",
            ));
        }
        if let Some(name) = &self.admin.token_env {
            env_name("admin.token_env", name)?;
        }
        Ok(())
    }

    /// Resolves what the config names outside itself (see the module docs):
    /// secrets, and a writable spool directory. Run by `Config::load`, so
    /// `check-config`, `serve` and reloads all refuse the same files.
    pub fn resolve_environment(&mut self) -> Result<(), ConfigError> {
        if let Some(name) = &self.admin.token_env {
            match std::env::var(name) {
                Ok(value) if !value.trim().is_empty() => {}
                Ok(_) => {
                    return Err(ConfigError::invalid(
                        "admin.token_env",
                        format!(
                            "environment variable {name} is empty; set it to the admin API token"
                        ),
                    ));
                }
                Err(_) => {
                    return Err(ConfigError::invalid(
                        "admin.token_env",
                        format!(
                            "environment variable {name} is not set; set it to the admin API token, or \
                     remove admin.token_env to turn the usage API off"
                        ),
                    ));
                }
            }
        }
        if let Some(path) = &self.admin.token_file {
            let token = read_secret("admin.token_file", path)?;
            if token.is_empty() {
                return Err(ConfigError::invalid(
                    "admin.token_file",
                    format!("{} is empty", path.display()),
                ));
            }
        }
        if self.store.kind == StoreKind::Redis {
            self.resolve_redis_secrets()?;
        }
        match &self.spool_dir {
            Some(dir) => writable("spool_dir", dir)?,
            // Inspected routes spool, and every body under
            // `request_buffering = "all"`.
            None if !self.routes.is_empty()
                || self.request_buffering == super::RequestBuffering::All =>
            {
                writable(
                    "spool_dir (unset: the system's temporary directory)",
                    &std::env::temp_dir(),
                )?
            }
            None => {}
        }
        Ok(())
    }

    fn resolve_redis_secrets(&mut self) -> Result<(), ConfigError> {
        let store = &mut self.store;
        if let Some(name) = &store.url_env {
            let url = std::env::var(name).map_err(|_| {
                ConfigError::invalid(
                    "store.url_env",
                    format!(
                        "environment variable {name} is not set; set it to the Redis URL \
                         (e.g. from a Kubernetes Secret), or remove store.url_env"
                    ),
                )
            })?;
            let url = url.trim();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::invalid(
                    "store.url_env",
                    format!(
                        "environment variable {name}: expected redis:// or rediss://, got {:?}",
                        mask_url(url)
                    ),
                ));
            }
            store.url = url.to_owned();
        }
        let Some(path) = &store.password_file else {
            return Ok(());
        };
        let password = read_secret("store.password_file", path)?;
        if password.is_empty() {
            return Err(ConfigError::invalid(
                "store.password_file",
                format!("{} is empty", path.display()),
            ));
        }
        if let Some(sentinel) = &mut store.sentinel {
            sentinel.password = Some(password);
        } else if store.cluster.is_empty() {
            store.url = with_password("store.url", &store.url, &password)?;
        } else {
            for (i, node) in store.cluster.iter_mut().enumerate() {
                *node = with_password(&format!("store.cluster[{i}]"), node, &password)?;
            }
        }
        Ok(())
    }
}

/// Refuses a name no environment variable can have.
fn env_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(ConfigError::invalid(
            field,
            format!("{name:?} is not an environment variable name"),
        ));
    }
    Ok(())
}

/// A secret file's content without surrounding whitespace.
fn read_secret(field: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| ConfigError::invalid(field, format!("cannot read {}: {e}", path.display())))
}

/// Makes (and at once drops) an unlinked file in `dir`, as the spool does.
fn writable(field: &str, dir: &Path) -> Result<(), ConfigError> {
    if !dir.is_dir() {
        return Err(ConfigError::invalid(
            field,
            format!("{} is not a directory", dir.display()),
        ));
    }
    tempfile::tempfile_in(dir).map(drop).map_err(|e| {
        ConfigError::invalid(
            field,
            format!(
                "cannot write a temporary file in {} ({e}); uploads on inspected routes would \
                 fail with 500. Mount a writable directory there (an emptyDir in Kubernetes)",
                dir.display()
            ),
        )
    })
}

/// `url` with `password` (percent-encoded) as its password; an error when
/// it carries one already.
fn with_password(field: &str, url: &str, password: &str) -> Result<String, ConfigError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        ConfigError::invalid(
            field,
            "expected redis:// or rediss:// to add the password to",
        )
    })?;
    let (user, host) = match rest.rfind('@') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => ("", rest),
    };
    if user.contains(':') {
        return Err(ConfigError::invalid(
            field,
            "carries a password already, and store.password_file sets one; keep one of them",
        ));
    }
    let encoded =
        percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC);
    Ok(format!("{scheme}://{user}:{encoded}@{host}"))
}

/// `url` with its password replaced by `***` (the user name stays).
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let user = rest[..at].split(':').next().unwrap_or("");
    format!("{scheme}://{user}:***@{}", &rest[at + 1..])
}

/// The rendered config with every secret replaced by `***`: Redis URL
/// passwords (`store.url`, `store.cluster`, `store.sentinel.nodes`) and
/// `store.sentinel.password`.
pub(super) fn masked(mut value: toml::Value) -> toml::Value {
    let Some(store) = value.get_mut("store").and_then(toml::Value::as_table_mut) else {
        return value;
    };
    let mask = |v: &mut toml::Value| {
        if let Some(url) = v.as_str() {
            *v = toml::Value::String(mask_url(url));
        }
    };
    if let Some(url) = store.get_mut("url") {
        mask(url);
    }
    if let Some(nodes) = store.get_mut("cluster").and_then(toml::Value::as_array_mut) {
        nodes.iter_mut().for_each(mask);
    }
    if let Some(sentinel) = store
        .get_mut("sentinel")
        .and_then(toml::Value::as_table_mut)
    {
        if let Some(nodes) = sentinel
            .get_mut("nodes")
            .and_then(toml::Value::as_array_mut)
        {
            nodes.iter_mut().for_each(mask);
        }
        if let Some(password) = sentinel.get_mut("password") {
            *password = toml::Value::String("***".to_owned());
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_added_encoded_and_masked() {
        let url = with_password("store.url", "redis://cache:6379/0", "p@ss/w:rd").expect("ok");
        assert_eq!(url, "redis://:p%40ss%2Fw%3Ard@cache:6379/0");
        assert_eq!(mask_url(&url), "redis://:***@cache:6379/0");
        let user = with_password("store.url", "rediss://app@cache/1", "x").expect("ok");
        assert_eq!(user, "rediss://app:x@cache/1");
        assert_eq!(mask_url(&user), "rediss://app:***@cache/1");
        assert!(with_password("store.url", "redis://:old@cache/0", "new").is_err());
        assert_eq!(mask_url("redis://cache:6379/0"), "redis://cache:6379/0");
    }

    /// A config from `store` with `password_file` pointing at a file
    /// holding `pw`, resolved.
    fn resolved(store: &str, pw: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("pw");
        std::fs::write(&file, format!("{pw}\n")).expect("write");
        let mut config = Config::from_toml(&format!(
            "[store]\nkind = \"redis\"\npassword_file = {:?}\n{store}",
            file.display().to_string()
        ))?;
        config.resolve_environment()?;
        Ok(config)
    }

    #[test]
    fn password_file_reaches_every_topology_and_is_masked() {
        let c = resolved("cluster = [\"redis://a:1\", \"redis://b:2\"]", "pw").expect("cluster");
        assert_eq!(c.store.cluster, ["redis://:pw@a:1", "redis://:pw@b:2"]);
        let c = resolved(
            "sentinel = { master = \"m\", nodes = [\"redis://s:26379\"] }",
            "pw",
        )
        .expect("sentinel");
        let sentinel = c.store.sentinel.as_ref().expect("sentinel");
        assert_eq!(sentinel.password.as_deref(), Some("pw"));
        assert_eq!(
            sentinel.nodes,
            ["redis://s:26379"],
            "the Sentinels' own stay"
        );
        let shown = c.to_toml();
        assert!(shown.contains("password = \"***\""), "{shown}");
        assert!(!shown.contains("= \"pw\""), "{shown}");
        let both = resolved(
            "sentinel = { master = \"m\", nodes = [\"redis://s:1\"], password = \"x\" }",
            "pw",
        );
        assert!(
            both.expect_err("two passwords")
                .to_string()
                .starts_with("store.password_file")
        );
        let empty = resolved("", "  ").expect_err("empty");
        assert!(empty.to_string().contains("is empty"), "{empty}");
    }
}
