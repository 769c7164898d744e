//! `[identity]`, `[identity.forward_auth]` and `[identity.jwt]` (phase:
//! identify): how a request's user and plan are found, with the checks of
//! the forward-auth and JWT sections.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    AnonymousPolicy, Config, ConfigError, IdentityErrorPolicy, IdentityKind, NonZeroByteSize,
    NonZeroDuration, PlanCase, RequiredHeader, UpstreamUrl, UserIdFormat,
};

/// How a request's user and plan are found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Header holding the user id, set by a trusted front.
    pub user_header: RequiredHeader,
    /// Header holding the plan name.
    pub plan_header: RequiredHeader,
    /// Plan for a user whose plan is missing or unknown; unlimited when unset.
    pub default_plan: Option<String>,
    /// How plan names are matched against `[plans]`: `sensitive` (the
    /// default) or `insensitive` (`Pro` is `pro`). An unknown plan gets
    /// `default_plan`, is logged once per name and counted
    /// (`quota_proxy_unknown_plan_total`).
    pub plan_case: PlanCase,
    /// What happens to a flagged request with no user id.
    pub anonymous: AnonymousPolicy,
    /// What a user id is: `string` (the default), `integer` (`0017` and
    /// `17` are one user) or `uuid`; an id not in the format is anonymous.
    pub user_id_format: UserIdFormat,
    /// Where identities come from: `header` (the default), `forward_auth` or
    /// `jwt`. With `forward_auth` and `jwt`, clients' own `user_header` and
    /// `plan_header` are removed and set from the verified identity.
    pub kind: IdentityKind,
    /// What a flagged request gets when the identity source cannot answer
    /// (down, slow, or nonsense): `deny` (503 JSON, the default) or `allow`
    /// (forwarded uncounted).
    pub on_identity_error: IdentityErrorPolicy,
    /// Settings of `kind = "forward_auth"`.
    pub forward_auth: ForwardAuthConfig,
    /// Settings of `kind = "jwt"`.
    pub jwt: JwtConfig,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            user_header: RequiredHeader::from_static("x-user-id"),
            plan_header: RequiredHeader::from_static("x-subscription-type"),
            default_plan: None,
            plan_case: PlanCase::Sensitive,
            anonymous: AnonymousPolicy::Forward,
            user_id_format: UserIdFormat::String,
            kind: IdentityKind::Header,
            on_identity_error: IdentityErrorPolicy::Deny,
            forward_auth: ForwardAuthConfig::default(),
            jwt: JwtConfig::default(),
        }
    }
}

/// `[identity.forward_auth]`: ask the Django app who the caller is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardAuthConfig {
    /// The identity endpoint: a path on `upstream` (`/api/quota/identity/`)
    /// or a full `http://host:port/path`.
    pub url: String,
    /// The caller's headers sent along; they carry its credentials. A
    /// request with none of them is anonymous without any call.
    pub forward_headers: Vec<RequiredHeader>,
    /// Longest wait for one answer (connect, head and body); exceeded → the
    /// identity is unavailable (see `on_identity_error`).
    pub timeout: NonZeroDuration,
    /// How long a user's answer is reused for the same credentials; `0s`
    /// asks every time.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long an anonymous answer (401, 403, redirect) is reused.
    #[serde(with = "humantime_serde")]
    pub negative_cache_ttl: Duration,
    /// Most answers kept; the least recently used is dropped to make room.
    pub cache_max_entries: usize,
    /// Most bytes the cached answers take (keys, identities and
    /// bookkeeping); the least recently used is dropped to make room.
    pub cache_max_bytes: NonZeroByteSize,
}

impl Default for ForwardAuthConfig {
    fn default() -> Self {
        Self {
            url: "/api/quota/identity/".to_owned(),
            forward_headers: vec![
                RequiredHeader::from_static("cookie"),
                RequiredHeader::from_static("authorization"),
            ],
            timeout: NonZeroDuration::from_secs(2),
            cache_ttl: Duration::from_secs(30),
            negative_cache_ttl: Duration::from_secs(5),
            cache_max_entries: 100_000,
            cache_max_bytes: NonZeroByteSize::new(32 * 1024 * 1024),
        }
    }
}

impl ForwardAuthConfig {
    /// The absolute URL of the identity endpoint: `url` on `upstream` when it
    /// is a path, else `url` itself.
    pub fn endpoint(&self, upstream: &UpstreamUrl) -> Result<http::Uri, ConfigError> {
        let invalid = |reason: String| ConfigError::invalid("identity.forward_auth.url", reason);
        let url = &self.url;
        let absolute = if url.starts_with('/') {
            format!("http://{}{url}", upstream.authority)
        } else if url.starts_with("http://") {
            url.clone()
        } else if url.starts_with("https://") {
            return Err(invalid(format!(
                "{url:?}: https is not supported; use a path on upstream or http://host:port/path"
            )));
        } else {
            return Err(invalid(format!(
                "{url:?}: expected a path such as \"/api/quota/identity/\" or http://host:port/path"
            )));
        };
        let uri: http::Uri = absolute
            .parse()
            .map_err(|e| invalid(format!("{url:?} is not a URL ({e})")))?;
        if uri.authority().is_none() {
            return Err(invalid(format!("{url:?}: missing host")));
        }
        Ok(uri)
    }
}

/// `[identity.jwt]`: verify a JSON Web Token. Exactly one key source is set:
/// `secret_env` or `secret_file` (HMAC, e.g. djangorestframework-simplejwt
/// signing with Django's `SECRET_KEY`), `public_key_file` (a PEM public key)
/// or `jwks_file` (a local JWK set, keys chosen by `kid`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Environment variable holding the HMAC secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// File holding the HMAC secret (one trailing newline is ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// PEM public key (RSA, EC P-256/P-384 or Ed25519).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// JSON Web Key Set file (`{"keys": […]}`) of public keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Algorithms accepted, e.g. `["HS256"]`; empty = every algorithm the
    /// key kind can verify. `none` is never accepted, and HMAC algorithms
    /// never with a public key.
    pub algorithms: Vec<String>,
    /// Header holding `<scheme> <token>`, as simplejwt's `AUTH_HEADER_NAME`
    /// (`HTTP_AUTHORIZATION` there: `Authorization`, the default, here).
    pub header_name: RequiredHeader,
    /// Schemes of `header_name` whose token is the app's, as simplejwt's
    /// `AUTH_HEADER_TYPES` (default `["Bearer"]`; matched exactly, as
    /// simplejwt does: `bearer` is another scheme). A valid token under
    /// another scheme is refused, not anonymous.
    pub header_types: Vec<String>,
    /// Cookie read for the token when there is no `Authorization: Bearer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Required `iss` claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim. When unset, tokens that carry an `aud` are
    /// refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (whole seconds).
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim with the user id (a string or an integer).
    pub user_id_claim: String,
    /// Claim with the plan name; the plan table decides when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan_claim: Option<String>,
    /// Claim with the daily limit, overriding the plan's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_claim: Option<String>,
    /// Claim with the weekly limit, overriding the plan's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weekly_claim: Option<String>,
    /// Claim with the monthly limit, overriding the plan's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_claim: Option<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret_env: None,
            secret_file: None,
            public_key_file: None,
            jwks_file: None,
            algorithms: Vec::new(),
            header_name: RequiredHeader::from_static("authorization"),
            header_types: vec!["Bearer".to_owned()],
            cookie: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            user_id_claim: "user_id".to_owned(),
            plan_claim: None,
            daily_claim: None,
            weekly_claim: None,
            monthly_claim: None,
        }
    }
}

/// The kind of key `[identity.jwt]` verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtKeySource {
    /// A shared HMAC secret (`secret_env`, `secret_file`).
    Secret,
    /// Public keys (`public_key_file`, `jwks_file`).
    PublicKey,
}

impl JwtConfig {
    /// The configured key source, checked to be exactly one.
    pub fn key_source(&self) -> Result<JwtKeySource, ConfigError> {
        let set: Vec<&str> = [
            ("secret_env", self.secret_env.is_some()),
            ("secret_file", self.secret_file.is_some()),
            ("public_key_file", self.public_key_file.is_some()),
            ("jwks_file", self.jwks_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        match set.as_slice() {
            ["secret_env" | "secret_file"] => Ok(JwtKeySource::Secret),
            [_] => Ok(JwtKeySource::PublicKey),
            [] => Err(ConfigError::invalid(
                "identity.jwt",
                "kind = \"jwt\" needs a key: set one of secret_env, secret_file, \
                 public_key_file or jwks_file",
            )),
            several => Err(ConfigError::invalid(
                format!("identity.jwt.{}", several[1]),
                format!(
                    "only one key source may be set, found {}",
                    several.join(", ")
                ),
            )),
        }
    }

    /// The `algorithms` list, parsed and checked against the key source:
    /// `none` is refused, and so is HMAC with a public key (key confusion).
    /// Empty when every algorithm of the key's kind is accepted.
    pub fn allowed_algorithms(&self) -> Result<Vec<jsonwebtoken::Algorithm>, ConfigError> {
        let source = self.key_source()?;
        let hmac = jsonwebtoken::AlgorithmFamily::Hmac.algorithms();
        let mut out = Vec::with_capacity(self.algorithms.len());
        for name in &self.algorithms {
            let invalid = |reason: String| ConfigError::invalid("identity.jwt.algorithms", reason);
            if name.eq_ignore_ascii_case("none") {
                return Err(invalid(
                    "\"none\" (unsigned tokens) is never accepted".to_owned(),
                ));
            }
            let alg: jsonwebtoken::Algorithm = name.parse().map_err(|_| {
                invalid(format!(
                    "{name:?} is not an algorithm; expected HS256, HS384, HS512, RS256, RS384, \
                     RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"
                ))
            })?;
            match (source, hmac.contains(&alg)) {
                (JwtKeySource::Secret, false) => {
                    return Err(invalid(format!(
                        "{name} needs a public key, but a secret is configured; use HS256, HS384 \
                         or HS512"
                    )));
                }
                (JwtKeySource::PublicKey, true) => {
                    return Err(invalid(format!(
                        "{name} is refused with a public key (a token signed with the public key \
                         as an HMAC secret would pass); use RS*, PS*, ES* or EdDSA"
                    )));
                }
                _ => out.push(alg),
            }
        }
        Ok(out)
    }
}

impl Config {
    pub(super) fn validate_forward_auth(&self) -> Result<(), ConfigError> {
        let fa = &self.identity.forward_auth;
        fa.endpoint(&self.upstream)?;
        if fa.forward_headers.is_empty() {
            return Err(ConfigError::invalid(
                "identity.forward_auth.forward_headers",
                "must name at least one header, e.g. [\"Cookie\", \"Authorization\"]",
            ));
        }
        if fa.cache_max_entries == 0 {
            return Err(ConfigError::invalid(
                "identity.forward_auth.cache_max_entries",
                "must be above 0 (set cache_ttl = \"0s\" to turn the cache off)",
            ));
        }
        Ok(())
    }

    pub(super) fn validate_jwt(&self) -> Result<(), ConfigError> {
        let jwt = &self.identity.jwt;
        jwt.allowed_algorithms()?;
        for (field, value) in [
            ("identity.jwt.secret_env", jwt.secret_env.as_deref()),
            ("identity.jwt.cookie", jwt.cookie.as_deref()),
            ("identity.jwt.issuer", jwt.issuer.as_deref()),
            ("identity.jwt.audience", jwt.audience.as_deref()),
            (
                "identity.jwt.user_id_claim",
                Some(jwt.user_id_claim.as_str()),
            ),
            ("identity.jwt.plan_claim", jwt.plan_claim.as_deref()),
            ("identity.jwt.daily_claim", jwt.daily_claim.as_deref()),
            ("identity.jwt.weekly_claim", jwt.weekly_claim.as_deref()),
            ("identity.jwt.monthly_claim", jwt.monthly_claim.as_deref()),
        ] {
            if value.is_some_and(|v| v.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    field,
                    "must not be empty; leave it out instead",
                ));
            }
        }
        if jwt.header_types.is_empty() {
            return Err(ConfigError::invalid(
                "identity.jwt.header_types",
                "must list at least one scheme (simplejwt's default is [\"Bearer\"])",
            ));
        }
        if let Some(bad) = jwt
            .header_types
            .iter()
            .find(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::invalid(
                "identity.jwt.header_types",
                format!("{bad:?} is not a scheme (one word of visible ASCII, e.g. \"Bearer\")"),
            ));
        }
        if let Some(cookie) = &jwt.cookie
            && !cookie
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        {
            return Err(ConfigError::invalid(
                "identity.jwt.cookie",
                format!("{cookie:?} is not a valid cookie name"),
            ));
        }
        Ok(())
    }
}
